// Unit tests for mode "all" inside a git work tree (layers/git_repo over libgit2): the file set is
// what `git ls-files -io --exclude-standard` does not call ignored — .gitignore files above
// source_root, .git/info/exclude, core.excludesFile, tracked files kept — and the race-free read
// path (a directory swapped for a symlink after the walk is refused, never followed).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "layers/fileset.h"
#include "layers/git_repo.h"
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

/// What flytekit's GitIgnore drops: `git ls-files -io --exclude-standard` run in `dir` (paths
/// relative to it; `core.quotePath=false`, so that names need no unquoting).
std::set<std::string> git_ls_ignored(const TempDir& tmp, const fs::path& dir) {
  std::string cmd = "cd '" + dir.string() + "' && HOME='" + (tmp / "home").string() + "' XDG_CONFIG_HOME='" +
                    (tmp / "home/.config").string() +
                    "' GIT_CONFIG_NOSYSTEM=1 git -c core.quotePath=false ls-files -io --exclude-standard";
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p);
  std::string out;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  REQUIRE(::pclose(p) == 0);
  std::set<std::string> files;
  for (std::size_t start = 0, nl; (nl = out.find('\n', start)) != std::string::npos; start = nl + 1)
    files.insert(out.substr(start, nl - start));
  return files;
}

