// Helpers shared by the layers/ and tag unit tests: a temporary directory that removes itself,
// file writers, deterministic pseudo-random data, and a sink that collects bytes.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <system_error>

#include "layers/compress.h"

namespace kiln::testutil {

/// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "kiln-test") {
    std::string base = std::filesystem::temp_directory_path().string();
    std::string tmpl = base + "/" + prefix + ".XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw std::system_error(errno, std::generic_category(), "mkdtemp " + tmpl);
    // Resolve symlinks (e.g. /tmp -> /private/tmp), so paths compare equal to realpath() output.
    path_ = std::filesystem::canonical(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    // Make everything writable/readable again first, in case a test changed modes.
    for (auto it = std::filesystem::recursive_directory_iterator(
             path_, std::filesystem::directory_options::skip_permission_denied, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_directory(ec) && !it->is_symlink(ec)) ::chmod(it->path().c_str(), 0755);
    }
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& rel) const { return path_ / rel; }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

/// Writes `content` to `p` (creating parent directories) and sets its permission bits.
inline void write_file(const std::filesystem::path& p, const std::string& content, unsigned mode = 0644) {
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
  {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    if (!f) throw std::runtime_error("cannot write " + p.string());
    f.write(content.data(), static_cast<std::streamsize>(content.size()));
    if (!f) throw std::runtime_error("cannot write " + p.string());
  }
  if (::chmod(p.c_str(), mode) != 0) throw std::system_error(errno, std::generic_category(), "chmod " + p.string());
}

inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + p.string());
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

/// Deterministic, incompressible-looking bytes (xorshift64*), so tests are repeatable.
inline std::string random_bytes(std::size_t n, std::uint64_t seed = 0x9e3779b97f4a7c15ull) {
  std::string s(n, '\0');
  std::uint64_t x = seed ? seed : 1;
  for (std::size_t i = 0; i < n; ++i) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    s[i] = static_cast<char>((x * 0x2545F4914F6CDD1Dull) >> 56);
  }
  return s;
}

/// Compressible text: repeated, slightly varying lines.
inline std::string text_bytes(std::size_t n) {
  std::string s;
  s.reserve(n + 64);
  for (std::size_t i = 0; s.size() < n; ++i)
    s += "line " + std::to_string(i % 1000) + ": the quick brown fox jumps over the lazy dog\n";
  s.resize(n);
  return s;
}

/// A ByteSink appending to a string.
inline layers::ByteSink string_sink(std::string* out) {
  return [out](const void* d, std::size_t n) { out->append(static_cast<const char*>(d), n); };
}

/// Encodes or decodes `in` in chunks of `chunk` bytes through a fresh codec.
inline std::string encode(spec::Compression c, const std::string& in, std::size_t chunk = 65536) {
  std::string out;
  auto enc = layers::make_encoder(c, string_sink(&out));
  for (std::size_t i = 0; i < in.size(); i += chunk) enc->write(in.data() + i, std::min(chunk, in.size() - i));
  enc->finish();
  return out;
}
inline std::string decode(spec::Compression c, const std::string& in, std::size_t chunk = 65536) {
  std::string out;
  auto dec = layers::make_decoder(c, string_sink(&out));
  for (std::size_t i = 0; i < in.size(); i += chunk) dec->write(in.data() + i, std::min(chunk, in.size() - i));
  dec->finish();
  return out;
}

/// Does `s` contain `needle`?
inline bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

}  // namespace kiln::testutil
