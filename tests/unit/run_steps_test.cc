// RUN steps as data (run/steps.h) and what a step changed as layer entries (run/capture.h).
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <map>

#include "layers/digest.h"
#include "layers/fileset.h"
#include "run/capture.h"
#include "run/rootfs.h"
#include "run/steps.h"
#include "spec/image_spec.h"
#include "testutil.h"

namespace fs = std::filesystem;
using kiln::layers::TarEntry;
using kiln::testutil::TempDir;
using kiln::testutil::write_file;

namespace {

kiln::spec::ImageSpec spec_in(const TempDir& d, const std::string& json) {
  return kiln::spec::parse_spec(json, d.path(), "spec.json");
}

std::map<std::string, const TarEntry*> by_path(const kiln::run::Capture& c) {
  std::map<std::string, const TarEntry*> m;
  for (const auto& e : c.entries) m[e.path] = &e;
  return m;
}

std::string env_value(const std::vector<std::pair<std::string, std::string>>& env, const std::string& k) {
  for (const auto& [ek, ev] : env)
    if (ek == k) return ev;
  return "<unset>";
}

}  // namespace

TEST_CASE("steps: flytekit's order, one step per command", "[run]") {
  TempDir d;
  write_file(d / "requirements.txt", "numpy==1.26\n");
  auto s = spec_in(d, R"({"apt_packages": ["git"], "packages": ["pandas"], "requirements": "requirements.txt",
                          "commands": ["echo a", "echo b"], "workdir": "/app", "env": {"A": "1"}})");
  auto steps = kiln::run::plan_steps(s, {"PATH=/usr/bin:/bin", "A=0"}, "/", 0);
  REQUIRE(steps.size() == 4);
  CHECK(steps[0].name == "apt");
  CHECK(steps[1].name == "pip");
  CHECK(steps[2].name == "command 1");
  CHECK(steps[3].name == "command 2");
  CHECK(steps[2].created_by == "kiln: RUN echo a");
  // Each command is run untouched as `sh -c COMMAND` (passed as $1), inside the workdir.
  CHECK(steps[3].argv.back() == "echo b");
  CHECK(steps[3].argv.front() == "/bin/sh");
  CHECK(steps[3].workdir == "/app");
  CHECK(env_value(steps[0].env, "A") == "1");  // the spec's env over the base's
  CHECK(env_value(steps[0].env, "PATH") == "/usr/bin:/bin");
  CHECK(env_value(steps[0].env, "HOME") == "/root");
  CHECK(env_value(steps[0].env, "DEBIAN_FRONTEND") == "noninteractive");
  CHECK(env_value(steps[2].env, "DEBIAN_FRONTEND") == "<unset>");
  CHECK(env_value(steps[1].env, "SOURCE_DATE_EPOCH") == "0");
  // The requirements file is an input (its digest) and a read-only mount in the sandbox's /tmp.
  REQUIRE(steps[1].inputs.size() == 1);
  CHECK(steps[1].inputs[0].first == "requirements");
  REQUIRE(steps[1].mounts.size() == 1);
  CHECK(steps[1].mounts[0].target.rfind("/tmp/", 0) == 0);
  CHECK(steps[1].mounts[0].read_only);
  // Commands come after the source and copy layers (flytekit's order); apt and pip before.
  CHECK_FALSE(steps[0].after_files);
  CHECK_FALSE(steps[1].after_files);
  CHECK(steps[2].after_files);
  CHECK(steps[3].after_files);
  // The history names the requirements file by where the step reads it, not by its host path.
  CHECK(steps[1].created_by == "kiln: RUN pip install -r /tmp/kiln/requirements.txt pandas");
  // No files baked: no PYTHONPATH.
  CHECK(env_value(steps[0].env, "PYTHONPATH") == "<unset>");
}

