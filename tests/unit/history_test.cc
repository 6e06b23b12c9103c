// Unit tests for history/: build ids, the SQLite record store (WAL, append/update/list/get, name
// reuse, concurrent writers), diff, the name lock, the build log, and the store's per-layer lock
// and blob verification that the history's concurrency relies on.
#include "history/history.h"

#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "history/build_log.h"
#include "layers/digest.h"
#include "layers/store.h"
#include "testutil.h"

using namespace kiln::history;
using kiln::testutil::TempDir;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

Record make(const std::string& name, const std::string& status, json spec = json::object()) {
  Record r = Record::start();
  r.name = name;
  r.repository = name;
  r.status = status;
  r.spec = std::move(spec);
  r.finished_ms = r.started_ms + 5;
  return r;
}

}  // namespace

TEST_CASE("history: ids are 26 Crockford base32 characters and strictly increase", "[history]") {
  std::vector<std::string> ids;
  for (int i = 0; i < 2000; ++i) ids.push_back(new_id());
  for (const auto& id : ids) {
    REQUIRE(id.size() == 26);
    for (char c : id) REQUIRE(std::string("0123456789ABCDEFGHJKMNPQRSTVWXYZ").find(c) != std::string::npos);
  }
  for (std::size_t i = 1; i < ids.size(); ++i) REQUIRE(ids[i - 1] < ids[i]);
  // The first 10 characters are the time: ids made a few ms apart differ there.
  std::string a = new_id();
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::string b = new_id();
  REQUIRE(a.substr(0, 10) < b.substr(0, 10));
}

TEST_CASE("history: ids from several threads are unique", "[history]") {
  std::vector<std::vector<std::string>> per(4);
  std::vector<std::thread> ts;
  for (auto& v : per)
    ts.emplace_back([&v] {
      for (int i = 0; i < 1000; ++i) v.push_back(new_id());
    });
  for (auto& t : ts) t.join();
  std::set<std::string> all;
  for (auto& v : per) all.insert(v.begin(), v.end());
  REQUIRE(all.size() == 4000);
}

