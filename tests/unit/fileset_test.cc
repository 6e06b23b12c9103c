// Unit tests for layers/fileset: collect_files under each copy mode, the safety rules (fifos,
// non-UTF-8 names, symlinks), mode normalization, copy entries, hash_files and the StatIndex.
#include "layers/fileset.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "layers/digest.h"
#include "testutil.h"

using namespace kiln::layers;
using kiln::spec::CopyMode;
using kiln::spec::ImageSpec;
using kiln::testutil::contains;
using kiln::testutil::TempDir;
using kiln::testutil::write_file;
namespace fs = std::filesystem;

namespace {

ImageSpec spec_for(const TempDir& tmp, CopyMode mode, const std::string& src = "src") {
  ImageSpec s;
  s.base_dir = tmp.path();
  s.origin = "test";
  s.source_root = tmp / src;
  s.source_copy_mode = mode;
  return s;
}

/// "rel dest type mode size [-> target]" per entry, for exact comparisons.
std::vector<std::string> describe(const std::vector<FileEntry>& v) {
  std::vector<std::string> out;
  for (const FileEntry& e : v) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", e.mode);
    std::string t = e.type == FileEntry::Type::File ? "f" : e.type == FileEntry::Type::Dir ? "d" : "l";
    std::string s = std::string(e.rel()) + " " + e.dest + " " + t + " " + mode + " " + std::to_string(e.size);
    if (e.type == FileEntry::Type::Symlink) s += " -> " + e.link_target();
    out.push_back(s);
  }
  return out;
}

const FileEntry* find(const std::vector<FileEntry>& v, const std::string& rel) {
  for (const FileEntry& e : v)
    if (e.rel() == rel) return &e;
  return nullptr;
}

/// The "all" fixture: source files, ignored files of every kind, a symlink and an empty directory.
void make_project(const TempDir& tmp) {
  const fs::path src = tmp / "src";
  write_file(src / ".git" / "HEAD", "ref: refs/heads/main\n");
  write_file(src / ".gitignore", "*.log\nbuild/\n");
  write_file(src / ".dockerignore", "secret.txt\n");
  write_file(src / "app.log", "log line\n");
  write_file(src / "build" / "out.bin", "binary");
  write_file(src / "secret.txt", "hunter2");
  write_file(src / "main.py", "print('hi')\n", 0600);
  write_file(src / "run.sh", "#!/bin/sh\n", 0700);
  write_file(src / "pkg" / "__init__.py", "");
  write_file(src / "pkg" / "mod.py", "x = 1\n", 0640);
  write_file(src / "pkg" / "__pycache__" / "mod.cpython-312.pyc", "pyc");
  write_file(src / "pkg" / "old.pyc", "pyc");
  write_file(src / "pkg" / ".gitignore", "gen_*.py\n");
  write_file(src / "pkg" / "gen_a.py", "generated\n");
  write_file(src / "pkg" / "tool", "#!/bin/sh\n", 0711);  // any x bit: 0755
  fs::create_directories(src / "data");
  ::chmod((src / "data").c_str(), 0700);
  fs::create_symlink("pkg/mod.py", src / "link");
}

}  // namespace

TEST_CASE("fileset: collect_files in 'all' mode applies builtin, .gitignore and .dockerignore rules") {
  TempDir tmp;
  make_project(tmp);
  ImageSpec spec = spec_for(tmp, CopyMode::All);
  FileSet set = collect_files(spec);
  CHECK(set.has_source);
  CHECK(set.mode == CopyMode::All);
  CHECK(set.dest == "/root");
  CHECK(set.warnings.empty());
  CHECK(set.copy.empty());
  CHECK(describe(set.source) == std::vector<std::string>{
                                    ".dockerignore root/.dockerignore f 0644 11",
                                    ".gitignore root/.gitignore f 0644 13",
                                    // No "data": an empty directory is not baked (flytekit copies
                                    // files, so its image has no empty directories).
                                    "link root/link l 0777 0 -> pkg/mod.py",
                                    "main.py root/main.py f 0644 12",
                                    "pkg root/pkg d 0755 0",
                                    "pkg/.gitignore root/pkg/.gitignore f 0644 9",
                                    "pkg/__init__.py root/pkg/__init__.py f 0644 0",
                                    "pkg/mod.py root/pkg/mod.py f 0644 6",
                                    "pkg/tool root/pkg/tool f 0755 10",
                                    "run.sh root/run.sh f 0755 10",
                                });
  const std::string root = (tmp / "src").string();
  for (const FileEntry& e : set.source) {
    INFO(e.rel());
    CHECK(e.abs() == root + "/" + std::string(e.rel()));
    CHECK(e.sha256.empty());  // collect_files reads no content
    struct stat st{};
    REQUIRE(::lstat(e.abs().c_str(), &st) == 0);
    CHECK(e.key.ino == st.st_ino);
    CHECK(e.key.dev == st.st_dev);
    CHECK(e.key.mtime_ns == std::int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec);
    CHECK(e.key.size == (e.type == FileEntry::Type::File ? static_cast<std::uint64_t>(st.st_size) : 0u));
  }
  CHECK(set.total_bytes() == 11 + 13 + 12 + 9 + 0 + 6 + 10 + 10);
}

TEST_CASE("fileset: source_dest sets the destination prefix") {
  TempDir tmp;
  write_file(tmp / "src" / "a.py", "a");
  ImageSpec spec = spec_for(tmp, CopyMode::All);
  spec.source_dest = "/opt/app/";
  FileSet set = collect_files(spec);
  CHECK(set.dest == "/opt/app/");
  CHECK(describe(set.source) == std::vector<std::string>{"a.py opt/app/a.py f 0644 1"});
}

