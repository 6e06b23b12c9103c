// Unit tests for layers/compress: gzip/zstd/none round trips, determinism, gzip header and zlib
// interoperability, truncation and corruption detection, worth_compressing, media types.
#include "layers/compress.h"

#include <zlib.h>
#include <zstd.h>

#include <catch2/catch.hpp>

#include <stdexcept>
#include <string>

#include "testutil.h"
#include "zlib_util.h"

using namespace kiln::layers;
using kiln::spec::Compression;
using kiln::testutil::decode;
using kiln::testutil::encode;

namespace {

/// 5 MB: text, random bytes, a run of zeros, more text; boundaries not aligned to anything.
const std::string& mixed_data() {
  static const std::string data = [] {
    std::string s = kiln::testutil::text_bytes(1500001);
    s += kiln::testutil::random_bytes(1500003, 99);
    s += std::string(1000007, '\0');
    s += kiln::testutil::text_bytes(5000000 - s.size());
    return s;
  }();
  return data;
}

/// Independent gunzip with zlib's own API (not kiln's decoder).
std::string zlib_gunzip(const std::string& gz) {
  std::size_t left = 0;
  std::string out = kiln::testutil::zlib_inflate_stream(gz, 15 + 16, &left);
  CHECK(left == 0);  // nothing after the single member
  return out;
}

/// Independent zstd decode with libzstd's streaming API.
std::string zstd_decompress(const std::string& in) {
  ZSTD_DCtx* d = ZSTD_createDCtx();
  std::string out;
  std::string buf(ZSTD_DStreamOutSize(), '\0');
  ZSTD_inBuffer ib{in.data(), in.size(), 0};
  std::size_t rc = 1;
  while (ib.pos < ib.size || rc != 0) {
    ZSTD_outBuffer ob{buf.data(), buf.size(), 0};
    rc = ZSTD_decompressStream(d, &ob, &ib);
    REQUIRE_FALSE(ZSTD_isError(rc));
    out.append(buf.data(), ob.pos);
    if (ib.pos == ib.size && ob.pos == 0 && rc != 0) break;  // truncated: stop
  }
  ZSTD_freeDCtx(d);
  CHECK(rc == 0);
  return out;
}

}  // namespace

TEST_CASE("compress: round trip of 5 MB mixed data for gzip, zstd and none") {
  const std::string& data = mixed_data();
  REQUIRE(data.size() == 5000000);
  for (Compression c : {Compression::Gzip, Compression::Zstd, Compression::None}) {
    INFO("compression " << kiln::spec::to_string(c));
    // Odd chunk sizes on both sides, so buffer boundaries fall everywhere.
    const std::string enc = encode(c, data, 100003);
    if (c == Compression::None) {
      CHECK(enc == data);
    } else {
      CHECK(enc.size() < data.size() * 3 / 4);  // the text and zeros compress
    }
    CHECK(decode(c, enc, 77777) == data);
    CHECK(decode(c, enc, enc.size() ? enc.size() : 1) == data);  // one write
  }
}

TEST_CASE("compress: empty input round trips") {
  for (Compression c : {Compression::Gzip, Compression::Zstd, Compression::None}) {
    INFO("compression " << kiln::spec::to_string(c));
    const std::string enc = encode(c, "");
    if (c == Compression::None) CHECK(enc.empty());
    else CHECK_FALSE(enc.empty());  // a valid empty stream still has a header and trailer
    CHECK(decode(c, enc).empty());
  }
}

TEST_CASE("compress: output is deterministic") {
  const std::string& data = mixed_data();
  for (Compression c : {Compression::Gzip, Compression::Zstd, Compression::None}) {
    INFO("compression " << kiln::spec::to_string(c));
    const std::string a = encode(c, data, 65536);
    const std::string b = encode(c, data, 65536);
    CHECK(a.size() == b.size());
    CHECK(a == b);
    // Explicit level equal to the default gives the same bytes.
    std::string lvl;
    {
      auto e = make_encoder(c, kiln::testutil::string_sink(&lvl), c == Compression::Zstd ? 3 : 1);
      e->write(data.data(), data.size());
      e->finish();
    }
    CHECK(lvl == a);
  }
}

