// Unit tests for mode "all" inside a git work tree (layers/git_repo over libgit2): the file set is
// what `git ls-files -io --exclude-standard` does not call ignored — .gitignore files above
// source_root, .git/info/exclude, core.excludesFile, tracked files kept — and the race-free read
// path (a directory swapped for a symlink after the walk is refused, never followed).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "layers/fileset.h"
#include "layers/tar_writer.h"
#include "testutil.h"

using namespace kiln::layers;
using kiln::spec::CopyMode;
using kiln::spec::ImageSpec;
using kiln::testutil::contains;
using kiln::testutil::TempDir;
using kiln::testutil::write_file;
namespace fs = std::filesystem;

namespace {

bool have_git() { return std::system("git --version >/dev/null 2>&1") == 0; }

/// Runs git in `dir` with a HOME of the test's own (no user config leaks in); REQUIREs success.
void git(const TempDir& tmp, const fs::path& dir, const std::string& args) {
  std::string cmd = "cd '" + dir.string() + "' && HOME='" + (tmp / "home").string() +
                    "' XDG_CONFIG_HOME='" + (tmp / "home/.config").string() +
                    "' GIT_CONFIG_NOSYSTEM=1 git -c user.name=t -c user.email=t@t -c init.defaultBranch=main " +
                    args + " >/dev/null 2>&1";
  INFO(cmd);
  REQUIRE(std::system(cmd.c_str()) == 0);
}

/// Points libgit2's view of the user's config at the test's HOME.
struct HomeEnv {
  std::string old_home, old_xdg;
  explicit HomeEnv(const TempDir& tmp) {
    if (const char* h = std::getenv("HOME")) old_home = h;
    if (const char* x = std::getenv("XDG_CONFIG_HOME")) old_xdg = x;
    fs::create_directories(tmp / "home/.config");
    ::setenv("HOME", (tmp / "home").c_str(), 1);
    ::setenv("XDG_CONFIG_HOME", (tmp / "home/.config").c_str(), 1);
  }
  ~HomeEnv() {
    if (old_home.empty()) ::unsetenv("HOME"); else ::setenv("HOME", old_home.c_str(), 1);
    if (old_xdg.empty()) ::unsetenv("XDG_CONFIG_HOME"); else ::setenv("XDG_CONFIG_HOME", old_xdg.c_str(), 1);
  }
};

ImageSpec spec_all(const fs::path& root) {
  ImageSpec s;
  s.base_dir = root.parent_path();
  s.origin = "test";
  s.source_root = root;
  s.source_copy_mode = CopyMode::All;
  return s;
}

/// The non-directory entries, and separately the directories.
std::set<std::string> files_of(const FileSet& set) {
  std::set<std::string> out;
  for (const FileEntry& e : set.source)
    if (e.type != FileEntry::Type::Dir) out.insert(std::string(e.rel()));
  return out;
}
std::set<std::string> dirs_of(const FileSet& set) {
  std::set<std::string> out;
  for (const FileEntry& e : set.source)
    if (e.type == FileEntry::Type::Dir) out.insert(std::string(e.rel()));
  return out;
}

}  // namespace

