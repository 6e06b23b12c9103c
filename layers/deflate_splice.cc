// A DEFLATE block walker (RFC 1951): decodes Huffman symbols to find block boundaries, writes
// nothing. Tables are single-level, indexed by the next `bits` input bits (bit-reversed codes).
#include "layers/deflate_splice.h"

#include <array>
#include <bit>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace kiln::layers {

namespace {

[[noreturn]] void bad(const char* what) { throw std::runtime_error(std::string("deflate walk: ") + what); }

class BitReader {
 public:
  BitReader(const std::uint8_t* d, std::size_t n) : d_(d), n_(n) {}
  // Makes at least 56 bits available (zeros past the end; consumed() tells if they were used).
  void refill() {
    if (pos_ + 8 <= n_) {  // one unaligned little-endian load
      std::uint64_t w;
      std::memcpy(&w, d_ + pos_, 8);
      if constexpr (std::endian::native == std::endian::big) w = __builtin_bswap64(w);
      buf_ |= w << count_;
      pos_ += (63 - count_) >> 3;
      count_ |= 56;
      return;
    }
    if (pos_ > n_ + 8) bad("truncated stream");  // walking zeros past the end
    while (count_ <= 56) {
      std::uint64_t b = pos_ < n_ ? d_[pos_] : 0;
      ++pos_;
      buf_ |= b << count_;
      count_ += 8;
    }
  }
  std::uint32_t peek(unsigned k) const { return static_cast<std::uint32_t>(buf_ & ((std::uint64_t{1} << k) - 1)); }
  void drop(unsigned k) {
    buf_ >>= k;
    count_ -= k;
  }
  std::uint32_t take(unsigned k) {  // k bits, already available
    std::uint32_t v = peek(k);
    drop(k);
    return v;
  }
  std::uint32_t bits(unsigned k) {
    if (count_ < k) refill();
    std::uint32_t v = peek(k);
    drop(k);
    return v;
  }
  std::uint64_t consumed() const { return static_cast<std::uint64_t>(pos_) * 8 - count_; }
  // Moves to byte offset `byte` with an empty buffer.
  void seek_byte(std::size_t byte) {
    pos_ = byte;
    buf_ = 0;
    count_ = 0;
  }

 private:
  const std::uint8_t* d_;
  std::size_t n_;
  std::size_t pos_ = 0;
  std::uint64_t buf_ = 0;
  unsigned count_ = 0;
};

// entry = symbol << 4 | code length; 0 = no code there.
struct Table {
  std::vector<std::uint16_t> e;
  unsigned bits = 0;

  void build(const std::uint8_t* lens, unsigned nsym) {
    unsigned count[16] = {};
    unsigned maxlen = 0;
    for (unsigned s = 0; s < nsym; ++s) {
      if (lens[s] > 15) bad("code length > 15");
      ++count[lens[s]];
      if (lens[s] > maxlen) maxlen = lens[s];
    }
    count[0] = 0;
    bits = maxlen ? maxlen : 1;
    e.assign(std::size_t{1} << bits, 0);
    unsigned next[16] = {};
    unsigned code = 0;
    for (unsigned l = 1; l <= 15; ++l) {
      code = (code + count[l - 1]) << 1;
      next[l] = code;
      if (count[l] > (1u << l)) bad("over-subscribed code");
    }
    for (unsigned s = 0; s < nsym; ++s) {
      unsigned l = lens[s];
      if (!l) continue;
      unsigned c = next[l]++;
      if (c >= (1u << l)) bad("over-subscribed code");
      unsigned r = 0;
      for (unsigned i = 0; i < l; ++i) r |= ((c >> i) & 1u) << (l - 1 - i);
      for (std::size_t i = r; i < e.size(); i += std::size_t{1} << l) e[i] = static_cast<std::uint16_t>(s << 4 | l);
    }
  }

  unsigned decode(BitReader& br) const {  // needs at most 15 bits available
    std::uint16_t v = e[br.peek(bits)];
    if (!(v & 15)) bad("invalid Huffman code");
    br.drop(v & 15);
    return v >> 4;
  }
};

constexpr std::array<std::uint8_t, 19> kClOrder = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};

unsigned length_extra(unsigned sym) {  // sym 257..285
  unsigned i = sym - 257;
  if (sym == 285 || i < 8) return 0;
  return i / 4 - 1;
}
unsigned dist_extra(unsigned sym) { return sym < 4 ? 0 : sym / 2 - 1; }