TEST_CASE("fileset: a .dockerignore '!' re-includes a file under an excluded directory") {
  TempDir tmp;
  write_file(tmp / "src" / ".dockerignore", "vendor\n!vendor/keep.py\n");
  write_file(tmp / "src" / "vendor" / "keep.py", "k");
  write_file(tmp / "src" / "vendor" / "drop.py", "d");
  FileSet set = collect_files(spec_for(tmp, CopyMode::All));
  // Directories are listed when they hold a baked file, whatever the rules say of the directory.
  CHECK(describe(set.source) == std::vector<std::string>{".dockerignore root/.dockerignore f 0644 23",
                                                          "vendor root/vendor d 0755 0",
                                                          "vendor/keep.py root/vendor/keep.py f 0644 1"});
}

TEST_CASE("fileset: symlinks are stored as symlinks; one pointing outside gives a warning") {
  TempDir tmp;
  write_file(tmp / "outside.txt", "secret");
  write_file(tmp / "src" / "main.py", "x");
  fs::create_symlink("../outside.txt", tmp / "src" / "up");
  fs::create_symlink("/etc/passwd", tmp / "src" / "abs");
  fs::create_directories(tmp / "src" / "pkg");
  fs::create_symlink("../main.py", tmp / "src" / "pkg" / "inside");
  fs::create_symlink(tmp / "outside-dir-does-not-exist", tmp / "src" / "dangling");
  FileSet set = collect_files(spec_for(tmp, CopyMode::All));
  CHECK(describe(set.source) ==
        std::vector<std::string>{"abs root/abs l 0777 0 -> /etc/passwd",
                                 "dangling root/dangling l 0777 0 -> " + (tmp / "outside-dir-does-not-exist").string(),
                                 "main.py root/main.py f 0644 1", "pkg root/pkg d 0755 0",
                                 "pkg/inside root/pkg/inside l 0777 0 -> ../main.py",
                                 "up root/up l 0777 0 -> ../outside.txt"});
  REQUIRE(set.warnings.size() == 3);
  std::string all;
  for (auto& w : set.warnings) all += w + "\n";
  CHECK(contains(all, "'abs'"));
  CHECK(contains(all, "'up'"));
  CHECK(contains(all, "'dangling'"));
  CHECK_FALSE(contains(all, "inside"));
}

TEST_CASE("fileset: a fifo is refused") {
  TempDir tmp;
  write_file(tmp / "src" / "a.py", "a");
  REQUIRE(::mkfifo((tmp / "src" / "pipe").c_str(), 0644) == 0);
  CHECK_THROWS_MATCHES(collect_files(spec_for(tmp, CopyMode::All)), InputError,
                       Catch::Matchers::Predicate<InputError>([&](const InputError& e) {
                         std::string m = e.what();
                         return contains(m, "fifo") && contains(m, (tmp / "src" / "pipe").string());
                       }));
  // Excluded by .dockerignore, it is never looked at.
  write_file(tmp / "src" / ".dockerignore", "pipe\n");
  FileSet set = collect_files(spec_for(tmp, CopyMode::All));
  CHECK_FALSE(set.contains_source_file("pipe"));
  CHECK(set.contains_source_file("a.py"));
  // Listed as a loaded module, it is refused too.
  ImageSpec lm = spec_for(tmp, CopyMode::LoadedModules);
  lm.loaded_modules = {"pipe"};
  CHECK_THROWS_AS(collect_files(lm), InputError);
}

TEST_CASE("fileset: a non-UTF-8 file name is refused unless excluded") {
  TempDir tmp;
  write_file(tmp / "src" / "a.py", "a");
  write_file(tmp / "src" / "bad\xff.txt", "b");
  CHECK_THROWS_MATCHES(collect_files(spec_for(tmp, CopyMode::All)), InputError,
                       Catch::Matchers::Predicate<InputError>([](const InputError& e) {
                         std::string m = e.what();
                         return contains(m, "UTF-8") && contains(m, "bad\\xff.txt");
                       }));
  // The message suggests excluding it with .dockerignore: that must work.
  write_file(tmp / "src" / ".dockerignore", "bad*\n");
  FileSet set = collect_files(spec_for(tmp, CopyMode::All));
  CHECK(describe(set.source) == std::vector<std::string>{".dockerignore root/.dockerignore f 0644 5",
                                                          "a.py root/a.py f 0644 1"});
  // ... and so must a .gitignore.
  fs::remove(tmp / "src" / ".dockerignore");
  write_file(tmp / "src" / ".gitignore", "*.txt\n");
  CHECK(collect_files(spec_for(tmp, CopyMode::All)).source.size() == 2);
}

TEST_CASE("fileset: a non-UTF-8 name inside an excluded directory re-included by '!' is refused") {
  TempDir tmp;
  write_file(tmp / "src" / "d\xfe" / "keep.py", "k");
  write_file(tmp / "src" / ".dockerignore", "d*\n!**/keep.py\n");
  CHECK_THROWS_AS(collect_files(spec_for(tmp, CopyMode::All)), InputError);
}

TEST_CASE("fileset: a valid name below a non-UTF-8 directory is refused, naming the whole path") {
  // The walk checks a directory's path once and each name on its own: the two together must
  // refuse what checking the whole path refuses.
  TempDir tmp;
  write_file(tmp / "src" / "ok" / "d\xfe" / "sub" / "fine.py", "k");
  CHECK_THROWS_MATCHES(collect_files(spec_for(tmp, CopyMode::All)), InputError,
                       Catch::Matchers::Predicate<InputError>([](const InputError& e) {
                         return contains(e.what(), "UTF-8") && contains(e.what(), "ok/d\\xfe/sub/fine.py");
                       }));
  // A multibyte name split by no '/' stays valid below valid directories.
  fs::remove_all(tmp / "src" / "ok");
  write_file(tmp / "src" / "caf\xc3\xa9" / "\xe6\x97\xa5.py", "k");
  CHECK(collect_files(spec_for(tmp, CopyMode::All)).source.size() == 2);
}