TEST_CASE("history: the database is SQLite in WAL mode under the state dir", "[history]") {
  TempDir d;
  { HistoryDb db(d / "state"); }
  REQUIRE(fs::exists(d / "state" / "builds.db"));
  REQUIRE(fs::is_directory(d / "state" / "logs"));
  sqlite3* raw = nullptr;
  REQUIRE(sqlite3_open((d / "state" / "builds.db").c_str(), &raw) == SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(raw, "PRAGMA journal_mode", -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  REQUIRE(std::string(reinterpret_cast<const char*>(sqlite3_column_text(st, 0))) == "wal");
  sqlite3_finalize(st);
  sqlite3_close(raw);
}

TEST_CASE("history: default_dir honours KILN_STATE_DIR, then XDG_STATE_HOME, then HOME", "[history]") {
  auto save = [](const char* k) {
    const char* v = std::getenv(k);
    return v ? std::optional<std::string>(v) : std::nullopt;
  };
  auto restore = [](const char* k, const std::optional<std::string>& v) {
    if (v) ::setenv(k, v->c_str(), 1); else ::unsetenv(k);
  };
  auto s1 = save("KILN_STATE_DIR"), s2 = save("XDG_STATE_HOME"), s3 = save("HOME");
  ::setenv("KILN_STATE_DIR", "/tmp/ks", 1);
  ::setenv("XDG_STATE_HOME", "/tmp/xs", 1);
  ::setenv("HOME", "/tmp/home", 1);
  CHECK(HistoryDb::default_dir() == "/tmp/ks");
  ::unsetenv("KILN_STATE_DIR");
  CHECK(HistoryDb::default_dir() == "/tmp/xs/kiln");
  ::unsetenv("XDG_STATE_HOME");
  CHECK(HistoryDb::default_dir() == "/tmp/home/.local/state/kiln");
  restore("KILN_STATE_DIR", s1);
  restore("XDG_STATE_HOME", s2);
  restore("HOME", s3);
}

TEST_CASE("history: append, update, get and list round-trip every field", "[history]") {
  TempDir d;
  HistoryDb db(d.path());
  Record r = make("app", "running", {{"env", {{"A", "1"}}}, {"name", "app"}});
  r.repository = "reg:5000/app";
  r.tag = "abc";
  r.spec_path = "spec.json";
  r.spec_digest = "sha256:11";
  r.inputs_digest = "sha256:22";
  r.base = "scratch";
  r.log_path = db.log_path(r.id).string();
  db.append(r);
  r.status = "success";
  r.image_digest = "sha256:33";
  r.config_digest = "sha256:44";
  r.outputs = {"oci:out"};
  r.pushed = {"reg:5000/app:abc@sha256:33"};
  r.tag_moved_from = "sha256:00";
  r.layers = {{"source_root (2 files)", "sha256:55", "sha256:66", "application/vnd.oci.image.layer.v1.tar+gzip", 123, true, false}};
  r.timings = {{"total", 0.5}};
  r.warnings = {"w"};
  db.update(r);

  auto got = db.get(r.id);
  REQUIRE(got);
  CHECK(got->to_json() == r.to_json());
  // A unique prefix, in any case, finds it too.
  auto lower = r.id.substr(0, 20);
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  REQUIRE(db.get(lower));
  CHECK(db.get(lower)->id == r.id);
  CHECK_FALSE(db.get("ZZZZZZ"));
  // list matches the name or the repository.
  CHECK(db.list("app").size() == 1);
  CHECK(db.list("reg:5000/app").size() == 1);
  CHECK(db.list("other").empty());
}

TEST_CASE("history: reusing a name adds a record and keeps every earlier one", "[history]") {
  TempDir d;
  HistoryDb db(d.path());
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    Record r = make("same", i == 2 ? "failed" : "success", {{"env", {{"N", std::to_string(i)}}}});
    db.append(r);
    ids.push_back(r.id);
  }
  db.append(make("other", "success"));
  auto all = db.list("same");
  REQUIRE(all.size() == 5);
  // Newest first.
  for (std::size_t i = 0; i < 5; ++i) CHECK(all[i].id == ids[4 - i]);
  CHECK(all[2].status == "failed");
  CHECK(db.list("same", 2).size() == 2);
  CHECK(db.list().size() == 6);
}

TEST_CASE("history: an ambiguous id prefix is refused", "[history]") {
  TempDir d;
  HistoryDb db(d.path());
  Record a = make("x", "success"), b = make("x", "success");
  db.append(a);
  db.append(b);
  std::size_t common = 0;
  while (a.id[common] == b.id[common]) ++common;
  CHECK_THROWS_AS(db.get(a.id.substr(0, common)), std::invalid_argument);
  CHECK(db.get(a.id.substr(0, common + 1))->id == a.id);
}

TEST_CASE("history: a running record whose process is gone reads as interrupted", "[history]") {
  TempDir d;
  HistoryDb db(d.path());
  // A child process "starts a build" (takes the name lock, appends a running record) and dies.
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    try {
      HistoryDb child(d.path());
      auto lock = NameLock::acquire(d.path(), "dead");
      Record r = make("dead", "running");
      r.finished_ms = 0;
      child.append(r);
    } catch (...) {
      ::_exit(1);
    }
    ::_exit(0);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  REQUIRE(WIFEXITED(st));
  REQUIRE(WEXITSTATUS(st) == 0);
  auto rs = db.list("dead");
  REQUIRE(rs.size() == 1);
  CHECK(rs[0].status == "interrupted");

  // A running record whose name lock is held (here, by this process) stays running.
  auto lock = NameLock::acquire(d.path(), "alive");
  Record live = make("alive", "running");
  live.finished_ms = 0;
  db.append(live);
  CHECK(db.get(live.id)->status == "running");
}

TEST_CASE("history: concurrent writers from several connections lose no record", "[history]") {
  TempDir d;
  { HistoryDb init(d.path()); }
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&d, t] {
      HistoryDb db(d.path());  // its own connection, as another process would have
      for (int i = 0; i < 25; ++i) {
        Record r = make("w" + std::to_string(t), "running");
        db.append(r);
        r.status = "success";
        db.update(r);
      }
    });
  for (auto& t : ts) t.join();
  HistoryDb db(d.path());
  auto all = db.list();
  REQUIRE(all.size() == 100);
  for (const auto& r : all) CHECK(r.status == "success");
}

