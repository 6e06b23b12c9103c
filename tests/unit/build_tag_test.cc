// Unit tests for the tag of a big tree (builder/build.cc compute_tag): the source digest computed on
// a thread of its own, and the layer keys computed in parallel, give what one thread gives.
#include <catch2/catch.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <filesystem>
#include <string>
#include <vector>

#include "builder/build.h"
#include "layers/store.h"
#include "spec/image_spec.h"
#include "testutil.h"

namespace fs = std::filesystem;
using kiln::testutil::TempDir;
using kiln::testutil::write_file;

namespace {

/// Counts the files prepare() or prepare_tag() reads (those the stat index did not know).
struct HashCount : kiln::builder::Progress {
  std::atomic<std::uint64_t> hashed{0};  // advanced from the hashing threads
  void log(const std::string&) override {}
  void begin(const std::string&, const std::string&, std::uint64_t) override {}
  void advance(const std::string&, std::uint64_t) override {}
  void end(const std::string&, const std::string&) override {}
  void phase_advance(kiln::builder::Phase ph, std::uint64_t files, std::uint64_t) override {
    if (ph == kiln::builder::Phase::Hash) hashed += files;
  }
};

/// A store of its own under `cache`, and build options on it (`jobs` threads, walk budget
/// `budget`, 0: the default) that count the files read.
struct Harness {
  kiln::layers::Store store;
  HashCount count;
  kiln::builder::BuildOptions opts;
  Harness(const fs::path& cache, int jobs, std::size_t budget = 0) : store(cache) {
    opts.store = &store;
    opts.jobs = jobs;
    opts.progress = &count;
    opts.walk_spill_budget = budget;
  }
};

struct Answer {
  std::string spec_hash, tag, source_digest;
  std::vector<std::string> layers;
  bool operator==(const Answer&) const = default;
};

/// Prepares (deferred or not) and builds `s` with `jobs` threads into a store of its own.
Answer build_with(const kiln::spec::ImageSpec& s, const fs::path& cache, int jobs, bool deferred) {
  Harness h(cache, jobs);
  const kiln::builder::BuildOptions& opts = h.opts;
  kiln::builder::Prepared prep =
      deferred ? kiln::builder::prepare_deferred(s, opts) : kiln::builder::prepare(s, opts);
  kiln::builder::BuildResult r = kiln::builder::build(prep, opts);
  Answer a{prep.spec_hash, prep.tag, prep.source_digest, {}};
  for (const auto& l : r.layers) a.layers.push_back(l.digest);
  return a;
}

}  // namespace

TEST_CASE("A tree above the threaded-tag threshold: the same tag, source digest and layers at -j1 and -j2") {
  TempDir tmp;
  const fs::path src = tmp / "proj";
  // 4600 files (the digest thread starts at 4096): files, an executable, symlinks, a hardlink,
  // and copy entries interleaved with the source lines in dest order.
  for (int d = 0; d < 46; ++d)
    for (int f = 0; f < 100; ++f)
      write_file(src / ("pkg" + std::to_string(d)) / ("m" + std::to_string(f) + ".py"),
                 "x = " + std::to_string(d * 100 + f) + "\n");
  write_file(src / "run.sh", "#!/bin/sh\n", 0755);
  fs::create_symlink("pkg0/m0.py", src / "link.py");
  fs::create_hard_link(src / "pkg1/m1.py", src / "hard.py");
  write_file(tmp / "extra/conf.toml", "a = 1\n");
  write_file(tmp / "spec.json", R"({"name": "big", "source_root": "proj", "source_copy_mode": "all",
                                    "copy": ["extra/conf.toml"]})");
  const kiln::spec::ImageSpec s = kiln::spec::load_spec((tmp / "spec.json").string());

  const Answer one = build_with(s, tmp / "c1", 1, false);
  REQUIRE(one.source_digest.rfind("sha256:", 0) == 0);
  REQUIRE(one.tag.size() == 32);
  CHECK(build_with(s, tmp / "c2", 2, false) == one);
  // A rebuild of the same tree (every digest known from the stat index): the deferred path.
  CHECK(build_with(s, tmp / "c2", 2, true) == one);
  CHECK(build_with(s, tmp / "c1", 1, true) == one);
  // And the answer moves with a file's bytes, on the threaded path too.
  write_file(src / "pkg45/m99.py", "changed\n");
  const Answer changed = build_with(s, tmp / "c2", 2, true);
  CHECK(changed.source_digest != one.source_digest);
  CHECK(changed.spec_hash != one.spec_hash);
  CHECK(build_with(s, tmp / "c1", 1, false) == changed);
}

