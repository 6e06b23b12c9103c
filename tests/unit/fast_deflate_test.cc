// Unit tests for layers/fast_deflate, kiln's gzip level-1 encoder: every output is checked by
// two independent decoders (zlib's inflate and libdeflate's) and by kiln's block walker, over
// edge cases (empty, 1 byte, maximal distance and length, 1 MiB), periodic patterns, joined
// pieces and a seeded fuzz loop; a golden digest pins the bytes across compilers and machines.
#include "layers/fast_deflate.h"

#include <libdeflate.h>
#include <zlib.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "layers/compress.h"
#include "layers/deflate_splice.h"
#include "layers/digest.h"
#include "testutil.h"
#include "zlib_util.h"

using namespace kiln::layers;
using kiln::testutil::random_bytes;
using kiln::testutil::text_bytes;

namespace {

const std::uint8_t* u8(const std::string& s) { return reinterpret_cast<const std::uint8_t*>(s.data()); }

std::string deflate(const std::string& data, bool final) {
  std::string out(fast_deflate_bound(data.size()), '\0');
  out.resize(fast_deflate(u8(data), data.size(), reinterpret_cast<std::uint8_t*>(out.data()), out.size(), final));
  return out;
}

/// zlib's raw inflate of a complete stream; fails the test unless it ends exactly at the end.
std::string zlib_inflate(const std::string& raw, [[maybe_unused]] std::size_t expect_size) {
  std::size_t left = 0;
  std::string out = kiln::testutil::zlib_inflate_stream(raw, -15, &left);
  CHECK(left == 0);
  return out;
}

std::string libdeflate_inflate(const std::string& raw, std::size_t expect_size) {
  libdeflate_decompressor* d = libdeflate_alloc_decompressor();
  std::string out(expect_size + 1, '\0');
  std::size_t in_used = 0, got = 0;
  const auto r = libdeflate_deflate_decompress_ex(d, raw.data(), raw.size(), out.data(), out.size(), &in_used, &got);
  libdeflate_free_decompressor(d);
  CHECK(r == LIBDEFLATE_SUCCESS);
  CHECK(in_used == raw.size());
  out.resize(r == LIBDEFLATE_SUCCESS ? got : 0);
  return out;
}

/// Compresses `data` as a final and as a non-final piece and checks both with zlib, libdeflate
/// and the block walker. Returns the final piece.
std::string check_round_trip(const std::string& data) {
  const std::string fin = deflate(data, true);
  CHECK(fin.size() <= fast_deflate_bound(data.size()));
  CHECK(zlib_inflate(fin, data.size()) == data);
  CHECK(libdeflate_inflate(fin, data.size()) == data);
  const DeflateBlocks b = walk_deflate(u8(fin), fin.size());
  CHECK((b.end_bit + 7) / 8 == fin.size());

  // Non-final: byte-aligned, ends with an empty stored block, and no block in it is final: the
  // first final block of `nonfinal + empty final piece` is the one that follows it.
  const std::string nf = deflate(data, false);
  REQUIRE(nf.size() >= 5);
  CHECK(nf.substr(nf.size() - 4) == std::string("\x00\x00\xff\xff", 4));
  const std::string tail = deflate("", true);
  const std::string joined = nf + tail;
  const DeflateBlocks jb = walk_deflate(u8(joined), joined.size());
  CHECK(jb.final_header_bit == nf.size() * 8);
  CHECK(zlib_inflate(joined, data.size()) == data);
  CHECK(libdeflate_inflate(joined, data.size()) == data);
  // The work memory is reused: a second compression with the same object gives the same bytes.
  FastDeflate f;
  std::string again(fast_deflate_bound(std::max<std::size_t>(data.size(), 5000)), '\0');
  auto* o = reinterpret_cast<std::uint8_t*>(again.data());
  f.compress(u8(tail), 0, o, again.size(), true);
  f.compress(u8(random_bytes(5000, 3)), 5000, o, again.size(), false);
  again.resize(f.compress(u8(data), data.size(), o, again.size(), true));
  CHECK(again == fin);
  return fin;
}

/// Deterministic mixed content: text, random bytes, zero runs, copies of earlier bytes at
/// random distances (some at the 32 KiB limit), byte runs around 258.
std::string mixed(std::uint64_t seed, std::size_t size) {
  std::uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  auto next = [&] {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    return x * 0x2545F4914F6CDD1Dull;
  };
  const std::string words = text_bytes(20000);
  std::string s;
  while (s.size() < size) {
    const std::uint64_t r = next();
    const std::size_t len = 1 + (r >> 40) % 3000;
    switch (r % 6) {
      case 0: s += words.substr((r >> 20) % 15000, len); break;
      case 1: s += random_bytes(len, r | 1); break;
      case 2: s += std::string(len, '\0'); break;
      case 3:  // a copy from earlier, often far back
        if (!s.empty()) {
          const std::size_t back = 1 + (r >> 24) % std::min<std::size_t>(s.size(), 33000);
          for (std::size_t i = 0; i < len; ++i) s += s[s.size() - back];
        }
        break;
      case 4: s += std::string(256 + (r >> 32) % 5, static_cast<char>(r >> 8)); break;
      default: s += std::to_string(r) + " "; break;
    }
  }
  s.resize(size);
  return s;
}

}  // namespace

