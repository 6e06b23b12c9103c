// A fast, deterministic DEFLATE encoder (see fast_deflate.h). Structure:
//   lz_block      greedy LZ77 over a part of the piece -> sequences (literal run, match)
//   build_lengths length-limited Huffman code lengths (Moffat-Katajainen, integer, total order)
//   compress      per block: dynamic / fixed / stored costs in exact bits, then the cheapest
//   write_*       the dynamic header and the symbols, through a 64-bit little-endian bit writer
// Every multi-byte load and store is explicitly little-endian, so big-endian hosts write the
// same bytes.
#include "layers/fast_deflate.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace kiln::layers {

namespace fdi {

using u8 = std::uint8_t;
using u16 = std::uint16_t;
using u32 = std::uint32_t;
using u64 = std::uint64_t;

// ---- format constants and parameters (changing any parameter changes the output bytes) ----
constexpr unsigned kMaxMatch = 258;
constexpr u32 kMaxDist = 32768;
constexpr unsigned kHashBits = 13;      // a table of 2^13 entries (32 KiB: stays in L1)
constexpr unsigned kHashLen = 8;        // bytes hashed: matches shorter than this are rarely found
constexpr unsigned kSkipShift = 5;      // after 2^5 misses in a row, step 2 bytes, and so on
constexpr std::size_t kBlockBytes = 1 << 17;  // a block ends after this many input bytes ...
constexpr std::size_t kBlockSeqs = 1 << 14;   // ... or this many matches
constexpr std::size_t kTail = 16;       // no match starts in the last kTail bytes
constexpr unsigned kLitLenSyms = 286, kDistSyms = 30, kClSyms = 19;
constexpr unsigned kMaxBits = 15, kMaxClBits = 7;
constexpr std::size_t kStoredMax = 65535;

inline u32 load32(const u8* p) {
  u32 v;
  std::memcpy(&v, p, 4);
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap32(v);
  return v;
}
inline u64 load64(const u8* p) {
  u64 v;
  std::memcpy(&v, p, 8);
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  return v;
}
inline void store64(u8* p, u64 v) {
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  std::memcpy(p, &v, 8);
}
// The hash table: entry = position mod 2^20 | 12 more bits of the hash ("tag") << 20. A
// candidate whose tag differs is a miss without touching the input; one whose tag agrees is
// checked against the input bytes, so stale or colliding entries cost time, never correctness.
constexpr u32 kPosMask = 0xfffff;
inline u64 hash_at(const u8* p) { return (load64(p) << (64 - 8 * kHashLen)) * 0x9E3779B97F4A7C15ull; }
inline u32 slot(u64 h) { return static_cast<u32>(h >> (64 - kHashBits)); }
inline u32 entry(u64 h, std::size_t pos) {
  return (static_cast<u32>(h >> (64 - kHashBits - 12)) << 20) | (static_cast<u32>(pos) & kPosMask);
}

// ---- static tables of RFC 1951 ----
struct Tables {
  u16 len_sym[kMaxMatch + 1];   // match length -> litlen symbol
  u8 len_extra[kMaxMatch + 1];  // match length -> extra bit count
  u16 len_xval[kMaxMatch + 1];  // match length -> extra bits value
  u16 dist_base[kDistSyms];
  u8 dist_extra[kDistSyms];
  u8 sym_extra[kLitLenSyms];    // litlen symbol -> extra bits
  u8 fixed_len[kLitLenSyms + 2];

