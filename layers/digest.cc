// Streaming SHA-256 and XXH3-128 helpers.
#include "layers/digest.h"

#include <fcntl.h>
#include <openssl/evp.h>
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

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_ || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1)
    throw std::runtime_error("sha256: cannot initialise libcrypto digest");
}
Sha256::~Sha256() { EVP_MD_CTX_free(ctx_); }
void Sha256::update(const void* data, std::size_t n) {
  if (n) EVP_DigestUpdate(ctx_, data, n);
}
std::string Sha256::hex() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx_, md, &len);
  return to_hex(md, len);
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
