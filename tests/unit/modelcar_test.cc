// Unit tests for modelcar/: the "modelcar" spec field (modes, /models, config), the layer
// flattening and lint rules, the spec `kiln modelcar` builds, and the pod spec patches.
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>
#include <vector>

#include "builder/build.h"
#include "builder/oci_layout.h"
#include "layers/fileset.h"
#include "layers/store.h"
#include "layers/tar_writer.h"
#include "modelcar/k8s.h"
#include "modelcar/lint.h"
#include "modelcar/spec.h"
#include "session/session.h"
#include "spec/image_spec.h"
#include "testutil.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using kiln::modelcar::Filesystem;
using kiln::modelcar::Finding;
using kiln::modelcar::Node;
using kiln::spec::ImageSpec;
using kiln::spec::SpecError;
using kiln::testutil::contains;
using kiln::testutil::TempDir;
using kiln::testutil::write_file;

namespace {

ImageSpec parse(const std::string& text, const fs::path& base) {
  return kiln::spec::parse_spec(text, base, "spec.json");
}

std::string spec_error(const std::string& text, const fs::path& base) {
  try {
    parse(text, base);
  } catch (const SpecError& e) {
    return e.what();
  }
  return "no error";
}

/// Builds `s` into the store and returns the result.
kiln::builder::BuildResult build(const ImageSpec& s, kiln::layers::Store& store) {
  kiln::builder::BuildOptions opts;
  opts.store = &store;
  opts.jobs = 2;
  kiln::builder::Prepared prep = kiln::builder::prepare(s, opts);
  return kiln::builder::build(prep, opts);
}

/// A busybox-like rootfs: /bin/busybox (an executable stand-in) and applet symlinks.
void make_rootfs(const fs::path& dir, const std::vector<std::string>& applets) {
  write_file(dir / "bin/busybox", "#!fake busybox\n", 0755);
  for (const auto& a : applets) fs::create_symlink("busybox", dir / "bin" / a);
}

Node file(std::uint32_t mode = 0644) { return Node{Node::Type::File, mode, 0, 0, 1, ""}; }
Node dir(std::uint32_t mode = 0755) { return Node{Node::Type::Dir, mode, 0, 0, 0, ""}; }
Node link(const std::string& target) { return Node{Node::Type::Symlink, 0777, 0, 0, 0, target}; }

/// A filesystem that passes every rule.
Filesystem good_fs() {
  Filesystem fs;
  fs["bin"] = dir();
  fs["bin/busybox"] = file(0755);
  for (const char* a : {"sh", "ln", "sleep", "ls", "["}) fs[std::string("bin/") + a] = link("busybox");
  fs["models"] = dir(0775);
  fs["models/config.json"] = file();
  return fs;
}

std::vector<std::string> codes(const std::vector<Finding>& fs) {
  std::vector<std::string> out;
  for (const auto& f : fs) out.push_back(f.code);
  return out;
}

/// Writes a layer of `entries` (uncompressed) to `path`.
fs::path write_tar(const fs::path& path, std::vector<kiln::layers::TarEntry> entries) {
  std::string bytes;
  kiln::layers::LayerWriteOptions wo;
  wo.compression = kiln::spec::Compression::Gzip;
  kiln::layers::write_layer(kiln::layers::normalize_entries(std::move(entries)), wo,
                            kiln::testutil::string_sink(&bytes));
  write_file(path, bytes);
  return path;
}

kiln::layers::TarEntry tar_file(const std::string& path, const fs::path& source, std::uint32_t mode = 0644) {
  kiln::layers::TarEntry t;
  t.path = path;
  t.type = kiln::layers::TarEntry::Type::File;
  t.mode = mode;
  t.source = source.string();
  t.size = fs::file_size(source);
  struct stat st {};
  ::stat(source.c_str(), &st);
  t.mtime_ns = std::int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  t.ctime_ns = std::int64_t(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
  return t;
}

kiln::layers::TarEntry tar_special(const std::string& path, kiln::layers::TarEntry::Type type,
                                   const std::string& target = "") {
  kiln::layers::TarEntry t;
  t.path = path;
  t.type = type;
  t.mode = type == kiln::layers::TarEntry::Type::Dir       ? 0755
           : type == kiln::layers::TarEntry::Type::Symlink ? 0777
                                                           : 0644;
  t.link_target = target;
  return t;
}

}  // namespace

TEST_CASE("modelcar spec: implies /models and copy mode all, refuses what contradicts it", "[modelcar]") {
  TempDir tmp;
  fs::create_directories(tmp / "model");
  ImageSpec s = parse(R"({"modelcar": true, "source_root": "model"})", tmp.path());
  CHECK(s.modelcar);
  CHECK(s.source_dest == "/models");
  CHECK(s.source_copy_mode == kiln::spec::CopyMode::All);
  CHECK(s.canonical().value("modelcar", false));

  CHECK(contains(spec_error(R"({"modelcar": true})", tmp.path()), "needs source_root"));
  CHECK(contains(spec_error(R"({"modelcar": true, "source_root": "model", "source_dest": "/data"})", tmp.path()),
                 "'source_dest' must be \"/models\""));
  CHECK(contains(
      spec_error(R"({"modelcar": true, "source_root": "model", "source_copy_mode": "loaded_modules"})", tmp.path()),
      "'source_copy_mode' must be \"all\""));
  CHECK(contains(spec_error(R"({"modelcar": true, "source_root": "model", "entrypoint": ["/serve"]})", tmp.path()),
                 "'entrypoint' must be empty"));
  CHECK(contains(spec_error(R"({"modelcar": "yes", "source_root": "model"})", tmp.path()), "must be a boolean"));
  // Consistent explicit values are fine.
  CHECK(
      spec_error(R"({"modelcar": true, "source_root": "model", "source_dest": "/models/", "source_copy_mode": "all"})",
                 tmp.path()) == "no error");
}

TEST_CASE("modelcar spec: the canonical form does not depend on where the model directory is", "[modelcar]") {
  TempDir tmp;
  ImageSpec a = parse(R"({"modelcar": true, "source_root": "model"})", tmp.path());
  ImageSpec b = parse(R"({"modelcar": true, "source_root": "."})", tmp / "elsewhere/model");
  CHECK(a.canonical() == b.canonical());
  CHECK_FALSE(a.canonical().contains("source_root"));
}

TEST_CASE("modelcar: files are 0644 and directories 0775 whatever the checkout's modes", "[modelcar]") {
  TempDir tmp;
  write_file(tmp / "model/weights.bin", "w", 0600);
  write_file(tmp / "model/run.sh", "#!/bin/sh\n", 0700);
  fs::create_directories(tmp / "model/sub");
  write_file(tmp / "model/sub/a.txt", "a", 0640);
  ::chmod((tmp / "model/sub").c_str(), 0700);
  kiln::layers::FileSet set =
      kiln::layers::collect_files(parse(R"({"modelcar": true, "source_root": "model"})", tmp.path()));
  REQUIRE(set.source.size() == 4);
  for (const auto& e : set.source) {
    INFO(e.dest);
    CHECK(e.dest.rfind("models/", 0) == 0);
    CHECK(e.mode == (e.type == kiln::layers::FileEntry::Type::Dir ? 0775u : 0644u));
  }
}

TEST_CASE("modelcar build: /models is 0775 in every layer, no entrypoint, model and base labels", "[modelcar]") {
  TempDir tmp;
  kiln::layers::Store store(tmp / "cache");
  // A base with an entrypoint and a cmd, built from a rootfs at /.
  make_rootfs(tmp / "rootfs", {"sh", "ln", "sleep", "ls", "["});
  ImageSpec base = parse(R"({"name": "base", "source_root": "rootfs", "source_dest": "/", "source_copy_mode": "all",
                             "entrypoint": ["/bin/sh"]})",
                         tmp.path());
  kiln::builder::BuildResult b = build(base, store);
  REQUIRE(b.image.config["config"].contains("Entrypoint"));
  std::string base_digest = kiln::builder::write_oci_layout(b.image, tmp / "layout", "base");

  write_file(tmp / "model/big/weights.safetensors", kiln::testutil::random_bytes(4096), 0600);
  write_file(tmp / "model/config.json", "{}", 0600);
  ImageSpec s = parse(R"({"name": "m", "modelcar": true, "source_root": "model", "base_image": "oci:layout:base",
                          "large_file_threshold": 1024})",
                      tmp.path());
  kiln::builder::BuildResult r = build(s, store);
  const json& cfg = r.image.config["config"];
  CHECK_FALSE(cfg.contains("Entrypoint"));
  CHECK_FALSE(cfg.contains("Cmd"));
  CHECK(cfg.value("Env", json::array()).dump().find("PYTHONPATH=/models") == std::string::npos);
  CHECK(cfg["Labels"].value(kiln::builder::kLabelBaseDigest, "") == base_digest);
  CHECK(cfg["Labels"].value(kiln::builder::kLabelModelDigest, "") ==
        cfg["Labels"].value(kiln::builder::kLabelSourceDigest, "x"));
  REQUIRE(r.image.layers.size() == 3);  // base, the large file, the rest

  // Each new layer alone: the implicit parents carry the modelcar mode too.
  for (std::size_t i = 1; i < r.image.layers.size(); ++i) {
    Filesystem one = kiln::modelcar::flatten(std::vector<fs::path>{r.image.layers[i].blob});
    INFO("layer " << i);
    REQUIRE(one.count("models"));
    CHECK(one["models"].mode == 0775);
    for (const auto& [path, node] : one) {
      INFO(path);
      CHECK(node.mode == (node.type == Node::Type::Dir ? 0775u : 0644u));
    }
  }
  Filesystem all = kiln::modelcar::flatten(kiln::session::layer_blobs(r.image));
  CHECK(all.at("models/big").mode == 0775);
  CHECK(all.at("models/big/weights.safetensors").size == 4096);
  CHECK(kiln::session::lint_modelcar(r.image, {}).empty());

  // The same files in a plain (non-modelcar) spec must not hit the modelcar's cached layers.
  ImageSpec plain = parse(R"({"name": "p", "source_root": "model", "source_dest": "/models", "source_copy_mode": "all",
                              "large_file_threshold": 1024})",
                          tmp.path());
  kiln::builder::BuildResult pr = build(plain, store);
  for (const auto& l : pr.layers) CHECK_FALSE(l.cache_hit);
}

