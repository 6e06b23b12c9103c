// Unit tests for plan/: parse_plan's validation, and decide()'s per-task reasons, warnings,
// errors and bundle, each on a real temporary project walked through prepare_images with a store
// in a temporary directory (the same path `kiln plan` takes).
#include "plan/plan.h"
#include "plan/prepare.h"

#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

#include "builder/build.h"
#include "layers/fileset.h"
#include "layers/store.h"
#include "spec/image_spec.h"

namespace fs = std::filesystem;
namespace plan = kiln::plan;
using json = nlohmann::json;
using kiln::layers::InputError;
using kiln::spec::SpecError;

namespace {

/// A fresh directory, removed with everything in it on destruction.
class Tmp {
 public:
  Tmp() {
    std::string tmpl = (fs::temp_directory_path() / "kiln-plan-test.XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::system_error(errno, std::generic_category(), "mkdtemp");
    path_ = fs::canonical(tmpl);
  }
  ~Tmp() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  Tmp(const Tmp&) = delete;
  Tmp& operator=(const Tmp&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void put(const fs::path& p, const std::string& content = "# python\n") {
  fs::create_directories(p.parent_path());
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << content;
  if (!f) throw std::runtime_error("cannot write " + p.string());
}

/// A temporary project plus a store in the same temporary directory (outside the project).
///
///   proj/src/wf/__init__.py, baked.py, mapped.py     the baking image's source_root (src)
///   proj/src/wf/__pycache__/baked.cpython-311.pyc     never baked nor bundled (built-in rule)
///   proj/other/plain.py                               outside source_root
///   proj/scripts/run.sh                               not a module
struct Project {
  Tmp tmp;
  fs::path root = tmp.path() / "proj";
  kiln::layers::Store store{tmp.path() / "cache"};

  Project() {
    put(root / "src/wf/__init__.py", "");
    put(root / "src/wf/baked.py", "def baked(): pass\n");
    put(root / "src/wf/mapped.py", "def mapped(x): return x\n");
    put(root / "src/wf/__pycache__/baked.cpython-311.pyc", "\x01\x02");
    put(root / "other/plain.py", "def plain(): pass\n");
    put(root / "scripts/run.sh", "#!/bin/sh\necho hi\n");
  }

  /// parse_plan + prepare_images + decide, as `kiln plan` does; paths resolve against the project.
  json run(const json& plan_json) { return run_text(plan_json.dump()); }
  json run_text(const std::string& text) {
    plan::PlanInput in = plan::parse_plan(text, root, "plan.json");
    kiln::builder::BuildOptions opts{&store};
    auto prepared = plan::prepare_images(in, opts);
    return plan::decide(in, prepared);
  }
};

/// The images every test may use: a spec baking src/ (copy mode all) at /root/src, so that with the
/// working directory /root each module sits where its dotted path (src.wf.baked, relative to the
/// project root proj/) imports it from; a spec baking nothing; a plain reference.
json baked_spec(const std::string& name, const std::string& mode) {
  return {{"name", name}, {"source_root", "src"}, {"source_copy_mode", mode}, {"source_dest", "/root/src"}, {"workdir", "/root"}};
}

json std_images() {
  return {{"baked", {{"inline", baked_spec("baked", "all")}}},
          {"bare", {{"inline", {{"name", "bare"}}}}},
          {"plain", "python:3.12-slim"}};
}

json task(const std::string& name, const std::string& kind, const std::string& image, std::vector<std::string> modules) {
  return {{"name", name}, {"kind", kind}, {"image", image}, {"modules", modules}};
}

json plan_of(const std::string& copy, json tasks, json images = std_images()) {
  return {{"copy", copy}, {"images", std::move(images)}, {"tasks", std::move(tasks)}};
}

const json& task_out(const json& out, const std::string& name) {
  for (const auto& t : out.at("tasks"))
    if (t.at("name") == name) return t;
  FAIL("no task " << name << " in " << out.dump());
  throw std::logic_error("unreachable");
}

/// The SpecError (message and field) parse_plan raises for `text`, or "no error".
std::pair<std::string, std::string> parse_error(const std::string& text, const fs::path& base = "/nonexistent-base") {
  try {
    plan::parse_plan(text, base, "plan.json");
  } catch (const SpecError& e) {
    return {e.what(), e.field()};
  }
  return {"no error", ""};
}

bool has(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Reasons, one test each.

TEST_CASE("plan: reason source_baked - a python task whose module the image bakes") {
  Project p;
  json out = p.run(plan_of("auto", {task("t", "python", "baked", {"src/wf/baked.py"})}));
  const json& t = task_out(out, "t");
  CHECK(t.at("reason") == "source_baked");
  CHECK(t.at("fast_register") == false);
  CHECK(t.at("kind") == "python");
  CHECK(t.at("image") == "baked");
  CHECK(t.at("modules") == json{"src/wf/baked.py"});
  CHECK(t.at("image_ref").get<std::string>().rfind("baked:", 0) == 0);
  CHECK(out.at("bundle") == json{{"needed", false}});
  CHECK(out.at("warnings") == json::array());
  CHECK(out.at("errors") == json::array());
  CHECK_FALSE(plan::has_errors(out));
  const json& img = out.at("images").at("baked");
  CHECK(img.at("kind") == "imagespec");
  CHECK(img.at("source_baked") == true);
  CHECK(img.at("copy_mode") == "all");
  CHECK(img.at("source_dest") == "/root/src");
  CHECK(img.at("workdir") == "/root");
  CHECK(img.at("source_digest").get<std::string>().rfind("sha256:", 0) == 0);
  CHECK(img.at("image") == t.at("image_ref"));
}

TEST_CASE("plan: reason no_source_root - an ImageSpec image that bakes no source") {
  Project p;
  json images = std_images();
  images["nocopy"] = {{"inline", {{"name", "nocopy"}, {"source_root", "src"}, {"source_copy_mode", "no_copy"}}}};
  json out = p.run(plan_of("auto", {task("t", "python", "bare", {"src/wf/baked.py"}),
                                    task("u", "python", "nocopy", {"src/wf/baked.py"})},
                           images));
  for (const char* name : {"t", "u"}) {
    const json& t = task_out(out, name);
    CHECK(t.at("reason") == "no_source_root");
    CHECK(t.at("fast_register") == true);
  }
  CHECK(out.at("images").at("bare") == json{{"image", task_out(out, "t").at("image_ref")}, {"kind", "imagespec"}, {"source_baked", false}});
  CHECK(out.at("images").at("nocopy").at("source_baked") == false);
  CHECK(out.at("bundle").at("needed") == true);
  CHECK(out.at("bundle").at("files") == json{"src/wf/baked.py"});
  CHECK(out.at("warnings") == json::array());
  CHECK(out.at("errors") == json::array());
}

TEST_CASE("plan: reason plain_image - a python task on a plain image reference") {
  Project p;
  json out = p.run(plan_of("auto", {task("t", "python", "plain", {"other/plain.py"})}));
  const json& t = task_out(out, "t");
  CHECK(t.at("reason") == "plain_image");
  CHECK(t.at("fast_register") == true);
  CHECK(t.at("image_ref") == "python:3.12-slim");
  CHECK(out.at("images").at("plain") == json{{"image", "python:3.12-slim"}, {"kind", "reference"}, {"source_baked", false}});
  CHECK(out.at("bundle") == json{{"needed", true}, {"file_count", 1}, {"files", {"other/plain.py"}}});
  CHECK(out.at("warnings") == json::array());
  CHECK(out.at("errors") == json::array());
}

TEST_CASE("plan: reason copy_none - copy none and the task's code is not baked") {
  Project p;
  json out = p.run(plan_of("none", {task("t", "python", "plain", {"other/plain.py"})}));
  const json& t = task_out(out, "t");
  CHECK(t.at("reason") == "copy_none");
  CHECK(t.at("fast_register") == false);
  CHECK(out.at("copy") == "none");
  CHECK(out.at("bundle") == json{{"needed", false}});
  REQUIRE(out.at("errors").size() == 1);
  CHECK(out.at("errors")[0].at("code") == "code_unavailable");
  CHECK(out.at("warnings") == json::array());
}

TEST_CASE("plan: reason module_not_baked - the module lies outside source_root") {
  Project p;
  json out = p.run(plan_of("auto", {task("t", "python", "baked", {"src/wf/baked.py", "other/plain.py"})}));
  const json& t = task_out(out, "t");
  CHECK(t.at("reason") == "module_not_baked");
  CHECK(t.at("fast_register") == true);
  REQUIRE(out.at("warnings").size() == 1);
  const json& w = out.at("warnings")[0];
  CHECK(w.at("code") == "module_not_baked");
  CHECK(w.at("task") == "t");
  CHECK(w.at("modules") == json{"other/plain.py"});  // only the missing one
  CHECK(has(w.at("message").get<std::string>(), "other/plain.py"));
  CHECK(out.at("bundle").at("needed") == true);
  CHECK(out.at("bundle").at("files") == json{"other/plain.py", "src/wf/baked.py"});
  CHECK(out.at("errors") == json::array());
}

TEST_CASE("plan: reason raw_container - a raw container never fast-registers") {
  Project p;
  json out = p.run(plan_of("all", {task("r1", "raw_container", "plain", {}), task("r2", "raw_container", "baked", {}),
                                   task("r3", "container", "plain", {"other/plain.py"})}));
  for (const char* name : {"r1", "r2", "r3"}) {
    CHECK(task_out(out, name).at("reason") == "raw_container");
    CHECK(task_out(out, name).at("fast_register") == false);
  }
  CHECK(task_out(out, "r3").at("kind") == "container");  // "container" is an alias of raw_container
  CHECK(out.at("bundle") == json{{"needed", false}});     // even with copy all: nothing to bundle for
  CHECK(out.at("warnings") == json::array());  // plain reference and a spec with source_root: no warning
  CHECK(out.at("errors") == json::array());
}

// ---------------------------------------------------------------------------------------------
// Warnings and errors, one test each.

TEST_CASE("plan: warning raw_container_without_source - raw container on a spec without source_root, copy auto|all") {
  Project p;
  for (const char* copy : {"auto", "all"}) {
    INFO("copy " << copy);
    json out = p.run(plan_of(copy, {task("r", "raw_container", "bare", {})}));
    CHECK(task_out(out, "r").at("reason") == "raw_container");
    CHECK(task_out(out, "r").at("fast_register") == false);
    REQUIRE(out.at("warnings").size() == 1);
    const json& w = out.at("warnings")[0];
    CHECK(w.at("code") == "raw_container_without_source");
    CHECK(w.at("task") == "r");
    CHECK(has(w.at("message").get<std::string>(), "'bare'"));
    CHECK(w.size() == 3);  // code, task, message
    CHECK(out.at("errors") == json::array());
    CHECK(out.at("bundle") == json{{"needed", false}});
  }
  // Not with copy none (no bundle is expected to bring anything there), nor on a plain reference
  // or a spec that bakes source_root.
  json none = p.run(plan_of("none", {task("r", "raw_container", "bare", {})}));
  CHECK(none.at("warnings") == json::array());
  CHECK(none.at("errors") == json::array());
  json others = p.run(plan_of("auto", {task("r1", "raw_container", "plain", {}), task("r2", "raw_container", "baked", {})}));
  CHECK(others.at("warnings") == json::array());
}

TEST_CASE("plan: warning module_not_baked - .dockerignore excludes the task's module") {
  Project p;
  put(p.root / "src/.dockerignore", "wf/mapped.py\n");
  json out = p.run(plan_of("auto", {task("kept", "python", "baked", {"src/wf/baked.py"}),
                                    task("ignored", "python", "baked", {"src/wf/mapped.py"})}));
  CHECK(task_out(out, "kept").at("reason") == "source_baked");
  CHECK(task_out(out, "kept").at("fast_register") == false);
  const json& t = task_out(out, "ignored");
  CHECK(t.at("reason") == "module_not_baked");
  CHECK(t.at("fast_register") == true);
  REQUIRE(out.at("warnings").size() == 1);
  CHECK(out.at("warnings")[0].at("code") == "module_not_baked");
  CHECK(out.at("warnings")[0].at("task") == "ignored");
  CHECK(out.at("warnings")[0].at("modules") == json{"src/wf/mapped.py"});
  CHECK(out.at("bundle").at("needed") == true);
  CHECK(out.at("errors") == json::array());

  // Without the .dockerignore rule, the same task is baked.
  fs::remove(p.root / "src/.dockerignore");
  json again = p.run(plan_of("auto", {task("ignored", "python", "baked", {"src/wf/mapped.py"})}));
  CHECK(task_out(again, "ignored").at("reason") == "source_baked");
  CHECK(again.at("warnings") == json::array());
}

TEST_CASE("plan: error code_unavailable - copy none with code neither baked nor bundled") {
  Project p;
  json out = p.run(plan_of("none", {task("on_plain", "python", "plain", {"other/plain.py"}),
                                    task("on_bare", "python", "bare", {"src/wf/baked.py"}),
                                    task("not_baked", "python", "baked", {"other/plain.py"}),
                                    task("baked", "python", "baked", {"src/wf/baked.py"}),
                                    task("raw", "raw_container", "plain", {})}));
  json expected_tasks = json::array();
  for (const auto& t : out.at("tasks")) expected_tasks.push_back({t.at("name"), t.at("reason"), t.at("fast_register")});
  CHECK(expected_tasks == json{{"on_plain", "copy_none", false},
                               {"on_bare", "copy_none", false},
                               {"not_baked", "copy_none", false},
                               {"baked", "source_baked", false},
                               {"raw", "raw_container", false}});
  REQUIRE(out.at("errors").size() == 3);
  std::vector<std::string> tasks;
  for (const auto& e : out.at("errors")) {
    CHECK(e.at("code") == "code_unavailable");
    CHECK(e.size() == 3);  // code, task, message
    CHECK(has(e.at("message").get<std::string>(), "copy is none"));
    tasks.push_back(e.at("task"));
  }
  CHECK(tasks == std::vector<std::string>{"on_plain", "on_bare", "not_baked"});
  CHECK(plan::has_errors(out));
  CHECK(out.at("warnings") == json::array());  // no module_not_baked warning under copy none
  CHECK(out.at("bundle") == json{{"needed", false}});
}

// ---------------------------------------------------------------------------------------------
// A whole workflow under each copy mode.

TEST_CASE("plan: mixed workflow under copy auto, all and none") {
  Project p;
  json tasks = {task("wf.baked", "python", "baked", {"src/wf/baked.py"}),
                task("wf.plain", "python", "plain", {"other/plain.py"}),
                task("wf.raw_src", "raw_container", "baked", {}),
                task("wf.raw_bare", "raw_container", "bare", {}),
                task("wf.map", "map", "baked", {"src/wf/mapped.py"})};
  auto decisions = [](const json& out) {
    json d = json::array();
    for (const auto& t : out.at("tasks")) d.push_back({t.at("name"), t.at("fast_register"), t.at("reason")});
    return d;
  };
  auto codes = [](const json& list) {
    json d = json::array();
    for (const auto& x : list) d.push_back({x.at("code"), x.at("task")});
    return d;
  };
  const json raw_warning = json::array({json::array({"raw_container_without_source", "wf.raw_bare"})});

  SECTION("auto") {
    json out = p.run(plan_of("auto", tasks));
    CHECK(decisions(out) == json{{"wf.baked", false, "source_baked"},
                                 {"wf.plain", true, "plain_image"},
                                 {"wf.raw_src", false, "raw_container"},
                                 {"wf.raw_bare", false, "raw_container"},
                                 {"wf.map", false, "source_baked"}});
    CHECK(codes(out.at("warnings")) == raw_warning);
    CHECK(out.at("errors") == json::array());
    // auto without loaded_modules: the python-like tasks' modules.
    CHECK(out.at("bundle") == json{{"needed", true},
                                   {"file_count", 3},
                                   {"files", {"other/plain.py", "src/wf/baked.py", "src/wf/mapped.py"}}});
  }
  SECTION("all") {
    json out = p.run(plan_of("all", tasks));
    CHECK(decisions(out) == json{{"wf.baked", false, "source_baked"},
                                 {"wf.plain", true, "plain_image"},
                                 {"wf.raw_src", false, "raw_container"},
                                 {"wf.raw_bare", false, "raw_container"},
                                 {"wf.map", false, "source_baked"}});
    CHECK(codes(out.at("warnings")) == raw_warning);
    CHECK(out.at("errors") == json::array());
    // all: the whole project under the build's "all" rules (no __pycache__, no .pyc).
    CHECK(out.at("bundle") == json{{"needed", true},
                                   {"file_count", 5},
                                   {"files",
                                    {"other/plain.py", "scripts/run.sh", "src/wf/__init__.py", "src/wf/baked.py",
                                     "src/wf/mapped.py"}}});
  }
  SECTION("none") {
    json out = p.run(plan_of("none", tasks));
    CHECK(decisions(out) == json{{"wf.baked", false, "source_baked"},
                                 {"wf.plain", false, "copy_none"},
                                 {"wf.raw_src", false, "raw_container"},
                                 {"wf.raw_bare", false, "raw_container"},
                                 {"wf.map", false, "source_baked"}});
    CHECK(out.at("warnings") == json::array());
    CHECK(codes(out.at("errors")) == json::array({json::array({"code_unavailable", "wf.plain"})}));
    CHECK(out.at("bundle") == json{{"needed", false}});
  }
}

// ---------------------------------------------------------------------------------------------
// No bundle needed: nothing outside the baked set is touched.

// Method: a FIFO sits in the project outside the baked set (proj/scratch/pipe, source_root is
// proj/src). The file-set walk refuses a FIFO the moment it meets one (for root too, unlike
// chmod 000), so the plan succeeding proves the walk never reached scratch/; the same tree with
// one task not baked, whose copy-all bundle must be listed, fails on that FIFO - proving the
// file would have been touched had the project been scanned.
TEST_CASE("plan: every task baked - copy all scans no file of the project") {
  Project p;
  fs::create_directories(p.root / "scratch");
  REQUIRE(::mkfifo((p.root / "scratch/pipe").c_str(), 0644) == 0);
  json baked_only = {task("a", "python", "baked", {"src/wf/baked.py"}), task("m", "map", "baked", {"src/wf/mapped.py"}),
                     task("r", "raw_container", "plain", {})};

  json out = p.run(plan_of("all", baked_only));
  CHECK(out.at("bundle") == json{{"needed", false}});
  CHECK(out.at("errors") == json::array());
  CHECK(task_out(out, "a").at("reason") == "source_baked");
  CHECK(task_out(out, "m").at("reason") == "source_baked");

  json with_plain = baked_only;
  with_plain.push_back(task("p", "python", "plain", {"other/plain.py"}));
  try {
    p.run(plan_of("all", with_plain));
    FAIL("listing the copy-all bundle should have met the fifo");
  } catch (const InputError& e) {
    CHECK(has(e.what(), "scratch/pipe"));
    CHECK(has(e.what(), "fifo"));
  }
  // copy auto lists only the modules: the FIFO is not on its way either.
  json autom = p.run(plan_of("auto", with_plain));
  CHECK(autom.at("bundle").at("files") == json{"other/plain.py", "src/wf/baked.py", "src/wf/mapped.py"});
}

// ---------------------------------------------------------------------------------------------
// loaded_modules-mode images.

TEST_CASE("plan: loaded_modules image - listed modules are baked, others are not") {
  Project p;
  json images = {{"lm", {{"inline", baked_spec("lm", "loaded_modules")}}}};
  json plan_json = plan_of("auto",
                           {task("listed", "python", "lm", {"src/wf/baked.py"}),
                            task("unlisted", "python", "lm", {"src/wf/mapped.py"})},
                           images);
  // other/plain.py lies outside the image's source_root: the SDK loaded it, the image ignores it.
  plan_json["loaded_modules"] = {"src/wf/__init__.py", "src/wf/baked.py", "other/plain.py"};
  json out = p.run(plan_json);
  CHECK(out.at("images").at("lm").at("copy_mode") == "loaded_modules");
  CHECK(out.at("images").at("lm").at("source_baked") == true);
  CHECK(task_out(out, "listed").at("reason") == "source_baked");
  CHECK(task_out(out, "listed").at("fast_register") == false);
  CHECK(task_out(out, "unlisted").at("reason") == "module_not_baked");
  CHECK(task_out(out, "unlisted").at("fast_register") == true);
  REQUIRE(out.at("warnings").size() == 1);
  CHECK(out.at("warnings")[0].at("code") == "module_not_baked");
  CHECK(out.at("warnings")[0].at("task") == "unlisted");
  // auto with loaded_modules: the bundle is exactly the loaded modules.
  CHECK(out.at("bundle") == json{{"needed", true},
                                 {"file_count", 3},
                                 {"files", {"other/plain.py", "src/wf/__init__.py", "src/wf/baked.py"}}});

  // Listing the second module bakes it: no bundle needed.
  plan_json["loaded_modules"].push_back("src/wf/mapped.py");
  json both = p.run(plan_json);
  CHECK(task_out(both, "unlisted").at("reason") == "source_baked");
  CHECK(both.at("bundle") == json{{"needed", false}});
  CHECK(both.at("warnings") == json::array());
  // Baking more modules changes the image (its tag).
  CHECK(both.at("images").at("lm").at("image") != out.at("images").at("lm").at("image"));
}

TEST_CASE("plan: a module symlinked from outside source_root is not baked (the image holds a dangling link)") {
  Project p;
  // A monorepo's shared module, linked into the project: flytekit's builder copies the target's
  // bytes; kiln never follows a link out of source_root, so the image holds a dangling link.
  put(p.tmp.path() / "common/shared.py", "VALUE = 1\n");
  fs::create_symlink("../../../common/shared.py", p.root / "src/wf/shared.py");
  // A link that stays inside and reaches a baked file (through a linked directory) is baked.
  fs::create_symlink("baked.py", p.root / "src/wf/alias.py");
  fs::create_symlink("wf", p.root / "src/wf2");
  for (const std::string mode : {"all", "loaded_modules"}) {
    INFO("copy mode " << mode);
    json images = {{"img", {{"inline", baked_spec("img", mode)}}}};
    json plan_json = plan_of("auto",
                             {task("linked", "python", "img", {"src/wf/baked.py", "src/wf/shared.py"}),
                              task("alias", "python", "img", {"src/wf/alias.py"}),
                              task("via_dir", "python", "img", {"src/wf2/baked.py"})},
                             images);
    plan_json["loaded_modules"] = {"src/wf/baked.py", "src/wf/shared.py", "src/wf/alias.py", "src/wf2"};
    json out = p.run(plan_json);
    const json& t = task_out(out, "linked");
    CHECK(t.at("reason") == "module_not_baked");
    CHECK(t.at("fast_register") == true);
    REQUIRE(out.at("warnings").size() >= 1);
    const json& w = out.at("warnings")[0];
    CHECK(w.at("code") == "module_not_baked");
    CHECK(w.at("modules") == json{"src/wf/shared.py"});
    const std::string msg = w.at("message").get<std::string>();
    CHECK(has(msg, "is a symlink to '../../../common/shared.py'"));
    CHECK(has(msg, "outside source_root"));
    CHECK(task_out(out, "alias").at("reason") == "source_baked");
    CHECK(task_out(out, "via_dir").at("reason") == "source_baked");
  }
}

// ---------------------------------------------------------------------------------------------
// Kinds, determinism, parsing.

TEST_CASE("plan: map, array and unknown kinds count as python tasks") {
  Project p;
  json out = p.run(plan_of("auto", {task("m", "map", "plain", {"other/plain.py"}), task("a", "array", "plain", {"other/plain.py"}),
                                    task("x", "some_plugin", "baked", {"src/wf/baked.py"}),
                                    task("d", "", "baked", {"other/plain.py"})}));
  CHECK(task_out(out, "m").at("reason") == "plain_image");
  CHECK(task_out(out, "a").at("reason") == "plain_image");
  CHECK(task_out(out, "x").at("reason") == "source_baked");
  CHECK(task_out(out, "x").at("kind") == "some_plugin");
  CHECK(task_out(out, "d").at("reason") == "module_not_baked");
  // kind omitted: python.
  json dflt = p.run(json{{"images", std_images()}, {"tasks", {{{"name", "t"}, {"image", "plain"}}}}});
  CHECK(task_out(dflt, "t").at("kind") == "python");
  CHECK(task_out(dflt, "t").at("modules") == json::array());
  CHECK(task_out(dflt, "t").at("reason") == "plain_image");
  CHECK(dflt.at("copy") == "auto");
}

TEST_CASE("plan: the output is deterministic, and the same from a copy of the project") {
  Project p;
  put(p.root / "src/.dockerignore", "wf/mapped.py\n");
  json plan_json = plan_of("all", {task("wf.baked", "python", "baked", {"src/wf/baked.py"}),
                                   task("wf.map", "map", "baked", {"src/wf/mapped.py"}),
                                   task("wf.plain", "python", "plain", {"other/plain.py"}),
                                   task("wf.raw_bare", "raw_container", "bare", {})});
  std::string first = p.run(plan_json).dump(2);
  CHECK(p.run(plan_json).dump(2) == first);

  Tmp other;
  fs::copy(p.root, other.path() / "elsewhere", fs::copy_options::recursive);
  plan::PlanInput in = plan::parse_plan(plan_json.dump(), other.path() / "elsewhere", "plan.json");
  kiln::builder::BuildOptions opts{&p.store};
  std::string moved = plan::decide(in, plan::prepare_images(in, opts)).dump(2);
  CHECK(moved == first);
  CHECK(has(first, "\"module_not_baked\""));
  CHECK(has(first, "\"raw_container_without_source\""));
}

TEST_CASE("plan: parse_plan defaults, paths and accepted forms") {
  Tmp t;
  plan::PlanInput in = plan::parse_plan(R"({})", t.path(), "p.json");
  CHECK(in.copy == plan::CopyMode::Auto);
  CHECK(in.project_root == t.path());
  CHECK(in.images.empty());
  CHECK(in.tasks.empty());

  in = plan::parse_plan(R"({"copy": "ALL", "project_root": "sub/../proj/", "loaded_modules": "a/b.py",
                            "images": {"s": "python:3.12", "r": {"ref": "busybox"}, "i": {"inline": {"name": "x"}}},
                            "tasks": [{"name": "t", "image": "s", "modules": "./pkg//m.py"}]})",
                        t.path(), "p.json");
  CHECK(in.copy == plan::CopyMode::All);
  CHECK(in.project_root == t.path() / "proj");
  CHECK(in.loaded_modules == std::vector<std::string>{"a/b.py"});
  REQUIRE(in.images.size() == 3);
  for (const auto& im : in.images) {
    if (im.id == "s") CHECK((im.ref == "python:3.12" && !im.spec));
    if (im.id == "r") CHECK((im.ref == "busybox" && !im.spec));
    if (im.id == "i") CHECK((im.ref.empty() && im.spec && im.spec->name == "x"));
  }
  REQUIRE(in.tasks.size() == 1);
  CHECK(in.tasks[0].kind == "python");
  CHECK(in.tasks[0].modules == std::vector<std::string>{"pkg/m.py"});

  // A spec file resolves against the plan's directory, its own paths against its directory.
  fs::create_directories(t.path() / "specs");
  put(t.path() / "specs/img.json", R"({"name": "fromfile", "source_root": ".."})");
  in = plan::parse_plan(R"({"images": {"f": {"spec": "specs/img.json"}}})", t.path(), "p.json");
  REQUIRE(in.images.size() == 1);
  REQUIRE(in.images[0].spec);
  CHECK(in.images[0].spec->name == "fromfile");
  CHECK(*in.images[0].spec->source_root == t.path());

  CHECK(plan::to_string(plan::CopyMode::None) == std::string("none"));
}

TEST_CASE("plan: parse_plan rejects malformed input, naming the field") {
  using E = std::pair<std::string, std::string>;
  auto err = [](const std::string& text) { return parse_error(text); };

  auto unknown = err(R"({"copy": "auto", "extra": 1})");
  CHECK(has(unknown.first, "unknown field 'extra'"));
  CHECK(unknown.second == "plan.extra");
  CHECK(err(R"({"images": {"a": {"ref": "x", "tag": "y"}}})").second == "images.a.tag");
  CHECK(err(R"({"images": {"a": "x"}, "tasks": [{"name": "t", "image": "a", "module": []}]})").second == "tasks[0].module");

  auto bad_copy = err(R"({"copy": "some"})");
  CHECK(bad_copy == E{"field 'copy' must be auto, all or none (pyflyte's --copy), not 'some'", "copy"});
  auto unknown_image = err(R"({"images": {"a": "x"}, "tasks": [{"name": "t", "image": "b"}]})");
  CHECK(unknown_image == E{"task 't' uses image 'b', which 'images' does not define", "tasks[0].image"});

  // Wrong types are input errors too (SpecError), not internal errors.
  CHECK(err(R"({"copy": 1})").second == "copy");
  CHECK(err(R"({"copy": null})").second == "copy");
  CHECK(err(R"({"project_root": ["a"]})").second == "project_root");
  CHECK(err(R"({"images": {"a": "x"}, "tasks": [{"name": "t", "image": "a", "kind": 3}]})").second == "tasks[0].kind");
  CHECK(err(R"({"images": {"a": "x"}, "tasks": [{"name": "t", "image": "a", "modules": [1]}]})").second ==
        "tasks[0].modules");
  CHECK(err(R"({"loaded_modules": {"a": 1}})").second == "loaded_modules");
  CHECK(err(R"({"images": []})").second == "images");
  CHECK(err(R"({"tasks": {}})").second == "tasks");
  CHECK(err(R"({"images": {"a": 5}})").second == "images.a");
  CHECK(err(R"({"images": {"a": {"ref": 5}}})").second == "images.a.ref");
  CHECK(err(R"({"images": {"a": {"spec": 5}}})").second == "images.a.spec");
  CHECK(err(R"({"images": {"a": {"ref": "x", "inline": {}}}})").second == "images.a");
  CHECK(err(R"({"images": {"a": {}}})").second == "images.a");
  CHECK(err(R"({"images": {"a": ""}})").second == "images.a");
  // A reference with credentials in it: refused, the secret never echoed.
  for (const char* ref : {R"("user:s3cr3t@ghcr.io/acme/app:1")", R"({"ref": "user:s3cr3t@ghcr.io/acme/app:1"})"}) {
    auto e = err(std::string(R"({"images": {"a": )") + ref + "}}");
    CHECK(e.second == "images.a");
    CHECK(has(e.first, "***@ghcr.io/acme/app:1"));
    CHECK_FALSE(has(e.first, "s3cr3t"));
  }
  CHECK(err(R"({"images": {"a": "ghcr.io/acme/app@sha256:)" + std::string(64, 'a') + R"("}})").first == "no error");
  CHECK(err(R"({"images": {"a": {"spec": "missing.json"}}})").second == "images.a.spec");
  CHECK(err(R"({"images": {"a": {"inline": {"nonsense_field": 1}}}})").first != "no error");
  CHECK(err(R"({"images": {"a": "x"}, "tasks": [{"image": "a"}]})").second == "tasks[0].name");
  CHECK(err(R"({"images": {"a": "x"}, "tasks": [{"name": "t"}]})").second == "tasks[0].image");
  CHECK(err(R"({"images": {"a": "x"}, "tasks": ["t"]})").second == "tasks[0]");
  CHECK(err(R"({"images": {"a": "x"}, "tasks": [{"name": "t", "image": "a"}, {"name": "t", "image": "a"}]})") ==
        E{"task 't' is listed twice", "tasks[1].name"});
  CHECK(err(R"({"images": {"a": "x"}, "tasks": [{"name": "t", "image": "a", "modules": ["../x.py"]}]})").second ==
        "tasks[0].modules");
  CHECK(err(R"({"images": {"a": "x"}, "tasks": [{"name": "t", "image": "a", "modules": ["/abs.py"]}]})").second ==
        "tasks[0].modules");
  CHECK(err(R"({"loaded_modules": ["a/../../x.py"]})").second == "loaded_modules");
  CHECK(err(R"({"loaded_modules": [""]})").second == "loaded_modules");

  auto syntax = err("{\n  \"copy\": auto\n}");
  CHECK(has(syntax.first, "plan.json:2:"));
  CHECK(has(syntax.first, "JSON syntax error"));
  CHECK(err("[1, 2]").first == "plan.json: the plan must be a JSON object");
}

TEST_CASE("plan: summary names each task's decision, the bundle, warnings and errors") {
  Project p;
  json out = p.run(plan_of("none", {task("b", "python", "baked", {"src/wf/baked.py"}),
                                    task("p", "python", "plain", {"other/plain.py"}),
                                    task("r", "raw_container", "plain", {})}));
  std::string s = plan::summary(out);
  CHECK(has(s, "plan (copy none):\n"));
  CHECK(has(s, "  baked         b on baked:"));
  CHECK(has(s, "  no code       p on python:3.12-slim (copy_none)\n"));
  CHECK(has(s, "  raw container r on python:3.12-slim (raw_container)\n"));
  CHECK(has(s, "  bundle: not needed"));
  CHECK(has(s, "error: [code_unavailable] task 'p'"));

  json fast = p.run(plan_of("auto", {task("p", "python", "plain", {"other/plain.py"}), task("w", "raw_container", "bare", {})}));
  std::string f = plan::summary(fast);
  CHECK(has(f, "  fast-register p on python:3.12-slim (plain_image)\n"));
  CHECK(has(f, "  bundle: needed, 1 file(s)\n"));
  CHECK(has(f, "warning: [raw_container_without_source] raw container task 'w'"));
}

// ---------------------------------------------------------------------------------------------
// The import path: a baked module replaces the bundle only where the task imports it from.
// pyflyte runs a task as `task-module <dotted path relative to the project root>` from the
// container's working directory; the baked file sits at source_dest + its path below source_root.

namespace {

/// A spec image baking `source_root` (copy mode all) with kiln's defaults (source_dest = workdir
/// = /root), plus `extra` fields.
json image_at(const std::string& source_root, json extra = json::object()) {
  json s = {{"name", "img"}, {"source_root", source_root}, {"source_copy_mode", "all"}};
  s.update(extra);
  return {{"inline", s}};
}

}  // namespace

TEST_CASE("plan: source_root a subfolder of the project root - module_path_mismatch, fast register") {
  Project p;  // project root proj/, source_root proj/src: src/wf/baked.py lands at /root/wf/baked.py
  json out = p.run(plan_of("auto", {task("t", "python", "sub", {"src/wf/baked.py", "src/wf/mapped.py"})},
                           {{"sub", image_at("src")}}));
  const json& t = task_out(out, "t");
  CHECK(t.at("reason") == "module_path_mismatch");
  CHECK(t.at("fast_register") == true);
  REQUIRE(out.at("warnings").size() == 1);
  const json& w = out.at("warnings")[0];
  CHECK(w.at("code") == "module_path_mismatch");
  CHECK(w.at("task") == "t");
  CHECK(w.at("modules") == json{"src/wf/baked.py", "src/wf/mapped.py"});
  CHECK(w.at("locations") ==
        json{{{"module", "src/wf/baked.py"}, {"baked_at", "/root/wf/baked.py"}, {"expected_at", "/root/src/wf/baked.py"}},
             {{"module", "src/wf/mapped.py"}, {"baked_at", "/root/wf/mapped.py"}, {"expected_at", "/root/src/wf/mapped.py"}}});
  const std::string msg = w.at("message");
  CHECK(has(msg, "src/wf/baked.py is baked at /root/wf/baked.py but must be at /root/src/wf/baked.py"));
  CHECK(has(msg, "imports src.wf.baked"));
  CHECK(out.at("bundle").at("needed") == true);
  CHECK(out.at("errors") == json::array());
  CHECK(out.at("images").at("sub").at("workdir") == "/root");
}

TEST_CASE("plan: source_root a parent of the project root - module_path_mismatch") {
  Project p;  // project root proj/src (pyflyte's: src/ has no __init__.py), source_root proj/
  json plan_json = plan_of("auto", {task("t", "python", "parent", {"wf/baked.py"})}, {{"parent", image_at(".")}});
  plan_json["project_root"] = "src";
  json out = p.run(plan_json);
  CHECK(task_out(out, "t").at("reason") == "module_path_mismatch");
  CHECK(task_out(out, "t").at("fast_register") == true);
  REQUIRE(out.at("warnings").size() == 1);
  CHECK(out.at("warnings")[0].at("locations") ==
        json{{{"module", "wf/baked.py"}, {"baked_at", "/root/src/wf/baked.py"}, {"expected_at", "/root/wf/baked.py"}}});
  CHECK(out.at("bundle") == json{{"needed", true}, {"file_count", 1}, {"files", {"wf/baked.py"}}});
}

TEST_CASE("plan: source_root equal to the project root - baked at the import path") {
  Project p;
  json plan_json = plan_of("auto", {task("t", "python", "same", {"wf/baked.py"})}, {{"same", image_at("src")}});
  plan_json["project_root"] = "src";
  json out = p.run(plan_json);
  CHECK(task_out(out, "t").at("reason") == "source_baked");
  CHECK(task_out(out, "t").at("fast_register") == false);
  CHECK(out.at("warnings") == json::array());
  CHECK(out.at("bundle") == json{{"needed", false}});
}

TEST_CASE("plan: a misplaced module under copy none is code_unavailable, naming both places") {
  Project p;
  json out = p.run(plan_of("none", {task("t", "python", "sub", {"src/wf/baked.py"})}, {{"sub", image_at("src")}}));
  CHECK(task_out(out, "t").at("reason") == "copy_none");
  CHECK(task_out(out, "t").at("fast_register") == false);
  CHECK(out.at("warnings") == json::array());
  REQUIRE(out.at("errors").size() == 1);
  const json& e = out.at("errors")[0];
  CHECK(e.at("code") == "code_unavailable");
  CHECK(e.at("locations") ==
        json{{{"module", "src/wf/baked.py"}, {"baked_at", "/root/wf/baked.py"}, {"expected_at", "/root/src/wf/baked.py"}}});
  CHECK(has(e.at("message").get<std::string>(), "baked at /root/wf/baked.py but must be at /root/src/wf/baked.py"));
  CHECK(has(e.at("message").get<std::string>(), "copy is none"));
  CHECK(plan::has_errors(out));
}

TEST_CASE("plan: one module missing and one misplaced - module_not_baked, both warnings") {
  Project p;
  json out = p.run(plan_of("auto", {task("t", "python", "sub", {"src/wf/baked.py", "other/plain.py"})},
                           {{"sub", image_at("src")}}));
  CHECK(task_out(out, "t").at("reason") == "module_not_baked");
  CHECK(task_out(out, "t").at("fast_register") == true);
  REQUIRE(out.at("warnings").size() == 2);
  CHECK(out.at("warnings")[0].at("code") == "module_not_baked");
  CHECK(out.at("warnings")[0].at("modules") == json{"other/plain.py"});
  CHECK(out.at("warnings")[1].at("code") == "module_path_mismatch");
  CHECK(out.at("warnings")[1].at("modules") == json{"src/wf/baked.py"});
}

TEST_CASE("plan: the import root is the plan's dest_dir, else the image's working directory") {
  Project p;
  // source_root = project root (proj/src), baked at /app: /app/wf/baked.py.
  json app = image_at("src", {{"source_dest", "/app"}, {"workdir", "/app"}});
  json plan_json = plan_of("auto", {task("t", "python", "app", {"wf/baked.py"})}, {{"app", app}});
  plan_json["project_root"] = "src";

  // No dest_dir: the image's working directory /app is where the task imports from.
  CHECK(task_out(p.run(plan_json), "t").at("reason") == "source_baked");
  // A workdir elsewhere moves the import root away from the baked files.
  json moved = plan_json;
  moved["images"]["app"]["inline"]["workdir"] = "/srv";
  json out = p.run(moved);
  CHECK(task_out(out, "t").at("reason") == "module_path_mismatch");
  CHECK(out.at("warnings")[0].at("locations")[0].at("expected_at") == "/srv/wf/baked.py");
  // dest_dir given: it wins over the working directory (normalized).
  plan_json["dest_dir"] = "/app/./";
  CHECK(task_out(p.run(plan_json), "t").at("reason") == "source_baked");
  plan_json["dest_dir"] = "/root";
  out = p.run(plan_json);
  CHECK(task_out(out, "t").at("reason") == "module_path_mismatch");
  CHECK(out.at("warnings")[0].at("locations") ==
        json{{{"module", "wf/baked.py"}, {"baked_at", "/app/wf/baked.py"}, {"expected_at", "/root/wf/baked.py"}}});
}

TEST_CASE("plan: a python task that lists no modules is never counted as baked (modules_unknown)") {
  Project p;
  json tasks = {{{"name", "t"}, {"image", "baked"}}, task("u", "python", "baked", {})};
  json out = p.run(plan_of("auto", tasks));
  for (const char* name : {"t", "u"}) {
    CHECK(task_out(out, name).at("reason") == "modules_unknown");
    CHECK(task_out(out, name).at("fast_register") == true);
  }
  REQUIRE(out.at("warnings").size() == 2);
  CHECK(out.at("warnings")[0].at("code") == "modules_unknown");
  CHECK(out.at("warnings")[0].at("task") == "t");
  CHECK(out.at("warnings")[0].size() == 3);  // code, task, message
  CHECK(has(out.at("warnings")[0].at("message").get<std::string>(), "keeps fast register"));
  CHECK(out.at("bundle").at("needed") == true);
  CHECK(out.at("errors") == json::array());

  // copy none: nothing would bring a bundle; the task is not an error, but not baked either.
  json none = p.run(plan_of("none", tasks));
  CHECK(task_out(none, "t").at("reason") == "modules_unknown");
  CHECK(task_out(none, "t").at("fast_register") == false);
  CHECK(none.at("warnings").size() == 2);
  CHECK(has(none.at("warnings")[0].at("message").get<std::string>(), "copy is none"));
  CHECK(none.at("errors") == json::array());
  CHECK(none.at("bundle") == json{{"needed", false}});
  CHECK(has(plan::summary(none), "  unverified    t on baked:"));

  // On an image that bakes nothing, the usual reasons apply.
  json bare = p.run(plan_of("auto", {task("b", "python", "bare", {}), task("q", "python", "plain", {})}));
  CHECK(task_out(bare, "b").at("reason") == "no_source_root");
  CHECK(task_out(bare, "q").at("reason") == "plain_image");
  CHECK(bare.at("warnings") == json::array());
}

TEST_CASE("plan: dest_dir must be an absolute string") {
  CHECK(parse_error(R"({"dest_dir": "root"})").second == "dest_dir");
  CHECK(has(parse_error(R"({"dest_dir": "root"})").first, "must be an absolute path"));
  CHECK(parse_error(R"({"dest_dir": 3})").second == "dest_dir");
  CHECK(parse_error(R"({"dest_dir": ""})").second == "dest_dir");
  Tmp t;
  CHECK(plan::parse_plan(R"({"dest_dir": "/root//x/"})", t.path(), "p.json").dest_dir == std::optional<std::string>("/root/x"));
  CHECK_FALSE(plan::parse_plan(R"({"dest_dir": null})", t.path(), "p.json").dest_dir.has_value());
}

TEST_CASE("plan: decide needs only the narrow per-image facts") {
  // A hand-made file set, no builder involved: the plan core stands on its own.
  Project p;
  plan::PlanInput in = plan::parse_plan(
      plan_of("auto", {task("t", "python", "img", {"src/wf/baked.py"}), task("u", "python", "img", {"src/wf/mapped.py"})},
              {{"img", {{"inline", {{"name", "img"}}}}}})
          .dump(),
      p.root, "plan.json");
  kiln::layers::FileSet files;
  files.has_source = true;
  files.mode = kiln::spec::CopyMode::All;
  kiln::layers::FileEntry e;
  e.set_paths("wf/baked.py", "");
  files.source.push_back(e);
  plan::PreparedImage im;
  im.image_ref = "img:v1";
  im.files = &files;
  im.source_digest = "sha256:" + std::string(64, '0');
  im.source_root = p.root / "src";
  im.source_dest = "/root/src";
  im.workdir = "/root";
  json out = plan::decide(in, std::map<std::string, plan::PreparedImage>{{"img", im}});
  CHECK(task_out(out, "t").at("reason") == "source_baked");
  CHECK(task_out(out, "u").at("reason") == "module_not_baked");
  CHECK(out.at("images").at("img").at("image") == "img:v1");
}

TEST_CASE("plan: prepared_image carries the spec's source_dest and working directory") {
  Project p;
  plan::PlanInput in = plan::parse_plan(
      plan_of("auto", json::array(), {{"a", image_at("src", {{"source_dest", "/app"}})}, {"b", image_at("src", {{"workdir", "/srv"}})}})
          .dump(),
      p.root, "plan.json");
  kiln::builder::BuildOptions opts{&p.store};
  auto prepared = plan::prepare_images(in, opts);
  plan::PreparedImage a = plan::prepared_image(prepared.at("a"));
  CHECK(a.source_dest == "/app");
  CHECK(a.workdir == "/app");  // kiln's default working directory is source_dest
  CHECK(a.source_root == p.root / "src");
  CHECK(a.files == &prepared.at("a").files);
  CHECK(a.image_ref == prepared.at("a").image_ref());
  plan::PreparedImage b = plan::prepared_image(prepared.at("b"));
  CHECK(b.source_dest == "/root");
  CHECK(b.workdir == "/srv");
  CHECK(plan::loaded_modules_under(in, p.root / "src").empty());
  in.loaded_modules = {"src/wf/baked.py", "other/plain.py"};
  CHECK(plan::loaded_modules_under(in, p.root / "src") == std::vector<std::string>{"wf/baked.py"});
}

TEST_CASE("plan: the copy-all bundle honours .flyteignore, the image's file set does not") {
  Project p;
  put(p.root / ".flyteignore", "scripts/\n");
  put(p.root / "src/.flyteignore", "wf/mapped.py\n");  // inside the baking image's source_root
  json tasks = {task("wf.plain", "python", "plain", {"other/plain.py"}),
                task("wf.map", "map", "baked", {"src/wf/mapped.py"})};
  json out = p.run(plan_of("all", tasks));
  // pyflyte's bundle: .flyteignore at the project root drops scripts/ (the ignore file itself stays,
  // as flytekit's walk keeps it).
  json files = out.at("bundle").at("files");
  CHECK(std::find(files.begin(), files.end(), "scripts/run.sh") == files.end());
  CHECK(std::find(files.begin(), files.end(), "other/plain.py") != files.end());
  // The image (flytekit's image builder ignores .flyteignore) still bakes src/wf/mapped.py.
  CHECK(task_out(out, "wf.map").at("reason") == "source_baked");
}
