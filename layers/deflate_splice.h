// Joining independently compressed raw DEFLATE streams into one stream, for parallel gzip.
//
// At gzip levels other than 1, each fixed-size piece of a layer is compressed on its own by
// libdeflate (whole-buffer), which ends it with a final block. (Level 1 uses layers/fast_deflate,
// which writes non-final pieces directly and needs none of this.) To concatenate pieces into ONE deflate stream (one gzip member),
// every piece but the last has its final block's BFINAL bit cleared and is followed by an empty
// stored block, which byte-aligns the stream for the next piece (what zlib's Z_SYNC_FLUSH writes).
// Finding the final block's header means walking the piece's blocks: this walks the Huffman
// symbols without producing output.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kiln::layers {

struct DeflateBlocks {
  std::uint64_t final_header_bit = 0;  // bit offset of the final block's header (its BFINAL bit)
  std::uint64_t end_bit = 0;           // bit offset just past the final block's end-of-block code
};

/// Walks a complete raw DEFLATE stream; throws std::runtime_error if it is malformed or does not
/// end within the last byte.
DeflateBlocks walk_deflate(const std::uint8_t* data, std::size_t n);

/// Turns the complete raw DEFLATE stream `piece` (as `walk_deflate` found it) into a non-final
/// piece: clears its final bit, zeroes the bits past its end and appends an empty stored block,
/// so that another DEFLATE stream can follow it byte-aligned.
void make_nonfinal(std::string* piece, const DeflateBlocks& blocks);
/// The same in place on `n` bytes at `p`, which must have room for 5 more; returns the new size.
std::size_t make_nonfinal(unsigned char* p, std::size_t n, const DeflateBlocks& blocks);

}  // namespace kiln::layers
