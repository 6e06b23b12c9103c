// Unit tests for layers/ignore: the glob engine, .gitignore and .dockerignore semantics, the
// built-in rules, and can_prune.
#include "layers/ignore.h"

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "testutil.h"

using kiln::layers::glob_match;
using kiln::layers::IgnoreRules;
using kiln::testutil::TempDir;
using kiln::testutil::write_file;

namespace {

IgnoreRules git(std::string_view content) {
  IgnoreRules r;
  r.add_gitignore("", content);
  return r;
}

IgnoreRules docker(std::string_view content) {
  IgnoreRules r;
  r.add_dockerignore(content);
  return r;
}

// "a/a/.../a" with n segments, then `last`.
std::string deep_path(int n, const std::string& last) {
  std::string p;
  for (int i = 0; i < n; ++i) p += "a/";
  return p + last;
}

}  // namespace

TEST_CASE("ignore: glob star and question mark never cross '/'") {
  CHECK(glob_match("*.txt", "a.txt"));
  CHECK_FALSE(glob_match("*.txt", "dir/a.txt"));
  CHECK_FALSE(glob_match("*", "a/b"));
  CHECK(glob_match("*", ".hidden"));
  CHECK(glob_match("a/*/c", "a/b/c"));
  CHECK_FALSE(glob_match("a/*/c", "a/b/x/c"));
  CHECK(glob_match("a?c", "abc"));
  CHECK_FALSE(glob_match("a?c", "a/c"));
  CHECK_FALSE(glob_match("?", "ab"));
  CHECK(glob_match("a*b*c", "axxbyyc"));
  CHECK_FALSE(glob_match("a*b*c", "axxbyy"));
  CHECK(glob_match("a**b", "axyb"));  // "**" inside a segment is a plain star
  CHECK_FALSE(glob_match("a**b", "a/b"));
  CHECK(glob_match("src/main.cc", "src/main.cc"));
  CHECK_FALSE(glob_match("src/main.cc", "src/main.c"));
}

TEST_CASE("ignore: glob double star at start, middle and end") {
  CHECK(glob_match("**/foo", "foo"));
  CHECK(glob_match("**/foo", "x/foo"));
  CHECK(glob_match("**/foo", "x/y/foo"));
  CHECK_FALSE(glob_match("**/foo", "x/foox"));
  CHECK_FALSE(glob_match("**/foo", "foo/x"));

  CHECK(glob_match("a/**/b", "a/b"));
  CHECK(glob_match("a/**/b", "a/x/b"));
  CHECK(glob_match("a/**/b", "a/x/y/b"));
  CHECK_FALSE(glob_match("a/**/b", "a/x/c"));
  CHECK_FALSE(glob_match("a/**/b", "b"));
  CHECK_FALSE(glob_match("a/**/b", "x/a/b"));

  CHECK(glob_match("a/**", "a/x"));
  CHECK(glob_match("a/**", "a/x/y/z"));
  CHECK_FALSE(glob_match("a/**", "a"));  // everything below a, not a itself
  CHECK_FALSE(glob_match("a/**", "b/x"));

  CHECK(glob_match("**", "x"));
  CHECK(glob_match("**", "x/y/z"));
  CHECK(glob_match("**/*.py", "pkg/sub/mod.py"));
  CHECK_FALSE(glob_match("**/*.py", "pkg/sub/mod.pyc"));
  CHECK(glob_match("a/**/**/b", "a/b"));
  CHECK(glob_match("**/x/**/y", "p/x/q/r/y"));
  CHECK_FALSE(glob_match("**/x/**/y", "p/x/q/r/z"));
}

TEST_CASE("ignore: glob character classes") {
  CHECK(glob_match("[abc]", "b"));
  CHECK_FALSE(glob_match("[abc]", "d"));
  CHECK(glob_match("[a-c]x", "bx"));
  CHECK_FALSE(glob_match("[a-c]x", "dx"));
  CHECK(glob_match("[!a-c]", "d"));
  CHECK_FALSE(glob_match("[!a-c]", "a"));
  CHECK(glob_match("[^a]", "b"));
  CHECK_FALSE(glob_match("[^a]", "a"));
  CHECK(glob_match("[]]", "]"));    // leading ']' is literal
  CHECK(glob_match("[a-]", "-"));   // trailing '-' is literal
  CHECK(glob_match("[[:digit:]]x", "5x"));
  CHECK_FALSE(glob_match("[[:digit:]]x", "ax"));
  CHECK_FALSE(glob_match("a[/]b", "a/b"));  // never matches '/'
  CHECK(glob_match("[ab", "[ab"));          // unterminated bracket is literal
  CHECK(glob_match("file[0-9].txt", "file7.txt"));
  CHECK_FALSE(glob_match("file[0-9].txt", "filex.txt"));
}

