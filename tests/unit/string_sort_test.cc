// Unit tests for layers/string_sort: sort_keyed against std::sort on the same keys.
#include "layers/string_sort.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

using kiln::layers::KeyedIndex;
using kiln::layers::sort_keyed;

namespace {

/// Sorts `keys` with sort_keyed; checks the order is std::sort's (bytewise, unsigned) and that
/// every index appears once, pointing at its own key.
void check_sorts(const std::vector<std::string>& keys) {
  std::vector<KeyedIndex> items;
  for (std::size_t i = 0; i < keys.size(); ++i) items.emplace_back(keys[i], static_cast<std::uint32_t>(i));
  sort_keyed(items.data(), items.size());
  std::vector<std::string> want = keys;
  std::sort(want.begin(), want.end());
  REQUIRE(items.size() == want.size());
  std::vector<char> seen(keys.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    REQUIRE(std::string(items[i].key()) == want[i]);
    REQUIRE(items[i].index < keys.size());
    REQUIRE(keys[items[i].index] == want[i]);
    REQUIRE(!seen[items[i].index]);
    seen[items[i].index] = 1;
  }
}

}  // namespace

TEST_CASE("sort_keyed: the order std::sort gives, on paths and bytes that trip byte-wise sorts") {
  SECTION("empty and single") {
    check_sorts({});
    check_sorts({"a"});
    check_sorts({""});
  }
  SECTION("a key before every key it begins; '/' between '.' and '0'; bytes above 0x7f last") {
    check_sorts({"a/b", "a", "a.txt", "a/b/c", "a0", "a-b", "", "a/", "\xc3\xa9t\xc3\xa9", "\xff", "a/b.txt",
                 "a/b/c/d/e/f/g/h/i/j/k", "a/b/c/d/e/f/g/h/i/j", "A", "a b", "z", "a/b0", "a/b-c/x", "a/b/"});
  }
  SECTION("duplicates end up adjacent") {
    std::vector<std::string> keys;
    for (int i = 0; i < 50; ++i) keys.push_back(i % 3 == 0 ? "same/path" : "other/" + std::to_string(i % 7));
    check_sorts(keys);
  }
  SECTION("long shared prefixes (a deep tree), longer than any buffer of the prefix skip") {
    std::vector<std::string> keys;
    const std::string deep = std::string(300, 'p') + "/" + std::string(77, 'q') + "/";
    for (int i = 0; i < 500; ++i) keys.push_back(deep + "f" + std::to_string((i * 7919) % 500));
    keys.push_back(deep);
    keys.push_back(deep.substr(0, deep.size() - 1));
    keys.push_back(deep + "f");
    check_sorts(keys);
  }
  SECTION("random keys over a small alphabet, many lengths (every partition shape)") {
    std::mt19937 rng(12345);
    const std::string alphabet = std::string("./-_0aAz") + "\x7f\x80\xff";
    for (int round = 0; round < 40; ++round) {
      std::vector<std::string> keys;
      const int n = 1 + static_cast<int>(rng() % 3000);
      const std::string shared(rng() % 40, 'x');
      for (int i = 0; i < n; ++i) {
        std::string k = rng() % 2 ? shared : "";
        const int len = static_cast<int>(rng() % 24);
        for (int c = 0; c < len; ++c) k += alphabet[rng() % alphabet.size()];
        keys.push_back(k);
      }
      check_sorts(keys);
    }
  }
}
