// Unit tests for the .dockerignore matcher: Docker's semantics (moby/patternmatcher and
// ignorefile), its errors (naming file and line), flytekit's standard ignores, and bounded work on
// hostile inputs.
#include <catch2/catch.hpp>

#include <string>

#include "layers/ignore.h"

using kiln::layers::docker_ignored;
using kiln::layers::IgnoreRules;
using kiln::layers::InputError;

namespace {

bool m(const std::string& patterns, const std::string& path) { return docker_ignored(patterns, path); }

std::string error_of(const std::string& content, const char* file = ".dockerignore") {
  try {
    IgnoreRules r;
    r.add_dockerignore(content, file);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("dockerignore: '**' spans directories, also inside a segment", "[dockerignore]") {
  CHECK(m("**.pem", "certs/server.pem"));
  CHECK(m("**.pem", "server.pem"));
  CHECK(m("**", "file"));
  CHECK(m("**", "dir/file"));
  CHECK(m("**/", "dir/file"));
  CHECK(m("**/**", "dir/file"));
  CHECK(m("dir/**", "dir/file"));
  CHECK(m("dir/**", "dir/dir2/file"));
  CHECK_FALSE(m("abc/**", "abc"));
  CHECK(m("abc/**", "abc/def/ghi"));
  CHECK(m("**/dir", "dir"));
  CHECK(m("**/dir", "dir/file"));
  CHECK(m("**/dir2/*", "dir/dir2/file"));
  CHECK(m("**/dir2/**", "dir/dir2/dir3/file"));
  CHECK(m("**file", "dir/dir/file"));
  CHECK(m("**/file*.txt", "dir/dir/file.txt"));
  CHECK_FALSE(m("**/**/*.txt2", "dir/dir/file.txt"));
  CHECK(m("**/*.txt", "file.txt"));
  CHECK(m("a**/*.txt", "a/dir/dir/file.txt"));
  CHECK_FALSE(m("a/*.txt", "a/dir/file.txt"));
  CHECK(m("a/*.txt**", "a/file.txt"));
  CHECK(m("**/foo/bar", "foo/bar"));
  CHECK(m("**/foo/bar", "dir/dir2/foo/bar"));
  CHECK(m("**/.foo", ".foo"));
  CHECK_FALSE(m("**/.foo", "bar.foo"));
  CHECK(m("foo**", "foobar/x"));  // a prefix match, as Docker's
}

TEST_CASE("dockerignore: '*', '?', classes and literal characters", "[dockerignore]") {
  CHECK(m("*", "fileutils.go"));
  CHECK(m("*.go", "fileutils.go"));
  CHECK(m("a*", "ab/c"));  // the parent "ab" matches
  CHECK_FALSE(m("a*/b", "a/c/b"));
  CHECK(m("a*b*c*d*e*/f", "axbxcxdxexxx/f"));
  CHECK_FALSE(m("a[b-d]e", "ae"));
  CHECK(m("a[b-d]e", "ace"));
  CHECK_FALSE(m("a[b-d]e", "aae"));
  CHECK(m("a[^b-d]e", "aze"));
  CHECK(m("a[!b]e", "a!e"));  // '!' does not negate in Docker
  CHECK_FALSE(m("a[!b]e", "aze"));
  CHECK(m(".*", ".foo"));
  CHECK_FALSE(m(".*", "foo"));
  CHECK_FALSE(m("abc.def", "abcZdef"));
  CHECK(m("abc?def", "abcZdef"));
  CHECK_FALSE(m("abc?def", "abcdef"));
  CHECK(m("a\\\\", "a\\"));
  CHECK(m("a\\*b", "a*b"));
  CHECK_FALSE(m("a\\*b", "axb"));
  CHECK(m("a(b)c/def", "a(b)c/def"));
  CHECK(m("a.|)$(}+{bc", "a.|)$(}+{bc"));
  CHECK(m("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"));
  CHECK(m("x[\\]]y", "x]y"));
  CHECK(m("a^b", "a^b"));          // no regular expression: compared as text
  CHECK_FALSE(m("a^b*", "a^bc"));  // in a regular expression '^' anchors at the start, as in Go
  // '?' and classes match one UTF-8 rune, not one byte.
  CHECK(m("caf?", "caf\xc3\xa9"));
  CHECK_FALSE(m("caf??", "caf\xc3\xa9"));
  CHECK(m("caf[\xc3\xa8\xc3\xa9]", "caf\xc3\xa9"));
  CHECK(m("[\xe6\x97\xa5]*", "\xe6\x97\xa5\xe6\x9c\xac.txt"));
  // A negated class is a Go regular expression class: it matches '/' too.
  CHECK(m("x[^a]y", "x/y"));
  // Case matters (docker-py lowercases; Docker does not).
  CHECK_FALSE(m("*.md", "README.MD"));
}

TEST_CASE("dockerignore: exceptions, parents and the last match", "[dockerignore]") {
  CHECK(m("!fileutils.go\n*.go", "fileutils.go"));
  CHECK_FALSE(m("*.go\n!fileutils.go", "fileutils.go"));
  CHECK_FALSE(m("docs\n!docs/README.md", "docs/README.md"));
  CHECK_FALSE(m("docs/\n!docs/README.md", "docs/README.md"));
  CHECK_FALSE(m("docs/*\n!docs/README.md", "docs/README.md"));
  CHECK_FALSE(m("**\n!util/docker/web", "util/docker/web/foo"));
  CHECK(m("**\n!util/docker/web\nutil/docker/web/foo", "util/docker/web/foo"));
  CHECK_FALSE(m("**\n!dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"));
  CHECK(m("**", ".dockerignore"));  // Docker can exclude it (docker-py always keeps it)
  // Parent matching reaches every ancestor (Docker's MatchesOrParentMatches).
  CHECK(m("**/dir", "a/b/dir/c/d"));
  CHECK(m("a/b", "a/b/c/d/e"));
}

TEST_CASE("dockerignore: file syntax as Docker reads it", "[dockerignore]") {
  CHECK(m("\xEF\xBB\xBFsecret\n", "secret"));   // BOM dropped on the first line
  CHECK(m("a\r\nsecret\r\n", "secret"));        // CRLF
  CHECK_FALSE(m("#secret\n", "secret"));        // a comment
  CHECK(m(" #secret\n", "#secret"));            // '#' only in the first column
  CHECK(m("  secret \t\n", "secret"));
  CHECK(m("/secret", "secret"));
  CHECK(m("//secret", "secret"));
  CHECK(m("./a/../secret/", "secret/x"));
  CHECK_FALSE(m("secret\n! /secret/pub", "secret/pub"));
  CHECK(m("secret\n! /secret/pub", "secret/priv"));
  CHECK_FALSE(m("..\n.\n../x", "x"));  // never match a path inside the context
  CHECK(m("a/b/../c", "a/c"));
  CHECK(m("\xc2\xa0secret\xe3\x80\x80", "secret"));  // Go's TrimSpace trims Unicode spaces
}

TEST_CASE("dockerignore: bad patterns are errors naming the file and the line", "[dockerignore]") {
  CHECK(error_of("ok\n[\n").find(".dockerignore:2:") == 0);
  CHECK(error_of("a\\").find(".dockerignore:1:") == 0);
  CHECK(error_of("x\n\n[a-b-c]\n").find(".dockerignore:3:") == 0);
  CHECK(error_of("!").find("illegal exclusion") != std::string::npos);
  CHECK(error_of("# c\n! \n").find(".dockerignore:2:") == 0);
  CHECK_FALSE(error_of("[]a]").empty());
  CHECK_FALSE(error_of("[^]").empty());
  CHECK_FALSE(error_of("[a-]").empty());
  CHECK_FALSE(error_of("[-a]").empty());
  CHECK_FALSE(error_of("[a").empty());
  CHECK_FALSE(error_of("[\\").empty());
  // What Docker's Go regular expression reads differently from a glob: refused, not guessed.
  CHECK(error_of("\\d*").find("regular expression") != std::string::npos);
  CHECK_FALSE(error_of("[*]").empty());
  CHECK_FALSE(error_of("[[:alpha:]]").empty());
  CHECK_FALSE(error_of("[z-a]").empty());
  CHECK(error_of("a\n[", "other.ignore").find("other.ignore:2:") == 0);
  // Lines Docker's scanner cannot read.
  CHECK(error_of("a\n" + std::string(65536, 'x') + "\n").find(".dockerignore:2:") == 0);
  CHECK(error_of(std::string(65535, 'x')).empty());
  // Fine: a literal ']' and escaped punctuation.
  CHECK(error_of("a]b\n\\[x\\]\n\\#y\n").empty());
}

TEST_CASE("dockerignore: long patterns and paths take bounded work, no recursion", "[dockerignore]") {
  std::string pat;
  while (pat.size() < 60000) pat += "a*";
  std::string path(300, 'a');
  path += "b";
  CHECK_FALSE(m(pat + "c", path));
  std::string deep;
  for (int i = 0; i < 20000; ++i) deep += "d/";
  deep += "x";  // a 40,001-character path with 20,000 parents
  CHECK(m("**/x", deep));
  CHECK_FALSE(m("**/y\n!**/d", deep));
  CHECK(m("d", deep));
  std::string wide(100000, 'q');
  CHECK(m("q*", wide));
  CHECK_FALSE(m("*?*?*?*?*?*?*?*?*?*?*r", wide));
}

TEST_CASE("dockerignore: can_prune only when no exception can reach below", "[dockerignore]") {
  IgnoreRules r;
  r.add_dockerignore("build\n!build/keep/**\nnode_modules\n!**/LICENSE\n");
  CHECK_FALSE(r.can_prune("build"));
  CHECK_FALSE(r.can_prune("build/keep"));
  CHECK_FALSE(r.can_prune("node_modules"));  // a suffix exception could match anywhere
  IgnoreRules p;
  p.add_dockerignore("out\n!out/keep.txt\nvendor\n!vendor/a*/x\n");
  CHECK_FALSE(p.can_prune("out"));
  CHECK(p.can_prune("out/sub"));
  CHECK_FALSE(p.can_prune("vendor/abc"));
  CHECK(p.can_prune("vendor/bcd"));
  CHECK_FALSE(p.can_prune("src"));  // not ignored at all
}

TEST_CASE("dockerignore: independent files combine (.dockerignore and .flyteignore)", "[dockerignore]") {
  IgnoreRules r;
  r.add_dockerignore("*.log\n", ".dockerignore");
  r.add_dockerpy_ignore("data\n!*.log\n", ".flyteignore");  // docker-py's semantics (pyflyte's)
  CHECK(r.ignored("a.log", false));  // an exception in one file does not undo the other
  CHECK(r.ignored("data/x", false));
  CHECK_FALSE(r.ignored("main.py", false));
}

TEST_CASE("ignore: flytekit's standard ignores", "[dockerignore]") {
  IgnoreRules r;
  r.add_flytekit_standard();
  CHECK(r.ignored("a.pyc", false));
  CHECK(r.ignored("pkg/sub/mod.pyc", false));
  CHECK_FALSE(r.ignored("pkg.pyc/mod.py", false));
  CHECK(r.ignored("__pycache__/x.py", false));
  CHECK(r.ignored("pkg/__pycache__/m.cpython-311.pyc", false));
  CHECK(r.ignored("pkg/__pycache__/notes.txt", false));
  CHECK_FALSE(r.ignored("__pycache__", false));  // a file of that name is kept
  CHECK(r.ignored(".cache", false));
  CHECK(r.ignored(".cache", true));
  CHECK(r.ignored(".cache/pip/x", false));
  CHECK_FALSE(r.ignored("pkg/.cache/x", false));  // only the root .cache, as flytekit's fnmatch
  CHECK(r.ignored(".git/config", false));
  CHECK(r.ignored("vendor/lib/.git/HEAD", false));
  CHECK_FALSE(r.ignored(".git", false));  // a .git file (a worktree's pointer) is a file
  CHECK(r.can_prune(".git"));
  CHECK(r.can_prune(".cache"));
  CHECK(r.can_prune("a/__pycache__"));
  CHECK_FALSE(r.can_prune("a/.cache"));
  CHECK_FALSE(r.ignored("main.py", false));
}
