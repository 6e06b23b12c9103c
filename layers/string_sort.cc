#include "layers/string_sort.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

namespace kiln::layers {

namespace {

/// The byte at `d`, or -1 past the key's end (a shorter key sorts first).
int byte_at(const KeyedIndex& x, std::size_t d) {
  return d < x.size ? static_cast<int>(static_cast<unsigned char>(x.data[d])) : -1;
}

/// The length of the prefix all `n` keys share, knowing they share their first `from` bytes.
std::size_t common_prefix(const KeyedIndex* a, std::size_t n, std::size_t from) {
  const std::string_view first = a[0].key();
  std::size_t end = first.size();
  for (std::size_t i = 1; i < n && end > from; ++i) {
    const std::string_view k = a[i].key();
    const std::size_t m = std::min(end, k.size());
    std::size_t j = from;
    while (j + 8 <= m && std::memcmp(first.data() + j, k.data() + j, 8) == 0) j += 8;
    while (j < m && first[j] == k[j]) ++j;
    end = j;
  }
  return end;
}

}  // namespace

void sort_keyed(KeyedIndex* items, std::size_t n) {
  struct Range {
    KeyedIndex* a;
    std::size_t n, d;  // n keys sharing their first d bytes
  };
  std::vector<Range> work{{items, n, 0}};
  while (!work.empty()) {
    Range r = work.back();
    work.pop_back();
    while (r.n > 1) {
      if (r.n < 12) {  // a few keys: insertion sort on what follows the shared prefix
        for (std::size_t i = 1; i < r.n; ++i)
          for (std::size_t j = i; j > 0 && r.a[j].key().substr(r.d) < r.a[j - 1].key().substr(r.d); --j)
            std::swap(r.a[j], r.a[j - 1]);
        break;
      }
      // The pivot: the median of three keys' bytes at d.
      const int x = byte_at(r.a[0], r.d), y = byte_at(r.a[r.n / 2], r.d), z = byte_at(r.a[r.n - 1], r.d);
      const int v = std::max(std::min(x, y), std::min(std::max(x, y), z));
      // Three ways on the byte at d: [0, lt) below v, [lt, gt) equal to it, [gt, n) above.
      std::size_t lt = 0, i = 0, gt = r.n;
      while (i < gt) {
        const int c = byte_at(r.a[i], r.d);
        if (c < v) {
          std::swap(r.a[lt++], r.a[i++]);
        } else if (c > v) {
          std::swap(r.a[i], r.a[--gt]);
        } else {
          ++i;
        }
      }
      if (lt > 1) work.push_back({r.a, lt, r.d});
      if (r.n - gt > 1) work.push_back({r.a + gt, r.n - gt, r.d});
      if (v < 0) break;  // the keys equal to the pivot all end at d: they are equal
      const bool all_equal = lt == 0 && gt == r.n;
      r = {r.a + lt, gt - lt, r.d + 1};
      if (all_equal) r.d = common_prefix(r.a, r.n, r.d);  // one more byte shared by all: likely many
    }
  }
}

}  // namespace kiln::layers