TEST_CASE("fileset: FileEntry keeps rel as the tail of dest when it is one, else on its own") {
  FileEntry tail;
  tail.set_paths("pkg/mod.py", "root/pkg/mod.py");
  CHECK(tail.rel() == "pkg/mod.py");
  CHECK(tail.dest == "root/pkg/mod.py");
  CHECK_FALSE(tail.owns_rel());  // no second string
  FileEntry own;
  own.set_paths("data/x.csv", "root/renamed.csv");
  CHECK(own.rel() == "data/x.csv");
  CHECK(own.dest == "root/renamed.csv");
  FileEntry same;  // source_dest "/": dest is rel
  same.set_paths("a.py", "a.py");
  CHECK(same.rel() == "a.py");
  // Copied and moved, short (in-place) strings included, the views follow the entry.
  std::vector<FileEntry> v;
  for (int i = 0; i < 100; ++i) {
    FileEntry e;
    e.set_paths("f" + std::to_string(i), "r/f" + std::to_string(i));
    v.push_back(e);
  }
  std::vector<FileEntry> moved = std::move(v);
  for (int i = 0; i < 100; ++i) CHECK(moved[static_cast<std::size_t>(i)].rel() == "f" + std::to_string(i));
  FileEntry copy = own;
  CHECK(copy.rel() == "data/x.csv");
  // A link lives beside an own rel; a copy is deep, and clearing both frees the extra.
  own.type = FileEntry::Type::Symlink;
  own.set_link("../target");
  FileEntry linked = own;
  own.set_link("");
  CHECK(own.link_target().empty());
  CHECK(own.rel() == "data/x.csv");
  CHECK(linked.link_target() == "../target");
  CHECK(linked.link_to().empty());  // a symlink's target is no hardlink
  CHECK(linked.rel() == "data/x.csv");
  linked.set_paths("x.csv", "root/x.csv");
  CHECK_FALSE(linked.owns_rel());
  CHECK(linked.link_target() == "../target");
}

TEST_CASE("fileset: a symlink's target and a file's first hardlink share one string, each read as its own") {
  TempDir tmp;
  write_file(tmp / "src" / "a.py", "a");
  fs::create_hard_link(tmp / "src" / "a.py", tmp / "src" / "b.py");
  fs::create_symlink("a.py", tmp / "src" / "l");
  FileSet set = collect_files(spec_for(tmp, CopyMode::All));
  const FileEntry* a = find(set.source, "a.py");
  const FileEntry* b = find(set.source, "b.py");
  const FileEntry* l = find(set.source, "l");
  REQUIRE((a && b && l));
  CHECK(a->link_to().empty());
  CHECK(b->link_to() == "root/a.py");
  CHECK(b->link_target().empty());  // a file has no symlink target
  CHECK(l->link_target() == "a.py");
  CHECK(l->link_to().empty());      // a symlink is no hardlink
}

TEST_CASE("fileset: a walk of more files than one chunk holds, serial and parallel, with and without a size hint") {
  TempDir tmp;
  const fs::path src = tmp / "src";
  // ~12,000 files over 12 directories: more than two 1 MiB chunks of entries per thread.
  for (int d = 0; d < 12; ++d)
    for (int f = 0; f < 1000; ++f) write_file(src / ("d" + std::to_string(d)) / ("f" + std::to_string(f)), "");
  CollectOptions one;
  one.jobs = 1;
  const FileSet serial = collect_files(spec_for(tmp, CopyMode::All), one);
  REQUIRE(serial.source.size() == 12 * 1000 + 12);
  CHECK(serial.source.capacity() == serial.source.size());  // no doubling's slack kept
  CHECK(std::is_sorted(serial.source.begin(), serial.source.end(),
                       [](const FileEntry& x, const FileEntry& y) { return x.rel() < y.rel(); }));
  for (int jobs : {1, 2, 4}) {
    for (std::size_t hint : {std::size_t(0), std::size_t(100), serial.source.size()}) {
      INFO("jobs " << jobs << " hint " << hint);
      CollectOptions o;
      o.jobs = jobs;
      o.expected_entries = hint;
      CHECK(describe(collect_files(spec_for(tmp, CopyMode::All), o).source) == describe(serial.source));
    }
  }
}

TEST_CASE("fileset: the walk reports every file it bakes and their bytes, in batches, at any thread count") {
  TempDir tmp;
  const fs::path src = tmp / "src";
  // One directory past the 256-file batch, a few small ones, a symlink, and ignored files (not
  // reported: they are not baked).
  for (int f = 0; f < 700; ++f) write_file(src / "big" / ("f" + std::to_string(f) + ".py"), std::string(f % 13, 'x'));
  for (int d = 0; d < 5; ++d) write_file(src / ("d" + std::to_string(d)) / "a.py", "abc");
  fs::create_symlink("d0/a.py", src / "link.py");
  write_file(src / "big" / "__pycache__" / "m.pyc", "ignored");
  write_file(src / ".dockerignore", "d4\n");
  for (int jobs : {1, 2, 4}) {
    INFO("jobs " << jobs);
    std::atomic<std::uint64_t> files{0}, bytes{0}, calls{0};
    CollectOptions o;
    o.jobs = jobs;
    o.walked = [&](std::uint64_t n, std::uint64_t b) {
      CHECK(n >= 1);
      CHECK(n <= 256);
      files += n;
      bytes += b;
      ++calls;
    };
    const FileSet set = collect_files(spec_for(tmp, CopyMode::All), o);
    std::uint64_t want_files = 0, want_bytes = 0;
    for (const auto& e : set.source)
      if (e.type != FileEntry::Type::Dir) ++want_files, want_bytes += e.size;
    CHECK(want_files == 700 + 4 + 1 + 1);  // big/, d0..d3, the symlink, .dockerignore
    CHECK(files == want_files);
    CHECK(bytes == want_bytes);
    CHECK(calls < want_files / 4);  // batched, not one call per file
  }
}

