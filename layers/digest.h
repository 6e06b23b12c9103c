// Content digests: streaming SHA-256 (OCI digests, "sha256:<hex>") and XXH3-128 (cache keys).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace kiln::layers {

/// Incremental SHA-256 over OpenSSL's libcrypto: its SHA256_* functions, which run the same
/// assembly (SHA-NI, AVX2) as an EVP digest without the provider machinery, whose first use costs
/// a short-lived kiln process ~2-3 ms (the config file, the default provider, the name map).
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, std::size_t n);
  void update(std::string_view s) { update(s.data(), s.size()); }
  /// Lowercase hex of the digest; the object cannot be updated afterwards.
  std::string hex();
  /// "sha256:<hex>".
  std::string digest() { return "sha256:" + hex(); }

 private:
  alignas(8) unsigned char ctx_[112];  // a SHA256_CTX (the size is checked in digest.cc)
};

std::string sha256_hex(std::string_view data);
inline std::string sha256_digest(std::string_view data) { return "sha256:" + sha256_hex(data); }
/// SHA-256 of a file's content, read in large blocks. Throws std::system_error.
std::string sha256_file_hex(const std::filesystem::path& path);

/// Is this a well-formed "sha256:<64 lowercase hex>" digest?
bool is_sha256_digest(std::string_view digest);
/// The hex part of "sha256:<hex>" (throws std::invalid_argument when malformed).
std::string_view digest_hex(std::string_view digest);

/// Incremental XXH3-128 for cache keys: fast, not for content addressing.
class KeyHasher {
 public:
  KeyHasher();
  ~KeyHasher();
  KeyHasher(const KeyHasher&) = delete;
  KeyHasher& operator=(const KeyHasher&) = delete;
  void update(const void* data, std::size_t n);
  /// Length-prefixed field, so ("ab","c") and ("a","bc") differ.
  void field(std::string_view s);
  void field(std::uint64_t v);
  std::string hex();  // 32 hex chars

 private:
  void* state_;
};

}  // namespace kiln::layers