// One refill per symbol is enough: a length code (15 bits), its extra bits (5), a distance code
// (15) and its extra bits (13) take at most 48 of the 56 bits a refill makes available.
void walk_codes(BitReader& br, const Table& lit, const Table& dist) {
  for (;;) {
    br.refill();
    unsigned s = lit.decode(br);
    if (s < 256) continue;
    if (s == 256) return;
    if (s > 285) bad("invalid length symbol");
    br.take(length_extra(s));
    unsigned d = dist.decode(br);
    if (d > 29) bad("invalid distance symbol");
    br.take(dist_extra(d));
  }
}

}  // namespace

DeflateBlocks walk_deflate(const std::uint8_t* data, std::size_t n) {
  BitReader br(data, n);
  Table lit, dist, fixed_lit, fixed_dist;
  bool have_fixed = false;
  DeflateBlocks out;
  for (;;) {
    std::uint64_t start = br.consumed();
    if (start > static_cast<std::uint64_t>(n) * 8) bad("truncated stream");
    unsigned final = br.bits(1);
    unsigned type = br.bits(2);
    if (type == 0) {  // stored
      std::uint64_t at = (br.consumed() + 7) / 8;
      if (at + 4 > n) bad("truncated stored block");
      unsigned len = data[at] | data[at + 1] << 8;
      unsigned nlen = data[at + 2] | data[at + 3] << 8;
      if ((len ^ 0xffffu) != nlen) bad("stored block length check");
      if (at + 4 + len > n) bad("truncated stored block");
      br.seek_byte(static_cast<std::size_t>(at + 4 + len));
    } else if (type == 1) {  // fixed Huffman codes
      if (!have_fixed) {
        std::uint8_t l[288];
        for (unsigned i = 0; i < 288; ++i) l[i] = i < 144 ? 8 : i < 256 ? 9 : i < 280 ? 7 : 8;
        fixed_lit.build(l, 288);
        std::uint8_t d[30];
        for (auto& x : d) x = 5;
        fixed_dist.build(d, 30);
        have_fixed = true;
      }
      walk_codes(br, fixed_lit, fixed_dist);
    } else if (type == 2) {  // dynamic Huffman codes
      unsigned hlit = br.bits(5) + 257, hdist = br.bits(5) + 1, hclen = br.bits(4) + 4;
      if (hlit > 286 || hdist > 30) bad("too many codes");
      std::uint8_t cl[19] = {};
      for (unsigned i = 0; i < hclen; ++i) cl[kClOrder[i]] = static_cast<std::uint8_t>(br.bits(3));
      Table clt;
      clt.build(cl, 19);
      std::uint8_t lens[286 + 30] = {};
      for (unsigned i = 0; i < hlit + hdist;) {
        br.refill();
        unsigned s = clt.decode(br);
        unsigned rep = 0;
        std::uint8_t val = 0;
        if (s < 16) {
          lens[i++] = static_cast<std::uint8_t>(s);
          continue;
        } else if (s == 16) {
          if (i == 0) bad("repeat with no previous length");
          val = lens[i - 1];
          rep = 3 + br.bits(2);
        } else if (s == 17) {
          rep = 3 + br.bits(3);
        } else {
          rep = 11 + br.bits(7);
        }
        if (i + rep > hlit + hdist) bad("code lengths overflow");
        while (rep--) lens[i++] = val;
      }
      if (!lens[256]) bad("no end-of-block code");
      lit.build(lens, hlit);
      dist.build(lens + hlit, hdist);
      walk_codes(br, lit, dist);
    } else {
      bad("reserved block type");
    }
    if (final) {
      out.final_header_bit = start;
      out.end_bit = br.consumed();
      break;
    }
  }
  if (out.end_bit > static_cast<std::uint64_t>(n) * 8 || (out.end_bit + 7) / 8 != n)
    bad("stream does not end in its last byte");
  return out;
}

std::size_t make_nonfinal(unsigned char* p, std::size_t n, const DeflateBlocks& b) {
  p[b.final_header_bit / 8] &= static_cast<unsigned char>(~(1u << (b.final_header_bit % 8)));
  unsigned r = static_cast<unsigned>(b.end_bit % 8);
  if (r) p[n - 1] &= static_cast<unsigned char>((1u << r) - 1);
  // An empty stored block: BFINAL 0 and BTYPE 00 (three zero bits right after the end), padding to
  // the byte boundary, then LEN 0000 and NLEN ffff. The three bits fit in the last byte's padding
  // unless it has fewer than three bits free (or none: the piece ended on a byte boundary).
  if (r == 0 || r > 5) p[n++] = 0;
  p[n++] = 0;
  p[n++] = 0;
  p[n++] = 0xff;
  p[n++] = 0xff;
  return n;
}

void make_nonfinal(std::string* piece, const DeflateBlocks& b) {
  std::size_t n = piece->size();
  piece->resize(n + 5);
  piece->resize(make_nonfinal(reinterpret_cast<unsigned char*>(piece->data()), n, b));
}

}  // namespace kiln::layers