  constexpr Tables() : len_sym(), len_extra(), len_xval(), dist_base(), dist_extra(), sym_extra(), fixed_len() {
    constexpr u16 lbase[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
                               35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
    constexpr u8 lext[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
    for (unsigned s = 0; s < 29; ++s) {
      unsigned end = s == 28 ? 259 : (s == 27 ? 258 : lbase[s + 1]);  // 284 covers 227..257
      for (unsigned l = lbase[s]; l < end; ++l) {
        len_sym[l] = static_cast<u16>(257 + s);
        len_extra[l] = lext[s];
        len_xval[l] = static_cast<u16>(l - lbase[s]);
      }
      sym_extra[257 + s] = lext[s];
    }
    for (unsigned s = 0; s < kDistSyms; ++s) {
      dist_extra[s] = static_cast<u8>(s < 4 ? 0 : (s - 2) / 2);
      dist_base[s] = static_cast<u16>(s < 4 ? s + 1 : ((2u + (s & 1)) << dist_extra[s]) + 1);
    }
    for (unsigned s = 0; s < kLitLenSyms + 2; ++s) fixed_len[s] = s < 144 ? 8 : s < 256 ? 9 : s < 280 ? 7 : 8;
  }
};
constexpr Tables kT;
static_assert(kT.len_sym[3] == 257 && kT.len_sym[10] == 264 && kT.len_sym[257] == 284 && kT.len_sym[258] == 285);
static_assert(kT.len_xval[257] == 30 && kT.len_extra[227] == 5);
static_assert(kT.dist_base[29] == 24577 && kT.dist_extra[29] == 13 && kT.dist_base[4] == 5);

struct Seq {
  u32 lits_dsym;  // literal bytes before the match (low 24 bits), the distance symbol (high 8)
  u16 len;        // match length, 0: no match (the block's last entry)
  u16 dist;       // 1..32768 stored as d-1
  u32 lits() const { return lits_dsym & 0xffffff; }
  unsigned dsym() const { return lits_dsym >> 24; }
};
static_assert(kBlockBytes < (1u << 24));

// The distance symbol of d-1 = v (RFC 1951 3.2.5): v < 4 -> v, else 2*floor(log2 v) + the bit
// below the top one. Branch-free.
constexpr unsigned dist_sym(u32 v) {
  const unsigned b = static_cast<unsigned>(std::bit_width(v | 1u)) - 1;
  return 2 * b + ((v >> (b - (b != 0))) & 1u);
}
// ... which agrees with RFC 1951's table for every distance (checked at compile time).
constexpr bool dist_sym_matches_table() {
  for (unsigned s = 0; s < kDistSyms; ++s)
    for (u32 v = kT.dist_base[s] - 1u; v < kT.dist_base[s] - 1u + (1u << kT.dist_extra[s]); ++v)
      if (dist_sym(v) != s) return false;
  return true;
}
static_assert(dist_sym_matches_table());

// ---- Huffman code lengths ----

// Code lengths of a Huffman code for freq[0..n) with at most max_bits bits; unused symbols get 0.
// Always at least two symbols get a length (a complete code, which strict decoders require).
// Ties are broken by symbol number (sorting on (frequency, symbol), a total order), and when the
// optimal code is too deep every frequency is raised to a floor that doubles until it fits: all
// integer, so the lengths depend only on the frequencies.
void build_lengths(const u32* freq, unsigned n, unsigned max_bits, u8* lens) {
  std::memset(lens, 0, n);
  u64 keys[kLitLenSyms];
  u32 a[kLitLenSyms];
  unsigned used = 0;
  for (unsigned s = 0; s < n; ++s)
    if (freq[s]) keys[used++] = s;
  if (used < 2) {  // the used symbol (if any) and the lowest unused ones: two codes of one bit
    unsigned syms[2], k = 0;
    for (unsigned s = 0; s < n; ++s)
      if (freq[s]) syms[k++] = s;
    for (unsigned s = 0; k < 2; ++s)
      if (!freq[s]) syms[k++] = s;
    lens[syms[0]] = lens[syms[1]] = 1;
    return;
  }
  for (u32 floor = 1;; floor *= 2) {
    for (unsigned i = 0; i < used; ++i) {
      unsigned s = static_cast<unsigned>(keys[i] & 0xffff);
      u64 f = std::max<u32>(freq[s], floor);
      keys[i] = (f << 16) | s;
    }
    std::sort(keys, keys + used);
    for (unsigned i = 0; i < used; ++i) a[i] = static_cast<u32>(keys[i] >> 16);
    // Moffat & Katajainen, in place: a[] ascending weights -> code lengths (a[0] longest).
    unsigned m = used;
    a[0] += a[1];
    unsigned root = 0, leaf = 2, next;
    for (next = 1; next < m - 1; ++next) {
      if (leaf >= m || a[root] < a[leaf]) {
        a[next] = a[root];
        a[root++] = next;
      } else {
        a[next] = a[leaf++];
      }
      if (leaf >= m || (root < next && a[root] < a[leaf])) {
        a[next] += a[root];
        a[root++] = next;
      } else {
        a[next] += a[leaf++];
      }
    }
    a[m - 2] = 0;
    for (int j = static_cast<int>(m) - 3; j >= 0; --j) a[j] = a[a[j]] + 1;
    int avbl = 1, usedn = 0, dpth = 0, r = static_cast<int>(m) - 2, nx = static_cast<int>(m) - 1;
    while (avbl > 0) {
      while (r >= 0 && a[r] == static_cast<u32>(dpth)) {
        ++usedn;
        --r;
      }
      while (avbl > usedn) {
        a[nx--] = static_cast<u32>(dpth);
        --avbl;
      }
      avbl = 2 * usedn;
      ++dpth;
      usedn = 0;
    }
    if (a[0] <= max_bits) {
      for (unsigned i = 0; i < used; ++i) lens[keys[i] & 0xffff] = static_cast<u8>(a[i]);
      return;
    }
  }
}

// Canonical codes (RFC 1951 3.2.2), bit-reversed for LSB-first output.
void build_codes(const u8* lens, unsigned n, u16* codes) {
  u16 count[16] = {}, next[16] = {};
  for (unsigned s = 0; s < n; ++s) count[lens[s]]++;
  count[0] = 0;
  u16 code = 0;
  for (unsigned b = 1; b < 16; ++b) {
    code = static_cast<u16>((code + count[b - 1]) << 1);
    next[b] = code;
  }
  for (unsigned s = 0; s < n; ++s) {
    unsigned l = lens[s];
    if (!l) {
      codes[s] = 0;
      continue;
    }
    unsigned c = next[l]++, r = 0;
    for (unsigned i = 0; i < l; ++i) r |= ((c >> i) & 1u) << (l - 1 - i);
    codes[s] = static_cast<u16>(r);
  }
}

// ---- bit output ----
struct BitOut {
  u8* begin;
  u8* p;
  u64 buf = 0;
  unsigned cnt = 0;  // bits in buf, < 64 after every put
  // Adds `n` <= 56 - (bits since the last flush) bits.
  void put(u64 v, unsigned n) {
    buf |= v << cnt;
    cnt += n;
  }
  void flush() {  // writes 8 bytes, keeps fewer than 8 bits
    store64(p, buf);
    p += cnt >> 3;
    buf >>= (cnt & 56);
    cnt &= 7;
  }
  void align() {  // pads with zero bits to a byte boundary and flushes
    cnt = (cnt + 7) & ~7u;
    flush();
  }
  u64 bits() const { return static_cast<u64>(p - begin) * 8 + cnt; }
};

}  // namespace fdi

using namespace fdi;

struct FastDeflate::Work {
  std::vector<u32> table = std::vector<u32>(std::size_t{1} << kHashBits);
  std::vector<Seq> seqs = std::vector<Seq>(kBlockSeqs + 2);
  std::size_t nseq = 0;
  u32 litlen_freq[kLitLenSyms + 2];
  u32 dist_freq[kDistSyms + 2];
  u32 hist[4][256];
  u8 litlen_len[kLitLenSyms + 2], dist_len[kDistSyms + 2];
  u16 litlen_code[kLitLenSyms + 2], dist_code[kDistSyms + 2];
  // code-length code
  u8 cl_items[kLitLenSyms + kDistSyms];  // symbol
  u8 cl_extra[kLitLenSyms + kDistSyms];  // its extra bits value
  unsigned ncl = 0;
  u32 cl_freq[kClSyms];
  u8 cl_len[kClSyms];
  u16 cl_code[kClSyms];
  unsigned hlit = 0, hdist = 0, hclen = 0;

