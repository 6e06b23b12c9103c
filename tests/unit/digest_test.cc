// Unit tests for layers/digest: SHA-256 (one-shot, streaming, files), digest string checks, and the
// XXH3-128 KeyHasher's field framing.
#include "layers/digest.h"

#include <catch2/catch.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <system_error>

#include "testutil.h"

using namespace kiln::layers;
using kiln::testutil::TempDir;

namespace {
const std::string kEmptyHex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const std::string kAbcHex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
}  // namespace

TEST_CASE("digest: sha256 of known vectors") {
  CHECK(sha256_hex("") == kEmptyHex);
  CHECK(sha256_hex("abc") == kAbcHex);
  CHECK(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(sha256_hex(std::string(1000000, 'a')) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  CHECK(sha256_digest("abc") == "sha256:" + kAbcHex);
  CHECK(sha256_digest("") == "sha256:" + kEmptyHex);
}

TEST_CASE("digest: streaming Sha256 equals one-shot regardless of split") {
  const std::string data = kiln::testutil::random_bytes(100000, 7);
  const std::string expect = sha256_hex(data);
  for (std::size_t step : {1u, 63u, 64u, 65u, 4096u, 99999u}) {
    Sha256 h;
    for (std::size_t i = 0; i < data.size(); i += step) h.update(data.data() + i, std::min(step, data.size() - i));
    CHECK(h.hex() == expect);
  }
  Sha256 empty;
  empty.update(nullptr, 0);  // a zero-length update is a no-op
  CHECK(empty.digest() == "sha256:" + kEmptyHex);
  Sha256 abc;
  abc.update("a");
  abc.update("");
  abc.update("bc");
  CHECK(abc.hex() == kAbcHex);
}

TEST_CASE("digest: file hashing of a multi-MiB file equals one-shot") {
  TempDir tmp;
  // 3.5 MiB + 7 bytes: several full 1 MiB reads plus a partial one.
  const std::string data = kiln::testutil::random_bytes((7u << 19) + 7, 42);
  kiln::testutil::write_file(tmp / "big.bin", data);
  CHECK(sha256_file_hex(tmp / "big.bin") == sha256_hex(data));

  kiln::testutil::write_file(tmp / "empty", "");
  CHECK(sha256_file_hex(tmp / "empty") == kEmptyHex);

  kiln::testutil::write_file(tmp / "abc", "abc");
  CHECK(sha256_file_hex(tmp / "abc") == kAbcHex);
}

TEST_CASE("digest: sha256_file_hex throws system_error naming a missing file") {
  TempDir tmp;
  const auto missing = tmp / "no-such-file";
  try {
    sha256_file_hex(missing);
    FAIL("expected an exception");
  } catch (const std::system_error& e) {
    CHECK(e.code().value() == ENOENT);
    CHECK(kiln::testutil::contains(e.what(), missing.string()));
  }
}

TEST_CASE("digest: is_sha256_digest edge cases") {
  const std::string good = "sha256:" + kAbcHex;
  CHECK(is_sha256_digest(good));
  CHECK(is_sha256_digest("sha256:" + std::string(64, '0')));
  CHECK(is_sha256_digest("sha256:" + std::string(64, 'f')));

  CHECK_FALSE(is_sha256_digest(""));
  CHECK_FALSE(is_sha256_digest("sha256:"));
  CHECK_FALSE(is_sha256_digest(kAbcHex));                               // no algorithm prefix
  CHECK_FALSE(is_sha256_digest("sha256:" + kAbcHex.substr(1)));         // 63 hex
  CHECK_FALSE(is_sha256_digest(good + "0"));                            // 65 hex
  CHECK_FALSE(is_sha256_digest(good + "\n"));                           // trailing newline
  CHECK_FALSE(is_sha256_digest("SHA256:" + kAbcHex));                   // algorithm is case-sensitive
  CHECK_FALSE(is_sha256_digest("sha512:" + kAbcHex));
  CHECK_FALSE(is_sha256_digest("sha256:" + std::string(63, 'a') + "A"));  // uppercase hex
  CHECK_FALSE(is_sha256_digest("sha256:" + std::string(63, 'a') + "g"));  // not hex
  CHECK_FALSE(is_sha256_digest("sha256-" + kAbcHex));
  CHECK_FALSE(is_sha256_digest(" sha256:" + kAbcHex.substr(1)));        // right length, wrong prefix
  std::string with_nul = "sha256:" + kAbcHex;
  with_nul[40] = '\0';
  CHECK_FALSE(is_sha256_digest(with_nul));
}

TEST_CASE("digest: digest_hex returns the hex part or throws invalid_argument") {
  CHECK(digest_hex("sha256:" + kAbcHex) == kAbcHex);
  CHECK(digest_hex("sha256:" + kEmptyHex) == kEmptyHex);
  CHECK_THROWS_AS(digest_hex(""), std::invalid_argument);
  CHECK_THROWS_AS(digest_hex(kAbcHex), std::invalid_argument);
  CHECK_THROWS_AS(digest_hex("sha256:abc"), std::invalid_argument);
  CHECK_THROWS_AS(digest_hex("sha256:" + std::string(64, 'A')), std::invalid_argument);
  CHECK_THROWS_WITH(digest_hex("sha256:zz"), Catch::Contains("sha256:zz"));
}

TEST_CASE("digest: KeyHasher output format and the XXH3-128 empty-input vector") {
  KeyHasher h;
  const std::string hex = h.hex();
  // XXH3_128bits("") with seed 0, canonical (big-endian high64 then low64).
  CHECK(hex == "99aa06d3014798d86001c324468d497f");
  CHECK(hex.size() == 32);

  KeyHasher a, b;
  a.field("same");
  a.field(std::uint64_t{7});
  b.field("same");
  b.field(std::uint64_t{7});
  const std::string ha = a.hex();
  CHECK(ha == b.hex());
  CHECK(ha.find_first_not_of("0123456789abcdef") == std::string::npos);
}

TEST_CASE("digest: KeyHasher field framing") {
  auto two = [](std::string_view x, std::string_view y) {
    KeyHasher h;
    h.field(x);
    h.field(y);
    return h.hex();
  };
  CHECK(two("ab", "c") != two("a", "bc"));
  CHECK(two("", "abc") != two("abc", ""));
  CHECK(two("ab", "c") == two("ab", "c"));

  // Raw update() has no framing: the same bytes in any split give the same key.
  KeyHasher r1, r2;
  r1.update("ab", 2);
  r1.update("c", 1);
  r2.update("abc", 3);
  CHECK(r1.hex() == r2.hex());

  // field(string) is exactly an 8-byte little-endian length, then the bytes.
  KeyHasher f, manual;
  f.field("abc");
  const unsigned char len[8] = {3, 0, 0, 0, 0, 0, 0, 0};
  manual.update(len, 8);
  manual.update("abc", 3);
  CHECK(f.hex() == manual.hex());

  // field(uint64) is the 8-byte little-endian value.
  KeyHasher n, nm;
  n.field(std::uint64_t{0x0102030405060708ull});
  const unsigned char le[8] = {8, 7, 6, 5, 4, 3, 2, 1};
  nm.update(le, 8);
  CHECK(n.hex() == nm.hex());

  // Distinct sequences of fields differ even when their concatenation is the same.
  KeyHasher t1, t2;
  t1.field("a");
  t1.field("b");
  t1.field("c");
  t2.field("abc");
  CHECK(t1.hex() != t2.hex());
}
