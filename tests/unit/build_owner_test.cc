// Who owns the files kiln copies (builder/build.cc owner_of): a numeric `user` as the spec's
// validation reads it (every id up to 2^32-2, ten digits included), root for a name, and a build
// refuses an id the validation refuses.
#include <archive.h>
#include <archive_entry.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <map>
#include <string>
#include <utility>

#include "builder/build.h"
#include "layers/store.h"
#include "spec/image_spec.h"
#include "testutil.h"

namespace fs = std::filesystem;
using kiln::testutil::TempDir;
using kiln::testutil::write_file;
using Owner = std::pair<long long, long long>;

namespace {

/// path → (uid, gid) of every entry of the layer blob at `blob`.
std::map<std::string, Owner> owners(const fs::path& blob) {
  struct archive* a = archive_read_new();
  archive_read_support_format_all(a);
  archive_read_support_filter_all(a);
  REQUIRE(archive_read_open_filename(a, blob.c_str(), 65536) == ARCHIVE_OK);
  std::map<std::string, Owner> out;
  struct archive_entry* ae;
  while (archive_read_next_header(a, &ae) == ARCHIVE_OK)
    out[archive_entry_pathname(ae)] = {archive_entry_uid(ae), archive_entry_gid(ae)};
  archive_read_free(a);
  return out;
}

/// The owners in the copy layer of a build of `copy: [app.py]` with `user` (none when empty).
std::map<std::string, Owner> build_owners(const TempDir& tmp, const std::string& user) {
  std::string json = R"({"name": "own", "copy": ["app.py"])";
  if (!user.empty()) json += R"(, "user": ")" + user + "\"";
  kiln::spec::ImageSpec s = kiln::spec::parse_spec(json + "}", tmp.path(), "spec.json");
  kiln::layers::Store store(tmp / "cache");
  kiln::builder::BuildOptions opts;
  opts.store = &store;
  kiln::builder::BuildResult r = kiln::builder::build(kiln::builder::prepare(s, opts), opts);
  REQUIRE(r.layers.size() == 1);
  return owners(store.blob_path(r.layers[0].digest));
}

}  // namespace

TEST_CASE("build: a numeric user owns the copied files, ten-digit ids included") {
  TempDir tmp;
  write_file(tmp / "app.py", "print('hi')\n");
  const std::string file = "root/app.py";
  CHECK(build_owners(tmp, "")[file] == Owner{0, 0});
  CHECK(build_owners(tmp, "1000")[file] == Owner{1000, 1000});
  CHECK(build_owners(tmp, "1000:2000")[file] == Owner{1000, 2000});
  // Ten digits: an id like any other, not a name.
  CHECK(build_owners(tmp, "1234567890")[file] == Owner{1234567890, 1234567890});
  CHECK(build_owners(tmp, "4294967294:1234567890")[file] == Owner{4294967294LL, 1234567890});
  CHECK(build_owners(tmp, "000000000001000")[file] == Owner{1000, 1000});
  // A name (in either part): root's, as kiln does not read the base's /etc/passwd.
  CHECK(build_owners(tmp, "flyte")[file] == Owner{0, 0});
  CHECK(build_owners(tmp, "1000:flyte")[file] == Owner{0, 0});
}

TEST_CASE("build: a user the spec validation refuses is refused by the build too") {
  TempDir tmp;
  write_file(tmp / "app.py", "print('hi')\n");
  kiln::spec::ImageSpec s = kiln::spec::parse_spec(R"({"name": "own", "copy": ["app.py"]})", tmp.path(), "spec.json");
  kiln::layers::Store store(tmp / "cache");
  kiln::builder::BuildOptions opts;
  opts.store = &store;
  // A spec made in code, not parsed: (uid_t)-1 is no uid, and a name would give root's files.
  for (const char* bad : {"4294967295", "1000:4294967295", "99999999999999999999"}) {
    INFO(bad);
    s.user = bad;
    CHECK_THROWS_AS(kiln::builder::build(kiln::builder::prepare(s, opts), opts), kiln::spec::SpecError);
  }
}