TEST_CASE("fileset: a .gitignore applies to its own subtree only, whichever thread walks it") {
  // The walkers add each .gitignore they meet to the shared rules (under their lock); it applies
  // to its own subtree only: a sibling never sees it, a deeper one overrides it, at every thread
  // count.
  TempDir tmp;
  const fs::path src = tmp / "src";
  write_file(src / ".gitignore", "*.tmp\n");
  write_file(src / "a" / ".gitignore", "x.py\n!keep.tmp\n");
  write_file(src / "a" / "x.py", "1");
  write_file(src / "a" / "keep.tmp", "1");
  write_file(src / "a" / "b" / "x.py", "1");
  write_file(src / "a" / "b" / "y.tmp", "1");
  write_file(src / "a" / "b" / "c" / ".gitignore", "!x.py\n");
  write_file(src / "a" / "b" / "c" / "x.py", "1");
  write_file(src / "c" / "x.py", "1");
  write_file(src / "c" / "z.tmp", "1");
  for (int d = 0; d < 40; ++d) {  // enough directories for the walkers to hand some over
    const fs::path dir = src / ("s" + std::to_string(d));
    write_file(dir / "x.py", "1");
    write_file(dir / "w.tmp", "1");
    if (d % 7 == 0) write_file(dir / ".gitignore", "x.py\n");
    if (d % 7 == 0) write_file(dir / "sub" / "x.py", "1");
  }
  CollectOptions one;
  one.jobs = 1;
  const FileSet serial = collect_files(spec_for(tmp, CopyMode::All), one);
  CHECK(find(serial.source, "a/x.py") == nullptr);
  CHECK(find(serial.source, "a/keep.tmp") != nullptr);
  CHECK(find(serial.source, "a/b/x.py") == nullptr);
  CHECK(find(serial.source, "a/b/y.tmp") == nullptr);
  CHECK(find(serial.source, "a/b/c/x.py") != nullptr);
  CHECK(find(serial.source, "c/x.py") != nullptr);
  CHECK(find(serial.source, "c/z.tmp") == nullptr);
  CHECK(find(serial.source, "s0/x.py") == nullptr);
  CHECK(find(serial.source, "s0/sub/x.py") == nullptr);
  CHECK(find(serial.source, "s1/x.py") != nullptr);
  CHECK(find(serial.source, "s1/w.tmp") == nullptr);
  for (int jobs : {2, 4}) {
    INFO("jobs " << jobs);
    CollectOptions o;
    o.jobs = jobs;
    for (int round = 0; round < 3; ++round) CHECK(describe(collect_files(spec_for(tmp, CopyMode::All), o).source) == describe(serial.source));
  }
}

TEST_CASE("fileset: valid_utf8") {
  CHECK(valid_utf8(""));
  CHECK(valid_utf8("plain.py"));
  CHECK(valid_utf8("caf\xc3\xa9"));
  CHECK(valid_utf8("\xe6\x97\xa5\xe6\x9c\xac"));
  CHECK(valid_utf8("\xf0\x9f\x98\x80"));         // U+1F600
  CHECK(valid_utf8("\xf4\x8f\xbf\xbf"));         // U+10FFFF, the last code point
  CHECK(valid_utf8("\xed\x9f\xbf"));             // U+D7FF, just below the surrogates
  CHECK(valid_utf8("\xee\x80\x80"));             // U+E000, just above
  CHECK_FALSE(valid_utf8("\xff"));
  CHECK_FALSE(valid_utf8("\x80"));               // lone continuation byte
  CHECK_FALSE(valid_utf8("a\xc3"));              // truncated 2-byte sequence
  CHECK_FALSE(valid_utf8("\xe6\x97"));           // truncated 3-byte sequence
  CHECK_FALSE(valid_utf8("\xc3\x28"));           // bad continuation
  CHECK_FALSE(valid_utf8("\xc0\xaf"));           // overlong '/'
  CHECK_FALSE(valid_utf8("\xe0\x80\xaf"));       // overlong '/' in 3 bytes
  CHECK_FALSE(valid_utf8("\xf0\x80\x80\xaf"));   // overlong '/' in 4 bytes
  CHECK_FALSE(valid_utf8("\xed\xa0\x80"));       // U+D800, a surrogate
  CHECK_FALSE(valid_utf8("\xf4\x90\x80\x80"));   // U+110000, beyond Unicode
  CHECK_FALSE(valid_utf8("\xf5\x80\x80\x80"));
}