TEST_CASE("compress: different levels give different gzip and zstd bytes") {
  const std::string data = kiln::testutil::text_bytes(300000) + kiln::testutil::random_bytes(1000, 3);
  for (Compression c : {Compression::Gzip, Compression::Zstd}) {
    std::string fast, best;
    auto e1 = make_encoder(c, kiln::testutil::string_sink(&fast), 2);
    e1->write(data.data(), data.size());
    e1->finish();
    auto e2 = make_encoder(c, kiln::testutil::string_sink(&best), 9);
    e2->write(data.data(), data.size());
    e2->finish();
    CHECK(fast != best);
    CHECK(decode(c, fast) == data);
    CHECK(decode(c, best) == data);
  }
}

TEST_CASE("compress: gzip output decodes with zlib and has a fixed header with mtime 0") {
  const std::string data = kiln::testutil::text_bytes(200000);
  const std::string gz = encode(Compression::Gzip, data);
  REQUIRE(gz.size() > 18);
  const auto* b = reinterpret_cast<const unsigned char*>(gz.data());
  CHECK(b[0] == 0x1f);
  CHECK(b[1] == 0x8b);
  CHECK(b[2] == 8);     // deflate
  CHECK(b[3] == 0);     // FLG: no name, no comment, no extra, no header CRC
  CHECK(b[4] == 0);     // MTIME, 4 bytes little-endian
  CHECK(b[5] == 0);
  CHECK(b[6] == 0);
  CHECK(b[7] == 0);
  // Trailer: CRC32 and ISIZE of the input.
  const std::size_t n = gz.size();
  std::uint32_t crc = b[n - 8] | (b[n - 7] << 8) | (b[n - 6] << 16) | (std::uint32_t(b[n - 5]) << 24);
  std::uint32_t isize = b[n - 4] | (b[n - 3] << 8) | (b[n - 2] << 16) | (std::uint32_t(b[n - 1]) << 24);
  CHECK(crc == crc32(0, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size())));
  CHECK(isize == data.size());
  CHECK(zlib_gunzip(gz) == data);
}

TEST_CASE("compress: zstd output is a checksummed frame libzstd decodes") {
  const std::string data = kiln::testutil::text_bytes(300000);
  const std::string z = encode(Compression::Zstd, data);
  REQUIRE(z.size() > 6);
  const auto* b = reinterpret_cast<const unsigned char*>(z.data());
  CHECK(b[0] == 0x28);
  CHECK(b[1] == 0xb5);
  CHECK(b[2] == 0x2f);
  CHECK(b[3] == 0xfd);
  CHECK((b[4] & 0x04) != 0);  // frame header descriptor: content checksum flag
  CHECK(zstd_decompress(z) == data);
}

TEST_CASE("compress: gzip decoder accepts concatenated members") {
  const std::string a = kiln::testutil::text_bytes(10000), b = kiln::testutil::random_bytes(5000, 5);
  const std::string gz = encode(Compression::Gzip, a) + encode(Compression::Gzip, b);
  CHECK(decode(Compression::Gzip, gz) == a + b);
  CHECK(decode(Compression::Gzip, gz, 13) == a + b);
}

TEST_CASE("compress: truncated stream makes the decoder's finish() throw") {
  const std::string data = kiln::testutil::text_bytes(100000) + kiln::testutil::random_bytes(100000, 11);
  for (Compression c : {Compression::Gzip, Compression::Zstd}) {
    INFO("compression " << kiln::spec::to_string(c));
    const std::string enc = encode(c, data);
    for (std::size_t cut : {std::size_t{1}, std::size_t{4}, enc.size() / 2, enc.size() - 1}) {
      INFO("cut at " << cut);
      std::string out;
      auto dec = make_decoder(c, kiln::testutil::string_sink(&out));
      dec->write(enc.data(), cut);
      CHECK_THROWS_WITH(dec->finish(), Catch::Contains("truncated"));
    }
    // The whole stream finishes cleanly.
    std::string out;
    auto dec = make_decoder(c, kiln::testutil::string_sink(&out));
    dec->write(enc.data(), enc.size());
    CHECK_NOTHROW(dec->finish());
    CHECK(out == data);
  }
}

TEST_CASE("compress: an empty input is not a gzip or zstd stream") {
  for (Compression c : {Compression::Gzip, Compression::Zstd}) {
    INFO("compression " << kiln::spec::to_string(c));
    std::string out;
    auto dec = make_decoder(c, kiln::testutil::string_sink(&out));
    CHECK_THROWS_WITH(dec->finish(), Catch::Contains("truncated"));
  }
  std::string out;
  auto none = make_decoder(Compression::None, kiln::testutil::string_sink(&out));
  CHECK_NOTHROW(none->finish());
}