TEST_CASE("modelcar flatten: whiteouts, opaque directories, files over directories, hardlinks", "[modelcar]") {
  TempDir tmp;
  using T = kiln::layers::TarEntry::Type;
  write_file(tmp / "x", "x");
  fs::path l1 =
      write_tar(tmp / "l1.tar", {tar_file("a/b", tmp / "x"), tar_file("a/c", tmp / "x"), tar_file("d/e", tmp / "x"),
                                 tar_file("f/g", tmp / "x"), tar_file("keep", tmp / "x", 0600)});
  fs::path l2 =
      write_tar(tmp / "l2.tar", {tar_special("a/.wh.b", T::Whiteout), tar_special("d/.wh..wh..opq", T::Whiteout),
                                 tar_file("d/new", tmp / "x"), tar_file("f", tmp / "x"),
                                 tar_special("h", T::Hardlink, "d/new"), tar_special("s", T::Symlink, "keep")});
  Filesystem fs = kiln::modelcar::flatten(std::vector<fs::path>{l1, l2});
  CHECK_FALSE(fs.count("a/b"));
  CHECK(fs.count("a/c"));
  CHECK_FALSE(fs.count("d/e"));
  CHECK(fs.count("d/new"));  // the opaque marker hides lower layers only
  CHECK(fs.at("f").type == Node::Type::File);
  CHECK_FALSE(fs.count("f/g"));
  CHECK(fs.at("h").type == Node::Type::File);
  CHECK(fs.at("keep").mode == 0600);
  CHECK(fs.at("s").link_target == "keep");
  CHECK_FALSE(fs.count("a/.wh.b"));
}