TEST_CASE("fileset: collect_files in 'loaded_modules' mode takes the listed files only") {
  TempDir tmp;
  const fs::path src = tmp / "src";
  write_file(src / "app.py", "app");
  write_file(src / "pkg" / "mod.py", "mod");
  write_file(src / "pkg" / "other.py", "other");
  write_file(src / "util" / "a.py", "a");
  write_file(src / "util" / "b.py", "bb", 0700);
  write_file(src / "util" / "__pycache__" / "c.cpython-312.pyc", "pyc");
  write_file(src / "util" / "sub" / "d.py", "ddd");
  write_file(src / "util" / ".gitignore", "b.py\n");  // not applied in this mode

  ImageSpec spec = spec_for(tmp, CopyMode::LoadedModules);
  spec.loaded_modules = {"app.py", "util/"};
  FileSet set = collect_files(spec, {"pkg/mod.py", "./app.py"});
  CHECK(set.has_source);
  CHECK(set.mode == CopyMode::LoadedModules);
  CHECK(describe(set.source) == std::vector<std::string>{
                                    "app.py root/app.py f 0644 3",
                                    "pkg/mod.py root/pkg/mod.py f 0644 3",
                                    "util root/util d 0755 0",
                                    "util/.gitignore root/util/.gitignore f 0644 5",
                                    "util/a.py root/util/a.py f 0644 1",
                                    "util/b.py root/util/b.py f 0755 2",
                                    "util/sub root/util/sub d 0755 0",
                                    "util/sub/d.py root/util/sub/d.py f 0644 3",
                                });
  CHECK(find(set.source, "util/sub/d.py")->abs() == (src / "util" / "sub" / "d.py").string());
  CHECK(set.warnings.empty());

  // A module reached through a symlinked directory that stays inside the root is fine.
  fs::create_directory_symlink("pkg", src / "alias");
  ImageSpec alias = spec_for(tmp, CopyMode::LoadedModules);
  alias.loaded_modules = {"alias/mod.py"};
  CHECK(describe(collect_files(alias).source) == std::vector<std::string>{"alias/mod.py root/alias/mod.py f 0644 3"});
}

TEST_CASE("fileset: loaded_modules errors") {
  TempDir tmp;
  write_file(tmp / "src" / "app.py", "app");
  write_file(tmp / "outside" / "evil.py", "evil");
  fs::create_directory_symlink(tmp / "outside", tmp / "src" / "ext");
  fs::create_directory_symlink("../outside", tmp / "src" / "ext2");
  ImageSpec spec = spec_for(tmp, CopyMode::LoadedModules);

  SECTION("missing module") {
    spec.loaded_modules = {"app.py", "nope.py"};
    CHECK_THROWS_MATCHES(collect_files(spec), InputError,
                         Catch::Matchers::Predicate<InputError>(
                             [](const InputError& e) { return contains(e.what(), "nope.py"); }));
    spec.loaded_modules = {"app.py"};
    CHECK_THROWS_AS(collect_files(spec, {"missing/mod.py"}), InputError);
  }
  SECTION("module through a symlinked directory pointing outside") {
    spec.loaded_modules = {"ext/evil.py"};
    CHECK_THROWS_MATCHES(collect_files(spec), InputError,
                         Catch::Matchers::Predicate<InputError>(
                             [](const InputError& e) { return contains(e.what(), "outside"); }));
    spec.loaded_modules = {"ext2/evil.py"};
    CHECK_THROWS_AS(collect_files(spec), InputError);
  }
  SECTION("paths that leave the root") {
    for (const char* bad : {"../outside/evil.py", "/etc/passwd", "", ".", "..", "a/../../outside/evil.py"}) {
      INFO("module '" << bad << "'");
      spec.loaded_modules = {bad};
      CHECK_THROWS_AS(collect_files(spec), InputError);
    }
  }
}

TEST_CASE("fileset: no_copy copies nothing") {
  TempDir tmp;
  make_project(tmp);
  ImageSpec spec = spec_for(tmp, CopyMode::NoCopy);
  FileSet set = collect_files(spec, {"main.py"});
  CHECK_FALSE(set.has_source);
  CHECK(set.mode == CopyMode::NoCopy);
  CHECK(set.source.empty());
  CHECK(set.copy.empty());
  CHECK(set.total_bytes() == 0);

  // No source_root at all: nothing either, whatever the copy mode says.
  ImageSpec none;
  none.base_dir = tmp.path();
  none.source_copy_mode = CopyMode::All;
  FileSet empty = collect_files(none);
  CHECK_FALSE(empty.has_source);
  CHECK(empty.mode == CopyMode::NoCopy);
  CHECK(empty.source.empty());
}

TEST_CASE("fileset: a missing or non-directory source_root is an InputError") {
  TempDir tmp;
  CHECK_THROWS_MATCHES(collect_files(spec_for(tmp, CopyMode::All, "nope")), InputError,
                       Catch::Matchers::Predicate<InputError>(
                           [](const InputError& e) { return contains(e.what(), "does not exist"); }));
  write_file(tmp / "file", "x");
  CHECK_THROWS_MATCHES(collect_files(spec_for(tmp, CopyMode::LoadedModules, "file")), InputError,
                       Catch::Matchers::Predicate<InputError>(
                           [](const InputError& e) { return contains(e.what(), "not a directory"); }));
}