TEST_CASE("steps: PYTHONPATH is source_dest when the spec bakes files, before the spec's env", "[run]") {
  TempDir d;
  auto pp = [&](const std::string& json, std::vector<std::string> base_env = {}) {
    auto steps = kiln::run::plan_steps(spec_in(d, json), base_env, "", 0);
    REQUIRE(!steps.empty());
    return env_value(steps[0].env, "PYTHONPATH");
  };
  CHECK(pp(R"({"source_root": ".", "commands": ["x"]})", {"PYTHONPATH=/usr/lib/x"}) == "/root");
  CHECK(pp(R"({"copy": ["a"], "commands": ["x"], "source_dest": "/app"})") == "/app");
  CHECK(pp(R"({"source_root": ".", "commands": ["x"], "env": {"PYTHONPATH": "/mine"}})") == "/mine");
  CHECK(pp(R"({"source_root": ".", "source_copy_mode": "no_copy", "commands": ["x"]})", {"PYTHONPATH=/b"}) == "/b");
  CHECK(pp(R"({"commands": ["x"]})") == "<unset>");
}

TEST_CASE("steps: the requirements path is in no step key, only its content", "[run]") {
  TempDir a, b;
  write_file(a / "requirements.txt", "x\n");
  write_file(b / "sub" / "reqs.txt", "x\n");
  auto sa = kiln::run::plan_steps(spec_in(a, R"({"requirements": "requirements.txt"})"), {}, "", 0);
  auto sb = kiln::run::plan_steps(spec_in(b, R"({"requirements": "sub/reqs.txt"})"), {}, "", 0);
  CHECK(kiln::run::step_key("c", sa[0], "gzip") == kiln::run::step_key("c", sb[0], "gzip"));
  CHECK(sa[0].created_by == sb[0].created_by);
}

TEST_CASE("steps: no install fields, no steps", "[run]") {
  TempDir d;
  CHECK(kiln::run::plan_steps(spec_in(d, R"({"name": "x"})"), {}, "", 0).empty());
  // An interpreter alone installs nothing.
  CHECK(kiln::run::plan_steps(spec_in(d, R"({"python_version": "3.11"})"), {}, "", 0).empty());
}

TEST_CASE("steps: apt package names and pip arguments are quoted", "[run]") {
  TempDir d;
  auto s = spec_in(d, R"({"packages": ["pandas ; python_version >= '3.9'"], "pip_extra_args": "--pre"})");
  auto steps = kiln::run::plan_steps(s, {}, "", 0);
  REQUIRE(steps.size() == 1);
  const std::string& script = steps[0].argv[2];
  CHECK(script.find("'pandas ; python_version >= '\\''3.9'\\'''") != std::string::npos);
  CHECK(script.find("'--pre'") != std::string::npos);
  CHECK(kiln::run::shell_quote("it's") == "'it'\\''s'");
}

TEST_CASE("steps: the cache key follows the step, its parent and its inputs", "[run]") {
  TempDir d;
  write_file(d / "requirements.txt", "a\n");
  auto s = spec_in(d, R"({"requirements": "requirements.txt", "commands": ["echo a"]})");
  auto steps = kiln::run::plan_steps(s, {}, "", 0);
  const std::string k = kiln::run::step_key("sha256:p", steps[0], "gzip");
  CHECK(kiln::run::step_key("sha256:p", steps[0], "gzip") == k);
  CHECK(kiln::run::step_key("sha256:q", steps[0], "gzip") != k);  // another parent
  CHECK(kiln::run::step_key("sha256:p", steps[0], "zstd") != k);  // other layer bytes
  write_file(d / "requirements.txt", "b\n");
  auto changed = kiln::run::plan_steps(s, {}, "", 0);
  CHECK(kiln::run::step_key("sha256:p", changed[0], "gzip") != k);  // the file's content
  CHECK(kiln::run::step_key("sha256:p", changed[1], "gzip") == kiln::run::step_key("sha256:p", steps[1], "gzip"));
  // The environment is part of the step.
  auto other_env = kiln::run::plan_steps(s, {"X=1"}, "", 0);
  CHECK(kiln::run::step_key("sha256:p", other_env[1], "gzip") != kiln::run::step_key("sha256:p", steps[1], "gzip"));
}

