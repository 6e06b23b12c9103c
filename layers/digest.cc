// Streaming SHA-256 and XXH3-128 helpers.
#include "layers/digest.h"

#include <fcntl.h>
// SHA256_Init/Update/Final are deprecated in OpenSSL 3 in favour of EVP, which adds a provider
// fetch on first use and nothing kiln needs; they remain in 3.x.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstring>
#include <stdexcept>
#include <system_error>
#include <vector>

#include "layers/fsutil.h"

namespace kiln::layers {

namespace {
std::string to_hex(const unsigned char* p, std::size_t n) {
  static const char* k = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (std::size_t i = 0; i < n; ++i) {
    out[2 * i] = k[p[i] >> 4];
    out[2 * i + 1] = k[p[i] & 15];
  }
  return out;
}
}  // namespace

Sha256::Sha256() {
  static_assert(sizeof(SHA256_CTX) <= 112 && alignof(SHA256_CTX) <= 8, "Sha256::ctx_ holds a SHA256_CTX");
  if (SHA256_Init(reinterpret_cast<SHA256_CTX*>(ctx_)) != 1) throw std::runtime_error("sha256: cannot initialise libcrypto's SHA-256");
}
Sha256::~Sha256() = default;
void Sha256::update(const void* data, std::size_t n) {
  if (n) SHA256_Update(reinterpret_cast<SHA256_CTX*>(ctx_), data, n);
}
std::string Sha256::hex() {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256_Final(md, reinterpret_cast<SHA256_CTX*>(ctx_));
  return to_hex(md, sizeof md);
}

std::string sha256_hex(std::string_view data) {
  Sha256 h;
  h.update(data);
  return h.hex();
}

std::string sha256_file_hex(const std::filesystem::path& path) {
  Sha256 h;
  read_blocks(path, [&](const char* d, std::size_t n) { h.update(d, n); });
  return h.hex();
}

bool is_sha256_digest(std::string_view d) {
  if (d.size() != 71 || d.substr(0, 7) != "sha256:") return false;
  for (char c : d.substr(7))
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

std::string_view digest_hex(std::string_view d) {
  if (!is_sha256_digest(d)) throw std::invalid_argument("malformed digest: " + std::string(d));
  return d.substr(7);
}

KeyHasher::KeyHasher() : state_(XXH3_createState()) { XXH3_128bits_reset(static_cast<XXH3_state_t*>(state_)); }
KeyHasher::~KeyHasher() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }
void KeyHasher::update(const void* data, std::size_t n) {
  XXH3_128bits_update(static_cast<XXH3_state_t*>(state_), data, n);
}
void KeyHasher::field(std::string_view s) {
  field(static_cast<std::uint64_t>(s.size()));
  update(s.data(), s.size());
}
void KeyHasher::field(std::uint64_t v) {
  unsigned char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
  update(b, 8);
}
std::string KeyHasher::hex() {
  XXH128_hash_t h = XXH3_128bits_digest(static_cast<XXH3_state_t*>(state_));
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  return to_hex(c.digest, sizeof c.digest);
}

}  // namespace kiln::layers