TEST_CASE("modelcar resolve and which: symlinks, absolute targets, loops, PATH", "[modelcar]") {
  Filesystem fs = good_fs();
  fs["usr"] = dir();
  fs["usr/bin"] = link("../bin");  // relative, through a directory link
  fs["sbin"] = link("/usr/bin");   // absolute
  fs["loop"] = link("loop");
  using kiln::modelcar::resolve;
  using kiln::modelcar::which;
  CHECK(resolve(fs, "/bin/sh") == std::optional<std::string>("bin/busybox"));
  CHECK(resolve(fs, "/usr/bin/ls") == std::optional<std::string>("bin/busybox"));
  CHECK(resolve(fs, "/sbin/sleep") == std::optional<std::string>("bin/busybox"));
  CHECK(resolve(fs, "/") == std::optional<std::string>(""));
  CHECK_FALSE(resolve(fs, "/loop"));
  CHECK_FALSE(resolve(fs, "/bin/busybox/x"));  // not a directory
  CHECK_FALSE(resolve(fs, "/nope"));
  CHECK(which(fs, "[", kiln::modelcar::kDefaultPath) == std::optional<std::string>("/usr/bin/["));
  CHECK(which(fs, "sh", "/opt:/bin") == std::optional<std::string>("/bin/sh"));
  CHECK_FALSE(which(fs, "sh", "/opt"));
  fs["bin/busybox"].mode = 0644;  // not executable
  CHECK_FALSE(which(fs, "sh", "/bin"));
}

