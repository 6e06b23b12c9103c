// Unit tests for parallel gzip (layers/compress, fast_deflate, deflate_splice): the bytes do not
// depend on the thread count or on how the input is cut into write() calls, they form ONE gzip
// member that zlib inflates back exactly, and the pieces are joined where the format says.
#include <libdeflate.h>
#include <zlib.h>

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "layers/compress.h"
#include "layers/deflate_splice.h"
#include "layers/fast_deflate.h"
#include "testutil.h"
#include "zlib_util.h"

using namespace kiln::layers;
using kiln::spec::Compression;

namespace {

std::string gzip(const std::string& data, int threads, std::size_t write_size = 100003, int level = -1) {
  std::string out;
  auto e = make_encoder(Compression::Gzip, kiln::testutil::string_sink(&out), level, threads);
  for (std::size_t i = 0; i < data.size(); i += write_size)
    e->write(data.data() + i, std::min(write_size, data.size() - i));
  e->finish();
  return out;
}

/// zlib's inflate, one member only: stops at the first end of stream and reports what is left.
std::string zlib_one_member(const std::string& gz, std::size_t* left) {
  return kiln::testutil::zlib_inflate_stream(gz, 15 + 16, left);
}

/// ~9.5 MiB: compressible text, random bytes, zeros; neither a multiple of the piece size nor
/// of the write size.
const std::string& big_data() {
  static const std::string data = [] {
    std::string s = kiln::testutil::text_bytes(4 * kGzipPiece + 12345);
    s += kiln::testutil::random_bytes(2 * kGzipPiece + 7, 17);
    s += std::string(kGzipPiece + 3, '\0');
    s += kiln::testutil::text_bytes(2 * kGzipPiece + 99);
    return s;
  }();
  return data;
}

}  // namespace

TEST_CASE("gzip parallel: 1, 2 and 4 threads give identical bytes that zlib inflates exactly") {
  const std::string& data = big_data();
  const std::string one = gzip(data, 1);
  CHECK(gzip(data, 2) == one);
  CHECK(gzip(data, 4) == one);
  CHECK(gzip(data, 3, 4096) == one);           // other write sizes
  CHECK(gzip(data, 1, kGzipPiece) == one);
  CHECK(gzip(data, 2, data.size()) == one);
  std::size_t left = 1;
  CHECK(zlib_one_member(one, &left) == data);  // one member, nothing after it
  CHECK(left == 0);
  CHECK(one.size() < data.size() * 3 / 4);     // it did compress
}

TEST_CASE("gzip parallel: sizes around the piece boundary, and empty input") {
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, kGzipPiece - 1, kGzipPiece, kGzipPiece + 1,
                        2 * kGzipPiece, 3 * kGzipPiece + 1}) {
    INFO("size " << n);
    const std::string data = kiln::testutil::text_bytes(n);
    const std::string a = gzip(data, 1, 65536);
    CHECK(gzip(data, 2, 65536) == a);
    std::size_t left = 1;
    CHECK(zlib_one_member(a, &left) == data);
    CHECK(left == 0);
    const auto* b = reinterpret_cast<const unsigned char*>(a.data());
    CHECK(b[3] == 0);  // no name
    CHECK((b[4] | b[5] | b[6] | b[7]) == 0);  // mtime 0
    CHECK(b[9] == 0xff);  // OS: unknown, the same on every machine
  }
}

TEST_CASE("gzip parallel: every level joins correctly and is thread-independent") {
  const std::string data = kiln::testutil::text_bytes(2 * kGzipPiece + 5) + kiln::testutil::random_bytes(70000, 4);
  for (int level = 1; level <= 9; ++level) {
    INFO("level " << level);
    const std::string a = gzip(data, 1, 65536, level);
    CHECK(gzip(data, 2, 65536, level) == a);
    std::size_t left = 1;
    CHECK(zlib_one_member(a, &left) == data);
  }
}