TEST_CASE("ignore: glob backslash escapes") {
  CHECK(glob_match("\\*", "*"));
  CHECK_FALSE(glob_match("\\*", "a"));
  CHECK(glob_match("a\\?b", "a?b"));
  CHECK_FALSE(glob_match("a\\?b", "axb"));
  CHECK(glob_match("[\\]]", "]"));
  CHECK(glob_match("x\\[y", "x[y"));
  CHECK(glob_match("\\#x", "#x"));
}

TEST_CASE("ignore: pathological patterns run fast") {
  auto start = std::chrono::steady_clock::now();
  // Non-collapsed "**" groups against a deep non-matching path: naive backtracking is C(60, 8).
  std::string pat = "**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/b";
  CHECK_FALSE(glob_match(pat, deep_path(60, "c")));
  CHECK(glob_match(pat, deep_path(60, "b")));
  CHECK_FALSE(glob_match("**/**/**/**/**/**/**/**/**/x", deep_path(200, "y")));
  // Many stars inside one segment.
  CHECK_FALSE(glob_match("*a*a*a*a*a*a*a*a*a*a*b", std::string(2000, 'a')));
  IgnoreRules r = git(pat + "\n");
  for (int i = 0; i < 200; ++i) CHECK_FALSE(r.ignored(deep_path(40, "c"), false));
  auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(elapsed < std::chrono::seconds(1));
}

TEST_CASE("ignore: gitignore anchoring") {
  IgnoreRules r = git("/build\ndoc/frotz\n");
  CHECK(r.ignored("build", true));
  CHECK(r.ignored("build/out.o", false));
  CHECK_FALSE(r.ignored("src/build", true));
  CHECK(r.ignored("doc/frotz", false));
  CHECK_FALSE(r.ignored("a/doc/frotz", false));
  CHECK_FALSE(r.ignored("doc", true));
}

TEST_CASE("ignore: gitignore basename patterns match at any depth") {
  IgnoreRules r = git("*.log\ntmp\n");
  CHECK(r.ignored("a.log", false));
  CHECK(r.ignored("x/y/a.log", false));
  CHECK_FALSE(r.ignored("a.logx", false));
  CHECK(r.ignored("tmp", true));
  CHECK(r.ignored("src/deep/tmp", false));
  CHECK(r.ignored("src/tmp/file.c", false));  // under an ignored directory
  CHECK_FALSE(r.ignored("src/tmpx", false));
}

TEST_CASE("ignore: gitignore directory-only patterns") {
  IgnoreRules r = git("cache/\n/out/\n");
  CHECK(r.ignored("cache", true));
  CHECK_FALSE(r.ignored("cache", false));
  CHECK(r.ignored("x/cache", true));
  CHECK_FALSE(r.ignored("x/cache", false));
  CHECK(r.ignored("x/cache/file", false));
  CHECK(r.ignored("out", true));
  CHECK_FALSE(r.ignored("out", false));
  CHECK_FALSE(r.ignored("x/out", true));
}

TEST_CASE("ignore: gitignore negation and last rule wins") {
  IgnoreRules r = git("*.log\n!keep.log\n");
  CHECK(r.ignored("a.log", false));
  CHECK_FALSE(r.ignored("keep.log", false));
  CHECK_FALSE(r.ignored("sub/keep.log", false));

  IgnoreRules reversed = git("!keep.log\n*.log\n");
  CHECK(reversed.ignored("keep.log", false));
}