TEST_CASE("history: diff names changed spec fields, layers and digests", "[history]") {
  Record a = make("app", "success", {{"env", {{"N", "1"}, {"KEEP", "x"}}}, {"compression", "gzip"}, {"name", "app"}});
  Record b = make("app", "success",
                  {{"env", {{"N", "2"}, {"KEEP", "x"}}}, {"compression", "gzip"}, {"name", "app"}, {"user", "1000"}});
  a.image_digest = "sha256:aa";
  b.image_digest = "sha256:bb";
  a.tag = b.tag = "t";
  a.layers = {{"big", "sha256:l1", "", "", 10, false, false}, {"source_root (3 files)", "sha256:l2", "", "", 5, false, false}};
  b.layers = {{"big", "sha256:l1", "", "", 10, true, false}, {"source_root (4 files)", "sha256:l3", "", "", 6, false, false}};
  auto changes = diff(a, b);
  std::map<std::string, Change> by;
  for (const auto& c : changes) by[c.field] = c;
  REQUIRE(by.count("spec.env.N"));
  CHECK(by["spec.env.N"].before == "1");
  CHECK(by["spec.env.N"].after == "2");
  REQUIRE(by.count("spec.user"));
  CHECK(by["spec.user"].before.is_null());
  CHECK_FALSE(by.count("spec.env.KEEP"));
  CHECK_FALSE(by.count("spec.compression"));
  CHECK_FALSE(by.count("layers[0]"));  // same digest (a cache hit is no change)
  REQUIRE(by.count("layers[1]"));
  CHECK(by["layers[1]"].before["digest"] == "sha256:l2");
  CHECK(by["layers[1]"].after["label"] == "source_root (4 files)");
  REQUIRE(by.count("image_digest"));
  CHECK_FALSE(by.count("tag"));
  // A layer added at the end; an env map appearing from nothing is named field by field.
  Record c = b;
  c.layers.push_back({"copy (1 files)", "sha256:l4", "", "", 1, false, false});
  c.spec.erase("env");
  auto more = diff(c, b);
  std::set<std::string> fields;
  for (const auto& x : more) fields.insert(x.field);
  CHECK(fields.count("layers[2]"));
  CHECK(fields.count("spec.env.N"));
  CHECK(fields.count("spec.env.KEEP"));
  CHECK(diff(a, a).empty());
}

