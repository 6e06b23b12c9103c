// Unit tests for the streamed walk (collect_files_streamed, layers/entry_spill): on random trees,
// at every thread count and at budgets that force many runs, it gives exactly collect_files'
// entries, in collect_files' order, with the same warnings and errors; its runs are never named.
#include "layers/entry_spill.h"

#include <sys/stat.h>

#include <catch2/catch.hpp>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "layers/fileset.h"
#include "testutil.h"

using namespace kiln::layers;
using kiln::spec::CopyMode;
using kiln::spec::ImageSpec;
using kiln::testutil::TempDir;
using kiln::testutil::write_file;
namespace fs = std::filesystem;

namespace {

ImageSpec spec_for(const TempDir& tmp, CopyMode mode) {
  ImageSpec s;
  s.base_dir = tmp.path();
  s.origin = "test";
  s.source_root = tmp / "src";
  s.source_copy_mode = mode;
  return s;
}

/// Every field an entry carries, one line per entry.
std::string describe(const FileEntry& e) {
  std::string s = std::string(e.rel()) + "|" + e.dest + "|" + std::to_string(static_cast<int>(e.type)) + "|" +
                  std::to_string(e.mode) + "|" + std::to_string(e.size) + "|" + std::to_string(e.nlink) + "|" +
                  std::to_string(e.key.ino) + "|" + std::to_string(e.key.dev) + "|" + std::to_string(e.key.mtime_ns) +
                  "|" + std::to_string(e.key.ctime_ns) + "|" + std::to_string(e.key.size) + "|" + e.link() + "|" +
                  (e.root ? *e.root : "-") + "|" + e.abs();
  return s;
}

std::vector<std::string> listed(const FileSet& set) {
  std::vector<std::string> out;
  for (const FileEntry& e : set.source) out.push_back(describe(e));
  return out;
}

std::vector<std::string> streamed(const ImageSpec& s, const CollectOptions& o, std::size_t* runs = nullptr,
                                  std::vector<std::string>* warnings = nullptr) {
  std::unique_ptr<SourceStream> stream;
  FileSet set = collect_files_streamed(s, o, &stream);
  CHECK(set.source.empty());
  if (warnings) *warnings = set.warnings;
  if (runs) *runs = stream->spilled_runs();
  std::vector<std::string> out;
  FileEntry e;
  while (stream->next(e)) out.push_back(describe(e));
  return out;
}

/// A random tree: names that sort around '/' ('-', '.', "a" beside "a-b" and "a/"), empty and
/// ignored directories, .gitignore files, hardlinks, symlinks in and out, executables.
void random_tree(const fs::path& src, std::uint32_t seed) {
  std::mt19937 rng(seed);
  const char* names[] = {"a", "a-b", "a.b", "a0", "b", "ab", "A", "x.py", "x.pyc", "\xc3\xa9t\xc3\xa9", "z", "a b"};
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<std::uint32_t>(n)); };
  std::vector<fs::path> dirs{src};
  fs::create_directories(src);
  for (int i = 0; i < 60; ++i) {
    fs::path d = dirs[static_cast<std::size_t>(pick(static_cast<int>(dirs.size())))] / names[pick(12)];
    if (fs::exists(d)) continue;
    fs::create_directories(d);
    dirs.push_back(d);
  }
  std::vector<fs::path> files;
  for (int i = 0; i < 400; ++i) {
    fs::path f = dirs[static_cast<std::size_t>(pick(static_cast<int>(dirs.size())))] /
                 (std::string(names[pick(12)]) + std::to_string(pick(5)));
    if (fs::exists(f)) continue;
    write_file(f, std::string(static_cast<std::size_t>(pick(40)), 'q'), pick(4) == 0 ? 0755 : 0644);
    files.push_back(f);
  }
  for (int i = 0; i < 12 && !files.empty(); ++i) {
    const fs::path& target = files[static_cast<std::size_t>(pick(static_cast<int>(files.size())))];
    fs::path link = dirs[static_cast<std::size_t>(pick(static_cast<int>(dirs.size())))] / ("h" + std::to_string(i));
    if (!fs::exists(link)) fs::create_hard_link(target, link);
    fs::path sym = dirs[static_cast<std::size_t>(pick(static_cast<int>(dirs.size())))] / ("s" + std::to_string(i));
    if (!fs::exists(sym) && !fs::is_symlink(sym)) fs::create_symlink(i % 3 == 0 ? "/etc/passwd" : "../x.py0", sym);
  }
  write_file(src / ".gitignore", "*.pyc\nb/\n");
  write_file(src / "a" / ".gitignore", "z*\n!z1\n");
  write_file(src / ".dockerignore", "a-b/a\n");
}

}  // namespace