TEST_CASE("fast_deflate: empty and tiny inputs") {
  check_round_trip("");
  check_round_trip("a");
  check_round_trip("ab");
  check_round_trip(std::string(1, '\0'));
  check_round_trip("hello hello hello hello hello hello");
  for (std::size_t n = 0; n < 40; ++n) check_round_trip(random_bytes(n, n + 1));
  for (std::size_t n = 0; n < 40; ++n) check_round_trip(std::string(n, 'z'));
  CHECK(deflate("", true) == std::string("\x03\x00", 2));  // one fixed block holding end-of-block
}

TEST_CASE("fast_deflate: zeros, random, text") {
  for (std::size_t n : {std::size_t{100}, std::size_t{65535}, std::size_t{65536}, std::size_t{300000}}) {
    INFO("size " << n);
    const std::string z = check_round_trip(std::string(n, '\0'));
    CHECK(z.size() < n / 100 + 50);
    const std::string r = check_round_trip(random_bytes(n, n));
    // stored (5 bytes per block of 128 KiB and per 65,535 bytes), not expanded by Huffman codes
    CHECK(r.size() <= n + 5 * (n / 65535 + n / 131072 + 2));
    const std::string t = check_round_trip(text_bytes(n));
    CHECK(t.size() < n / 2 + 50);
  }
}

TEST_CASE("fast_deflate: periodic patterns, periods 1 to 300") {
  for (std::size_t period = 1; period <= 300; ++period) {
    INFO("period " << period);
    const std::string unit = random_bytes(period, period * 7 + 1);
    std::string s;
    while (s.size() < 20000) s += unit;
    const std::string z = check_round_trip(s);
    CHECK(z.size() < period + 2000);  // the repeats became matches
  }
}

TEST_CASE("fast_deflate: matches at distance 32768 are used, 32769 are not") {
  const std::string seg = random_bytes(200, 11);
  auto at_distance = [&](std::size_t d) { return seg + random_bytes(d - seg.size(), 12) + seg + random_bytes(1000, 13); };
  const std::string near = check_round_trip(at_distance(32768));
  const std::string far = check_round_trip(at_distance(32769));
  CHECK(near.size() + 150 < far.size());  // the second copy cost a match, not 200 literals
}

TEST_CASE("fast_deflate: runs around the maximum match length") {
  for (std::size_t run : {3u, 4u, 5u, 257u, 258u, 259u, 260u, 515u, 516u, 517u, 5000u}) {
    INFO("run " << run);
    const std::string s = random_bytes(100, run) + std::string(run, 'q') + random_bytes(100, run + 1) +
                          std::string(run, 'q') + "end";
    check_round_trip(s);
  }
}

