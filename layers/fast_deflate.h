// kiln's level-1 DEFLATE encoder (RFC 1951), written for gzip layers (docs/store.md, "Gzip layers").
//
// It compresses one piece (kiln uses 1 MiB pieces, kGzipPiece) to raw DEFLATE with no dictionary,
// so pieces compress independently and in parallel; a non-final piece ends byte-aligned with no
// BFINAL bit set (an empty stored block, zlib's sync flush), so pieces concatenate into one
// stream. The algorithm: greedy LZ77 over a single-entry hash table indexed by the next 8 bytes
// (loaded little-endian on every host; a match needs 4 equal bytes), skip acceleration over
// incompressible runs, and per block the cheapest of a dynamic Huffman, the fixed Huffman or
// stored encoding by exact bit count, with length-limited codes built by integer code with total
// orders (no ties left to a sort). docs/store.md, "Gzip layers", has the details and measurements.
//
// Deterministic by construction: the output depends only on the input bytes and `final` — never
// on the CPU, its features, the compiler's floating point, the thread count or memory contents.
// Changing anything that changes the bytes changes every gzip layer's digest and requires the
// version bumps named in tests/unit/fast_deflate_test.cc's golden test.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace kiln::layers {

/// The largest output fast_deflate can produce for `n` input bytes (plus write slack); `cap`
/// must be at least this.
std::size_t fast_deflate_bound(std::size_t n);

/// An encoder with reusable work memory (hash table, block buffers); one per thread.
class FastDeflate {
 public:
  FastDeflate();
  ~FastDeflate();
  FastDeflate(const FastDeflate&) = delete;
  FastDeflate& operator=(const FastDeflate&) = delete;

  /// Compresses `n` bytes (n < 2^31) to raw DEFLATE at `out` and returns the length written.
  /// `final`: end with BFINAL=1; otherwise end byte-aligned with an empty non-final stored block.
  /// Throws std::invalid_argument if cap < fast_deflate_bound(n) or n is too large.
  std::size_t compress(const std::uint8_t* in, std::size_t n, std::uint8_t* out, std::size_t cap, bool final);

  struct Work;

 private:
  std::unique_ptr<Work> w_;
};

/// One-shot form of FastDeflate::compress (allocates its work memory each call).
std::size_t fast_deflate(const std::uint8_t* in, std::size_t n, std::uint8_t* out, std::size_t cap, bool final);

}  // namespace kiln::layers