  std::size_t lz_block(const u8* in, std::size_t n, std::size_t start);
  void count_run(const u8* q, std::size_t k);
  void prepare_tables(const u8* lens, const u16* codes, const u8* dlens, const u16* dcodes);
  u64 dynamic_header();
  void write_dynamic_header(BitOut& o) const;
  void write_symbols(BitOut& o, const u8* in, std::size_t start, std::size_t end) const;
  u32 lit_e[kLitLenSyms];     // per block: code | length << 16
  u32 len_e[kMaxMatch + 1];   // per block: (code | extra bits << code length) | total length << 24
  u32 dist_e[kDistSyms];      // per block: code | length << 16
};

namespace fdi {

// Fixed Huffman codes (RFC 1951 3.2.6), built once.
struct FixedCodes {
  u8 len[kLitLenSyms + 2];
  u8 dlen[kDistSyms + 2];
  u16 code[kLitLenSyms + 2];
  u16 dcode[kDistSyms + 2];
  FixedCodes() {
    for (unsigned s = 0; s < kLitLenSyms + 2; ++s) len[s] = kT.fixed_len[s];
    for (unsigned s = 0; s < kDistSyms + 2; ++s) dlen[s] = 5;
    build_codes(len, kLitLenSyms + 2, code);
    build_codes(dlen, kDistSyms + 2, dcode);
  }
};
const FixedCodes& fixed_codes() {
  static const FixedCodes f;
  return f;
}

constexpr u8 kClOrder[kClSyms] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};

}  // namespace fdi

// Greedy LZ77 from `start`: fills seqs (the last one has len 0 and the trailing literals) and
// returns where the block ends. Matches may reach back into earlier blocks of the piece.
std::size_t FastDeflate::Work::lz_block(const u8* in, std::size_t n, std::size_t start) {
  std::memset(litlen_freq, 0, sizeof litlen_freq);
  std::memset(dist_freq, 0, sizeof dist_freq);
  std::memset(hist, 0, sizeof hist);
  std::size_t ns = 0;  // locals, not members: stores through the pointers below cannot alias them
  Seq* const sq = seqs.data();
  u32* const lf = litlen_freq;
  u32* const df = dist_freq;
  u32* tab = table.data();
  const std::size_t ip_limit = n > kTail ? n - kTail : 0;
  const std::size_t block_limit = std::min(ip_limit, start + kBlockBytes);
  std::size_t ip = start, lit_start = start;
  u32 misses = 1u << kSkipShift;
  while (ip < block_limit) {
    const u64 h = hash_at(in + ip);
    const u32 e = entry(h, ip), old = tab[slot(h)];
    tab[slot(h)] = e;
    const u32 dist = (static_cast<u32>(ip) - old) & kPosMask;
    u64 x;  // the first 8 bytes at ip against the candidate's: at least 4 must agree
    if (((e ^ old) >> 20) != 0 || dist - 1 >= kMaxDist ||
        ((x = load64(in + ip) ^ load64(in + ip - dist)) & 0xffffffffu) != 0) {
      ip += misses++ >> kSkipShift;
      continue;
    }
    // A match: forwards from ip (up to 258 bytes and the end), then backwards over the literals.
    std::size_t fwd;
    if (x) {
      fwd = static_cast<unsigned>(std::countr_zero(x)) >> 3;
    } else {
      fwd = 8;
      const std::size_t max_fwd = std::min<std::size_t>(kMaxMatch, n - ip);
      while (fwd < max_fwd) {
        if (ip + fwd + 8 <= n) {
          const u64 y = load64(in + ip + fwd) ^ load64(in + ip - dist + fwd);
          if (y) {
            fwd += static_cast<unsigned>(std::countr_zero(y)) >> 3;
            break;
          }
          fwd += 8;
        } else {
          if (in[ip + fwd] != in[ip - dist + fwd]) break;
          ++fwd;
        }
      }
      if (fwd > max_fwd) fwd = max_fwd;
    }
    std::size_t m = ip;
    while (m > lit_start && m > dist && in[m - 1] == in[m - 1 - dist] && ip - m + fwd < kMaxMatch) --m;
    const std::size_t len = ip - m + fwd;
    // Count the pending literals in groups of four, the last group masked: reading up to three
    // bytes past them is safe, the match follows.
    const std::size_t k = m - lit_start;
    const u8* q = in + lit_start;
    for (std::size_t j = 0;; j += 4) {
      lf[q[j]] += j < k;
      lf[q[j + 1]] += j + 1 < k;
      lf[q[j + 2]] += j + 2 < k;
      lf[q[j + 3]] += j + 3 < k;
      if (j + 4 >= k) break;
    }
    const unsigned ds = dist_sym(dist - 1);
    Seq& s = sq[ns++];
    s.lits_dsym = static_cast<u32>(k) | (ds << 24);
    s.len = static_cast<u16>(len);
    s.dist = static_cast<u16>(dist - 1);
    lf[kT.len_sym[len]]++;
    df[ds]++;
    ip = m + len;
    lit_start = ip;
    misses = 1u << kSkipShift;
    if (ip < ip_limit) {  // the match's last position, for the next search
      const u64 h1 = hash_at(in + ip - 1);
      tab[slot(h1)] = entry(h1, ip - 1);
    }
    if (ns == kBlockSeqs) break;
  }
  std::size_t end = ip >= ip_limit ? n : std::max(ip, lit_start);
  if (end > n) end = n;
  count_run(in + lit_start, end - lit_start);
  Seq& s = sq[ns++];
  nseq = ns;
  s.lits_dsym = static_cast<u32>(end - lit_start);
  s.len = 0;
  s.dist = 0;
  for (unsigned b = 0; b < 256; ++b) litlen_freq[b] += hist[0][b] + hist[1][b] + hist[2][b] + hist[3][b];
  litlen_freq[256] = 1;  // end of block
  return end;
}

// Counts a run of literals into hist (four tables: no store-to-load chains on repeated bytes).
void FastDeflate::Work::count_run(const u8* q, std::size_t k) {
  for (; k >= 4; k -= 4, q += 4) {
    hist[0][q[0]]++;
    hist[1][q[1]]++;
    hist[2][q[2]]++;
    hist[3][q[3]]++;
  }
  for (; k; --k) hist[0][*q++]++;
}

// Builds the dynamic codes and the code-length code; returns the header's size in bits.
u64 FastDeflate::Work::dynamic_header() {
  build_lengths(litlen_freq, kLitLenSyms, kMaxBits, litlen_len);
  build_lengths(dist_freq, kDistSyms, kMaxBits, dist_len);
  litlen_len[286] = litlen_len[287] = 0;
  dist_len[30] = dist_len[31] = 0;
  build_codes(litlen_len, kLitLenSyms, litlen_code);
  build_codes(dist_len, kDistSyms, dist_code);
  hlit = kLitLenSyms;
  while (hlit > 257 && litlen_len[hlit - 1] == 0) --hlit;
  hdist = kDistSyms;
  while (hdist > 1 && dist_len[hdist - 1] == 0) --hdist;
  // Run-length code the lengths as one sequence (RFC 1951 3.2.7 allows runs across the two).
  u8 all[kLitLenSyms + kDistSyms];
  std::memcpy(all, litlen_len, hlit);
  std::memcpy(all + hlit, dist_len, hdist);
  const unsigned total = hlit + hdist;
  ncl = 0;
  std::memset(cl_freq, 0, sizeof cl_freq);
  auto item = [&](unsigned sym, unsigned extra) {
    cl_items[ncl] = static_cast<u8>(sym);
    cl_extra[ncl++] = static_cast<u8>(extra);
    cl_freq[sym]++;
  };
  for (unsigned i = 0; i < total;) {
    const u8 l = all[i];
    unsigned run = 1;
    while (i + run < total && all[i + run] == l) ++run;
    i += run;
    if (l == 0) {
      while (run >= 11) {
        unsigned r = std::min(run, 138u);
        item(18, r - 11);
        run -= r;
      }
      if (run >= 3) {
        item(17, run - 3);
        run = 0;
      }
      for (; run; --run) item(0, 0);
    } else {
      item(l, 0);
      --run;
      while (run >= 3) {
        unsigned r = std::min(run, 6u);
        item(16, r - 3);
        run -= r;
      }
      for (; run; --run) item(l, 0);
    }
  }
  build_lengths(cl_freq, kClSyms, kMaxClBits, cl_len);
  build_codes(cl_len, kClSyms, cl_code);
  hclen = kClSyms;
  while (hclen > 4 && cl_len[kClOrder[hclen - 1]] == 0) --hclen;
  u64 bits = 5 + 5 + 4 + 3 * static_cast<u64>(hclen);
  for (unsigned s = 0; s < kClSyms; ++s) bits += static_cast<u64>(cl_freq[s]) * cl_len[s];
  bits += 2 * static_cast<u64>(cl_freq[16]) + 3 * static_cast<u64>(cl_freq[17]) + 7 * static_cast<u64>(cl_freq[18]);
  return bits;
}

void FastDeflate::Work::write_dynamic_header(BitOut& o) const {
  o.put(hlit - 257, 5);
  o.put(hdist - 1, 5);
  o.put(hclen - 4, 4);
  o.flush();
  for (unsigned i = 0; i < hclen; ++i) {
    o.put(cl_len[kClOrder[i]], 3);
    if (i % 16 == 15) o.flush();
  }
  o.flush();
  static constexpr u8 kClExtraBits[kClSyms] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3, 7};
  for (unsigned i = 0; i < ncl; ++i) {
    unsigned s = cl_items[i];
    o.put(cl_code[s], cl_len[s]);
    o.put(cl_extra[i], kClExtraBits[s]);
    o.flush();
  }
}