TEST_CASE("compress: the decoders flush output still buffered after the last write") {
  // 16 MiB of zeros compress to a few hundred bytes: one write() consumes all of it while the
  // decoder still holds most of the output, which finish() must deliver.
  const std::string zeros(16u << 20, '\0');
  for (Compression c : {Compression::Gzip, Compression::Zstd}) {
    INFO("compression " << kiln::spec::to_string(c));
    const std::string enc = encode(c, zeros, zeros.size());
    REQUIRE(enc.size() < (1u << 20));
    std::string out;
    auto dec = make_decoder(c, kiln::testutil::string_sink(&out));
    dec->write(enc.data(), enc.size());
    dec->finish();
    CHECK(out.size() == zeros.size());
    CHECK(out == zeros);
  }
}

TEST_CASE("compress: corrupt input makes the decoder throw") {
  const std::string data = kiln::testutil::text_bytes(100000);
  SECTION("gzip") {
    std::string enc = encode(Compression::Gzip, data);
    enc[2] = 7;  // compression method other than deflate
    std::string out;
    auto dec = make_decoder(Compression::Gzip, kiln::testutil::string_sink(&out));
    CHECK_THROWS_WITH(dec->write(enc.data(), enc.size()), Catch::Contains("corrupt"));
  }
  SECTION("gzip: bad CRC") {
    std::string enc = encode(Compression::Gzip, data);
    enc[enc.size() - 8] ^= 1;
    std::string out;
    auto dec = make_decoder(Compression::Gzip, kiln::testutil::string_sink(&out));
    CHECK_THROWS(dec->write(enc.data(), enc.size()));
  }
  SECTION("zstd") {
    std::string enc = encode(Compression::Zstd, data);
    enc[0] = 0;  // bad magic
    std::string out;
    auto dec = make_decoder(Compression::Zstd, kiln::testutil::string_sink(&out));
    CHECK_THROWS_WITH(dec->write(enc.data(), enc.size()), Catch::Contains("zstd"));
  }
}

TEST_CASE("compress: worth_compressing") {
  const std::string text = kiln::testutil::text_bytes(65536);
  const std::string rnd = kiln::testutil::random_bytes(65536, 1234);
  CHECK(worth_compressing(text.data(), text.size()));
  CHECK_FALSE(worth_compressing(rnd.data(), rnd.size()));
  const std::string zeros(1 << 20, '\0');
  CHECK(worth_compressing(zeros.data(), zeros.size()));
  // 10% threshold: 85% random + 15% zeros saves ~15% -> worth it; 95% random + 5% zeros -> not.
  std::string mostly = kiln::testutil::random_bytes(55705, 8) + std::string(9831, '\0');
  CHECK(worth_compressing(mostly.data(), mostly.size()));
  std::string barely = kiln::testutil::random_bytes(62259, 8) + std::string(3277, '\0');
  CHECK_FALSE(worth_compressing(barely.data(), barely.size()));
}

TEST_CASE("compress: media type <-> compression mapping") {
  CHECK(std::string(layer_media_type(Compression::Gzip)) == "application/vnd.oci.image.layer.v1.tar+gzip");
  CHECK(std::string(layer_media_type(Compression::Zstd)) == "application/vnd.oci.image.layer.v1.tar+zstd");
  CHECK(std::string(layer_media_type(Compression::None)) == "application/vnd.oci.image.layer.v1.tar");
  for (Compression c : {Compression::Gzip, Compression::Zstd, Compression::None})
    CHECK(compression_of_media_type(layer_media_type(c)) == c);

  CHECK(compression_of_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip") == Compression::Gzip);
  CHECK(compression_of_media_type("application/vnd.docker.image.rootfs.diff.tar") == Compression::None);
  CHECK(compression_of_media_type("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip") ==
        Compression::Gzip);
  CHECK(compression_of_media_type("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd") ==
        Compression::Zstd);
  CHECK(compression_of_media_type("application/vnd.oci.image.layer.nondistributable.v1.tar") == Compression::None);

  CHECK_THROWS_WITH(compression_of_media_type("application/vnd.oci.image.config.v1+json"),
                    Catch::Contains("application/vnd.oci.image.config.v1+json"));
  CHECK_THROWS(compression_of_media_type(""));
  CHECK_THROWS(compression_of_media_type("application/vnd.oci.image.layer.v1.tar+bzip2"));
}
