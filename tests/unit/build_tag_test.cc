// Unit tests for the tag of a big tree (builder/build.cc compute_tag): the source digest computed on
// a thread of its own, and the layer keys computed in parallel, give what one thread gives.
#include <catch2/catch.hpp>
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

struct Answer {
  std::string spec_hash, tag, source_digest;
  std::vector<std::string> layers;
  bool operator==(const Answer&) const = default;
};

/// Prepares (deferred or not) and builds `s` with `jobs` threads into a store of its own.
Answer build_with(const kiln::spec::ImageSpec& s, const fs::path& cache, int jobs, bool deferred) {
  kiln::layers::Store store(cache);
  kiln::builder::BuildOptions opts;
  opts.store = &store;
  opts.jobs = jobs;
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
