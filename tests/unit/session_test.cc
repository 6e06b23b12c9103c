// The build session without the CLI: records, logs, commit order under a failing sink,
// cancellation, and what a failure says.
#include <catch2/catch.hpp>
#include <filesystem>
#include <string>
#include <vector>

#include "builder/oci_layout.h"
#include "builder/output.h"
#include "history/history.h"
#include "layers/store.h"
#include "registry/reference.h"
#include "session/session.h"
#include "testutil.h"

namespace fs = std::filesystem;
using kiln::session::Outcome;
using kiln::session::Session;
using kiln::testutil::read_file;
using kiln::testutil::TempDir;
using kiln::testutil::write_file;

namespace {

struct Collect : kiln::builder::Progress {
  std::mutex mu;
  std::vector<std::string> lines;
  void log(const std::string& l) override {
    std::lock_guard<std::mutex> lock(mu);
    lines.push_back(l);
  }
  void begin(const std::string&, const std::string&, std::uint64_t) override {}
  void advance(const std::string&, std::uint64_t) override {}
  void end(const std::string&, const std::string& s) override { log(s); }
};

/// A store, a history and a project with one spec, in a temp dir.
struct Fixture {
  TempDir tmp;
  kiln::layers::Store store{tmp / "cache"};
  kiln::history::HistoryDb db{tmp / "state"};
  Collect view;
  fs::path spec = tmp / "proj" / "spec.json";

  Fixture() {
    write_file(tmp / "proj/app/main.py", "print('hi')\n");
    write_file(tmp / "proj/app/lib/util.py", "X = 1\n");
    write_file(spec, R"({"name": "sess-app", "source_root": "app", "source_copy_mode": "all"})");
  }
  Session session() {
    kiln::session::Environment env;
    env.store = &store;
    env.history = &db;
    env.progress = &view;
    return Session(env);
  }
  static kiln::session::Options options(std::vector<std::string> outputs = {}) {
    kiln::session::Options o;
    o.build.jobs = 2;
    for (const auto& t : outputs) o.outputs.push_back(kiln::builder::parse_output(t));
    return o;
  }
};

}  // namespace

TEST_CASE("session: BuildProgress passes lines on, logs them, and cancels layer work", "[session]") {
  TempDir d;
  Collect inner;
  kiln::history::BuildLog file(d / "b.log");
  std::atomic<bool> cancel{false};
  kiln::session::BuildProgress p(&inner, file, "[x] ", &cancel);
  p.log("one");
  p.warn("two");
  p.note("three");
  p.begin("layer0", "layer big", 10);
  p.end("layer0", "layer big: done");
  CHECK(inner.lines == std::vector<std::string>{"[x] one", "warning: [x] two", "[x] layer big: done"});
  CHECK(read_file(d / "b.log") == "one\nwarning: two\nthree\nlayer big ...\nlayer big: done\n");

  p.advance("layer0", 1);
  p.checkpoint();
  cancel = true;
  CHECK(p.stop_requested());
  p.advance("pull1", 1);  // not a layer: registry transfers are never interrupted mid-callback
  CHECK_FALSE(p.cancelled());
  CHECK_THROWS_AS(p.advance("layer1", 1), kiln::session::Cancelled);
  CHECK(p.cancelled());
  CHECK_THROWS_AS(p.checkpoint(), kiln::session::Cancelled);

  // No inner progress: the lines still reach the log.
  kiln::history::BuildLog mem("");
  kiln::session::BuildProgress quiet(nullptr, mem);
  quiet.log("a");
  CHECK(mem.tail(1) == std::vector<std::string>{"a"});
}

TEST_CASE("session: a build is recorded with its log, outputs and layers", "[session]") {
  Fixture f;
  Session s = f.session();
  Outcome r = s.build(f.spec.string(), Fixture::options({"oci:" + (f.tmp / "out").string()}));
  INFO(r.failure.message);
  REQUIRE(r.ok());
  CHECK(r.status == "success");
  CHECK(r.kind == "build");
  CHECK(r.image == "sess-app:" + r.tag);
  REQUIRE(r.outputs.size() == 1);
  CHECK(r.outputs[0].digest == r.digest);
  CHECK(kiln::builder::resolve_oci_layout(f.tmp / "out", r.tag, "linux/amd64") == r.digest);
  CHECK(r.has_source);
  CHECK(r.copy_mode == "all");

  auto rec = f.db.get(r.build_id);
  REQUIRE(rec);
  CHECK(rec->kind == "build");
  CHECK(rec->status == "success");
  CHECK(rec->image_digest == r.digest);
  CHECK(rec->outputs == std::vector<std::string>{"oci:" + (f.tmp / "out").string()});
  CHECK(rec->layers.size() == r.layers.size());
  CHECK(rec->spec_path == f.spec.string());
  CHECK(rec->log_path == r.log_path);
  std::string log = read_file(r.log_path);
  CHECK(log.find("built sess-app:" + r.tag) != std::string::npos);
  CHECK(log.find("wrote oci:") != std::string::npos);
}