TEST_CASE("steps: index credentials reach pip, never the key, the script or the tag", "[run]") {
  TempDir d;
  auto with = [&](const std::string& token) {
    return spec_in(d, R"({"packages": ["a"], "pip_index": "https://user:)" + token +
                          R"(@pypi.example/simple", "pip_extra_index_url": ["https://x:)" + token +
                          R"(@extra.example/s"]})");
  };
  auto s1 = with("t0k3n-one"), s2 = with("t0k3n-two");
  auto a = kiln::run::plan_steps(s1, {}, "", 0), b = kiln::run::plan_steps(s2, {}, "", 0);
  REQUIRE(a.size() == 1);
  CHECK(env_value(a[0].secret_env, "PIP_INDEX_URL") == "https://user:t0k3n-one@pypi.example/simple");
  CHECK(env_value(a[0].secret_env, "PIP_EXTRA_INDEX_URL") == "https://x:t0k3n-one@extra.example/s");
  for (const auto& arg : a[0].argv) CHECK(arg.find("t0k3n") == std::string::npos);
  for (const auto& kv : a[0].env) CHECK(kv.second.find("t0k3n") == std::string::npos);
  CHECK(a[0].created_by.find("t0k3n") == std::string::npos);
  CHECK(kiln::run::step_key("p", a[0], "gzip") == kiln::run::step_key("p", b[0], "gzip"));
  CHECK(s1.canonical().dump() == s2.canonical().dump());
  CHECK(s1.canonical().dump().find("t0k3n") == std::string::npos);
  CHECK(s1.canonical()["pip_index"] == "https://pypi.example/simple");
  // Another index is another step.
  auto other = kiln::run::plan_steps(spec_in(d, R"({"packages": ["a"], "pip_index": "https://other/simple"})"), {}, "", 0);
  CHECK(kiln::run::step_key("p", other[0], "gzip") != kiln::run::step_key("p", a[0], "gzip"));
  CHECK(kiln::spec::without_userinfo("https://h/p@x") == "https://h/p@x");
  CHECK(kiln::spec::without_userinfo("file:///wheels") == "file:///wheels");
}

TEST_CASE("steps: credentials in pip_extra_args reach pip through the environment only", "[run]") {
  TempDir d;
  auto with = [&](const std::string& token) {
    return spec_in(d, R"({"packages": ["a"], "pip_extra_args": ["--pre", "--index-url", "https://user:)" + token +
                          R"(@pypi.example/simple", "--extra-index-url=https://)" + token +
                          R"(@extra.example/s", "--find-links=https://h.example/x,https://u:)" + token +
                          R"(@links.example/y", "--trusted-host", "pypi.example"]})");
  };
  auto s1 = with("t0k3n-one"), s2 = with("t0k3n-two");
  auto a = kiln::run::plan_steps(s1, {}, "", 0), b = kiln::run::plan_steps(s2, {}, "", 0);
  REQUIRE(a.size() == 1);
  // The script names the arguments with a credential by their variable, in order, and quotes the others.
  const std::string& script = a[0].argv[2];
  CHECK(script.find(R"(install '--pre' '--index-url' "$KILN_PIP_ARG_2" "$KILN_PIP_ARG_3" "$KILN_PIP_ARG_4" )"
                    R"('--trusted-host' 'pypi.example' 'a')") != std::string::npos);
  CHECK(env_value(a[0].secret_env, "KILN_PIP_ARG_2") == "https://user:t0k3n-one@pypi.example/simple");
  CHECK(env_value(a[0].secret_env, "KILN_PIP_ARG_3") == "--extra-index-url=https://t0k3n-one@extra.example/s");
  CHECK(env_value(a[0].secret_env, "KILN_PIP_ARG_4") ==
        "--find-links=https://h.example/x,https://u:t0k3n-one@links.example/y");
  CHECK(env_value(a[0].secret_env, "KILN_PIP_ARG_0") == "<unset>");  // nothing to hide: on the command line
  for (const auto& arg : a[0].argv) CHECK(arg.find("t0k3n") == std::string::npos);
  for (const auto& kv : a[0].env) CHECK(kv.second.find("t0k3n") == std::string::npos);
  for (const auto& kv : a[0].inputs) CHECK(kv.second.find("t0k3n") == std::string::npos);
  CHECK(a[0].created_by.find("t0k3n") == std::string::npos);
  // The key sees them without the credentials: rotating a token reuses the step, another index does not.
  CHECK(env_value(a[0].inputs, "pip_extra_args[2]") == "https://pypi.example/simple");
  CHECK(env_value(a[0].inputs, "pip_extra_args[3]") == "--extra-index-url=https://extra.example/s");
  CHECK(env_value(a[0].inputs, "pip_extra_args[4]") == "--find-links=https://h.example/x,https://links.example/y");
  CHECK(kiln::run::step_key("p", a[0], "gzip") == kiln::run::step_key("p", b[0], "gzip"));
  CHECK(s1.canonical().dump() == s2.canonical().dump());
  CHECK(s1.canonical().dump().find("t0k3n") == std::string::npos);
  auto other = kiln::run::plan_steps(
      spec_in(d, R"({"packages": ["a"], "pip_extra_args": ["--pre", "--index-url", "https://user:t0k3n-one@other.example/simple",
                     "--extra-index-url=https://t0k3n-one@extra.example/s",
                     "--find-links=https://h.example/x,https://u:t0k3n-one@links.example/y", "--trusted-host", "pypi.example"]})"),
      {}, "", 0);
  CHECK(kiln::run::step_key("p", other[0], "gzip") != kiln::run::step_key("p", a[0], "gzip"));
  // Every URL of an argument loses its userinfo, not only the first.
  CHECK(kiln::spec::without_userinfo("https://a/x,https://u:t@b/y") == "https://a/x,https://b/y");
  CHECK(kiln::spec::without_userinfo("https://u:t@a,https://v:s@b") == "https://a,https://b");
  CHECK(kiln::spec::without_userinfo("--x=https://u:t@h") == "--x=https://h");
}