void FastDeflate::Work::prepare_tables(const u8* lens, const u16* codes, const u8* dlens, const u16* dcodes) {
  for (unsigned s = 0; s < kLitLenSyms; ++s) lit_e[s] = codes[s] | static_cast<u32>(lens[s]) << 16;
  for (unsigned l = 3; l <= kMaxMatch; ++l) {
    const unsigned ls = kT.len_sym[l];
    len_e[l] = (codes[ls] | static_cast<u32>(kT.len_xval[l]) << lens[ls]) |
               static_cast<u32>(lens[ls] + kT.len_extra[l]) << 24;
  }
  for (unsigned s = 0; s < kDistSyms; ++s) dist_e[s] = dcodes[s] | static_cast<u32>(dlens[s]) << 16;
}

void FastDeflate::Work::write_symbols(BitOut& out, const u8* in, std::size_t start, std::size_t end) const {
  BitOut o = out;  // a local copy: its fields stay in registers (stores to o.p cannot alias them)
  const u8* p = in + start;
  (void)end;
  auto lit = [&](u32 e) { o.put(e & 0xffff, e >> 16); };
  for (std::size_t i = 0; i < nseq; ++i) {
    const Seq& s = seqs[i];
    std::size_t k = s.lits();
    if (s.len) {
      // Literals in groups of three, the last group masked (a masked entry writes nothing):
      // reading up to two bytes past the run is safe, a match of at least 4 follows it.
      for (std::size_t j = 0;; j += 3) {
        lit(lit_e[p[j]] & (0u - (j < k)));
        lit(lit_e[p[j + 1]] & (0u - (j + 1 < k)));
        lit(lit_e[p[j + 2]] & (0u - (j + 2 < k)));
        o.flush();
        if (j + 3 >= k) break;
      }
      p += k;
      const u32 e = len_e[s.len];
      o.put(e & 0xffffff, e >> 24);
      const unsigned ds = s.dsym();
      const u32 de = dist_e[ds];
      o.put(de & 0xffff, de >> 16);
      o.put(static_cast<u32>(s.dist) + 1 - kT.dist_base[ds], kT.dist_extra[ds]);
      o.flush();
      p += s.len;
    } else {  // the block's trailing literals
      for (; k >= 3; k -= 3, p += 3) {
        lit(lit_e[p[0]]);
        lit(lit_e[p[1]]);
        lit(lit_e[p[2]]);
        o.flush();
      }
      for (; k; --k, ++p) lit(lit_e[*p]);
      o.flush();
    }
  }
  lit(lit_e[256]);
  o.flush();
  out = o;
}