namespace {

struct TagAnswer {
  std::string spec_hash, tag, source_digest, base_id;
  std::vector<std::string> platforms;  // each platform's spec hash
  std::vector<std::string> warnings;
  std::uint64_t hashed = 0;
  bool operator==(const TagAnswer& o) const {  // `hashed` says how, not what
    return spec_hash == o.spec_hash && tag == o.tag && source_digest == o.source_digest && base_id == o.base_id &&
           platforms == o.platforms && warnings == o.warnings;
  }
};

TagAnswer tag_with(const kiln::spec::ImageSpec& s, const fs::path& cache, int jobs, bool streamed,
                   std::size_t budget = 0) {
  Harness h(cache, jobs, budget);
  const kiln::builder::BuildOptions& opts = h.opts;
  const HashCount& count = h.count;
  kiln::builder::Prepared p = streamed ? kiln::builder::prepare_tag(s, opts) : kiln::builder::prepare(s, opts);
  TagAnswer a{p.spec_hash, p.tag, p.source_digest, p.base_id, {}, p.files.warnings, count.hashed};
  for (const auto& c : p.platforms) a.platforms.push_back(c->spec_hash);
  CHECK(p.file_set().source.empty() == streamed);  // prepare_tag keeps no list
  return a;
}

}  // namespace

TEST_CASE("kiln tag's streamed pass gives prepare()'s answer, spilled or not, and fills the same stat index") {
  TempDir tmp;
  const fs::path src = tmp / "proj";
  for (int d = 0; d < 30; ++d)
    for (int f = 0; f < 20; ++f)
      write_file(src / ("pkg" + std::to_string(d % 7) + (d % 2 ? "-x" : "") + "/s" + std::to_string(d)) /
                     ("m" + std::to_string(f) + ".py"),
                 "x = " + std::to_string(d * 100 + f) + "\n");
  write_file(src / "run.sh", "#!/bin/sh\n", 0755);
  write_file(src / "a.b", "dot\n");
  fs::create_symlink("pkg0/s0/m0.py", src / "link.py");
  fs::create_symlink("/etc/passwd", src / "out.py");  // a warning
  fs::create_hard_link(src / "pkg1-x/s1/m1.py", src / "hard.py");
  fs::create_hard_link(src / "pkg1-x/s1/m1.py", src / "pkg0-x/s7/hard2.py");
  write_file(tmp / "extra/conf.toml", "a = 1\n");
  write_file(tmp / "extra/z/late.txt", "z\n");
  // Past the stat index's racy window (a file changed within a second of the index's write is
  // read again), so a warm pass reads nothing.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  write_file(tmp / "spec.json", R"({"name": "streamed", "source_root": "proj", "source_copy_mode": "all",
                                    "copy": ["extra/conf.toml", "extra/z"]})");
  write_file(tmp / "multi.json", R"({"name": "streamed", "source_root": "proj", "source_copy_mode": "all",
                                     "platform": "linux/amd64,linux/arm64", "copy": ["extra/conf.toml"]})");
  for (const char* name : {"spec.json", "multi.json"}) {
    INFO(name);
    const kiln::spec::ImageSpec s = kiln::spec::load_spec((tmp / name).string());
    const fs::path fresh = tmp / (std::string("want-") + name);
    const TagAnswer want = tag_with(s, fresh, 1, false);
    REQUIRE(want.hashed >= 600);
    CHECK(want.warnings.size() == 1);
    CHECK(want.platforms.size() == (s.multi_platform() ? 2u : 0u));
    int n = 0;
    for (int jobs : {1, 2}) {
      for (std::size_t budget : {std::size_t(0), std::size_t(3)}) {
        INFO("jobs " << jobs << " budget " << budget);
        const fs::path cache = tmp / (std::string("c") + std::to_string(n++) + name);
        // Cold: every file read, and recorded in the stat index (update_ordered, merged at save)...
        const TagAnswer cold = tag_with(s, cache, jobs, true, budget);
        CHECK(cold == want);
        CHECK(cold.hashed == want.hashed);
        // ...so that neither path reads a file again.
        const TagAnswer warm = tag_with(s, cache, jobs, true, budget);
        CHECK(warm == want);
        CHECK(warm.hashed == 0);
        CHECK(tag_with(s, cache, jobs, false).hashed == 0);
      }
    }
    // prepare() fills the index the streamed pass then reads.
    CHECK(tag_with(s, fresh, 2, true, 3).hashed == 0);
  }
  // And the answer follows a file's bytes.
  const kiln::spec::ImageSpec s = kiln::spec::load_spec((tmp / "spec.json").string());
  const TagAnswer before = tag_with(s, tmp / "c0spec.json", 2, true, 3);
  write_file(src / "pkg3-x/s3/m5.py", "changed\n");
  const TagAnswer after = tag_with(s, tmp / "c0spec.json", 2, true, 3);
  CHECK(after.hashed == 1);
  CHECK(after.source_digest != before.source_digest);
  CHECK(after == tag_with(s, tmp / "fresh-after", 1, false));
}