TEST_CASE("steps: a package given as a URL with credentials reaches pip through the environment only", "[run]") {
  TempDir d;
  auto with = [&](const std::string& token) {
    return spec_in(d, R"({"packages": ["numpy", "pkg @ https://user:)" + token +
                          R"(@wheels.example/pkg-1.0-py3-none-any.whl", "git+https://)" + token +
                          R"(@git.example/org/repo.git@v1"]})");
  };
  auto s1 = with("t0k3n-one"), s2 = with("t0k3n-two");
  auto a = kiln::run::plan_steps(s1, {}, "", 0), b = kiln::run::plan_steps(s2, {}, "", 0);
  REQUIRE(a.size() == 1);
  CHECK(a[0].argv[2].find(R"('numpy' "$KILN_PIP_PKG_1" "$KILN_PIP_PKG_2")") != std::string::npos);
  CHECK(env_value(a[0].secret_env, "KILN_PIP_PKG_1") == "pkg @ https://user:t0k3n-one@wheels.example/pkg-1.0-py3-none-any.whl");
  CHECK(env_value(a[0].secret_env, "KILN_PIP_PKG_2") == "git+https://t0k3n-one@git.example/org/repo.git@v1");
  CHECK(env_value(a[0].secret_env, "KILN_PIP_PKG_0") == "<unset>");
  for (const auto& arg : a[0].argv) CHECK(arg.find("t0k3n") == std::string::npos);
  for (const auto& kv : a[0].inputs) CHECK(kv.second.find("t0k3n") == std::string::npos);
  // The image's history (pushed with it) names the package without the credentials.
  CHECK(a[0].created_by == "kiln: RUN pip install numpy pkg @ https://wheels.example/pkg-1.0-py3-none-any.whl "
                           "git+https://git.example/org/repo.git@v1");
  CHECK(env_value(a[0].inputs, "packages[2]") == "git+https://git.example/org/repo.git@v1");
  CHECK(kiln::run::step_key("p", a[0], "gzip") == kiln::run::step_key("p", b[0], "gzip"));
  CHECK(s1.canonical().dump() == s2.canonical().dump());
  CHECK(s1.canonical().dump().find("t0k3n") == std::string::npos);
  // Another URL is another step.
  auto other = kiln::run::plan_steps(spec_in(d, R"({"packages": ["numpy", "pkg @ https://user:t0k3n-one@wheels.example/pkg-2.0-py3-none-any.whl", "git+https://t0k3n-one@git.example/org/repo.git@v1"]})"), {}, "", 0);
  CHECK(kiln::run::step_key("p", other[0], "gzip") != kiln::run::step_key("p", a[0], "gzip"));
}

TEST_CASE("steps: a missing requirements file or secret source is an input error", "[run]") {
  TempDir d;
  CHECK_THROWS_AS(kiln::run::plan_steps(spec_in(d, R"({"requirements": "nope.txt"})"), {}, "", 0),
                  kiln::layers::InputError);
  CHECK_THROWS_AS(kiln::run::plan_steps(spec_in(d, R"({"packages": ["a"], "pip_secret_mounts": [["nope", "/x"]]})"), {},
                                        "", 0),
                  kiln::layers::InputError);
}

TEST_CASE("chain ids follow the OCI definition", "[run]") {
  CHECK(kiln::run::chain_id({}).empty());
  CHECK(kiln::run::chain_id({"sha256:a"}) == "sha256:a");
  CHECK(kiln::run::chain_id({"sha256:a", "sha256:b"}) == kiln::layers::sha256_digest("sha256:a sha256:b"));
}

TEST_CASE("base chains are keyed by blob digests as well as the claimed diff_ids", "[run]") {
  using kiln::run::LayerBlob;
  const std::string d1 = "sha256:" + std::string(64, '1'), d2 = "sha256:" + std::string(64, '2');
  const std::string b1 = "sha256:" + std::string(64, 'b'), b2 = "sha256:" + std::string(64, 'c');
  const std::string mt = "application/vnd.oci.image.layer.v1.tar+gzip";
  CHECK(kiln::run::base_chain_id({}).empty());
  std::vector<LayerBlob> honest = {{d1, mt, "/x", b1}, {d2, mt, "/y", b2}};
  std::string c = kiln::run::base_chain_id(honest);
  CHECK(kiln::layers::is_sha256_digest(c));  // a tree's name and a step key's parent take it as it is
  CHECK(c != kiln::run::chain_id({d1, d2}));
  // Where the blob is does not matter, what it is does.
  std::vector<LayerBlob> moved = {{d1, mt, "/elsewhere/x", b1}, {d2, "other", "/elsewhere/y", b2}};
  CHECK(kiln::run::base_chain_id(moved) == c);
  // Another blob claiming the same diff_id: another chain.
  std::vector<LayerBlob> liar = {{d1, mt, "/x", b1}, {d2, mt, "/y", "sha256:" + std::string(64, 'e')}};
  CHECK(kiln::run::base_chain_id(liar) != c);
  // The same blobs claiming other diff_ids: another chain.
  std::vector<LayerBlob> swapped = {{d2, mt, "/x", b1}, {d1, mt, "/y", b2}};
  CHECK(kiln::run::base_chain_id(swapped) != c);
  std::vector<LayerBlob> unnamed = {{d1, mt, "/x", ""}};
  CHECK_THROWS(kiln::run::base_chain_id(unnamed));
}

TEST_CASE("capture: a snapshot diff finds added, changed and removed paths", "[run]") {
  TempDir d;
  fs::path root = d / "root";
  write_file(root / "etc/keep", "same\n");
  write_file(root / "etc/touched", "same bytes\n");
  write_file(root / "etc/changed", "old\n");
  write_file(root / "etc/chmod", "x\n", 0644);
  write_file(root / "var/lib/gone/a", "1\n");
  write_file(root / "var/lib/gone/b", "2\n");
  write_file(root / "del", "x\n");
  fs::create_directories(root / "tmp");
  ::chmod((root / "tmp").c_str(), 01777);
  const auto mps = kiln::run::sandbox_mountpoints({});
  auto before = kiln::run::take_snapshot(root, mps);

  write_file(root / "etc/touched", "same bytes\n");  // rewritten, same content: not a change
  write_file(root / "etc/changed", "new content\n");
  ::chmod((root / "etc/chmod").c_str(), 0600);
  fs::remove_all(root / "var/lib/gone");
  fs::remove(root / "del");
  write_file(root / "opt/new/file", "n\n");
  fs::create_symlink("new/file", root / "opt/link");
  fs::create_hard_link(root / "opt/new/file", root / "opt/hard");
  write_file(root / "tmp/scratch", "never captured\n");
  write_file(root / "proc/1/status", "never captured\n");

  auto c = kiln::run::capture_snapshot(before, root, mps, false);
  auto m = by_path(c);
  CHECK(m.count("etc/changed"));
  CHECK(m.count("etc/chmod"));
  CHECK(m.at("etc/chmod")->mode == 0600);
  CHECK_FALSE(m.count("etc/keep"));
  CHECK_FALSE(m.count("etc/touched"));
  CHECK(m.count("etc"));  // the parent, with its real mode
  REQUIRE(m.count("var/lib/.wh.gone"));
  CHECK(m.at("var/lib/.wh.gone")->type == TarEntry::Type::Whiteout);
  CHECK_FALSE(m.count("var/lib/gone/.wh.a"));  // one whiteout for the removed subtree
  CHECK(m.count(".wh.del"));
  CHECK(m.at("opt/link")->type == TarEntry::Type::Symlink);
  CHECK(m.at("opt/link")->link_target == "new/file");
  // Hardlinks: the first path in the layer holds the bytes, the other links to it.
  CHECK(m.at("opt/hard")->type == TarEntry::Type::File);
  CHECK(m.at("opt/new/file")->type == TarEntry::Type::Hardlink);
  CHECK(m.at("opt/new/file")->link_target == "opt/hard");
  for (const auto& e : c.entries) {
    INFO(e.path);
    CHECK(e.path.rfind("tmp", 0) != 0);
    CHECK(e.path.rfind("proc", 0) != 0);
  }
}

TEST_CASE("capture: a fifo a step makes is skipped with a warning", "[run]") {
  TempDir d;
  fs::path root = d / "root";
  write_file(root / "bin/sh", "#!\n", 0755);
  const auto mps = kiln::run::sandbox_mountpoints({});
  auto before = kiln::run::take_snapshot(root, mps);
  REQUIRE(::mkfifo((root / "bin/pipe").c_str(), 0644) == 0);
  auto c = kiln::run::capture_snapshot(before, root, mps, false);
  CHECK(c.entries.empty());
  REQUIRE(c.warnings.size() == 1);
  CHECK(c.warnings[0].find("/bin/pipe: a fifo") != std::string::npos);
}

TEST_CASE("capture: mount points the sandbox created are not captured", "[run]") {
  TempDir d;
  fs::path root = d / "root";
  write_file(root / "bin/sh", "#!\n", 0755);
  const auto mps = kiln::run::sandbox_mountpoints({"/root/.netrc"});
  auto before = kiln::run::take_snapshot(root, mps);
  write_file(root / "etc/resolv.conf", "");  // bwrap's mount point for the host's resolv.conf
  write_file(root / "root/.netrc", "");      // a secret mount's
  auto c = kiln::run::capture_snapshot(before, root, mps, false);
  CHECK(c.entries.empty());
  // A step that also writes next to them: its files, and their parents, are captured.
  write_file(root / "etc/hostname", "kiln\n");
  c = kiln::run::capture_snapshot(before, root, mps, false);
  auto m = by_path(c);
  CHECK(m.count("etc/hostname"));
  CHECK(m.count("etc"));
  CHECK_FALSE(m.count("etc/resolv.conf"));
  CHECK_FALSE(m.count("root"));
}

TEST_CASE("capture: an overlay upper dir becomes whiteouts and opaque markers", "[run]") {
  if (::geteuid() != 0) {
    WARN("not root: overlay whiteouts (mknod, trusted xattrs) not tested");
    return;
  }
  TempDir d;
  fs::path lower = d / "lower", upper = d / "upper";
  write_file(lower / "etc/gone", "x\n");
  write_file(lower / "etc/same", "same\n");
  write_file(lower / "data/old1", "1\n");
  write_file(lower / "keep/a", "a\n");
  fs::create_directories(upper / "etc");
  fs::create_directories(upper / "keep");  // copied up as a parent only: not captured
  REQUIRE(::mknod((upper / "etc/gone").c_str(), S_IFCHR, makedev(0, 0)) == 0);
  write_file(upper / "etc/same", "same\n");  // copied up, byte-identical: not captured
  write_file(upper / "etc/new", "n\n");
  fs::create_directories(upper / "data");
  REQUIRE(::setxattr((upper / "data").c_str(), "trusted.overlay.opaque", "y", 1, 0) == 0);
  write_file(upper / "data/fresh", "f\n");
  fs::create_directories(upper / "proc");  // bwrap's mount point
  auto c = kiln::run::capture_overlay(upper, {lower}, kiln::run::sandbox_mountpoints({}));
  auto m = by_path(c);
  CHECK(m.count("etc/.wh.gone"));
  CHECK(m.count("etc/new"));
  CHECK_FALSE(m.count("etc/same"));
  CHECK(m.count("data/.wh..wh..opq"));
  CHECK(m.count("data/fresh"));
  CHECK_FALSE(m.count("keep"));
  CHECK_FALSE(m.count("proc"));
  CHECK(c.whiteouts == 2);
}
