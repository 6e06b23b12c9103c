// The docker-archive sink.
#include "builder/docker_archive.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <unistd.h>

#include <memory>
#include <stdexcept>
#include <system_error>
#include <vector>

#include "layers/compress.h"
#include "layers/digest.h"
#include "layers/fsutil.h"
#include "layers/store.h"

namespace fs = std::filesystem;

namespace kiln::builder {

namespace {

/// Streams a layer blob, decompressed, to `sink`; returns the sha256 digest of the plain bytes.
std::string stream_plain(const Layer& l, const layers::ByteSink& sink, std::uint64_t* size) {
  layers::Sha256 h;
  *size = 0;
  auto dec = layers::make_decoder(layers::compression_of_media_type(l.desc.media_type),
                                  [&](const void* d, std::size_t n) {
                                    h.update(d, n);
                                    *size += n;
                                    if (sink) sink(d, n);
                                  });
  layers::read_blocks(l.blob, [&](const char* d, std::size_t n) { dec->write(d, n); }, 1 << 20, /*follow=*/true);
  dec->finish();
  return h.digest();
}

struct Out {
  layers::FileWriter file;
  std::string error;  // what the last failed write said (libarchive only sees -1)
};

la_ssize_t on_write(struct archive*, void* ctx, const void* buf, size_t n) {
  auto* o = static_cast<Out*>(ctx);
  try {
    o->file.write(buf, n);
  } catch (const std::exception& e) {
    o->error = e.what();
    return -1;
  }
  return static_cast<la_ssize_t>(n);
}

}  // namespace

void write_docker_archive(const Image& img, const fs::path& file, const std::string& repo_tag) {
  fs::path dir = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  fs::create_directories(dir);
  fs::path tmp = dir / layers::unique_name("." + file.filename().string());
  // Written through the page cache for its first 8 MiB, then with O_DIRECT (layers::FileWriter);
  // removed unless renamed into place below.
  Out out{layers::FileWriter(tmp), {}};
  struct archive* a = archive_write_new();
  auto cleanup = [&] { archive_write_free(a); };
  // A failed write says why (the disk is full, ...), not libarchive's generic error.
  auto fail = [&] {
    const char* why = archive_error_string(a);
    throw std::runtime_error("docker-archive: " + (!out.error.empty() ? out.error : why ? std::string(why) : "tar error"));
  };
  try {
    archive_write_set_format_pax_restricted(a);
    archive_write_set_bytes_in_last_block(a, 1);
    if (archive_write_open(a, &out, nullptr, on_write, nullptr) != ARCHIVE_OK)
      fail();
    std::unique_ptr<struct archive_entry, void (*)(struct archive_entry*)> e(archive_entry_new(), archive_entry_free);
    auto header = [&](const std::string& name, std::uint64_t size, bool dir_entry) {
      archive_entry_clear(e.get());
      archive_entry_set_pathname_utf8(e.get(), name.c_str());
      archive_entry_set_filetype(e.get(), dir_entry ? AE_IFDIR : AE_IFREG);
      archive_entry_set_perm(e.get(), dir_entry ? 0755 : 0644);
      archive_entry_set_size(e.get(), static_cast<la_int64_t>(size));
      archive_entry_set_mtime(e.get(), 0, 0);
      if (archive_write_header(a, e.get()) != ARCHIVE_OK)
        fail();
    };
    auto data = [&](const void* d, std::size_t n) {
      if (archive_write_data(a, d, n) != static_cast<la_ssize_t>(n))
        fail();
    };
    std::string cfg = img.config_bytes();
    std::string cfg_name = "blobs/sha256/" + std::string(layers::digest_hex(layers::sha256_digest(cfg)));
    nlohmann::json layer_names = nlohmann::json::array();
    header("blobs", 0, true);
    header("blobs/sha256", 0, true);
    std::vector<std::string> written;
    for (const Layer& l : img.layers) {
      std::string name = "blobs/sha256/" + std::string(layers::digest_hex(l.diff_id));
      layer_names.push_back(name);
      bool dup = false;
      for (auto& w : written) dup |= (w == name);
      if (dup) continue;  // the same layer twice in one image is stored once
      written.push_back(name);
      // The plain tar's size goes into its header. When the layer's record does not know it, the
      // tar is read once first to size it (and check the diff_id); either way the pass that
      // writes it checks its size and diff_id, and a mismatch leaves no archive.
      std::uint64_t size = l.tar_size;
      if (size == 0) {
        std::string got = stream_plain(l, nullptr, &size);
        if (got != l.diff_id) throw std::runtime_error("layer " + l.desc.digest + " does not match its diff_id");
      }
      header(name, size, false);
      std::uint64_t n = 0;
      if (stream_plain(l, data, &n) != l.diff_id || n != size)
        throw std::runtime_error("layer " + l.desc.digest + " does not match its diff_id");
    }
    header(cfg_name, cfg.size(), false);
    data(cfg.data(), cfg.size());
    nlohmann::json manifest = nlohmann::json::array();
    nlohmann::json m = {{"Config", cfg_name}, {"Layers", layer_names}, {"RepoTags", nlohmann::json::array()}};
    if (!repo_tag.empty()) m["RepoTags"].push_back(repo_tag);
    manifest.push_back(m);
    std::string ms = manifest.dump();
    header("manifest.json", ms.size(), false);
    data(ms.data(), ms.size());
    if (archive_write_close(a) != ARCHIVE_OK)
      fail();
    out.file.finish();
  } catch (...) {
    cleanup();
    throw;  // (out.file removes the temp file)
  }
  cleanup();
  if (::rename(tmp.c_str(), file.c_str()) != 0)
    throw std::system_error(errno, std::generic_category(), "cannot write " + file.string());
  out.file.keep();
}

}  // namespace kiln::builder