TEST_CASE("session: a sink that fails moves no tag anywhere and pushes nothing", "[session]") {
  Fixture f;
  Session s = f.session();
  write_file(f.tmp / "a-file", "x");
  const std::string good = "oci:" + (f.tmp / "good").string();
  const std::string bad = "oci:" + (f.tmp / "a-file" / "layout").string();  // under a regular file
  const std::string archive = "docker-archive:" + (f.tmp / "img.tar").string();
  auto o = Fixture::options({good, bad, archive});
  // A push target nobody listens on: reaching the push would fail there (step "push", exit 6).
  o.push = kiln::session::Options::Push::Always;
  o.push_to = kiln::registry::parse_reference("127.0.0.1:9/sess-app:t");
  o.preflight = false;
  Outcome r = s.build(f.spec.string(), o);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status == "failed");
  CHECK(r.failure.step == "output " + bad);  // it failed while staging blobs, before the push
  CHECK(r.failure.code == kiln::session::kInternal);
  CHECK_FALSE(r.pushed);
  CHECK(r.outputs.empty());
  // The good layout got blobs but no tag; the archive was never written.
  CHECK(fs::is_directory(f.tmp / "good" / "blobs" / "sha256"));
  CHECK_FALSE(fs::exists(f.tmp / "good" / "index.json"));
  CHECK_FALSE(fs::exists(f.tmp / "img.tar"));
  // The failure is recorded, with the step, and its log ends with the cause.
  auto rec = f.db.get(r.build_id);
  REQUIRE(rec);
  CHECK(rec->status == "failed");
  CHECK(rec->failed_step == "output " + bad);
  CHECK(rec->exit_code == kiln::session::kInternal);
  CHECK(rec->pushed.empty());
  CHECK(rec->outputs.empty());
  CHECK(rec->tag_moved_from.empty());
  REQUIRE_FALSE(r.failure.log_tail.empty());
  CHECK(r.failure.log_tail.back().find(r.failure.message) != std::string::npos);

  // With the bad target gone, the same session commits everything, tags last.
  Outcome ok = s.build(f.spec.string(), Fixture::options({good, archive}));
  REQUIRE(ok.ok());
  CHECK(kiln::builder::resolve_oci_layout(f.tmp / "good", ok.tag, "linux/amd64") == ok.digest);
  CHECK(fs::exists(f.tmp / "img.tar"));
  CHECK(ok.digest == r.digest);  // the same image the failed commit had built
}

TEST_CASE("session: a cancelled build writes nothing and names the first failure", "[session]") {
  Fixture f;
  Session s = f.session();
  kiln::session::CancelToken cancel;
  kiln::session::Failure cause;
  cause.code = kiln::session::kUsage;
  cause.error_class = "permanent";
  cancel.cancel(cause, "first.json");
  kiln::session::Failure later;
  later.code = kiln::session::kTransient;
  cancel.cancel(later, "second.json");  // the first cause stays
  auto o = Fixture::options({"oci:" + (f.tmp / "out").string()});
  o.cancel = &cancel;
  Outcome r = s.build(f.spec.string(), o);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status == "cancelled");
  CHECK(r.failure.cancelled);
  CHECK(r.failure.kind == "cancelled");
  CHECK(r.failure.code == kiln::session::kUsage);
  CHECK(r.failure.message == "cancelled: first.json failed first (--fail-fast)");
  CHECK_FALSE(fs::exists(f.tmp / "out" / "index.json"));
  auto rec = f.db.get(r.build_id);
  REQUIRE(rec);
  CHECK(rec->status == "cancelled");
  CHECK(rec->image_digest.empty());
}