TEST_CASE("entry_spill: a streamed walk gives collect_files' entries and warnings, spilled or not, at any thread count") {
  for (std::uint32_t seed : {1u, 2u, 3u, 4u}) {
    TempDir tmp;
    random_tree(tmp / "src", seed);
    TempDir spill;
    CollectOptions one;
    one.jobs = 1;
    const ImageSpec s = spec_for(tmp, CopyMode::All);
    const FileSet want = collect_files(s, one);
    REQUIRE(want.source.size() > 100);
    for (int jobs : {1, 2, 4}) {
      for (std::size_t budget : {std::size_t(1), std::size_t(7), std::size_t(100000)}) {
        INFO("seed " << seed << " jobs " << jobs << " budget " << budget);
        CollectOptions o;
        o.jobs = jobs;
        o.spill_dir = spill.path();
        o.spill_budget = budget;
        std::size_t runs = 0;
        std::vector<std::string> warnings;
        CHECK(streamed(s, o, &runs, &warnings) == listed(want));
        CHECK(warnings == want.warnings);
        if (budget == 1) CHECK(runs > 50);  // many runs merged
        if (budget == 100000) CHECK(runs == 0);  // all in memory
        CHECK(fs::is_empty(spill.path()));       // runs are unnamed files
      }
    }
  }
}

TEST_CASE("entry_spill: a streamed walk of loaded modules, of a modelcar, and of no source") {
  TempDir tmp;
  random_tree(tmp / "src", 9);
  write_file(tmp / "src" / "pkg" / "m.py", "1");
  write_file(tmp / "src" / "pkg" / "sub" / "n.py", "1");
  write_file(tmp / "src" / "top.py", "1");
  CollectOptions o;
  o.spill_budget = 2;
  ImageSpec mods = spec_for(tmp, CopyMode::LoadedModules);
  mods.loaded_modules = {"top.py", "pkg", "pkg/m.py"};  // pkg/m.py given twice: listed once
  CHECK(streamed(mods, o) == listed(collect_files(mods, o)));
  ImageSpec modelcar = spec_for(tmp, CopyMode::All);
  modelcar.modelcar = true;
  const FileSet want = collect_files(modelcar, o);
  CHECK(streamed(modelcar, o) == listed(want));
  ImageSpec none = spec_for(tmp, CopyMode::NoCopy);
  CHECK(streamed(none, o).empty());
}

TEST_CASE("entry_spill: a walk that fails while streaming fails as collect_files does, leaving no file") {
  TempDir tmp;
  random_tree(tmp / "src", 5);
  fs::create_directories(tmp / "src" / "q" / "r");
  REQUIRE(::mkfifo((tmp / "src" / "q" / "r" / "pipe").c_str(), 0644) == 0);
  TempDir spill;
  for (int jobs : {1, 2}) {
    CollectOptions o;
    o.jobs = jobs;
    o.spill_dir = spill.path();
    o.spill_budget = 3;
    std::string listed_error, streamed_error;
    try {
      collect_files(spec_for(tmp, CopyMode::All), o);
    } catch (const InputError& e) {
      listed_error = e.what();
    }
    try {
      std::unique_ptr<SourceStream> stream;
      collect_files_streamed(spec_for(tmp, CopyMode::All), o, &stream);
    } catch (const InputError& e) {
      streamed_error = e.what();
    }
    CHECK(listed_error.find("pipe") != std::string::npos);
    CHECK(streamed_error == listed_error);
    CHECK(fs::is_empty(spill.path()));
  }
}

TEST_CASE("entry_spill: runs and lists merge in rel order, a run's fields read back as written") {
  TempDir spill;
  auto root = std::make_shared<const std::string>("/r");
  auto entry = [&](const std::string& rel, const std::string& dest) {
    FileEntry e;
    e.set_paths(rel, dest);
    e.root = root;
    e.size = rel.size();
    e.key.ino = rel.size() * 7;
    e.sha256.bytes[0] = static_cast<unsigned char>(rel[0]);
    e.sha256.set = rel[0] == 'b';
    if (rel == "c") e.set_link("target");
    return e;
  };
  EntryRuns runs(spill.path(), 2);
  for (const char* r : {"d", "b", "a/x", "a-b", "c"}) runs.add(entry(r, std::string("root/") + r));
  runs.add(entry("own", "elsewhere/other"));  // a rel that is not dest's tail
  CHECK(runs.runs() == 2);
  EntryMerge merge(root);
  merge.add(std::move(runs));
  std::vector<FileEntry> list;
  list.push_back(entry("a", "root/a"));
  list.push_back(entry("e", "root/e"));
  merge.add(std::move(list));
  std::vector<std::string> got;
  FileEntry e;
  while (merge.next(e)) {
    got.push_back(std::string(e.rel()));
    CHECK(e.size == e.rel().size());
    CHECK(e.key.ino == e.rel().size() * 7);
    CHECK(e.sha256.set == (e.rel()[0] == 'b'));
    if (e.sha256.set) CHECK(e.sha256.bytes[0] == 'b');
    CHECK(e.link() == (e.rel() == "c" ? "target" : ""));
    if (e.rel() == "own") CHECK(e.dest == "elsewhere/other");
  }
  CHECK(got == std::vector<std::string>{"a", "a-b", "a/x", "b", "c", "d", "e", "own"});
}
