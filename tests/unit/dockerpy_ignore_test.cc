// Unit tests for layers/dockerpy_ignore: docker-py's PatternMatcher as flytekit's FlyteIgnore uses it
// for pyflyte's fast-register bundle (.flyteignore). The expected verdicts in the table were
// computed by docker-py itself (tests/integration/test_flyteignore_dockerpy.sh compares the two on
// random trees).
#include "layers/dockerpy_ignore.h"

#include <catch2/catch.hpp>

#include <chrono>
#include <string>
#include <vector>

#include "layers/ignore.h"
#include "layers/input_error.h"

using kiln::layers::DockerPyIgnore;
using kiln::layers::IgnoreRules;
using kiln::layers::InputError;

namespace {

struct Case {
  std::vector<std::string> patterns;
  std::string path;
  bool expected;
};

// PatternMatcher(patterns).matches(path), as docker-py 5.0.3 answers (Python 3.11).
const std::vector<Case> kCases = {
    {{"*.md"}, "README.MD", true},
    {{"*.MD"}, "readme.md", true},
    {{"README.md"}, "docs/readme.md", false},
    {{"**.txt"}, "d/e/n.txt", false},
    {{"**.txt"}, ".txt", true},
    {{"**.txt"}, "d/.txt", true},
    {{"**.txt"}, "n.txt", false},
    {{"**/x"}, "x", true},
    {{"**/x"}, "a/b/x", true},
    {{"**/x"}, "a/b/x/y", false},
    {{"**/x"}, "a/x/y", true},
    {{"a/**"}, "a/b/c", true},
    {{"**"}, "a/b", true},
    {{"a**b"}, "a/x/b", true},
    {{"a**b"}, "axb", false},
    {{"***"}, "a/b", true},
    {{"***"}, "ab", true},
    {{"[^a].py"}, "a.py", true},
    {{"[^a].py"}, "^.py", true},
    {{"[^a].py"}, "b.py", false},
    {{"[!a].py"}, "a.py", false},
    {{"[!a].py"}, "b.py", true},
    {{"[!a].py"}, "/.py", true},
    {{"["}, "[", true},
    {{"[ab"}, "[ab", true},
    {{"a]"}, "a]", true},
    {{"[]]"}, "]", true},
    {{"[]a]"}, "a", true},
    {{"[!]a]"}, "b", true},
    {{"[!]a]"}, "]", false},
    {{"[a-]"}, "-", true},
    {{"[-a]"}, "-", true},
    {{"[a-c-e]"}, "-", true},
    {{"[a-c-e]"}, "d", false},
    {{"[\\]"}, "\\", true},
    {{"[\\d]"}, "d", true},
    {{"[\\d]"}, "1", false},
    {{"\\#notes"}, "#notes", false},
    {{"\\#notes"}, "\\#notes", true},
    {{"\\*"}, "\\x", true},
    {{"\\*"}, "*", false},
    {{"?"}, "/", false},
    {{"a?b"}, "a/b", false},
    {{"a?b"}, "a\nb", true},
    {{"a*"}, "a\nb", true},
    {{"a/**"}, "a/x\ny", false},
    {{"**/b"}, "a\n/b", false},
    {{"a"}, "a\n", true},
    {{"a\n"}, "a\n", true},
    {{"a"}, "a\n\n", false},
    {{"../a"}, "a", true},
    {{"../../a/b"}, "a/b", true},
    {{"a/../b"}, "b", true},
    {{"./a/./b/"}, "a/b", true},
    {{"/a"}, "a", true},
    {{"x/.."}, "x", false},
    {{"a", "!a"}, "a", false},
    {{"a", "!A"}, "a/b", false},
    {{"*", "!b"}, "b", false},
    {{"*"}, ".dockerignore", false},
    {{"*"}, ".flyteignore", true},
    {{"*"}, "a/b", true},
    {{"a/b"}, "a/b/c/d", true},
    {{"b"}, "a/b", false},
    {{"a/*"}, "a/b/c", true},
    {{"*/b"}, "x/b/c", true},
    {{"*/b"}, "x/c/b", false},
    {{"!a"}, "a", false},
    {{"!"}, "a", false},
    {{""}, "a", false},
    {{"."}, "a", false},
    {{"dir", "!dir/keep"}, "dir/keep", false},
    {{"dir", "!dir/keep"}, "dir/other", true},
    {{"dir", "!dir/keep"}, "dir/keep/x", false},
    {{"\xce""\xa3"""}, "\xcf""\x83""", true},
    {{"\xce""\xa3"""}, "\xcf""\x82""", false},
    {{"a\xce""\xa3"""}, "a\xcf""\x82""", true},
    {{"a\xce""\xa3"""}, "a\xcf""\x83""", false},
    {{"*\xcf""\x82"""}, "A\xce""\xa3""", true},
    {{"*\xcf""\x82""/x"}, "A\xce""\xa3""/x", true},
    {{"\xcf""\x83""*"}, "\xce""\xa3""a", true},
    {{"a\xce""\xa3"".b"}, "a\xcf""\x83"".b", true},
    {{"a\xce""\xa3"".b"}, "a\xcf""\x82"".b", false},
    {{"\xc4""\xb0"""}, "i\xcc""\x87""", true},
    {{"i\xcc""\x87"""}, "\xc4""\xb0""", true},
    {{"?"}, "\xc4""\xb0""", false},
    {{"??"}, "\xc4""\xb0""", true},
    {{"\xc3""\x89"""}, "\xc3""\xa9""", true},
    {{"\xe2""\x84""\xaa"""}, "k", true},
    {{"[A-Z]"}, "q", true},
    {{"[a-z]"}, "Q", true},
    {{"[\xc3""\x80""-\xc3""\x9e""]"}, "\xc3""\xa9""", true},
    {{"\xef""\xbb""\xbf""a"}, "a", false},
    {{"\xef""\xbb""\xbf""a"}, "\xef""\xbb""\xbf""a", true},
    {{" a"}, " a", true},
    {{"a b"}, "A B", true},
    {{"**/__init__.py"}, "pkg/sub/__init__.py", true},
    {{"src/**/*.py"}, "src/a.py", true},
    {{"src/**/*.py"}, "src/a/b.py", true},
};

std::vector<std::string> patterns_of(std::string_view content) { return DockerPyIgnore::parse(content).patterns(); }

std::string error_of(std::string_view content) {
  try {
    DockerPyIgnore::parse(content);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("dockerpy: PatternMatcher.matches, case by case as docker-py answers", "[dockerpy]") {
  for (const Case& c : kCases) {
    INFO("patterns " << Catch::Detail::stringify(c.patterns) << ", path '" << c.path << "'");
    CHECK(DockerPyIgnore(c.patterns).matches(c.path) == c.expected);
  }
}

TEST_CASE("dockerpy: the file as FlyteIgnore reads it", "[dockerpy]") {
  using V = std::vector<std::string>;
  // Universal newlines: "\r\n", "\r" and "\n" end a line.
  CHECK(patterns_of("a\r\nb\rc\n") == V{"a", "b", "c", "!.dockerignore"});
  // A comment starts in the first column only; Python's whitespace is stripped (U+00A0 too) after
  // the comment test, but not after "!".
  CHECK(patterns_of("# c\n #x\n\n  \n!\u00a0b \n") == V{"#x", "!\u00a0b", "!.dockerignore"});
  // A BOM stays in the first pattern (and so it is no comment).
  CHECK(patterns_of("\xEF\xBB\xBF#x\n") == V{"\xEF\xBB\xBF#x", "!.dockerignore"});
  // Patterns left with no part are dropped.
  CHECK(patterns_of("a/../..\n/\n.\n!\n!/\n") == V{"!.dockerignore"});
  CHECK(patterns_of("\u3000a\u3000\n\x1c" "b\u0085\n") == V{"a", "b", "!.dockerignore"});
  CHECK(patterns_of("!!a\nA/B/\n\\x\n") == V{"!!a", "A/B", "\\x", "!.dockerignore"});
  CHECK(patterns_of("x\n# y") == V{"x", "!.dockerignore"});
  CHECK(patterns_of("") == V{"!.dockerignore"});
}

TEST_CASE("dockerpy: what pyflyte fails on is an error naming the line", "[dockerpy]") {
  // Python's re refuses a reversed range; the pattern is lowercased first ("[B-a]" is "[b-a]").
  CHECK(error_of("ok\n[z-a]\n").find(".flyteignore:2: bad pattern '[z-a]'") == 0);
  CHECK(error_of("[B-a]").find(".flyteignore:1:") == 0);
  CHECK(error_of("[a-\\]").find(".flyteignore:1:") == 0);
  CHECK(error_of("a\r\n\xff\n").find(".flyteignore:2: not valid UTF-8") == 0);
  // What Docker refuses, docker-py reads.
  for (const char* ok : {"[", "[a-b-c]", "[]a]", "[a-]", "\\", "!", "[A-z]", "[\\d]"}) {
    INFO(ok);
    CHECK(error_of(ok).empty());
  }
}

TEST_CASE("dockerpy: matches_everything_below agrees with matches", "[dockerpy]") {
  const std::vector<std::string> dirs = {"a", "A", "a/b", "dir", "dir/keep", "x/y/z", ".dockerignore", "\xCE\xA3"};
  const std::vector<std::string> below = {"f", "keep", "b/c", "sub/.dockerignore", "\xCE\xA3", "x\n", "a/b/c/d/e"};
  const std::vector<std::vector<std::string>> sets = {
      {"a"}, {"A"}, {"a/b"}, {"**"}, {"a/**"}, {"**/b"}, {"dir", "!dir/keep"}, {"dir", "!**/keep"}, {"*"},
      {"*", "!*/*/f"}, {"x/*/z"}, {"x", "!x/y"}, {"*/b"}, {"\xCF\x83"}, {"a/*", "!a/b/c"}, {"?"}};
  std::size_t pruned = 0;
  for (const auto& pats : sets) {
    DockerPyIgnore m(pats);
    for (const std::string& d : dirs) {
      if (!m.matches_everything_below(d)) continue;
      ++pruned;
      for (const std::string& b : below) {
        INFO("patterns " << Catch::Detail::stringify(pats) << ", " << d << "/" << b);
        CHECK(m.matches(d + "/" + b));
      }
    }
  }
  CHECK(pruned >= 10);
  CHECK_FALSE(DockerPyIgnore({"dir", "!dir/keep"}).matches_everything_below("dir"));
  CHECK(DockerPyIgnore({"dir", "!dir/keep"}).matches_everything_below("dir/other"));
  // "**/x" checks one parent prefix as long as itself: "a/b/x/y" is kept.
  CHECK_FALSE(DockerPyIgnore({"**/x"}).matches_everything_below("a/b/x"));
  // A top directory named .dockerignore is re-included by the appended "!.dockerignore".
  CHECK_FALSE(DockerPyIgnore({"*"}).matches_everything_below(".dockerignore"));
}

TEST_CASE("dockerpy: names that are not UTF-8 are read as os.walk reads them", "[dockerpy]") {
  // surrogateescape: each invalid byte is one code point (U+DC80..U+DCFF), so "?" matches it.
  CHECK(DockerPyIgnore({"a?b"}).matches("a\xFF" "b"));
  CHECK_FALSE(DockerPyIgnore({"a?b"}).matches("a\xC3" "\xFF" "b"));
  CHECK(DockerPyIgnore({"a??b"}).matches("a\xE2\x82" "b"));
  CHECK(DockerPyIgnore({"*"}).matches("\xED\xA0\x80"));
}

TEST_CASE("dockerpy: long patterns and paths take bounded work, no recursion", "[dockerpy]") {
  std::string path;
  for (int i = 0; i < 20000; ++i) path += "a/";
  path += "b";
  std::string pat;
  for (int i = 0; i < 200; ++i) pat += "**a";
  const auto start = std::chrono::steady_clock::now();
  CHECK(DockerPyIgnore({"**/b"}).matches(path));
  CHECK_FALSE(DockerPyIgnore({pat + "c"}).matches(path));
  CHECK(DockerPyIgnore({std::string(100000, 'x')}).matches(std::string(100000, 'X')));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(20));
}

TEST_CASE("dockerpy: IgnoreRules applies it to files only, and prunes only what it must", "[dockerpy]") {
  IgnoreRules r;
  r.add_dockerpy_ignore("DATA\n*.MD\n", ".flyteignore");
  CHECK(r.ignored("data/x.csv", false));
  CHECK(r.ignored("README.md", false));
  CHECK_FALSE(r.ignored("data", true));  // flytekit asks about files only
  CHECK(r.can_prune("data"));
  CHECK_FALSE(r.can_prune("src"));
  CHECK_FALSE(r.ignored("src/a.py", false));
}