TEST_CASE("ignore: gitignore syntax: comments, blanks, trailing spaces, escapes, CRLF") {
  IgnoreRules r = git("# comment\n\n   \nfoo   \n\\#hash\n\\!bang\nbar\\ \nx.tmp\r\n");
  CHECK_FALSE(r.ignored("# comment", false));
  CHECK(r.ignored("foo", false));
  CHECK(r.ignored("#hash", false));
  CHECK(r.ignored("!bang", false));
  CHECK_FALSE(r.ignored("bang", false));
  CHECK(r.ignored("bar ", false));
  CHECK_FALSE(r.ignored("bar", false));
  CHECK(r.ignored("x.tmp", false));
}

TEST_CASE("ignore: gitignore double star") {
  IgnoreRules r = git("a/**/z\nlogs/**\n");
  CHECK(r.ignored("a/z", false));
  CHECK(r.ignored("a/b/c/z", false));
  CHECK_FALSE(r.ignored("q/a/z", false));
  CHECK(r.ignored("logs/x", false));
  CHECK_FALSE(r.ignored("logs", true));
}

TEST_CASE("ignore: nested gitignore applies to its subtree and overrides shallower ones") {
  IgnoreRules r;
  r.add_gitignore("sub", "/gen\ntmp\n!important.txt\n");  // added before the root on purpose
  r.add_gitignore("", "*.txt\n");
  CHECK(r.ignored("sub/gen", true));
  CHECK_FALSE(r.ignored("gen", true));
  CHECK_FALSE(r.ignored("sub/x/gen", true));
  CHECK(r.ignored("sub/a/tmp", false));
  CHECK_FALSE(r.ignored("tmp", false));
  CHECK_FALSE(r.ignored("other/tmp", false));
  CHECK_FALSE(r.ignored("sub/important.txt", false));
  CHECK_FALSE(r.ignored("sub/deep/important.txt", false));
  CHECK(r.ignored("important.txt", false));
  CHECK(r.ignored("sub/other.txt", false));

  // A .gitignore does not apply to its own directory, only below it.
  IgnoreRules own;
  own.add_gitignore("sub", "sub\n");
  CHECK_FALSE(own.ignored("sub", true));
  CHECK_FALSE(own.ignored("sub/x", false));
  CHECK(own.ignored("sub/sub", false));
  CHECK(own.ignored("sub/a/sub/x", false));

  // Deeper file ignores what the root re-includes.
  IgnoreRules d;
  d.add_gitignore("", "*.c\n!keep.c\n");
  d.add_gitignore("lib", "keep.c\n");
  CHECK_FALSE(d.ignored("keep.c", false));
  CHECK(d.ignored("lib/keep.c", false));
}

TEST_CASE("ignore: gitignore cannot re-include below an excluded directory") {
  IgnoreRules r = git("logs/\n!logs/keep.log\n");
  CHECK(r.ignored("logs/keep.log", false));

  IgnoreRules nested;
  nested.add_gitignore("", "vendor/\n");
  nested.add_gitignore("vendor", "!x\n");
  CHECK(nested.ignored("vendor/x", false));

  // The documented idiom: exclude the contents, not the directory, then re-include.
  IgnoreRules idiom = git("logs/*\n!logs/keep.log\n");
  CHECK_FALSE(idiom.ignored("logs", true));
  CHECK_FALSE(idiom.ignored("logs/keep.log", false));
  CHECK(idiom.ignored("logs/other.log", false));
}

TEST_CASE("ignore: dockerignore patterns are anchored at the root and cover subtrees") {
  IgnoreRules r = docker("node_modules\n*.md\n**/*.bak\n");
  CHECK(r.ignored("node_modules", true));
  CHECK(r.ignored("node_modules/x/y.js", false));
  CHECK_FALSE(r.ignored("src/node_modules", true));
  CHECK(r.ignored("README.md", false));
  CHECK_FALSE(r.ignored("docs/a.md", false));
  CHECK(r.ignored("a.bak", false));
  CHECK(r.ignored("x/y/a.bak", false));
}

TEST_CASE("ignore: dockerignore exceptions re-include below an excluded directory") {
  IgnoreRules r = docker("docs\n!docs/keep.md\n");
  CHECK(r.ignored("docs", true));
  CHECK(r.ignored("docs/other.md", false));
  CHECK_FALSE(r.ignored("docs/keep.md", false));

  IgnoreRules all = docker("*\n!src\n");
  CHECK(all.ignored("Makefile", false));
  CHECK_FALSE(all.ignored("src", true));
  CHECK_FALSE(all.ignored("src/main.cc", false));
}