namespace {

struct Built {
  std::string digest, tag, spec_hash, source_digest;
  std::vector<std::string> labels, layers;
  std::size_t hits = 0;  // layers taken from the cache (how, not what: not compared)
  std::uint64_t hashed = 0;
  bool operator==(const Built& o) const {
    return digest == o.digest && tag == o.tag && spec_hash == o.spec_hash && source_digest == o.source_digest &&
           labels == o.labels && layers == o.layers;
  }
};

/// A deferred build (kiln build's path) with `budget` entries per walk thread before a run is
/// spilled: a tiny budget makes the build stream (Prepared::stream), 0 keeps the list.
Built deferred_build(const kiln::spec::ImageSpec& s, const fs::path& cache, int jobs, std::size_t budget) {
  Harness h(cache, jobs, budget ? budget : std::size_t(1) << 30);
  const kiln::builder::BuildOptions& opts = h.opts;
  const HashCount& count = h.count;
  kiln::builder::Prepared prep = kiln::builder::prepare_deferred(s, opts);
  CHECK(static_cast<bool>(prep.stream) == (budget != 0));
  kiln::builder::BuildResult r = kiln::builder::build(prep, opts);
  CHECK_FALSE(prep.stream);
  Built b{r.manifest_digest, prep.tag, prep.spec_hash, prep.source_digest, {}, {}, 0, count.hashed};
  for (const auto& l : r.layers) {
    b.labels.push_back(l.label);
    b.hits += l.cache_hit;
    b.layers.push_back(l.digest);
  }
  return b;
}

}  // namespace