TEST_CASE("session: build_all with fail-fast cancels the builds after the first failure", "[session]") {
  Fixture f;
  Session s = f.session();
  write_file(f.tmp / "proj" / "bad.json", R"({"name": "sess-bad", "env": ["A=1"]})");
  write_file(f.tmp / "proj" / "ok2.json", R"({"name": "sess-ok2", "source_root": "app", "env": {"B": "2"}})");
  const std::vector<std::string> specs{(f.tmp / "proj" / "bad.json").string(), f.spec.string(),
                                       (f.tmp / "proj" / "ok2.json").string()};
  auto o = Fixture::options({"oci:" + (f.tmp / "ff").string()});

  SECTION("fail-fast") {
    kiln::session::Batch b = s.build_all(specs, o, 1, /*fail_fast=*/true);
    REQUIRE(b.outcomes.size() == 3);
    REQUIRE(b.first_failure);
    CHECK(b.first_failure->code == kiln::session::kUsage);
    CHECK(b.first_failed_spec == specs[0]);
    CHECK(b.outcomes[0].status == "failed");
    CHECK(b.outcomes[0].failure.field == "env");
    CHECK(b.outcomes[1].status == "cancelled");
    CHECK(b.outcomes[2].status == "cancelled");
    CHECK(b.outcomes[1].failure.code == kiln::session::kUsage);
    CHECK_FALSE(fs::exists(f.tmp / "ff" / "index.json"));
    // The broken spec is recorded under the name its JSON gives.
    auto recs = f.db.list("sess-bad");
    REQUIRE(recs.size() == 1);
    CHECK(recs[0].status == "failed");
  }
  SECTION("keep going") {
    kiln::session::Batch b = s.build_all(specs, o, 2, /*fail_fast=*/false);
    REQUIRE(b.first_failure);
    CHECK(b.outcomes[0].status == "failed");
    CHECK(b.outcomes[1].status == "success");
    CHECK(b.outcomes[2].status == "success");
    CHECK(kiln::builder::resolve_oci_layout(f.tmp / "ff", b.outcomes[2].tag, "linux/amd64") == b.outcomes[2].digest);
  }
}

TEST_CASE("session: the store that could not be opened fails each build, recorded", "[session]") {
  Fixture f;
  kiln::session::Environment env;
  env.history = &f.db;
  env.progress = &f.view;
  env.store_error = std::make_exception_ptr(std::system_error(ENOTDIR, std::generic_category(), "no cache"));
  Session s(env);
  Outcome r = s.build(f.spec.string(), Fixture::options());
  REQUIRE_FALSE(r.ok());
  CHECK(r.failure.step == "cache");
  CHECK(r.failure.code == kiln::session::kInternal);
  auto rec = f.db.get(r.build_id);
  REQUIRE(rec);
  CHECK(rec->name == "sess-app");
  CHECK(rec->status == "failed");
}

TEST_CASE("session: a modelcar that fails its lint writes nothing, with the findings", "[session]") {
  Fixture f;
  Session s = f.session();
  write_file(f.tmp / "model" / "w.bin", "weights");
  write_file(f.tmp / "mc.json", R"({"name": "mc", "modelcar": true, "source_root": "model"})");
  auto o = Fixture::options({"oci:" + (f.tmp / "mc-out").string()});
  o.kind = "modelcar";
  Outcome r = s.build((f.tmp / "mc.json").string(), o);  // scratch: no shell tools
  REQUIRE_FALSE(r.ok());
  CHECK(r.failure.kind == "lint");
  CHECK(r.failure.code == kiln::session::kUsage);
  CHECK(r.failure.step == "lint");
  CHECK_FALSE(r.failure.lint.empty());
  CHECK(r.failure.digest.rfind("sha256:", 0) == 0);
  CHECK_FALSE(fs::exists(f.tmp / "mc-out"));
  auto rec = f.db.get(r.build_id);
  REQUIRE(rec);
  CHECK(rec->kind == "modelcar");
  CHECK(rec->error_kind == "lint");
  // --volume-only: no tools needed, and the image is written.
  o.lint_volume_only = true;
  Outcome ok = s.build((f.tmp / "mc.json").string(), o);
  INFO(ok.failure.message);
  REQUIRE(ok.ok());
  CHECK(kiln::builder::resolve_oci_layout(f.tmp / "mc-out", ok.tag, "linux/amd64") == ok.digest);
}

TEST_CASE("session: a push from a missing layout fails as not found, recorded as a push", "[session]") {
  Fixture f;
  Session s = f.session();
  auto target = kiln::registry::parse_reference("127.0.0.1:9/sess-push:v1");
  Outcome r = s.push("oci:" + (f.tmp / "nope").string(), "linux/amd64", target, {});
  REQUIRE_FALSE(r.ok());
  CHECK(r.kind == "push");
  CHECK(r.failure.step == "source");
  CHECK(r.failure.code == kiln::session::kNotFound);
  CHECK(r.failure.spec_path.empty());  // not a spec file: no annotation points at it
  auto rec = f.db.get(r.build_id);
  REQUIRE(rec);
  CHECK(rec->kind == "push");
  CHECK(rec->repository == "127.0.0.1:9/sess-push");
  CHECK(rec->tag == "v1");
  CHECK(rec->status == "failed");
}
