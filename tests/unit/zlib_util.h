// zlib's own inflate, for tests that check kiln's deflate/gzip output with an independent decoder.
#pragma once

#include <zlib.h>

#include <catch2/catch.hpp>

#include <cstddef>
#include <string>

namespace kiln::testutil {

/// Inflates `in` (window_bits as for inflateInit2: -15 raw DEFLATE, 15 + 16 gzip) up to the first
/// end of stream; fails the test on any error or a stream that does not end. `*left` receives the
/// input bytes after the end of stream.
inline std::string zlib_inflate_stream(const std::string& in, int window_bits, std::size_t* left) {
  z_stream z{};
  REQUIRE(inflateInit2(&z, window_bits) == Z_OK);
  std::string out, buf(1 << 16, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  int rc;
  do {
    z.next_out = reinterpret_cast<Bytef*>(buf.data());
    z.avail_out = static_cast<uInt>(buf.size());
    rc = inflate(&z, Z_NO_FLUSH);
    REQUIRE((rc == Z_OK || rc == Z_STREAM_END));
    out.append(buf.data(), buf.size() - z.avail_out);
  } while (rc != Z_STREAM_END);
  *left = z.avail_in;
  inflateEnd(&z);
  return out;
}

}  // namespace kiln::testutil