// flytekit copies a `copy` directory with shutil.copytree: everything in it, __pycache__ and .git too.
TEST_CASE("fileset: copy entries land at root/<rel>") {
  TempDir tmp;
  const fs::path proj = tmp / "proj";
  write_file(proj / "conf" / "app.toml", "[app]\n");
  write_file(proj / "assets" / "logo.png", "PNG");
  write_file(proj / "assets" / "__pycache__" / "x.pyc", "pyc");
  write_file(proj / "assets" / "sub" / "i.txt", "iiii", 0755);
  ImageSpec spec;
  spec.base_dir = proj;
  spec.copy = {"conf/app.toml", "assets", "conf/app.toml"};
  FileSet set = collect_files(spec);
  CHECK_FALSE(set.has_source);
  CHECK(set.source.empty());
  CHECK(describe(set.copy) == std::vector<std::string>{
                                  "assets root/assets d 0755 0",
                                  "assets/__pycache__ root/assets/__pycache__ d 0755 0",
                                  "assets/__pycache__/x.pyc root/assets/__pycache__/x.pyc f 0644 3",
                                  "assets/logo.png root/assets/logo.png f 0644 3",
                                  "assets/sub root/assets/sub d 0755 0",
                                  "assets/sub/i.txt root/assets/sub/i.txt f 0755 4",
                                  "conf/app.toml root/conf/app.toml f 0644 6",
                              });
  CHECK(find(set.copy, "conf/app.toml")->abs() == (proj / "conf" / "app.toml").string());
  CHECK(set.total_bytes() == 3 + 3 + 4 + 6);

  // copy ["."]: the whole directory at root/ (flytekit: COPY . /root/./).
  spec.copy = {"."};
  FileSet all = collect_files(spec);
  CHECK(describe(all.copy) == std::vector<std::string>{
                                  "assets root/assets d 0755 0",
                                  "assets/__pycache__ root/assets/__pycache__ d 0755 0",
                                  "assets/__pycache__/x.pyc root/assets/__pycache__/x.pyc f 0644 3",
                                  "assets/logo.png root/assets/logo.png f 0644 3",
                                  "assets/sub root/assets/sub d 0755 0",
                                  "assets/sub/i.txt root/assets/sub/i.txt f 0755 4",
                                  "conf root/conf d 0755 0",
                                  "conf/app.toml root/conf/app.toml f 0644 6",
                              });

  spec.copy = {"conf/missing.toml"};
  CHECK_THROWS_MATCHES(collect_files(spec), InputError,
                       Catch::Matchers::Predicate<InputError>(
                           [](const InputError& e) { return contains(e.what(), "conf/missing.toml"); }));
  spec.copy = {"../outside"};
  fs::create_directories(tmp / "outside");
  CHECK_THROWS_AS(collect_files(spec), InputError);
}

TEST_CASE("fileset: contains_source_file") {
  TempDir tmp;
  make_project(tmp);
  FileSet set = collect_files(spec_for(tmp, CopyMode::All));
  CHECK(set.contains_source_file("main.py"));
  CHECK(set.contains_source_file("pkg/mod.py"));
  CHECK(set.contains_source_file("pkg/__init__.py"));
  CHECK(set.contains_source_file("link"));       // a symlink is baked in
  CHECK(set.contains_source_file(".gitignore"));
  CHECK_FALSE(set.contains_source_file("pkg"));  // a directory is not a file
  CHECK_FALSE(set.contains_source_file("data"));
  CHECK_FALSE(set.contains_source_file("secret.txt"));
  CHECK_FALSE(set.contains_source_file("app.log"));
  CHECK_FALSE(set.contains_source_file("pkg/old.pyc"));
  CHECK_FALSE(set.contains_source_file("pkg/gen_a.py"));
  CHECK_FALSE(set.contains_source_file(".git/HEAD"));
  CHECK_FALSE(set.contains_source_file("nope.py"));
  CHECK_FALSE(set.contains_source_file(""));
  CHECK_FALSE(set.contains_source_file("main.p"));
  CHECK_FALSE(set.contains_source_file("main.py/"));

  FileSet empty;
  CHECK_FALSE(empty.contains_source_file("main.py"));
}

TEST_CASE("fileset: source_file_resolves follows symlinks through the baked set only") {
  TempDir tmp;
  fs::create_directories(tmp / "src/pkg");
  fs::create_directories(tmp / "outside");
  write_file(tmp / "outside/o.py", "o\n");
  write_file(tmp / "src/pkg/mod.py", "m\n");
  write_file(tmp / "src/ignored.log", "l\n");
  write_file(tmp / "src/.dockerignore", "*.log\n");
  fs::create_symlink("mod.py", tmp / "src/pkg/alias.py");              // inside: resolves
  fs::create_symlink("pkg", tmp / "src/pkgdir");                       // a directory link inside
  fs::create_symlink("../../outside/o.py", tmp / "src/pkg/out.py");    // leads out of the root
  fs::create_symlink("ignored.log", tmp / "src/to_ignored.py");        // to a file not baked
  fs::create_symlink("loop_b", tmp / "src/loop_a");
  fs::create_symlink("loop_a", tmp / "src/loop_b");
  fs::create_symlink("/root/pkg/mod.py", tmp / "src/abs_in.py");       // absolute, in the image at source_dest
  fs::create_symlink("/usr/lib/x.py", tmp / "src/abs_out.py");         // absolute, elsewhere
  fs::create_symlink("pkg", tmp / "src/dirlink_only");                 // ends at a directory
  ImageSpec s;
  s.source_root = (tmp / "src").string();
  s.source_copy_mode = CopyMode::All;
  s.source_dest = "/root";
  FileSet set = collect_files(s);
  std::string why;
  CHECK(set.source_file_resolves("pkg/mod.py", &why));
  CHECK(set.source_file_resolves("pkg/alias.py"));
  CHECK(set.source_file_resolves("pkgdir/mod.py"));
  CHECK(set.source_file_resolves("pkgdir/alias.py"));
  CHECK(set.source_file_resolves("abs_in.py"));
  CHECK_FALSE(set.source_file_resolves("pkg/out.py", &why));
  CHECK(contains(why, "'pkg/out.py' is a symlink to '../../outside/o.py'"));
  CHECK(contains(why, "outside source_root"));
  why.clear();
  CHECK_FALSE(set.source_file_resolves("to_ignored.py", &why));
  CHECK(contains(why, "not baked"));
  why.clear();
  CHECK_FALSE(set.source_file_resolves("loop_a", &why));
  CHECK(contains(why, "loop"));
  CHECK_FALSE(set.source_file_resolves("abs_out.py"));
  CHECK_FALSE(set.source_file_resolves("dirlink_only"));
  why.clear();
  CHECK_FALSE(set.source_file_resolves("pkg", &why));  // a directory is not a file, and no link
  CHECK(why.empty());
  CHECK_FALSE(set.source_file_resolves("nope.py"));
  CHECK_FALSE(set.source_file_resolves("pkg/mod.py/x"));
  // What the old check said: every one of these links is in the set.
  CHECK(set.contains_source_file("pkg/out.py"));
}

