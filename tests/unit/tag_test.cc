// Unit tests for spec/tag: spec_hash and files_digest (against the algorithm of docs/tag.md),
// make_tag, valid_tag, repository.
#include "spec/tag.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include "layers/digest.h"

using namespace kiln::spec;
using kiln::layers::sha256_hex;

namespace {

ImageSpec base_spec() {
  ImageSpec s;  // every default; constructed directly, not through the parser
  s.base_dir = "/proj";
  s.origin = "test";
  return s;
}

std::vector<TagFile> sample_files() {
  return {
      {"root/pkg/mod.py", 'f', 0644, sha256_hex("x = 1\n")},
      {"root/run.sh", 'f', 0755, sha256_hex("#!/bin/sh\n")},
      {"root/pkg", 'd', 0755, ""},
      {"root/link", 'l', 0777, "pkg/mod.py"},
  };
}

/// The per-file bytes of docs/tag.md, for files already sorted by dest.
std::string entry_bytes(const std::vector<TagFile>& sorted) {
  std::string s;
  for (const TagFile& f : sorted) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", f.mode);
    s += std::string(1, f.type) + " " + mode + " " + f.content + " " + f.dest + std::string(1, '\0');
  }
  return s;
}

std::vector<TagFile> sorted(std::vector<TagFile> v) {
  std::sort(v.begin(), v.end(), [](const TagFile& a, const TagFile& b) { return a.dest < b.dest; });
  return v;
}

}  // namespace

TEST_CASE("tag: spec_hash follows the documented algorithm exactly") {
  const ImageSpec spec = base_spec();
  const std::string canonical =
      R"({"base_image":"scratch","compression":"gzip","large_file_threshold":67108864,)"
      R"("platform":"linux/amd64","source_dest":"/root"})";
  REQUIRE(spec.canonical().dump() == canonical);

  // No files.
  CHECK(spec_hash(spec, "scratch", {}) == sha256_hex("kiln-spec-hash-v4\n" + canonical + "\nbase scratch\n"));

  // With files: sorted bytewise by dest ("root/link" < "root/pkg" < "root/pkg/mod.py" < "root/run.sh").
  auto files = sample_files();
  const std::string entries = entry_bytes(sorted(files));
  CHECK(entries.substr(0, 28) == std::string("l 0777 pkg/mod.py root/link\0", 28));
  const std::string expect = sha256_hex("kiln-spec-hash-v4\n" + canonical + "\nbase sha256:abc\n" + entries);
  const std::string h = spec_hash(spec, "sha256:abc", files);
  CHECK(h == expect);
  CHECK(h.size() == 64);
}

TEST_CASE("tag: index_hash follows the documented algorithm: the platforms' own spec hashes, in order") {
  const std::string a(64, 'a'), b(64, 'b');
  CHECK(kiln::spec::index_hash({{"linux/amd64", a}, {"linux/arm64", b}}) ==
        sha256_hex("kiln-index-hash-v1\nlinux/amd64 " + a + "\nlinux/arm64 " + b + "\n"));
  // The order is the index's (another order is another index), and any platform's hash counts.
  CHECK(kiln::spec::index_hash({{"linux/arm64", b}, {"linux/amd64", a}}) !=
        kiln::spec::index_hash({{"linux/amd64", a}, {"linux/arm64", b}}));
  CHECK(kiln::spec::index_hash({{"linux/amd64", a}, {"linux/arm64", a}}) !=
        kiln::spec::index_hash({{"linux/amd64", a}, {"linux/arm64", b}}));
}

TEST_CASE("tag: files_digest follows the documented algorithm and differs from spec_hash framing") {
  auto files = sample_files();
  CHECK(files_digest(files) == sha256_hex("kiln-files-v1\n" + entry_bytes(sorted(files))));
  CHECK(files_digest({}) == sha256_hex("kiln-files-v1\n"));
  CHECK(files_digest(files) != spec_hash(base_spec(), "scratch", files));
  CHECK(files_digest(files) != files_digest({}));
  // Order of the input does not matter.
  auto rev = files;
  std::reverse(rev.begin(), rev.end());
  CHECK(files_digest(rev) == files_digest(files));
}