TEST_CASE("ignore: dockerignore last rule wins") {
  IgnoreRules keep = docker("*.txt\n!a.txt\n");
  CHECK_FALSE(keep.ignored("a.txt", false));
  CHECK(keep.ignored("b.txt", false));

  IgnoreRules drop = docker("!a.txt\n*.txt\n");
  CHECK(drop.ignored("a.txt", false));

  IgnoreRules again = docker("dir\n!dir/sub\ndir/sub/x\n");
  CHECK_FALSE(again.ignored("dir/sub/y", false));
  CHECK(again.ignored("dir/sub/x", false));
}

TEST_CASE("ignore: dockerignore syntax: leading slash, cleaning, comments, spaces") {
  IgnoreRules r = docker("/secret\n./tmp/../out/\n#comment\n  spaced  \n! /secret/pub\n");
  CHECK(r.ignored("secret", false));
  CHECK_FALSE(r.ignored("secret/pub", false));
  CHECK(r.ignored("secret/priv", false));
  CHECK(r.ignored("out", true));
  CHECK(r.ignored("out/x", false));
  CHECK_FALSE(r.ignored("tmp", true));
  CHECK_FALSE(r.ignored("#comment", false));
  CHECK(r.ignored("spaced", false));
}

TEST_CASE("ignore: builtin rules") {
  IgnoreRules r;
  r.add_builtin();
  CHECK(r.ignored(".git", true));
  CHECK(r.ignored(".git/config", false));
  CHECK(r.ignored("a/.git/HEAD", false));
  CHECK(r.ignored("__pycache__", true));
  CHECK(r.ignored("pkg/__pycache__/m.cpython-311.pyc", false));
  CHECK(r.ignored("pkg/mod.pyc", false));
  CHECK(r.ignored("mod.pyc", false));
  CHECK_FALSE(r.ignored("mod.py", false));
  CHECK_FALSE(r.ignored(".gitignore", false));
  CHECK_FALSE(r.ignored(".github/workflows/ci.yml", false));
  CHECK_FALSE(r.ignored("pyc", false));

  IgnoreRules none;  // not added: nothing is ignored
  CHECK_FALSE(none.ignored(".git/config", false));
  CHECK_FALSE(none.ignored("mod.pyc", false));
}

TEST_CASE("ignore: builtin rules cannot be negated; sources combine") {
  IgnoreRules r;
  r.add_builtin();
  r.add_gitignore("", "!.git\n!*.pyc\n*.log\n");
  r.add_dockerignore("!__pycache__\n!**/*.pyc\n!*.log\nbuild\n");
  CHECK(r.ignored(".git", true));
  CHECK(r.ignored("__pycache__/x.pyc", false));
  CHECK(r.ignored("a.pyc", false));
  CHECK(r.ignored("a.log", false));  // a Docker exception does not undo a git exclusion
  CHECK(r.ignored("build/x", false));
  CHECK_FALSE(r.ignored("main.py", false));
}

TEST_CASE("ignore: can_prune") {
  IgnoreRules g = git("build/\n");
  CHECK(g.can_prune("build"));
  CHECK_FALSE(g.can_prune("src"));  // not ignored at all

  IgnoreRules d = docker("docs\n!docs/keep.md\nvendor\ntmp\n!other/x\n");
  CHECK_FALSE(d.can_prune("docs"));  // an exception can match docs/keep.md
  CHECK(d.can_prune("docs/sub"));    // ... but nothing under docs/sub
  CHECK(d.can_prune("vendor"));
  CHECK(d.can_prune("tmp"));         // "!other/x" cannot match below tmp

  IgnoreRules any = docker("vendor\n!**/LICENSE\n");
  CHECK_FALSE(any.can_prune("vendor"));
  CHECK_FALSE(any.can_prune("vendor/a/b"));

  IgnoreRules star = docker("lib\n!lib/*/keep\n");
  CHECK_FALSE(star.can_prune("lib"));
  CHECK_FALSE(star.can_prune("lib/x"));
  CHECK(star.can_prune("lib/x/y"));

  // Git and builtin exclusions are final, whatever the Docker exceptions say.
  IgnoreRules mixed;
  mixed.add_builtin();
  mixed.add_gitignore("", "gen/\n");
  mixed.add_dockerignore("!gen/keep\n!.git/keep\n");
  CHECK(mixed.can_prune("gen"));
  CHECK(mixed.ignored("gen/keep", false));
  CHECK(mixed.can_prune(".git"));
  CHECK(mixed.ignored(".git/keep", false));
}