TEST_CASE("fileset: a listed module that is a symlink out of source_root is kept as a link, with a warning") {
  TempDir tmp;
  fs::create_directories(tmp / "src");
  fs::create_directories(tmp / "common");
  write_file(tmp / "common/shared.py", "s\n");
  write_file(tmp / "src/a.py", "a\n");
  fs::create_symlink("../common/shared.py", tmp / "src/shared.py");
  ImageSpec s;
  s.source_root = (tmp / "src").string();
  s.source_copy_mode = CopyMode::LoadedModules;
  s.loaded_modules = {"a.py", "shared.py"};
  FileSet set = collect_files(s);
  REQUIRE(set.warnings.size() == 1);
  CHECK(contains(set.warnings[0], "loaded module 'shared.py' is a symlink pointing outside source_root"));
  CHECK_FALSE(set.source_file_resolves("shared.py"));
  CHECK(set.source_file_resolves("a.py"));
}

TEST_CASE("fileset: hash_files fills sha256 for files only") {
  TempDir tmp;
  make_project(tmp);
  write_file(tmp / "big.bin", kiln::testutil::random_bytes(3 << 20, 77));
  ImageSpec spec = spec_for(tmp, CopyMode::All);
  spec.copy = {"big.bin"};
  FileSet set = collect_files(spec);
  hash_files(set, nullptr, 4);
  for (auto* list : {&set.source, &set.copy}) {
    for (const FileEntry& e : *list) {
      INFO(e.rel());
      if (e.type == FileEntry::Type::File) {
        CHECK(e.sha256.hex() == sha256_hex(kiln::testutil::read_file(e.abs())));
      } else {
        CHECK(e.sha256.empty());
      }
    }
  }
  CHECK(find(set.source, "pkg/__init__.py")->sha256.hex() == sha256_hex(""));
  CHECK(find(set.source, "main.py")->sha256.hex() == sha256_hex("print('hi')\n"));
  REQUIRE(set.copy.size() == 1);
  CHECK(set.copy[0].sha256.hex() == sha256_hex(kiln::testutil::random_bytes(3 << 20, 77)));

  // One thread gives the same result.
  FileSet one = collect_files(spec);
  hash_files(one, nullptr, 1);
  CHECK(find(one.source, "main.py")->sha256.hex() == find(set.source, "main.py")->sha256.hex());
  CHECK(one.copy[0].sha256.hex() == set.copy[0].sha256.hex());
}

TEST_CASE("fileset: hash_files on a file removed since the walk is an InputError naming it") {
  TempDir tmp;
  write_file(tmp / "src" / "a.py", "a");
  write_file(tmp / "src" / "b.py", "b");
  FileSet set = collect_files(spec_for(tmp, CopyMode::All));
  fs::remove(tmp / "src" / "b.py");
  CHECK_THROWS_MATCHES(hash_files(set, nullptr, 2), InputError,
                       Catch::Matchers::Predicate<InputError>([&](const InputError& e) {
                         return contains(e.what(), (tmp / "src" / "b.py").string());
                       }));
}

// How this proves the StatIndex is used (running as root, chmod cannot make a file unreadable,
// and rewriting a file in place changes its ctime, which is part of the identity): the index is
// seeded through the public API with the files' *real* stat identities but *fake* hashes. A
// sha256 that comes back fake can only have come from the index — the file was not read. Files
// that must be re-read (changed identity, racy, unknown) come back with their real hash. Finally,
// StatIndex::save() rewrites the file only after update(), which hash_files() calls for every file
// it read: an index file left untouched (same inode and mtime) means nothing was hashed.
//
// An entry is trusted only if its mtime and ctime are more than 1 s older than the index's write
// time; ctime cannot be set back, so the test sleeps 1.1 s once.
TEST_CASE("fileset: hash_files uses the StatIndex and re-reads only what it must") {
  TempDir tmp;
  Store store(tmp / "cache");
  const fs::path src = tmp / "src";
  write_file(src / "a.py", "aaaa");
  write_file(src / "b.py", "bbbb");
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  write_file(src / "r.py", "rrrr");  // racy: changed within 1 s of the index write

  auto fake = [](const std::string& rel) { return sha256_hex("fake:" + rel); };
  ImageSpec spec = spec_for(tmp, CopyMode::LoadedModules);
  spec.loaded_modules = {"a.py", "b.py", "r.py"};
  ImageSpec only_a = spec_for(tmp, CopyMode::LoadedModules);
  only_a.loaded_modules = {"a.py"};

  const fs::path idx_all = store.stat_index_path("all");
  const fs::path idx_a = store.stat_index_path("only-a");
  {
    FileSet set = collect_files(spec);
    StatIndex seed, seed_a;
    for (const FileEntry& e : set.source) {
      seed.update(e.rel(), e.key, fake(std::string(e.rel())));
      if (e.rel() == "a.py") seed_a.update(e.rel(), e.key, fake(std::string(e.rel())));
    }
    seed.save(idx_all);
    seed_a.save(idx_a);
  }

  // Run 2: a and b come from the index, r is racy and is read.
  {
    StatIndex idx;
    idx.load(idx_all);
    FileSet set = collect_files(spec);
    hash_files(set, &idx, 4);
    CHECK(find(set.source, "a.py")->sha256.hex() == fake("a.py"));
    CHECK(find(set.source, "b.py")->sha256.hex() == fake("b.py"));
    CHECK(find(set.source, "r.py")->sha256.hex() == sha256_hex("rrrr"));
  }

  // Run 3: everything trusted, nothing read, and the index is not rewritten.
  {
    const auto before = fs::last_write_time(idx_a);
    struct stat st0{};
    REQUIRE(::stat(idx_a.c_str(), &st0) == 0);
    StatIndex idx;
    idx.load(idx_a);
    FileSet set = collect_files(only_a);
    hash_files(set, &idx, 4);
    CHECK(find(set.source, "a.py")->sha256.hex() == fake("a.py"));
    idx.save(idx_a);
    struct stat st1{};
    REQUIRE(::stat(idx_a.c_str(), &st1) == 0);
    CHECK(st1.st_ino == st0.st_ino);
    CHECK(fs::last_write_time(idx_a) == before);
  }

  // Run 4: b changed (new size; mtime restored) — its identity no longer matches, so it is read;
  // the index records the real hash, and the next load serves it.
  {
    struct stat old{};
    REQUIRE(::stat((src / "b.py").c_str(), &old) == 0);
    write_file(src / "b.py", "bbbb, edited");
    struct timespec ts[2] = {old.st_atim, old.st_mtim};
    REQUIRE(::utimensat(AT_FDCWD, (src / "b.py").c_str(), ts, 0) == 0);

    StatIndex idx;
    idx.load(idx_all);
    FileSet set = collect_files(spec);
    hash_files(set, &idx, 2);
    CHECK(find(set.source, "a.py")->sha256.hex() == fake("a.py"));
    CHECK(find(set.source, "b.py")->sha256.hex() == sha256_hex("bbbb, edited"));
    CHECK(find(set.source, "r.py")->sha256.hex() == sha256_hex("rrrr"));
    struct stat st0{};
    REQUIRE(::stat(idx_all.c_str(), &st0) == 0);
    idx.save(idx_all);
    struct stat st1{};
    REQUIRE(::stat(idx_all.c_str(), &st1) == 0);
    CHECK(st1.st_ino != st0.st_ino);  // updated entries: rewritten

    // What hash_files recorded is what was read (the racy r.py is stored, and trusted later).
    StatIndex reloaded;
    reloaded.load(idx_all);
    const FileEntry* b = find(set.source, "b.py");
    const FileEntry* a = find(set.source, "a.py");
    // b's ctime is fresh, so the entry is (correctly) racy right now; a's is not.
    CHECK_FALSE(reloaded.lookup(b->rel(), b->key));
    CHECK(reloaded.lookup(a->rel(), a->key) == fake("a.py"));
  }
}