TEST_CASE("modelcar lint: each rule", "[modelcar]") {
  using kiln::modelcar::lint;
  using V = std::vector<std::string>;
  const json none = json::object();
  CHECK(lint(good_fs(), none, {}).empty());

  Filesystem empty = good_fs();
  empty.erase("models/config.json");
  CHECK(codes(lint(empty, none, {})) == V{"models_empty"});

  Filesystem missing = good_fs();
  missing.erase("models/config.json");
  missing.erase("models");
  CHECK(codes(lint(missing, none, {})) == V{"models_missing"});

  Filesystem models_file = good_fs();
  models_file.erase("models/config.json");
  models_file["models"] = file();
  CHECK(codes(lint(models_file, none, {})) == V{"models_missing"});

  Filesystem linked = good_fs();  // /models as a symlink to a directory is fine
  linked["data"] = linked["models"];
  linked["data/config.json"] = file();
  linked.erase("models/config.json");
  linked["models"] = link("/data");
  CHECK(lint(linked, none, {}).empty());

  Filesystem no_shell = good_fs();
  no_shell.erase("bin/sh");
  auto f = lint(no_shell, none, {});
  REQUIRE(codes(f) == V{"tool_missing"});
  CHECK(contains(f[0].message, "'sh'"));
  CHECK(kiln::modelcar::has_errors(f));
  CHECK(lint(no_shell, none, {"", true}).empty());  // --volume-only

  // PATH from the config: tools outside it do not count.
  json path_cfg = {{"config", {{"Env", {"PATH=/opt/bin"}}}}};
  CHECK(lint(good_fs(), path_cfg, {}).size() == 5);

  json ep = {{"config", {{"Entrypoint", {"/bin/sh", "-c"}}}}};
  CHECK(codes(lint(good_fs(), ep, {})) == V{"entrypoint"});
  json cmd_only = {{"config", {{"Cmd", {"sh"}}, {"Entrypoint", nullptr}}}};
  CHECK(lint(good_fs(), cmd_only, {}).empty());

  auto latest = lint(good_fs(), none, {"latest", false});
  REQUIRE(codes(latest) == V{"latest_tag"});
  CHECK(latest[0].severity == Finding::Severity::Warning);
  CHECK_FALSE(kiln::modelcar::has_errors(latest));

  Filesystem private_files = good_fs();
  private_files["models/secret.bin"] = file(0600);
  private_files["models/sub"] = dir(0750);
  auto u = lint(private_files, none, {});
  REQUIRE(codes(u) == V{"unreadable"});
  CHECK(contains(u[0].message, "2 path(s)"));
  CHECK(contains(u[0].message, "/models/secret.bin"));

  json j = kiln::modelcar::to_json(u);
  CHECK(j[0]["severity"] == "error");
  CHECK(j[0]["code"] == "unreadable");
}

TEST_CASE("modelcar lint: an image built from scratch has no shell", "[modelcar]") {
  TempDir tmp;
  kiln::layers::Store store(tmp / "cache");
  write_file(tmp / "model/w.bin", "w");
  kiln::builder::BuildResult r = build(parse(R"({"modelcar": true, "source_root": "model"})", tmp.path()), store);
  auto f = kiln::session::lint_modelcar(r.image, {});
  CHECK(codes(f) ==
        std::vector<std::string>{"tool_missing", "tool_missing", "tool_missing", "tool_missing", "tool_missing"});
  CHECK(kiln::session::lint_modelcar(r.image, {"", true}).empty());
}

TEST_CASE("modelcar spec request: the spec kiln modelcar builds", "[modelcar]") {
  TempDir tmp;
  fs::create_directories(tmp / "My Model_v2");
  kiln::modelcar::SpecRequest req;
  req.model_dir = tmp / "My Model_v2";
  req.base = "oci:" + (tmp / "layout").string() + ":busybox";
  json j = kiln::modelcar::spec_json(req);
  CHECK(j["name"] == "my-model-v2");
  CHECK(j["modelcar"] == true);
  CHECK(j["base_image"] == "oci:" + (tmp / "layout").string() + ":busybox");
  ImageSpec s = kiln::modelcar::make_spec(req);
  CHECK(s.base_image.layout_tag == "busybox");
  CHECK(s.base_image.layout_dir == tmp / "layout");
  CHECK(s.source_root == tmp / "My Model_v2");
  // Relative paths are the spec file's: relative to base_dir, and kept as written.
  req.model_dir = "My Model_v2";
  req.base = "oci:layout:busybox";
  req.base_dir = tmp.path();
  CHECK(kiln::modelcar::spec_json(req)["base_image"] == "oci:layout:busybox");
  CHECK(kiln::modelcar::spec_json(req)["name"] == "my-model-v2");
  ImageSpec rel = kiln::modelcar::make_spec(req);
  CHECK(rel.base_image.layout_dir == tmp / "layout");
  CHECK(rel.source_root == tmp / "My Model_v2");
  CHECK(kiln::modelcar::default_name("/x/!!/") == "model");
  CHECK(kiln::modelcar::default_name("/x/Llama-3.1-8B") == "llama-3-1-8b");
}