TEST_CASE("fileset/git: ignore files above source_root, info/exclude, core.excludesFile, tracked files", "[git]") {
  if (!have_git()) {
    WARN("SKIPPED: git is not installed");
    return;
  }
  TempDir tmp;
  HomeEnv home(tmp);
  const fs::path repo = tmp / "repo";
  const fs::path src = repo / "sub" / "app";
  write_file(repo / ".gitignore", "secret/\n*.log\nbuild/\n!build/keep.txt\n");
  write_file(repo / "sub" / ".gitignore", "*.tmp\n");
  write_file(repo / "global-excludes", "*.swp\n");
  write_file(src / "main.py", "print(1)\n");
  write_file(src / "secret" / "key.pem", "KEY");
  write_file(src / "app.log", "log");
  write_file(src / "tracked.log", "tracked but ignored");
  write_file(src / "x.tmp", "tmp");
  write_file(src / "x.bak", "bak");
  write_file(src / "x.swp", "swp");
  write_file(src / "build" / "out.o", "o");
  write_file(src / "build" / "keep.txt", "negated under an excluded dir: still ignored in git");
  write_file(src / "vendor" / "tracked.log", "tracked in an otherwise kept dir");
  write_file(src / "gen" / "a.py", "gen");
  write_file(src / "gen" / "b.py", "gen tracked");
  write_file(src / "pkg" / "mod.py", "x = 1\n");
  write_file(src / "pkg" / "__pycache__" / "mod.pyc", "pyc");
  write_file(src / ".cache" / "x", "cache");
  write_file(src / "pkg" / ".cache" / "y", "nested cache is kept (flytekit)");
  write_file(src / ".dockerignore", "*.md\n");
  write_file(src / "README.md", "readme");
  git(tmp, repo, "init -q");
  write_file(repo / ".git" / "info" / "exclude", "*.bak\n/sub/app/gen/\n");
  git(tmp, repo, "config core.excludesFile '" + (repo / "global-excludes").string() + "'");
  git(tmp, repo, "add -f sub/app/tracked.log sub/app/gen/b.py sub/app/main.py");
  git(tmp, repo, "commit -q -m init");

  FileSet set = collect_files(spec_all(src));
  CHECK(set.git_workdir == repo.string());
  CHECK(files_of(set) == std::set<std::string>{".dockerignore", "gen/b.py", "main.py", "pkg/.cache/y", "pkg/mod.py",
                                               "tracked.log"});
  // Only directories that hold something baked.
  CHECK(dirs_of(set) == std::set<std::string>{"gen", "pkg", "pkg/.cache"});

  SECTION("a source_root inside an ignored directory keeps only tracked files") {
    write_file(repo / "out" / "app" / "a.py", "a");
    write_file(repo / "out" / "app" / "b.py", "b");
    write_file(repo / ".gitignore", "out/\n");
    git(tmp, repo, "add -f out/app/b.py");
    FileSet set = collect_files(spec_all(repo / "out" / "app"));
    CHECK(files_of(set) == std::set<std::string>{"b.py"});
    // ...and says so, naming the ignored directory: a silently empty image is the usual surprise.
    REQUIRE(set.warnings.size() == 1);
    CHECK(set.warnings[0].find("lies in 'out/', which git ignores") != std::string::npos);
    CHECK(set.warnings[0].find("(1)") != std::string::npos);
    // A source_root no ignore rule covers gets no such warning.
    CHECK(collect_files(spec_all(src)).warnings.empty());
  }
  SECTION("the index is read: untracking a file makes its ignore rule apply") {
    git(tmp, repo, "rm -q --cached sub/app/tracked.log");
    CHECK_FALSE(files_of(collect_files(spec_all(src))).count("tracked.log"));
  }
}

TEST_CASE("fileset/git: a nested repository gets no git rules (git does not look inside), unless ignored", "[git]") {
  if (!have_git()) {
    WARN("SKIPPED: git is not installed");
    return;
  }
  TempDir tmp;
  HomeEnv home(tmp);
  const fs::path repo = tmp / "repo";
  write_file(repo / ".gitignore", "*.log\nignored/\n");
  write_file(repo / "main.py", "x");
  write_file(repo / "app.log", "dropped");
  write_file(repo / "vendor" / "dep" / "dep.log", "kept: inside a nested repository");
  write_file(repo / "vendor" / "dep" / ".gitignore", "*.py\n");
  write_file(repo / "vendor" / "dep" / "dep.py", "kept too: its own .gitignore is not read either");
  write_file(repo / "ignored" / "dep2" / "x.py", "not baked: the directory is ignored");
  git(tmp, repo, "init -q");
  git(tmp, repo / "vendor" / "dep", "init -q");
  git(tmp, repo / "ignored" / "dep2", "init -q");
  CHECK(files_of(collect_files(spec_all(repo))) ==
        std::set<std::string>{".gitignore", "main.py", "vendor/dep/.gitignore", "vendor/dep/dep.log", "vendor/dep/dep.py"});
}

TEST_CASE("fileset/git: outside a repository, .gitignore files still apply", "[git]") {
  TempDir tmp;
  HomeEnv home(tmp);
  write_file(tmp / "src" / ".gitignore", "*.log\n");
  write_file(tmp / "src" / "a.log", "x");
  write_file(tmp / "src" / "a.py", "x");
  FileSet set = collect_files(spec_all(tmp / "src"));
  CHECK(set.git_workdir.empty());
  CHECK(files_of(set) == std::set<std::string>{".gitignore", "a.py"});
}