TEST_CASE("tag: TagHasher gives spec_hash of every file and files_digest of the source ones, in one pass") {
  const ImageSpec spec = base_spec();
  auto src = sorted(sample_files());
  std::vector<TagFile> copies = {{"root/copied.txt", 'f', 0644, sha256_hex("c")},
                                 {"root/zz/data.bin", 'f', 0600, sha256_hex("d")}};
  std::vector<TagFile> all = src;
  all.insert(all.end(), copies.begin(), copies.end());
  all = sorted(all);
  const std::vector<std::pair<std::string, std::string>> inputs = {{"requirements.txt", sha256_hex("r")}};
  TagHasher h(spec, "sha256:abc", 1700000000, inputs);
  for (const TagFile& f : all) {
    const bool in_source = std::any_of(src.begin(), src.end(), [&](const TagFile& x) { return x.dest == f.dest; });
    h.add(f, in_source);
  }
  CHECK(h.spec_hash() == spec_hash(spec, "sha256:abc", all, 1700000000, inputs));
  CHECK(h.files_digest() == files_digest(src));
  // Enough lines to fill the line buffers several times over: the pieces hash as one stream.
  std::vector<TagFile> many;
  for (int i = 0; i < 3000; ++i)
    many.push_back({"root/d/" + std::to_string(100000 + i) + std::string(40, 'x'), 'f', 0644, sha256_hex(std::to_string(i))});
  TagHasher big(spec, "scratch");
  for (std::size_t i = 0; i < many.size(); ++i) big.add(many[i], i % 3 != 0);
  std::vector<TagFile> some;
  for (std::size_t i = 0; i < many.size(); ++i)
    if (i % 3 != 0) some.push_back(many[i]);
  CHECK(big.files_digest() == files_digest(some));
  CHECK(big.spec_hash() == spec_hash(spec, "scratch", many));
}

TEST_CASE("tag: spec_hash changes with file content, mode, path, type and the base") {
  const ImageSpec spec = base_spec();
  const auto files = sample_files();
  const std::string h = spec_hash(spec, "scratch", files);

  auto with = [&](auto mutate) {
    auto f = files;
    mutate(f);
    return spec_hash(spec, "scratch", f);
  };
  CHECK(with([](auto& f) { f[0].content = sha256_hex("x = 2\n"); }) != h);     // content
  CHECK(with([](auto& f) { f[0].mode = 0755; }) != h);                          // mode
  CHECK(with([](auto& f) { f[0].dest = "root/pkg/mod2.py"; }) != h);            // path
  CHECK(with([](auto& f) { f[3].content = "pkg/other.py"; }) != h);             // symlink target
  CHECK(with([](auto& f) { f[2].type = 'f'; }) != h);                           // type
  CHECK(with([](auto& f) { f.pop_back(); }) != h);                              // a file removed
  CHECK(with([](auto& f) { f.push_back({"root/new", 'f', 0644, sha256_hex("")}); }) != h);  // added
  // Framing: moving a character between content and dest changes the hash.
  CHECK(with([](auto& f) {
          f[0].content += "r";
          f[0].dest = "oot/pkg/mod.py";
        }) != h);
  // Mode bits above 07777 are ignored (only permission bits are hashed).
  CHECK(with([](auto& f) { f[0].mode = 0100644; }) == h);

  CHECK(spec_hash(spec, "sha256:" + std::string(64, '0'), files) != h);  // base
  CHECK(spec_hash(spec, "spec:abc", files) != spec_hash(spec, "spec:abd", files));
}

TEST_CASE("tag: spec_hash does not depend on the order of the input list") {
  const ImageSpec spec = base_spec();
  auto files = sample_files();
  const std::string h = spec_hash(spec, "scratch", files);
  std::reverse(files.begin(), files.end());
  CHECK(spec_hash(spec, "scratch", files) == h);
  std::rotate(files.begin(), files.begin() + 1, files.end());
  CHECK(spec_hash(spec, "scratch", files) == h);
}

TEST_CASE("tag: spec_hash depends on content-shaping fields only") {
  const ImageSpec spec = base_spec();
  const std::string h = spec_hash(spec, "scratch", sample_files());

  ImageSpec s = spec;
  s.packages = {"numpy"};
  CHECK(spec_hash(s, "scratch", sample_files()) != h);
  s = spec;
  s.env["A"] = "1";
  CHECK(spec_hash(s, "scratch", sample_files()) != h);
  s = spec;
  s.compression = Compression::Zstd;
  CHECK(spec_hash(s, "scratch", sample_files()) != h);

  // Left out of the canonical spec: name, registry, tag_format, and the checkout directory.
  s = spec;
  s.name = "other";
  s.registry = "ghcr.io/org";
  s.tag_format = "{spec_hash}-dev";
  s.base_dir = "/elsewhere";
  s.origin = "elsewhere.json";
  CHECK(spec_hash(s, "scratch", sample_files()) == h);
}

TEST_CASE("tag: v2 leaves host paths and _F_IMG_ID out of the hash") {
  const ImageSpec spec = base_spec();
  const std::string h = spec_hash(spec, "scratch", sample_files());
  CHECK(spec.canonical().dump().find("/proj") == std::string::npos);

  ImageSpec a = spec, b = spec;
  a.source_root = "/proj/src";
  b.source_root = "/elsewhere/deep/checkout/src";
  b.base_dir = "/tmp/pyflyte-xyz";
  CHECK(spec_hash(a, "scratch", sample_files()) == spec_hash(b, "scratch", sample_files()));
  a.requirements = "requirements.txt";
  b.requirements = "/elsewhere/deep/checkout/reqs.txt";
  const std::vector<std::pair<std::string, std::string>> in = {{"requirements", sha256_hex("numpy\n")}};
  CHECK(spec_hash(a, "scratch", sample_files(), 0, in) == spec_hash(b, "scratch", sample_files(), 0, in));
  // The requirements' content does count.
  CHECK(spec_hash(a, "scratch", sample_files(), 0, in) !=
        spec_hash(a, "scratch", sample_files(), 0, {{"requirements", sha256_hex("pandas\n")}}));

  ImageSpec id = spec;
  id.f_img_id = "flyte-image-id";
  CHECK(spec_hash(id, "scratch", sample_files()) == h);
  // entrypoint: [] clears the base's, so it counts; absent does not.
  ImageSpec cleared = spec;
  cleared.entrypoint = std::vector<std::string>{};
  CHECK(spec_hash(cleared, "scratch", sample_files()) != h);
}