TEST_CASE("k8s patch: each mode pins the digest and wires KServe's names", "[modelcar]") {
  using kiln::modelcar::PatchMode;
  const std::string img = "registry.example/models/m@sha256:" + std::string(64, 'a');
  kiln::modelcar::PatchOptions o;
  o.image = img;

  auto init = kiln::modelcar::pod_patch(o);
  const auto& spec = init["spec"];
  CHECK(spec["shareProcessNamespace"] == true);
  CHECK(spec["initContainers"][0]["name"] == "modelcar-init");
  CHECK(spec["initContainers"][0]["image"] == img);
  CHECK(spec["containers"][0]["name"] == "kserve-container");
  CHECK(spec["containers"][0]["env"][0]["name"] == "MODEL_INIT_MODE");
  CHECK(spec["containers"][0]["volumeMounts"][0]["mountPath"] == "/mnt");
  CHECK(spec["containers"][1]["name"] == "modelcar");
  CHECK(spec["containers"][1]["args"][2] == "ln -sf /proc/$$$$/root/models /mnt/models && sleep infinity");
  CHECK(spec["containers"][1]["resources"]["limits"]["memory"] == "15Mi");
  CHECK(spec["volumes"][0]["name"] == "kserve-provision-location");
  CHECK(spec["volumes"][0]["emptyDir"].is_object());
  CHECK(contains(spec["initContainers"][0]["args"][2].get<std::string>(), "$$(ls -A /models)"));

  o.mode = PatchMode::Sidecar;
  o.run_as_user = 1000;
  auto side = kiln::modelcar::pod_patch(o);
  const auto& car = side["spec"]["initContainers"][1];
  CHECK(car["name"] == "modelcar");
  CHECK(car["restartPolicy"] == "Always");
  CHECK(car["startupProbe"]["exec"]["command"][0] == "ls");
  CHECK(car["securityContext"]["runAsUser"] == 1000);
  CHECK(side["spec"]["containers"].size() == 1);
  CHECK(side["spec"]["containers"][0]["securityContext"]["runAsUser"] == 1000);

  o.mode = PatchMode::ImageVolume;
  o.template_wrap = true;
  auto vol = kiln::modelcar::pod_patch(o);
  const auto& vspec = vol["spec"]["template"]["spec"];
  CHECK_FALSE(vspec.contains("shareProcessNamespace"));
  CHECK(vspec["volumes"][0]["image"]["reference"] == img);
  CHECK(vspec["containers"][0]["volumeMounts"][0]["subPath"] == "models");
  CHECK(vspec["containers"][0]["volumeMounts"][0]["readOnly"] == true);
  CHECK(vspec["containers"][0]["volumeMounts"][0]["mountPath"] == "/mnt/models");

  o.image = "registry.example/models/m:v1";
  CHECK_THROWS_WITH(kiln::modelcar::pod_patch(o), Catch::Contains("digest reference"));
  CHECK_THROWS_AS(kiln::modelcar::parse_patch_mode("daemonset"), std::invalid_argument);
}

TEST_CASE("k8s patch: YAML is block style, deterministic, and quotes what YAML would misread", "[modelcar]") {
  nlohmann::ordered_json doc = {
      {"spec",
       {{"flag", true},
        {"list", {"sh", "-c", "10m", "true", "a: b", "", "/mnt/models", "x@sha256:ab"}},
        {"empty", nlohmann::ordered_json::object()},
        {"items", nlohmann::ordered_json::array({{{"name", "a"}, {"n", 1}}, {{"name", "b"}}})}}}};
  std::string y = kiln::modelcar::to_yaml(doc, "line one\nline two");
  CHECK(y ==
        "# line one\n"
        "# line two\n"
        "spec:\n"
        "  flag: true\n"
        "  list:\n"
        "  - sh\n"
        "  - \"-c\"\n"
        "  - \"10m\"\n"
        "  - \"true\"\n"
        "  - \"a: b\"\n"
        "  - \"\"\n"
        "  - /mnt/models\n"
        "  - x@sha256:ab\n"
        "  empty: {}\n"
        "  items:\n"
        "  - name: a\n"
        "    n: 1\n"
        "  - name: b\n");
}