TEST_CASE("ignore: rules survive a move") {
  IgnoreRules a = git("*.o\n");
  IgnoreRules b(std::move(a));
  CHECK(b.ignored("x.o", false));
  IgnoreRules c;
  c = std::move(b);
  CHECK(c.ignored("x/y.o", false));
  CHECK_FALSE(c.ignored("x.c", false));
}

TEST_CASE("ignore: core.ignorecase folds ASCII case as git's wildmatch does (git check-ignore as reference)") {
  // {pattern, path, ignored under core.ignorecase=true}. Without it, only "[A].txt" and "\A.txt"
  // match "A.txt".
  const std::vector<std::tuple<std::string, std::string, bool>> cases = {
      {"*.log", "A.LOG", true},
      {"*.LOG", "a.log", true},
      {".env", ".ENV", true},
      {"Secrets", "secrets", true},
      {"*Foo*", "xxFOOyy", true},
      {"?.TXT", "a.txt", true},
      {"a/*/C", "A/b/c", true},
      {"**/SECRET", "x/y/secret", true},
      {"[a-c].txt", "B.txt", true},   // the text is lowercased, then tried in the range
      {"[A-C].txt", "b.txt", true},   // ...and its uppercase too
      {"[Z-a]x", "zx", true},
      {"[a].txt", "A.txt", true},
      {"[A].txt", "A.txt", false},    // a single member is compared as written: "A" never equals "a"
      {"[!A]x", "Ax", true},          // ...so the negation takes it
      {"\\a.txt", "A.txt", true},
      {"\\A.txt", "A.txt", false},    // an escaped character is not lowercased either
      {"\\A.txt", "a.txt", false},
      {"[[:upper:]]x", "ax", true},
      {"[[:lower:]]x", "Ax", true},
      {"\xc3\xa9.txt", "\xc3\x89.txt", false},  // é / É: only ASCII folds
  };
  for (const auto& [pattern, path, want] : cases) {
    INFO("pattern '" << pattern << "', path '" << path << "'");
    IgnoreRules fold;
    fold.set_git_ignore_case(true);
    fold.add_gitignore("", pattern + "\n");
    CHECK(fold.ignored(path, false) == want);
    CHECK(glob_match(pattern, path, true) == want);
    const bool exact = path == "A.txt" && (pattern == "[A].txt" || pattern == "\\A.txt");
    CHECK(glob_match(pattern, path) == exact);
    CHECK(git(pattern + "\n").ignored(path, false) == exact);  // case-sensitive by default
  }
  if (std::system("git --version >/dev/null 2>&1") != 0) {
    WARN("SKIPPED the comparison with git: git is not installed");
    return;
  }
  TempDir tmp;
  const std::string env = "HOME='" + (tmp / "home").string() + "' XDG_CONFIG_HOME='" + (tmp / "home").string() +
                          "' GIT_CONFIG_NOSYSTEM=1 ";
  REQUIRE(std::system(("cd '" + tmp.str() + "' && " + env + "git init -q repo").c_str()) == 0);
  for (const auto& [pattern, path, want] : cases) {
    INFO("pattern '" << pattern << "', path '" << path << "'");
    const bool exact = path == "A.txt" && (pattern == "[A].txt" || pattern == "\\A.txt");
    write_file(tmp / "repo/.gitignore", pattern + "\n");
    write_file(tmp / "paths", path);
    for (bool fold : {true, false}) {
      std::string cmd = "cd '" + (tmp / "repo").string() + "' && " + env + "git -c core.ignorecase=" +
                        (fold ? "true" : "false") + " check-ignore -q --no-index --stdin <'" + (tmp / "paths").string() + "'";
      int rc = std::system(cmd.c_str());
      REQUIRE(WIFEXITED(rc));
      REQUIRE(WEXITSTATUS(rc) <= 1);
      CHECK((WEXITSTATUS(rc) == 0) == (fold ? want : exact));  // git agrees with the table
    }
  }
}