TEST_CASE("a build that streams its walk writes the list path's image, cold and warm, and fills the same stat index") {
  TempDir tmp;
  const fs::path src = tmp / "proj";
  // Files of every kind of layer: a chunk of small files (several chunks in chunks.json, below),
  // large files (threshold 200 KiB), already-compressed files, hardlinks into a chunk and into a
  // large file's layer, symlinks, executables, names sorting around '/'.
  for (int d = 0; d < 24; ++d)
    for (int f = 0; f < 30; ++f)
      write_file(src / ("pkg" + std::to_string(d % 5) + (d % 3 ? "-a" : "") + "/s" + std::to_string(d)) /
                     ("m" + std::to_string(f) + ".py"),
                 std::string(static_cast<std::size_t>(f * 37 % 300), 'x') + std::to_string(d * 100 + f) + "\n",
                 f % 7 == 0 ? 0755 : 0644);
  write_file(src / "big" / "weights.bin", kiln::testutil::random_bytes(300 << 10, 7));
  write_file(src / "big" / "model.safetensors", kiln::testutil::random_bytes(1100 << 10, 8));
  write_file(src / "big" / "notes.txt", std::string(250 << 10, 'n'));
  fs::create_hard_link(src / "pkg1-a/s1/m1.py", src / "hard.py");
  fs::create_hard_link(src / "big/notes.txt", src / "zz-notes-link.txt");
  fs::create_symlink("pkg0/s0/m0.py", src / "link.py");
  fs::create_symlink("../outside", src / "out.py");
  write_file(tmp / "extra/conf.toml", "a = 1\n");
  // Enough bytes for several chunks when large files start at 8 MiB (a chunk is cut past 16 MiB),
  // with a hardlink from a late chunk into an early one: that chunk is held to the end.
  for (int i = 0; i < 44; ++i)
    write_file(src / "bulk" / ("b" + std::to_string(i) + ".dat"), std::string(900 << 10, static_cast<char>('a' + i % 26)));
  fs::create_hard_link(src / "bulk/b3.dat", src / "bulk/zz-b3-again.dat");
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // past the stat index's racy window
  const std::string common = R"("source_root": "proj", "source_copy_mode": "all", "copy": ["extra/conf.toml"],
                                "large_file_threshold": 204800)";
  write_file(tmp / "gzip.json", R"({"name": "s", )" + common + "}");
  write_file(tmp / "plain.json", R"({"name": "s", "compression": "none", )" + common + "}");
  write_file(tmp / "chunks.json", R"({"name": "s", "source_root": "proj", "source_copy_mode": "all",
                                      "large_file_threshold": 8388608})");
  write_file(tmp / "modelcar.json", R"({"name": "s", "modelcar": true, "source_root": "proj", "source_copy_mode": "all"})");
  int n = 0;
  for (const char* name : {"gzip.json", "plain.json", "chunks.json", "modelcar.json"}) {
    INFO(name);
    const kiln::spec::ImageSpec s = kiln::spec::load_spec((tmp / name).string());
    const Built want = deferred_build(s, tmp / (std::string("list-") + name), 1, 0);
    REQUIRE(want.layers.size() >= 2);
    if (std::string(name) == "chunks.json")
      CHECK(std::count_if(want.labels.begin(), want.labels.end(),
                          [](const std::string& l) { return l.find(" part ") != std::string::npos; }) >= 2);
    for (int jobs : {1, 2}) {
      INFO("jobs " << jobs);
      const fs::path cache = tmp / ("c" + std::to_string(n++));
      const Built cold = deferred_build(s, cache, jobs, 5);
      CHECK(cold == want);
      CHECK(cold.hashed > 700);
      // Warm: every digest from the stat index the streamed build filled, every layer cached.
      const Built warm = deferred_build(s, cache, jobs, 5);
      CHECK(warm.digest == want.digest);
      CHECK(warm.hashed == 0);
      CHECK(warm == want);
      CHECK(warm.hits == warm.layers.size());
      // And the list path reads nothing after it either.
      CHECK(deferred_build(s, cache, jobs, 0).hashed == 0);
    }
  }
  // A changed file: one chunk rebuilt, the same image as the list path's.
  write_file(src / "pkg2/s12/m3.py", "changed\n");
  const kiln::spec::ImageSpec s = kiln::spec::load_spec((tmp / "gzip.json").string());
  const Built changed = deferred_build(s, tmp / "c0", 2, 5);
  CHECK(changed.hashed == 1);
  CHECK(changed.hits == changed.layers.size() - 1);  // the one chunk holding the changed file
  CHECK(changed == deferred_build(s, tmp / "fresh", 1, 0));
}