TEST_CASE("history: NameLock excludes a second holder until released", "[history]") {
  TempDir d;
  int holder = -1;
  auto first = NameLock::try_acquire(d.path(), "reg:5000/team/app", &holder);
  REQUIRE(first);
  CHECK(NameLock::path_for(d.path(), "reg:5000/team/app").filename() == "reg%3A5000%2Fteam%2Fapp.lock");
  auto second = NameLock::try_acquire(d.path(), "reg:5000/team/app", &holder);
  CHECK_FALSE(second);
  CHECK(holder == ::getpid());
  // Another name is independent.
  CHECK(NameLock::try_acquire(d.path(), "reg:5000/team/other", &holder));
  // A waiter gets it once the holder is gone.
  std::atomic<bool> got{false};
  std::thread waiter([&] {
    auto l = NameLock::acquire(d.path(), "reg:5000/team/app");
    got = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK_FALSE(got.load());
  first.reset();
  waiter.join();
  CHECK(got.load());
}

TEST_CASE("history: BuildLog keeps the lines in its file, and its tail", "[history]") {
  TempDir d;
  BuildLog log(d / "b.log");
  log.line("one");
  log.line("warning: two");
  log.line("three");
  CHECK(log.path() == (d / "b.log").string());
  CHECK(log.tail(2) == std::vector<std::string>{"warning: two", "three"});
  CHECK(kiln::testutil::read_file(d / "b.log") == "one\nwarning: two\nthree\n");
  // Reopened (a build's log is appended to, never truncated).
  {
    BuildLog again(d / "b.log");
    again.line("four");
  }
  CHECK(kiln::testutil::read_file(d / "b.log") == "one\nwarning: two\nthree\nfour\n");
  // Without a file, the tail comes from memory.
  BuildLog nofile("");
  nofile.line("a");
  nofile.line("b");
  CHECK(nofile.path().empty());
  CHECK(nofile.tail(1) == std::vector<std::string>{"b"});
  // A file that cannot be created: the log goes on without it.
  BuildLog bad(d / "no-such-dir" / "x.log");
  bad.line("c");
  CHECK(bad.path().empty());
  CHECK(bad.tail(5) == std::vector<std::string>{"c"});
}

TEST_CASE("store: lock_layer makes a second writer wait, and tells it so", "[history][store]") {
  TempDir d;
  kiln::layers::Store store(d / "cache");
  std::atomic<int> waited{0};
  std::atomic<bool> second_has_it{false};
  auto first = std::make_unique<kiln::layers::FileLock>(store.lock_layer("k1"));
  std::thread t([&] {
    auto l = store.lock_layer("k1", [&] { ++waited; });
    second_has_it = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK_FALSE(second_has_it.load());
  first.reset();
  t.join();
  CHECK(second_has_it.load());
  CHECK(waited.load() == 1);
  // Another key never waits.
  int w = 0;
  auto a = store.lock_layer("k2", [&] { ++w; });
  auto b = store.lock_layer("k3", [&] { ++w; });
  CHECK(w == 0);
}

TEST_CASE("store: a layer whose blob no longer matches its digest is a miss, and the blob is removed",
          "[history][store]") {
  TempDir d;
  kiln::layers::Store store(d / "cache");
  std::string bytes = kiln::testutil::random_bytes(4096);
  std::string digest = kiln::layers::sha256_digest(bytes);
  auto w = store.new_blob();
  w->write(bytes.data(), bytes.size());
  w->commit(digest);
  store.put_layer("key", {digest, digest, "application/vnd.oci.image.layer.v1.tar", bytes.size(), bytes.size()});
  // Written by kiln: verified without hashing (the memo), and found.
  CHECK(fs::exists(d / "cache" / "verified" / std::string(kiln::layers::digest_hex(digest))));
  REQUIRE(store.find_layer("key"));
  // Same size, other bytes (a torn write, or tampering): the memo no longer matches the file.
  std::string bad = bytes;
  bad[100] ^= 1;
  fs::path blob = store.blob_path(digest);
  ::unlink(blob.c_str());
  kiln::testutil::write_file(blob, bad);
  CHECK_FALSE(store.find_layer("key"));
  CHECK_FALSE(fs::exists(blob));
  // A blob put there by hand with the right bytes (no memo) is hashed once, then remembered.
  kiln::testutil::write_file(blob, bytes);
  fs::remove(d / "cache" / "verified" / std::string(kiln::layers::digest_hex(digest)));
  CHECK(store.find_layer("key"));
  CHECK(fs::exists(d / "cache" / "verified" / std::string(kiln::layers::digest_hex(digest))));
}

TEST_CASE("history: a version 1 database gains the kind column; its rows read as builds", "[history]") {
  TempDir d;
  fs::create_directories(d / "state");
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open((d / "state" / "builds.db").c_str(), &db) == SQLITE_OK);
    const char* v1 = R"SQL(
      PRAGMA journal_mode=WAL;
      CREATE TABLE builds (id TEXT PRIMARY KEY, name TEXT NOT NULL, repository TEXT NOT NULL, tag TEXT,
        spec_path TEXT, spec_digest TEXT, inputs_digest TEXT, image_digest TEXT, config_digest TEXT, base TEXT,
        outputs TEXT, pushed TEXT, tag_moved_from TEXT, status TEXT NOT NULL, exit_code INTEGER, error_class TEXT,
        error_kind TEXT, failed_step TEXT, message TEXT, started_ms INTEGER NOT NULL, finished_ms INTEGER,
        timings TEXT, spec TEXT, layers TEXT, warnings TEXT, log_path TEXT, host TEXT, pid INTEGER);
      INSERT INTO builds (id, name, repository, status, started_ms, finished_ms)
        VALUES ('01J9Z3K8Q6M0V7W2X4Y5Z6A7B8', 'old', 'old', 'success', 1, 2);
      PRAGMA user_version=1;
    )SQL";
    REQUIRE(sqlite3_exec(db, v1, nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
  }
  HistoryDb db(d / "state");
  auto old = db.get("01J9Z3K8Q6M0V7W2X4Y5Z6A7B8");
  REQUIRE(old);
  CHECK(old->kind == "build");
  CHECK(old->to_json()["kind"] == "build");
  Record p = Record::start();
  p.kind = "push";
  p.name = "old";
  p.repository = "old";
  p.status = "success";
  db.append(p);
  auto got = db.get(p.id);
  REQUIRE(got);
  CHECK(got->kind == "push");
  // A second opening (another process, later) finds the column there.
  HistoryDb again(d / "state");
  CHECK(again.list("old").size() == 2);
  CHECK(Record::from_json(got->to_json()).kind == "push");
}