TEST_CASE("fileset: .flyteignore applies only when asked (the fast-register bundle)", "[git]") {
  TempDir tmp;
  HomeEnv home(tmp);
  write_file(tmp / "src" / ".flyteignore", "data\n*.csv\n");
  write_file(tmp / "src" / "data" / "big.bin", "x");
  write_file(tmp / "src" / "a.csv", "x");
  write_file(tmp / "src" / "a.py", "x");
  CHECK(files_of(collect_files(spec_all(tmp / "src"))) ==
        std::set<std::string>{".flyteignore", "a.csv", "a.py", "data/big.bin"});
  CollectOptions opts;
  opts.flyteignore = true;
  CHECK(files_of(collect_files(spec_all(tmp / "src"), opts)) == std::set<std::string>{".flyteignore", "a.py"});
  // docker-py's semantics (pyflyte's): case-insensitive, a lone "[" is a literal, "[^a]" a class
  // of "^" and "a"; .dockerignore keeps Docker's, where "[" is an error.
  write_file(tmp / "src" / ".flyteignore", "*.CSV\n[\n[^a].py\n");
  write_file(tmp / "src" / "[", "x");
  write_file(tmp / "src" / "b.py", "x");
  CHECK(files_of(collect_files(spec_all(tmp / "src"), opts)) ==
        std::set<std::string>{".flyteignore", "b.py", "data/big.bin"});
  // What pyflyte fails on (Python's re refuses a reversed range) is an error naming the line.
  write_file(tmp / "src" / ".flyteignore", "ok\n[z-a]\n");
  CHECK_THROWS_MATCHES(collect_files(spec_all(tmp / "src"), opts), InputError,
                       Catch::Matchers::Predicate<InputError>(
                           [](const InputError& e) { return contains(e.what(), ".flyteignore:2:"); }));
}

TEST_CASE("fileset: a bad .dockerignore pattern is an InputError naming the line", "[git]") {
  TempDir tmp;
  write_file(tmp / "src" / ".dockerignore", "# c\n*.md\n[a-b-c]\n");
  write_file(tmp / "src" / "a.py", "x");
  CHECK_THROWS_MATCHES(collect_files(spec_all(tmp / "src")), InputError,
                       Catch::Matchers::Predicate<InputError>(
                           [](const InputError& e) { return contains(e.what(), ".dockerignore:3:"); }));
}

TEST_CASE("fileset: a directory swapped for a symlink after the walk is never read through", "[race]") {
  TempDir tmp;
  write_file(tmp / "outside" / "f.txt", "CANARY-OUTSIDE");
  write_file(tmp / "src" / "d" / "f.txt", "inside");
  write_file(tmp / "src" / "g.txt", "inside g");
  write_file(tmp / "outside" / "g.txt", "CANARY-G");
  FileSet set = collect_files(spec_all(tmp / "src"));
  REQUIRE(set.contains_source_file("d/f.txt"));
  // Swap: the directory for a symlink to the outside directory, the file for a symlink.
  fs::rename(tmp / "src" / "d", tmp / "d.moved");
  fs::create_directory_symlink(tmp / "outside", tmp / "src" / "d");
  CHECK_THROWS_MATCHES(hash_files(set, nullptr, 1), InputError,
                       Catch::Matchers::Predicate<InputError>(
                           [](const InputError& e) { return contains(e.what(), "changed while kiln read"); }));
  const FileEntry* f = nullptr;
  for (const FileEntry& e : set.source)
    if (e.rel() == "d/f.txt") f = &e;
  REQUIRE(f);
  CHECK_THROWS_AS(open_walked_file(*f), InputError);
  // The layer writer refuses it too, before writing a byte of it.
  TarEntry t;
  t.path = "root/d/f.txt";
  t.size = f->size;
  t.source = f->abs();
  t.dev = f->key.dev;
  t.ino = f->key.ino;
  std::string blob;
  ByteSink sink = [&](const void* d, std::size_t n) { blob.append(static_cast<const char*>(d), n); };
  LayerWriteOptions wo;
  wo.compression = Compression::None;
  CHECK_THROWS_AS(write_layer({t}, wo, sink), InputError);
  CHECK(blob.find("CANARY") == std::string::npos);
  // A file swapped for a symlink: O_NOFOLLOW.
  fs::remove(tmp / "src" / "d");
  fs::rename(tmp / "d.moved", tmp / "src" / "d");
  fs::remove(tmp / "src" / "g.txt");
  fs::create_symlink(tmp / "outside" / "g.txt", tmp / "src" / "g.txt");
  for (FileEntry& e : set.source)
    if (e.rel() == "g.txt") CHECK_THROWS_AS(open_walked_file(e), InputError);
  // Walking again sees the symlink as a symlink: stored, not followed.
  FileSet again = collect_files(spec_all(tmp / "src"));
  for (const FileEntry& e : again.source)
    if (e.rel() == "g.txt") CHECK(e.type == FileEntry::Type::Symlink);
  hash_files(again, nullptr, 1);
}