TEST_CASE("tag: make_tag with the default and custom tag_format") {
  const std::string hash = sha256_hex("anything");
  const std::string h32 = hash.substr(0, 32);
  ImageSpec spec = base_spec();
  CHECK(make_tag(spec, hash) == h32);

  spec.tag_format = "{spec_hash}-dev";
  CHECK(make_tag(spec, hash) == h32 + "-dev");
  spec.tag_format = "v1.2_{spec_hash}";
  CHECK(make_tag(spec, hash) == "v1.2_" + h32);
  spec.tag_format = "{spec_hash}.{spec_hash}";
  CHECK(make_tag(spec, hash) == h32 + "." + h32);
  spec.tag_format = "{spec_hash}{spec_hash";  // a second, unterminated placeholder is invalid text
  CHECK_THROWS_AS(make_tag(spec, hash), SpecError);
  spec.tag_format = std::string(96, 'a') + "{spec_hash}";  // exactly 128 characters
  CHECK(make_tag(spec, hash) == std::string(96, 'a') + h32);
}

TEST_CASE("tag: make_tag errors are SpecErrors on tag_format") {
  const std::string hash = sha256_hex("anything");
  ImageSpec spec = base_spec();
  auto field_of = [&](const std::string& fmt) -> std::string {
    spec.tag_format = fmt;
    try {
      make_tag(spec, hash);
    } catch (const SpecError& e) {
      return e.field() + ": " + e.what();
    }
    return "no error";
  };
  // Missing {spec_hash}.
  std::string m = field_of("latest");
  CHECK(m.rfind("tag_format: ", 0) == 0);
  CHECK(m.find("{spec_hash}") != std::string::npos);
  CHECK(field_of("{spec_hash ").rfind("tag_format: ", 0) == 0);
  CHECK(field_of("").rfind("tag_format: ", 0) == 0);
  // Results that are not valid tags.
  for (const std::string& fmt : std::vector<std::string>{"bad tag/{spec_hash}", ".{spec_hash}", "-{spec_hash}", "{spec_hash}:x",
                                 std::string(97, 'a') + "{spec_hash}", "{spec_hash}\n", "caf\xc3\xa9{spec_hash}"}) {
    INFO("tag_format '" << fmt << "'");
    std::string r = field_of(fmt);
    CHECK(r.rfind("tag_format: ", 0) == 0);
    CHECK(r.find("not a valid tag") != std::string::npos);
  }
}

TEST_CASE("tag: valid_tag edge cases") {
  CHECK(valid_tag("a"));
  CHECK(valid_tag("_"));
  CHECK(valid_tag("0"));
  CHECK(valid_tag("latest"));
  CHECK(valid_tag("v1.2.3-rc_1"));
  CHECK(valid_tag("A.B-C_D"));
  CHECK(valid_tag("_leading-underscore"));
  CHECK(valid_tag("trailing."));
  CHECK(valid_tag("trailing-"));
  CHECK(valid_tag(std::string(128, 'a')));
  CHECK_FALSE(valid_tag(std::string(129, 'a')));
  CHECK_FALSE(valid_tag(""));
  CHECK_FALSE(valid_tag(".leading-dot"));
  CHECK_FALSE(valid_tag("-leading-dash"));
  CHECK_FALSE(valid_tag("has space"));
  CHECK_FALSE(valid_tag("a:b"));
  CHECK_FALSE(valid_tag("a/b"));
  CHECK_FALSE(valid_tag("a@b"));
  CHECK_FALSE(valid_tag("a+b"));
  CHECK_FALSE(valid_tag("tag\n"));
  CHECK_FALSE(valid_tag("\ntag"));
  CHECK_FALSE(valid_tag(std::string("a\0b", 3)));
  CHECK_FALSE(valid_tag("caf\xc3\xa9"));
}

TEST_CASE("tag: repository with and without registry") {
  ImageSpec spec = base_spec();
  CHECK(repository(spec) == "flytekit");
  spec.name = "my-image";
  CHECK(repository(spec) == "my-image");
  spec.registry = "ghcr.io/org";
  CHECK(repository(spec) == "ghcr.io/org/my-image");
  spec.registry = "localhost:5000";
  CHECK(repository(spec) == "localhost:5000/my-image");
  spec.registry = "";
  CHECK(repository(spec) == "my-image");
}