std::size_t fast_deflate_bound(std::size_t n) {
  // Every block costs at most its stored form: per block and per 64 KiB at most 5 bytes of
  // headers; the empty stored block at the end (5), and 8 bytes of write slack.
  const std::size_t blocks = n / kBlockSeqs + 2;  // a block covers at least kBlockSeqs bytes unless last
  return n + 5 * (n / kStoredMax + blocks) + 5 + 16;
}

FastDeflate::FastDeflate() : w_(std::make_unique<Work>()) {}
FastDeflate::~FastDeflate() = default;

std::size_t FastDeflate::compress(const std::uint8_t* in, std::size_t n, std::uint8_t* out, std::size_t cap, bool final) {
  if (n >= (std::size_t{1} << 31)) throw std::invalid_argument("fast_deflate: input too large");
  if (cap < fast_deflate_bound(n)) throw std::invalid_argument("fast_deflate: output buffer smaller than the bound");
  Work& w = *w_;
  std::fill(w.table.begin(), w.table.end(), 0u);
  BitOut o{out, out};
  const u8* end_cap = out + cap;
  const FixedCodes& fx = fixed_codes();
  std::size_t pos = 0;
  do {
    const std::size_t start = pos;
    pos = w.lz_block(in, n, start);
    const bool last = pos == n;
    const unsigned bfinal = final && last ? 1 : 0;
    u64 extra = 0, dyn = 0, fix = 0;
    for (unsigned s = 257; s < kLitLenSyms; ++s) extra += static_cast<u64>(w.litlen_freq[s]) * kT.sym_extra[s];
    for (unsigned s = 0; s < kDistSyms; ++s) extra += static_cast<u64>(w.dist_freq[s]) * kT.dist_extra[s];
    dyn = 3 + extra + w.dynamic_header();
    fix = 3 + extra;
    for (unsigned s = 0; s < kLitLenSyms; ++s) {
      dyn += static_cast<u64>(w.litlen_freq[s]) * w.litlen_len[s];
      fix += static_cast<u64>(w.litlen_freq[s]) * fx.len[s];
    }
    for (unsigned s = 0; s < kDistSyms; ++s) {
      dyn += static_cast<u64>(w.dist_freq[s]) * w.dist_len[s];
      fix += static_cast<u64>(w.dist_freq[s]) * 5;
    }
    // stored: each chunk of at most 65535 bytes has a 3-bit header, padding to a byte, LEN, NLEN
    const std::size_t bytes = pos - start;
    const std::size_t chunks = bytes == 0 ? 1 : (bytes + kStoredMax - 1) / kStoredMax;
    const u64 at = o.bits();
    const u64 first_pad = (8 - ((at + 3) & 7)) & 7;
    const u64 stored = 3 + first_pad + 32 + (chunks - 1) * 40 + 8 * static_cast<u64>(bytes);
    // The cheapest; ties go to dynamic, then fixed.
    int kind = 2;
    u64 best = dyn;
    if (fix < best) kind = 1, best = fix;
    if (stored < best) kind = 0, best = stored;
    if (o.p + (best + 7) / 8 + 16 > end_cap) throw std::logic_error("fast_deflate: bound exceeded");
    if (kind == 0) {
      const u8* src = in + start;
      std::size_t left = bytes;
      for (std::size_t c = 0; c < chunks; ++c) {
        const std::size_t k = std::min(left, kStoredMax);
        left -= k;
        o.put(c + 1 == chunks ? bfinal : 0, 3);
        o.align();
        const u8 hdr[4] = {static_cast<u8>(k), static_cast<u8>(k >> 8), static_cast<u8>(~k), static_cast<u8>((~k) >> 8)};
        std::memcpy(o.p, hdr, 4);
        std::memcpy(o.p + 4, src, k);
        o.p += 4 + k;
        src += k;
      }
    } else {
      o.put(bfinal | (kind == 1 ? 2u : 4u), 3);
      if (kind == 2) {
        w.write_dynamic_header(o);
        w.prepare_tables(w.litlen_len, w.litlen_code, w.dist_len, w.dist_code);
      } else {
        o.flush();
        w.prepare_tables(fx.len, fx.code, fx.dlen, fx.dcode);
      }
      w.write_symbols(o, in, start, pos);
    }
    if (o.bits() != at + best) throw std::logic_error("fast_deflate: block size differs from its cost");
  } while (pos < n);
  if (!final) {  // an empty stored block: byte-aligned, BFINAL=0 (zlib's sync flush)
    o.put(0, 3);
    o.align();
    const u8 sync[4] = {0, 0, 0xff, 0xff};
    std::memcpy(o.p, sync, 4);
    o.p += 4;
  } else {
    o.align();
  }
  return static_cast<std::size_t>(o.p - out);
}

std::size_t fast_deflate(const std::uint8_t* in, std::size_t n, std::uint8_t* out, std::size_t cap, bool final) {
  FastDeflate f;
  return f.compress(in, n, out, cap, final);
}

}  // namespace kiln::layers