/// flytekit's selection in `dir`, from real git: every file below it (minus .git) that
/// `git ls-files -io --exclude-standard` does not list.
std::set<std::string> git_kept_files(const TempDir& tmp, const fs::path& dir) {
  const std::set<std::string> ignored = git_ls_ignored(tmp, dir);
  std::set<std::string> kept;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it) {
    if (it->path().filename() == ".git") {
      std::error_code ec;  // a .git symlink may loop
      if (it->is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    if (it->is_directory()) continue;
    std::string rel = fs::relative(it->path(), dir).string();
    if (!ignored.count(rel)) kept.insert(rel);
  }
  return kept;
}

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
  opts.pyflyte_bundle = true;
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

TEST_CASE("fileset: the bundle reads .dockerignore as pyflyte does (docker-py), the image as Docker does", "[git]") {
  TempDir tmp;
  HomeEnv home(tmp);
  // "**.py": Docker, any .py file; docker-py, only files named ".py". "NOTES": docker-py folds case.
  // "\\#x": Docker, the file "#x"; docker-py, the file "\\#x".
  write_file(tmp / "src" / ".dockerignore", "**.py\nNOTES\n\\#x\n");
  write_file(tmp / "src" / "pkg" / "a.py", "x");
  write_file(tmp / "src" / ".py", "x");
  write_file(tmp / "src" / "notes", "x");
  write_file(tmp / "src" / "#x", "x");
  write_file(tmp / "src" / "keep.txt", "x");
  CHECK(files_of(collect_files(spec_all(tmp / "src"))) == std::set<std::string>{".dockerignore", "keep.txt", "notes"});
  CollectOptions opts;
  opts.pyflyte_bundle = true;
  CHECK(files_of(collect_files(spec_all(tmp / "src"), opts)) ==
        std::set<std::string>{".dockerignore", "#x", "keep.txt", "pkg/a.py"});
  // A pattern Docker refuses and docker-py accepts: the image's build fails, the bundle does not.
  write_file(tmp / "src" / ".dockerignore", "[\n");
  CHECK_THROWS_AS(collect_files(spec_all(tmp / "src")), InputError);
  CHECK(files_of(collect_files(spec_all(tmp / "src"), opts)).count("keep.txt") == 1);
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

TEST_CASE("fileset/git: core.ignorecase makes the exclude patterns and the index lookups case-insensitive", "[git]") {
  if (!have_git()) {
    WARN("SKIPPED: git is not installed");
    return;
  }
  TempDir tmp;
  HomeEnv home(tmp);
  const fs::path repo = tmp / "repo";
  write_file(repo / ".gitignore", "*.log\nBuild/\n.ENV\nout/\n");
  write_file(repo / "ok.py", "x");
  write_file(repo / "Out" / "t.py", "tracked as Out/t.py");
  write_file(repo / "Out" / "T.LOG", "tracked as Out/T.LOG");
  write_file(repo / "Keep.log", "tracked as Keep.log");
  write_file(repo / "info.txt", "excluded by info/exclude's INFO.TXT");
  git(tmp, repo, "init -q");
  write_file(repo / ".git" / "info" / "exclude", "INFO.TXT\n");
  git(tmp, repo, "add -f ok.py Out/t.py Out/T.LOG Keep.log");
  git(tmp, repo, "commit -q -m init");
  // As a checkout made on macOS and used on Linux: the setting, and names whose case changed.
  git(tmp, repo, "config core.ignorecase true");
  fs::rename(repo / "Keep.log", repo / "KEEP.LOG");
  fs::rename(repo / "Out", repo / "out");
  fs::rename(repo / "out" / "T.LOG", repo / "out" / "t.log");
  write_file(repo / "out" / "u.py", "untracked below an ignored directory");
  write_file(repo / "A.LOG", "x");
  write_file(repo / "build" / "x.py", "x");
  write_file(repo / ".env", "SECRET=1");

  const std::set<std::string> want = git_kept_files(tmp, repo);
  // The tracked files whose case changed are still tracked for git; the rest is dropped.
  CHECK(want == std::set<std::string>{".gitignore", "KEEP.LOG", "ok.py", "out/t.log", "out/t.py"});
  CHECK(files_of(collect_files(spec_all(repo))) == want);
  // From a subdirectory too (the rules above it, the prefix into the index).
  CHECK(files_of(collect_files(spec_all(repo / "out"))) == git_kept_files(tmp, repo / "out"));

  SECTION("without core.ignorecase the patterns are case-sensitive, as in git") {
    git(tmp, repo, "config core.ignorecase false");
    const std::set<std::string> sensitive = git_kept_files(tmp, repo);
    CHECK(sensitive.count("A.LOG"));
    CHECK(files_of(collect_files(spec_all(repo))) == sensitive);
  }
}

TEST_CASE("fileset/git: the git memo holds core.ignorecase and a change to it is seen", "[git]") {
  if (!have_git()) {
    WARN("SKIPPED: git is not installed");
    return;
  }
  TempDir tmp;
  HomeEnv home(tmp);
  const fs::path repo = tmp / "repo";
  fs::create_directories(repo / "app");
  fs::create_directories(tmp / "store" / "stat");
  fs::create_directories(tmp / "store" / "tmp");
  const fs::path memo = tmp / "store" / "stat" / "git.json";
  git(tmp, repo, "init -q");
  git(tmp, repo, "config core.ignorecase true");
  // A memo is written only when nothing it watches changed within the last second.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  const std::string dir = (repo / "app").string();
  auto first = GitRepo::open_remembered(dir, memo);
  REQUIRE(first);
  CHECK_FALSE(first->from_memo());
  CHECK(first->ignore_case());
  REQUIRE(fs::exists(memo));
  first.reset();
  auto again = GitRepo::open_remembered(dir, memo);
  REQUIRE(again);
  CHECK(again->from_memo());
  CHECK(again->ignore_case());
  IgnoreRules rules;
  again->add_rules(rules);
  rules.add_gitignore("", "*.log\n");
  CHECK(rules.ignored("A.LOG", false));
  again.reset();
  git(tmp, repo, "config core.ignorecase false");
  auto changed = GitRepo::open_remembered(dir, memo);
  REQUIRE(changed);
  CHECK_FALSE(changed->from_memo());
  CHECK_FALSE(changed->ignore_case());
}

namespace {

std::set<std::string> without_dotgit(std::set<std::string> files) {
  std::erase_if(files, [](const std::string& f) { return f == ".git" || f.ends_with("/.git") || contains(f, ".git/"); });
  return files;
}

}  // namespace

TEST_CASE("fileset/git: a directory is a nested repository only when git says so (a valid .git)", "[git]") {
  if (!have_git()) {
    WARN("SKIPPED: git is not installed");
    return;
  }
  TempDir tmp;
  HomeEnv home(tmp);
  const fs::path repo = tmp / "repo";
  write_file(repo / ".gitignore", "*.log\n.env\n");
  write_file(repo / "main.py", "x");
  git(tmp, repo, "init -q");
  // Each directory holds an ignored x.log and .env and a kept x.py: git lists the first two when
  // it applies the outer rules inside, and neither when it takes the directory for a repository.
  auto dir = [&](const std::string& name) {
    write_file(repo / name / "x.log", "log");
    write_file(repo / name / ".env", "SECRET=1");
    write_file(repo / name / "x.py", "py");
    return repo / name;
  };
  auto git_dir = [&](const fs::path& d, const std::string& head, bool objects = true, bool refs = true) {
    fs::create_directories(d);
    if (!head.empty()) write_file(d / "HEAD", head);
    if (objects) fs::create_directories(d / "objects");
    if (refs) fs::create_directories(d / "refs");
  };
  // Not repositories for git: the outer rules apply inside.
  write_file(dir("stale") / ".git", "gitdir: ../.git/modules/stale\n");  // a submodule whose git dir is gone
  git_dir(dir("junk") / ".git", "junk\n", false, false);
  fs::create_directories(dir("empty") / ".git");
  git_dir(dir("head-only") / ".git", "ref: refs/heads/main\n", false, false);
  git_dir(dir("no-refs") / ".git", "ref: refs/heads/main\n", true, false);
  git_dir(dir("no-head") / ".git", "");
  git_dir(dir("short-hex") / ".git", "0123456789abcdef\n");
  git_dir(dir("ref-not-refs") / ".git", "ref: heads/main\n");
  write_file(dir("no-space") / ".git", "gitdir:../full/.git\n");
  write_file(dir("no-path") / ".git", "gitdir: \n");
  write_file(dir("not-gitfile") / ".git", "hello\n");
  git_dir(tmp / "wt-bad", "ref: refs/heads/x\n", false, false);
  write_file(tmp / "wt-bad" / "commondir", "../nowhere\n");
  write_file(dir("worktree-bad") / ".git", "gitdir: " + (tmp / "wt-bad").string() + "\n");
  // Repositories for git: no git rule inside.
  git_dir(dir("full") / ".git", "ref: refs/heads/main\n");
  git_dir(dir("spaces") / ".git", "ref: \t refs/x");
  git_dir(dir("detached") / ".git", "0123456789abcdef0123456789abcdef01234567 and more\n");
  git_dir(dir("sym-head") / ".git", "", true, true);
  fs::create_symlink("refs/heads/main", repo / "sym-head" / ".git" / "HEAD");
  write_file(dir("gitfile") / ".git", "gitdir: ../full/.git\n");
  write_file(dir("gitfile-crlf") / ".git", "gitdir: ../full/.git\r\n\n");
  write_file(dir("gitfile-abs") / ".git", "gitdir: " + (repo / "full" / ".git").string() + "\n");
  git_dir(tmp / "wt-ok", "ref: refs/heads/x\n", false, false);
  write_file(tmp / "wt-ok" / "commondir", "../repo/full/.git\n");
  write_file(dir("worktree") / ".git", "gitdir: " + (tmp / "wt-ok").string() + "\n");
  git(tmp, dir("real"), "init -q");

  const std::set<std::string> want = git_kept_files(tmp, repo);
  for (const char* d : {"stale", "junk", "empty", "head-only", "no-refs", "no-head", "short-hex", "ref-not-refs",
                        "no-space", "no-path", "not-gitfile", "worktree-bad"}) {
    INFO(d);
    CHECK_FALSE(want.count(std::string(d) + "/x.log"));
  }
  for (const char* d : {"full", "spaces", "detached", "sym-head", "gitfile", "gitfile-crlf", "gitfile-abs", "worktree", "real"}) {
    INFO(d);
    CHECK(want.count(std::string(d) + "/.env"));
  }
  CHECK(without_dotgit(files_of(collect_files(spec_all(repo)))) == without_dotgit(want));
}

TEST_CASE("fileset/git: git does not look inside a submodule the index records, whatever its .git holds", "[git]") {
  if (!have_git()) {
    WARN("SKIPPED: git is not installed");
    return;
  }
  TempDir tmp;
  HomeEnv home(tmp);
  const fs::path repo = tmp / "repo";
  write_file(repo / ".gitignore", "*.log\n");
  write_file(repo / "main.py", "x");
  for (const char* d : {"live", "stale", "none", "ignored/sub"}) {
    write_file(repo / "vendored" / d / "debug.log", "kept: git does not look inside a submodule");
    write_file(repo / "vendored" / d / "lib.py", "x");
  }
  write_file(repo / "vendored" / "plain" / "debug.log", "dropped: not a submodule");
  git(tmp, repo, "init -q");
  git(tmp, repo / "vendored" / "live", "init -q");
  write_file(repo / "vendored" / "stale" / ".git", "gitdir: ../../.git/modules/vendored/stale\n");
  write_file(repo / ".gitignore", "*.log\nvendored/ignored/\n");
  const std::string sha = "c6568ce82f5a4eb9046520363871fd936e7f2235";
  for (const char* d : {"live", "stale", "none", "ignored/sub"})
    git(tmp, repo, std::string("update-index --add --cacheinfo 160000,") + sha + ",vendored/" + d);
  const std::set<std::string> want = git_kept_files(tmp, repo);
  CHECK(want.count("vendored/stale/debug.log"));
  CHECK(want.count("vendored/none/debug.log"));
  CHECK(want.count("vendored/ignored/sub/debug.log"));
  CHECK_FALSE(want.count("vendored/plain/debug.log"));
  CHECK(without_dotgit(files_of(collect_files(spec_all(repo)))) == without_dotgit(want));
  // From inside the repository's subdirectory as well.
  CHECK(without_dotgit(files_of(collect_files(spec_all(repo / "vendored")))) ==
        without_dotgit(git_kept_files(tmp, repo / "vendored")));
}

namespace {

/// collect_files for mode "all" at `root` with `jobs` walk threads (1: the serial walk) and, when
/// `memo` is not empty, the git memo at that path.
std::set<std::string> kiln_files(const fs::path& root, int jobs, const fs::path& memo = {}) {
  CollectOptions o;
  o.jobs = jobs;
  o.git_memo = memo;
  return without_dotgit(files_of(collect_files(spec_all(root), o)));
}

}  // namespace

TEST_CASE("fileset/git: a repository inside a directory the index tracks files in is walked as the outer one's", "[git]") {
  if (!have_git()) {
    WARN("SKIPPED: git is not installed");
    return;
  }
  TempDir tmp;
  HomeEnv home(tmp);
  const fs::path repo = tmp / "repo";
  write_file(repo / ".gitignore", "*.log\n.env\n");
  write_file(repo / "main.py", "x");
  // vendor/lib: the outer repository tracks files in it, and someone ran `git init` (or cloned)
  // there. git's treat_directory finds it in the index (index_directory) and walks it as its own:
  // the outer rules apply inside, and so does the .gitignore found there.
  write_file(repo / "vendor" / "lib" / "a.py", "tracked");
  write_file(repo / "vendor" / "lib" / "tracked.log", "tracked though ignored: kept");
  // vendor/other tracks x.py, but its subdirectory inner/ holds nothing tracked: a repository there
  // is one for git, and gets no outer rule.
  write_file(repo / "vendor" / "other" / "x.py", "tracked");
  git(tmp, repo, "init -q");
  git(tmp, repo, "add .gitignore main.py vendor/lib/a.py vendor/other/x.py");
  git(tmp, repo, "add -f vendor/lib/tracked.log");
  git(tmp, repo, "commit -q -m init");
  git(tmp, repo / "vendor" / "lib", "init -q");
  git(tmp, repo / "vendor" / "other", "init -q");
  fs::create_directories(repo / "vendor" / "other" / "inner");
  git(tmp, repo / "vendor" / "other" / "inner", "init -q");
  write_file(repo / "vendor" / "lib" / "debug.log", "ignored by the outer .gitignore");
  write_file(repo / "vendor" / "lib" / ".env", "SECRET=1");
  write_file(repo / "vendor" / "lib" / ".gitignore", "new.py\n");
  write_file(repo / "vendor" / "lib" / "new.py", "ignored by the nested .gitignore, read as the outer's");
  write_file(repo / "vendor" / "lib" / "sub" / "s.log", "ignored");
  write_file(repo / "vendor" / "lib" / "sub" / "s.py", "kept");
  write_file(repo / "vendor" / "other" / "debug.log", "ignored");
  write_file(repo / "vendor" / "other" / "inner" / "i.log", "kept: inside a repository for git");
  write_file(repo / "vendor" / "other" / "inner" / ".env", "kept too");

  const std::set<std::string> want = git_kept_files(tmp, repo);
  for (const char* f : {"vendor/lib/debug.log", "vendor/lib/.env", "vendor/lib/new.py", "vendor/lib/sub/s.log",
                        "vendor/other/debug.log"}) {
    INFO(f);
    CHECK_FALSE(want.count(f));
  }
  for (const char* f : {"vendor/lib/a.py", "vendor/lib/tracked.log", "vendor/lib/sub/s.py", "vendor/other/x.py",
                        "vendor/other/inner/i.log", "vendor/other/inner/.env"}) {
    INFO(f);
    CHECK(want.count(f));
  }
  CHECK(kiln_files(repo, 1) == without_dotgit(want));
  CHECK(kiln_files(repo, 4) == without_dotgit(want));
  // From a subdirectory too (the index is cut to it, as ls-files cuts it).
  CHECK(kiln_files(repo / "vendor", 1) == without_dotgit(git_kept_files(tmp, repo / "vendor")));
  CHECK(kiln_files(repo / "vendor", 4) == without_dotgit(git_kept_files(tmp, repo / "vendor")));

  SECTION("under core.ignorecase the index is asked without regard to case") {
    git(tmp, repo, "config core.ignorecase true");
    git(tmp, repo, "mv vendor/lib/a.py vendor/lib/A.py");
    git(tmp, repo, "commit -q -m case");
    // The index says "vendor/lib/A.py"; on disk the directory is renamed "Vendor/Lib" behind git's back.
    fs::rename(repo / "vendor", repo / "Vendor");
    fs::rename(repo / "Vendor" / "lib", repo / "Vendor" / "Lib");
    const std::set<std::string> want_icase = git_kept_files(tmp, repo);
    CHECK_FALSE(want_icase.count("Vendor/Lib/debug.log"));
    CHECK(want_icase.count("Vendor/other/inner/i.log"));
    CHECK(kiln_files(repo, 1) == without_dotgit(want_icase));
    CHECK(kiln_files(repo, 4) == without_dotgit(want_icase));
  }
}

TEST_CASE("fileset/git: a .git that leads back to the repository's own git directory", "[git]") {
  if (!have_git()) {
    WARN("SKIPPED: git is not installed");
    return;
  }
  TempDir tmp;
  HomeEnv home(tmp);
  const fs::path repo = tmp / "repo";
  write_file(repo / ".gitignore", "*.log\n");
  write_file(repo / "main.py", "x");
  git(tmp, repo, "init -q");
  git(tmp, repo, "add .gitignore main.py");
  git(tmp, repo, "commit -q -m init");
  auto dir = [&](const std::string& name) {
    write_file(repo / name / "a.py", "kept");
    write_file(repo / name / "x.log", "ignored when git applies the outer rules here");
    return repo / name;
  };
  // A symlink to the repository's own .git: git compares real paths, and walks the directory as
  // its own (outer rules apply), reading nothing through the link.
  fs::create_symlink("../.git", dir("sym-rel") / ".git");
  fs::create_symlink((repo / ".git").string(), dir("sym-abs") / ".git");
  write_file(dir("deep") / "pkg" / "x.log", "ignored");
  fs::create_symlink("../../.git", repo / "deep" / "pkg" / ".git");
  // A .git file naming it: the file is not the git directory, so git takes the directory for
  // another repository (no outer rule inside); flytekit bakes the .git file itself.
  write_file(dir("gitfile") / ".git", "gitdir: ../.git\n");
  write_file(dir("gitfile-abs") / ".git", "gitdir: " + (repo / ".git").string() + "\n");
  // Links that lead nowhere a walk could loop: to itself, to its own directory, to a file.
  fs::create_symlink(".git", dir("self") / ".git");
  fs::create_symlink("../loop", dir("loop") / ".git");
  fs::create_symlink("../main.py", dir("to-file") / ".git");
  // A .git symlink into the outer .git inside a directory the index tracks files in.
  write_file(dir("tracked") / "t.py", "tracked");
  git(tmp, repo, "add tracked/t.py");
  git(tmp, repo, "commit -q -m t");
  fs::create_symlink("../.git", repo / "tracked" / ".git");

  const std::set<std::string> want = git_kept_files(tmp, repo);
  for (const char* d : {"sym-rel", "sym-abs", "self", "loop", "to-file", "tracked"}) {
    INFO(d);
    CHECK(want.count(std::string(d) + "/a.py"));
    CHECK_FALSE(want.count(std::string(d) + "/x.log"));
  }
  CHECK_FALSE(want.count("deep/pkg/x.log"));
  for (const char* d : {"gitfile", "gitfile-abs"}) {
    INFO(d);
    CHECK(want.count(std::string(d) + "/x.log"));
  }
  const fs::path memo = tmp / "store" / "stat" / "git.json";
  fs::create_directories(tmp / "store" / "stat");
  fs::create_directories(tmp / "store" / "tmp");
  CHECK(kiln_files(repo, 1) == without_dotgit(want));
  CHECK(kiln_files(repo, 4) == without_dotgit(want));
  // A memo is written only when nothing it watches changed within the last second.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  CHECK(kiln_files(repo, 1, memo) == without_dotgit(want));  // writes the memo
  CHECK(GitRepo::open_remembered(repo.string(), memo)->from_memo());
  CHECK(kiln_files(repo, 4, memo) == without_dotgit(want));  // the git directory from the memo
  // From a source root below the link's target: the .git leads outside source_root, to the
  // repository's git directory, which is not read through it.
  CHECK(kiln_files(repo / "deep", 1) == without_dotgit(git_kept_files(tmp, repo / "deep")));
  CHECK_FALSE(kiln_files(repo / "deep", 1).count("pkg/x.log"));
  // The .git entries themselves: symlinks are stored as symlinks (never followed, nothing read
  // through them); a .git file is a file, as flytekit bakes it.
  const FileSet set = collect_files(spec_all(repo));
  std::set<std::string> dotgit;
  for (const FileEntry& e : set.source)
    if (std::string(e.rel()).ends_with(".git"))
      dotgit.insert(std::string(e.rel()) + (e.type == FileEntry::Type::Symlink ? " -> " + e.link_target() : ""));
  CHECK(dotgit == std::set<std::string>{"deep/pkg/.git -> ../../.git", "gitfile-abs/.git", "gitfile/.git",
                                        "loop/.git -> ../loop", "self/.git -> .git", "sym-abs/.git -> " + (repo / ".git").string(),
                                        "sym-rel/.git -> ../.git", "to-file/.git -> ../main.py",
                                        "tracked/.git -> ../.git"});
  for (const FileEntry& e : set.source) CHECK(std::string(e.rel()).find(".git/") == std::string::npos);
}