TEST_CASE("fileset: the walk's thread count changes nothing: entries, warnings and their order, the error") {
  TempDir tmp;
  const fs::path src = tmp / "src";
  write_file(tmp / "outside.txt", "o");
  write_file(src / ".gitignore", "*.log\n");
  // A tree wide and deep enough that several threads share it: directories handed over, each
  // with files, ignored files, a .gitignore of its own, symlinks pointing out (a warning each).
  for (int a = 0; a < 6; ++a)
    for (int b = 0; b < 5; ++b) {
      const fs::path d = src / ("d" + std::to_string(a)) / ("s" + std::to_string(b));
      for (int f = 0; f < 4; ++f) write_file(d / ("f" + std::to_string(f) + ".py"), std::string(f, 'x'));
      write_file(d / "x.log", "ignored");
      write_file(d / "deeper" / "z.py", "z");
      if (b == 2) write_file(d / ".gitignore", "f1.py\n");
      if (b % 2 == 0) fs::create_symlink("../../../../outside.txt", d / "out");
      fs::create_directories(d / "empty");  // not baked: nothing below it
    }
  write_file(src / "d1-b" / "a.py", "sorted between d1 and d1/...");
  fs::create_symlink("/etc/hostname", src / "d1-b" / "abs");
  CollectOptions one;
  one.jobs = 1;
  const FileSet serial = collect_files(spec_for(tmp, CopyMode::All), one);
  REQUIRE(serial.warnings.size() == 19);  // 3 per d<n>, and d1-b/abs
  CHECK(contains(serial.warnings.front(), "'d0/s0/out'"));
  CHECK(contains(serial.warnings[5], "'d1/s4/out'"));
  CHECK(contains(serial.warnings[6], "'d1-b/abs'"));  // a serial walk meets d1/... before d1-b
  CHECK(find(serial.source, "d0/s2/f1.py") == nullptr);
  CHECK(find(serial.source, "d0/s1/f1.py") != nullptr);
  CHECK(find(serial.source, "d0/s1/empty") == nullptr);
  CHECK(find(serial.source, "d0/s1/deeper") != nullptr);
  for (int jobs : {2, 3, 4, 8}) {
    INFO("jobs " << jobs);
    CollectOptions o;
    o.jobs = jobs;
    o.expected_entries = jobs == 3 ? 50 : jobs == 4 ? serial.source.size() + 10 : 0;  // slots: too few, enough, none
    for (int round = 0; round < 3; ++round) {
      const FileSet par = collect_files(spec_for(tmp, CopyMode::All), o);
      CHECK(describe(par.source) == describe(serial.source));
      CHECK(par.warnings == serial.warnings);
    }
  }
  // Two errors in the tree: every thread count reports the one a serial walk meets first.
  REQUIRE(::mkfifo((src / "d4" / "s3" / "pipe").c_str(), 0644) == 0);
  write_file(src / "d2" / "s1" / "bad\xff.py", "b");
  std::string want;
  try {
    collect_files(spec_for(tmp, CopyMode::All), one);
  } catch (const InputError& e) {
    want = e.what();
  }
  CHECK(contains(want, "bad\\xff.py"));
  for (int jobs : {2, 4, 8}) {
    CollectOptions o;
    o.jobs = jobs;
    std::string got;
    try {
      collect_files(spec_for(tmp, CopyMode::All), o);
    } catch (const InputError& e) {
      got = e.what();
    }
    CHECK(got == want);
  }
}