TEST_CASE("gzip parallel: the stream is the independent pieces, joined by empty stored blocks") {
  // The format, spelt out. Level 1 (the default): piece i (all but the last) is fast_deflate's
  // non-final raw deflate of bytes [i*P, (i+1)*P), which ends in an empty stored block.
  const std::string data = kiln::testutil::text_bytes(kGzipPiece + 1000);
  {
    const std::string gz = gzip(data, 2);
    std::string p0(fast_deflate_bound(kGzipPiece), '\0'), p1(fast_deflate_bound(1000), '\0');
    const auto* in = reinterpret_cast<const std::uint8_t*>(data.data());
    p0.resize(fast_deflate(in, kGzipPiece, reinterpret_cast<std::uint8_t*>(p0.data()), p0.size(), false));
    p1.resize(fast_deflate(in + kGzipPiece, 1000, reinterpret_cast<std::uint8_t*>(p1.data()), p1.size(), true));
    CHECK(p0.substr(p0.size() - 4) == std::string("\x00\x00\xff\xff", 4));
    REQUIRE(gz.size() == 10 + p0.size() + p1.size() + 8);
    CHECK(gz.substr(10, p0.size()) == p0);
    CHECK(gz.substr(10 + p0.size(), p1.size()) == p1);
  }
  // Other levels: libdeflate's raw deflate of each piece with its final bit cleared, then an
  // empty stored block.
  const std::string gz = gzip(data, 2, 100003, 6);
  libdeflate_compressor* c = libdeflate_alloc_compressor(6);
  std::string p0(libdeflate_deflate_compress_bound(c, kGzipPiece), '\0');
  p0.resize(libdeflate_deflate_compress(c, data.data(), kGzipPiece, p0.data(), p0.size()));
  std::string p1(libdeflate_deflate_compress_bound(c, 1000), '\0');
  p1.resize(libdeflate_deflate_compress(c, data.data() + kGzipPiece, 1000, p1.data(), p1.size()));
  libdeflate_free_compressor(c);
  REQUIRE(!p0.empty());
  make_nonfinal(&p0, walk_deflate(reinterpret_cast<const std::uint8_t*>(p0.data()), p0.size()));
  CHECK(p0.substr(p0.size() - 4) == std::string("\x00\x00\xff\xff", 4));
  REQUIRE(gz.size() == 10 + p0.size() + p1.size() + 8);
  CHECK(gz.substr(10, p0.size()) == p0);
  CHECK(gz.substr(10 + p0.size(), p1.size()) == p1);
}

TEST_CASE("deflate walk: finds the final block of zlib streams of every block type") {
  // zlib output with several blocks (dynamic, fixed, stored) ended at an arbitrary bit.
  const std::string data = kiln::testutil::text_bytes(300000) + kiln::testutil::random_bytes(100000, 8);
  for (int strategy : {Z_DEFAULT_STRATEGY, Z_FIXED, Z_HUFFMAN_ONLY, Z_RLE}) {
    for (int level : {0, 1, 6}) {
      INFO("strategy " << strategy << " level " << level);
      z_stream z{};
      REQUIRE(deflateInit2(&z, level, Z_DEFLATED, -15, 8, strategy) == Z_OK);
      std::string out(deflateBound(&z, data.size()) + 64, '\0');
      z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
      z.avail_in = static_cast<uInt>(data.size());
      z.next_out = reinterpret_cast<Bytef*>(out.data());
      z.avail_out = static_cast<uInt>(out.size());
      REQUIRE(deflate(&z, Z_FINISH) == Z_STREAM_END);
      out.resize(z.total_out);
      deflateEnd(&z);
      DeflateBlocks b = walk_deflate(reinterpret_cast<const std::uint8_t*>(out.data()), out.size());
      CHECK((b.end_bit + 7) / 8 == out.size());
      CHECK(((static_cast<unsigned char>(out[b.final_header_bit / 8]) >> (b.final_header_bit % 8)) & 1) == 1);
      // Join the stream to itself: inflating the result gives the data twice.
      std::string joined = out;
      make_nonfinal(&joined, b);
      joined += out;
      std::size_t left = 0;
      std::string plain = kiln::testutil::zlib_inflate_stream(joined, -15, &left);
      CHECK(left == 0);
      CHECK(plain == data + data);
    }
  }
}

TEST_CASE("deflate walk: refuses truncated and corrupt streams") {
  const std::string data = kiln::testutil::text_bytes(200000);
  std::string gz = gzip(data, 1);
  const std::string raw = gz.substr(10, gz.size() - 18);
  CHECK_NOTHROW(walk_deflate(reinterpret_cast<const std::uint8_t*>(raw.data()), raw.size()));
  const std::string cut = raw.substr(0, raw.size() / 2);
  CHECK_THROWS(walk_deflate(reinterpret_cast<const std::uint8_t*>(cut.data()), cut.size()));
  const std::string extra = raw + "xyz";  // must end in its last byte
  CHECK_THROWS(walk_deflate(reinterpret_cast<const std::uint8_t*>(extra.data()), extra.size()));
  std::string reserved = raw;
  reserved[0] = static_cast<char>(reserved[0] | 0x06);  // BTYPE 11
  CHECK_THROWS(walk_deflate(reinterpret_cast<const std::uint8_t*>(reserved.data()), reserved.size()));
}