TEST_CASE("fast_deflate: exactly one piece of 1 MiB, and inputs larger than 2^20 bytes") {
  check_round_trip(mixed(1, kGzipPiece));
  check_round_trip(text_bytes(kGzipPiece));
  // Positions past 2^20 (the hash table keeps positions modulo 2^20).
  const std::string big = mixed(2, 3 * kGzipPiece + 777);
  const std::string z = check_round_trip(big);
  CHECK(z.size() < big.size());
}

TEST_CASE("fast_deflate: many pieces join into one gzip member") {
  const std::string data = mixed(3, 5 * kGzipPiece / 2) + text_bytes(3 * kGzipPiece / 2 + 17);
  std::string gz("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff", 10);
  for (std::size_t i = 0; i < data.size(); i += kGzipPiece) {
    const std::size_t n = std::min(kGzipPiece, data.size() - i);
    gz += deflate(data.substr(i, n), i + n == data.size());
  }
  const std::uint32_t crc = static_cast<std::uint32_t>(crc32(0, u8(data), static_cast<uInt>(data.size())));
  for (int i = 0; i < 4; ++i) gz += static_cast<char>(crc >> (8 * i));
  for (int i = 0; i < 4; ++i) gz += static_cast<char>(static_cast<std::uint32_t>(data.size()) >> (8 * i));
  // zlib, as one gzip stream: a single member that ends exactly at the end.
  std::size_t left = 0;
  std::string out = kiln::testutil::zlib_inflate_stream(gz, 15 + 16, &left);
  CHECK(left == 0);
  CHECK(out == data);
  // The encoder kiln uses writes these same bytes (level 1, any thread count).
  for (int threads : {1, 3}) {
    std::string enc;
    auto e = make_encoder(kiln::spec::Compression::Gzip, kiln::testutil::string_sink(&enc), 1, threads);
    e->write(data.data(), data.size());
    e->finish();
    CHECK(enc == gz);
  }
}

TEST_CASE("fast_deflate: seeded fuzz of mixed content") {
  for (std::uint64_t seed = 1; seed <= 300; ++seed) {
    INFO("seed " << seed);
    const std::size_t size = (seed * 7919) % 40000 + (seed % 5 == 0 ? 70000 : 0);
    check_round_trip(mixed(seed + 1000, size));
  }
}

TEST_CASE("fast_deflate: refuses a buffer below the bound") {
  const std::string data = text_bytes(1000);
  std::string out(fast_deflate_bound(data.size()) - 1, '\0');
  CHECK_THROWS_AS(fast_deflate(u8(data), data.size(), reinterpret_cast<std::uint8_t*>(out.data()), out.size(), true),
                  std::invalid_argument);
}

// GOLDEN: the exact bytes. If this fails, gzip layer bytes changed (another compiler, machine or
// an edit of fast_deflate): that must never happen by accident. A deliberate change of the
// encoder's output requires new pins here AND the version bumps: "kiln-layer-vN" in
// builder/build.cc, "kiln-step-vN" in run/steps.cc, the tag prefix "kiln-spec-hash-vN" in
// spec/tag.h (tests/unit/tag_test.cc, docs/tag.md "Versioning"), and docs/store.md.
TEST_CASE("fast_deflate: golden bytes of a fixed input") {
  const std::string data = mixed(20261202, 2 * kGzipPiece + 4321) + std::string(100000, '\0') +
                           random_bytes(50000, 77) + text_bytes(200000);
  REQUIRE(sha256_hex(data) == "5d28dd57632838d44e008009fd4d74808e209bbad6d6af3e1248e81fb67f3682");
  // The whole input as one raw stream, and as kiln writes a gzip layer of it (1 MiB pieces).
  CHECK(sha256_hex(deflate(data, true)) == "fd578cad781280ddfcd78cf5f61903f1ace3ff0306290d667a8b9fa5692b205d");
  std::string gz;
  auto e = make_encoder(kiln::spec::Compression::Gzip, kiln::testutil::string_sink(&gz), 1, 2);
  e->write(data.data(), data.size());
  e->finish();
  CHECK(sha256_hex(gz) == "3586c29371bcfb2809284250ae0650a40d5be23e682804be5afcdbbb2a1d6e38");
  CHECK(gz.size() == 621967);
}
