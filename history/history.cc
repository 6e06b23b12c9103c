// Build records in SQLite.
#include "history/history.h"

#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <system_error>

#include "layers/digest.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace kiln::history {

// ---------------------------------------------------------------------------------------------
// Records as JSON

json Record::to_json() const {
  json ls = json::array();
  for (const auto& l : layers)
    ls.push_back({{"label", l.label},   {"digest", l.digest},       {"diff_id", l.diff_id},
                  {"media_type", l.media_type}, {"size", l.size}, {"cache_hit", l.cache_hit},
                  {"from_base", l.from_base}});
  auto opt = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
  return {{"id", id},
          {"kind", kind.empty() ? std::string("build") : kind},
          {"name", name},
          {"repository", repository},
          {"tag", opt(tag)},
          {"spec_path", spec_path},
          {"spec_digest", opt(spec_digest)},
          {"inputs_digest", opt(inputs_digest)},
          {"image_digest", opt(image_digest)},
          {"config_digest", opt(config_digest)},
          {"base", opt(base)},
          {"outputs", outputs},
          {"pushed", pushed},
          {"tag_moved_from", opt(tag_moved_from)},
          {"status", status},
          {"exit_code", exit_code},
          {"error_class", opt(error_class)},
          {"error_kind", opt(error_kind)},
          {"failed_step", opt(failed_step)},
          {"message", opt(message)},
          {"started_ms", started_ms},
          {"finished_ms", finished_ms == 0 ? json(nullptr) : json(finished_ms)},
          {"seconds", finished_ms == 0 ? json(nullptr) : json(double(finished_ms - started_ms) / 1000.0)},
          {"timings", timings},
          {"spec", spec},
          {"layers", ls},
          {"warnings", warnings},
          {"log_path", opt(log_path)},
          {"host", host},
          {"pid", pid}};
}

Record Record::from_json(const json& j) {
  auto str = [&](const char* k) {
    auto it = j.find(k);
    return it == j.end() || !it->is_string() ? std::string() : it->get<std::string>();
  };
  auto strs = [&](const char* k) {
    std::vector<std::string> v;
    auto it = j.find(k);
    if (it != j.end() && it->is_array())
      for (const auto& x : *it)
        if (x.is_string()) v.push_back(x.get<std::string>());
    return v;
  };
  auto num = [&](const char* k) -> std::int64_t {
    auto it = j.find(k);
    return it == j.end() || !it->is_number() ? 0 : it->get<std::int64_t>();
  };
  Record r;
  r.id = str("id");
  r.kind = str("kind").empty() ? std::string("build") : str("kind");
  r.name = str("name");
  r.repository = str("repository");
  r.tag = str("tag");
  r.spec_path = str("spec_path");
  r.spec_digest = str("spec_digest");
  r.inputs_digest = str("inputs_digest");
  r.image_digest = str("image_digest");
  r.config_digest = str("config_digest");
  r.base = str("base");
  r.outputs = strs("outputs");
  r.pushed = strs("pushed");
  r.tag_moved_from = str("tag_moved_from");
  r.status = str("status");
  r.exit_code = static_cast<int>(num("exit_code"));
  r.error_class = str("error_class");
  r.error_kind = str("error_kind");
  r.failed_step = str("failed_step");
  r.message = str("message");
  r.started_ms = num("started_ms");
  r.finished_ms = num("finished_ms");
  if (j.contains("timings") && j["timings"].is_object()) r.timings = j["timings"];
  if (j.contains("spec") && j["spec"].is_object()) r.spec = j["spec"];
  if (j.contains("layers") && j["layers"].is_array())
    for (const auto& l : j["layers"]) {
      LayerInfo li;
      li.label = l.value("label", "");
      li.digest = l.value("digest", "");
      li.diff_id = l.value("diff_id", "");
      li.media_type = l.value("media_type", "");
      li.size = l.value("size", std::uint64_t{0});
      li.cache_hit = l.value("cache_hit", false);
      li.from_base = l.value("from_base", false);
      r.layers.push_back(li);
    }
  r.warnings = strs("warnings");
  r.log_path = str("log_path");
  r.host = str("host");
  r.pid = static_cast<int>(num("pid"));
  return r;
}

// ---------------------------------------------------------------------------------------------
// Ids

std::string new_id() {
  static std::mutex mu;
  static std::uint64_t last_ms = 0, rand_hi = 0, rand_lo = 0;  // 16 + 64 bits of randomness
  static std::mt19937_64 rng{std::random_device{}() ^ (std::uint64_t(::getpid()) << 32)};
  std::lock_guard<std::mutex> lock(mu);
  std::uint64_t now = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
  if (now > last_ms) {
    last_ms = now;
    rand_hi = rng() & 0xffff;
    rand_lo = rng();
  } else {  // same millisecond (or the clock went back): keep the time, count up
    if (++rand_lo == 0) rand_hi = (rand_hi + 1) & 0xffff;
  }
  static const char* k = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  std::string out(26, '0');
  std::uint64_t t = last_ms & ((1ull << 48) - 1);
  for (int i = 9; i >= 0; --i) {
    out[static_cast<std::size_t>(i)] = k[t & 31];
    t >>= 5;
  }
  // 80 random bits: rand_hi (16) then rand_lo (64), 5 bits per character, most significant first.
  for (int i = 0; i < 16; ++i) {
    int shift = 75 - 5 * i;  // bit offset of this character's lowest bit within the 80
    std::uint64_t v;
    if (shift >= 64) {
      v = rand_hi >> (shift - 64);
    } else if (shift + 5 > 64) {
      v = (rand_lo >> shift) | (rand_hi << (64 - shift));
    } else {
      v = rand_lo >> shift;
    }
    out[static_cast<std::size_t>(10 + i)] = k[v & 31];
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The database

namespace {

std::string hostname() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "";
  return buf;
}

const char* kSchema = R"SQL(
CREATE TABLE IF NOT EXISTS builds (
  id             TEXT PRIMARY KEY,
  name           TEXT NOT NULL,
  repository     TEXT NOT NULL,
  tag            TEXT,
  spec_path      TEXT,
  spec_digest    TEXT,
  inputs_digest  TEXT,
  image_digest   TEXT,
  config_digest  TEXT,
  base           TEXT,
  outputs        TEXT,   -- JSON array
  pushed         TEXT,   -- JSON array of references
  tag_moved_from TEXT,
  status         TEXT NOT NULL,
  exit_code      INTEGER,
  error_class    TEXT,
  error_kind     TEXT,
  failed_step    TEXT,
  message        TEXT,
  started_ms     INTEGER NOT NULL,
  finished_ms    INTEGER,
  timings        TEXT,   -- JSON object
  spec           TEXT,   -- JSON object: the canonical spec
  layers         TEXT,   -- JSON array
  warnings       TEXT,   -- JSON array
  log_path       TEXT,
  host           TEXT,
  pid            INTEGER
);
CREATE INDEX IF NOT EXISTS builds_by_name ON builds(name, id);
CREATE INDEX IF NOT EXISTS builds_by_repository ON builds(repository, id);
)SQL";

const char* kColumns =
    "id, name, repository, tag, spec_path, spec_digest, inputs_digest, image_digest, config_digest, base, "
    "outputs, pushed, tag_moved_from, status, exit_code, error_class, error_kind, failed_step, message, "
    "started_ms, finished_ms, timings, spec, layers, warnings, log_path, host, pid, kind";
constexpr int kNumColumns = 29;

class Stmt {
 public:
  Stmt(sqlite3* db, const std::string& sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st_, nullptr) != SQLITE_OK)
      throw HistoryError(std::string("history database: ") + sqlite3_errmsg(db));
  }
  ~Stmt() { sqlite3_finalize(st_); }
  void text(int i, const std::string& s) { sqlite3_bind_text(st_, i, s.c_str(), static_cast<int>(s.size()), SQLITE_TRANSIENT); }
  void integer(int i, std::int64_t v) { sqlite3_bind_int64(st_, i, v); }
  /// SQLITE_ROW or SQLITE_DONE; throws on errors.
  int step() {
    int rc = sqlite3_step(st_);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
      throw HistoryError(std::string("history database: ") + sqlite3_errmsg(db_));
    return rc;
  }
  std::string col_text(int i) {
    const unsigned char* p = sqlite3_column_text(st_, i);
    return p ? reinterpret_cast<const char*>(p) : "";
  }
  std::int64_t col_int(int i) { return sqlite3_column_int64(st_, i); }

 private:
  sqlite3* db_;
  sqlite3_stmt* st_ = nullptr;
};

json parse_or(const std::string& text, json fallback) {
  if (text.empty()) return fallback;
  try {
    return json::parse(text);
  } catch (const json::exception&) {
    return fallback;
  }
}

void bind_record(Stmt& s, const Record& r) {
  json j = r.to_json();
  int i = 1;
  s.text(i++, r.id);
  s.text(i++, r.name);
  s.text(i++, r.repository);
  s.text(i++, r.tag);
  s.text(i++, r.spec_path);
  s.text(i++, r.spec_digest);
  s.text(i++, r.inputs_digest);
  s.text(i++, r.image_digest);
  s.text(i++, r.config_digest);
  s.text(i++, r.base);
  s.text(i++, j["outputs"].dump());
  s.text(i++, j["pushed"].dump());
  s.text(i++, r.tag_moved_from);
  s.text(i++, r.status);
  s.integer(i++, r.exit_code);
  s.text(i++, r.error_class);
  s.text(i++, r.error_kind);
  s.text(i++, r.failed_step);
  s.text(i++, r.message);
  s.integer(i++, r.started_ms);
  s.integer(i++, r.finished_ms);
  s.text(i++, r.timings.dump());
  s.text(i++, r.spec.dump());
  s.text(i++, j["layers"].dump());
  s.text(i++, j["warnings"].dump());
  s.text(i++, r.log_path);
  s.text(i++, r.host);
  s.integer(i++, r.pid);
  s.text(i++, r.kind);
}

Record read_record(Stmt& s) {
  json j;
  int i = 0;
  for (const char* k : {"id", "name", "repository", "tag", "spec_path", "spec_digest", "inputs_digest",
                        "image_digest", "config_digest", "base"})
    j[k] = s.col_text(i++);
  j["outputs"] = parse_or(s.col_text(i++), json::array());
  j["pushed"] = parse_or(s.col_text(i++), json::array());
  j["tag_moved_from"] = s.col_text(i++);
  j["status"] = s.col_text(i++);
  j["exit_code"] = s.col_int(i++);
  for (const char* k : {"error_class", "error_kind", "failed_step", "message"}) j[k] = s.col_text(i++);
  j["started_ms"] = s.col_int(i++);
  j["finished_ms"] = s.col_int(i++);
  j["timings"] = parse_or(s.col_text(i++), json::object());
  j["spec"] = parse_or(s.col_text(i++), json::object());
  j["layers"] = parse_or(s.col_text(i++), json::array());
  j["warnings"] = parse_or(s.col_text(i++), json::array());
  j["log_path"] = s.col_text(i++);
  j["host"] = s.col_text(i++);
  j["pid"] = s.col_int(i++);
  j["kind"] = s.col_text(i++);
  return Record::from_json(j);
}

void exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  // A fresh database may be being set up by another process right now: the busy timeout covers
  // most of it; a few retries cover the rest (journal-mode switches do not always wait).
  for (int attempt = 0;; ++attempt) {
    int rc = sqlite3_exec(db, sql, nullptr, nullptr, &err);
    if (rc == SQLITE_OK) return;
    std::string msg = err ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    err = nullptr;
    if ((rc == SQLITE_BUSY || rc == SQLITE_LOCKED) && attempt < 50) {
      ::usleep(100000);
      continue;
    }
    throw HistoryError("history database: " + msg);
  }
}

}  // namespace

Record Record::start() {
  Record r;
  r.id = new_id();
  r.started_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                     std::chrono::system_clock::now().time_since_epoch())
                     .count();
  r.host = hostname();
  r.pid = static_cast<int>(::getpid());
  return r;
}

fs::path HistoryDb::default_dir() {
  if (const char* s = std::getenv("KILN_STATE_DIR"); s && *s) return fs::absolute(s);
  if (const char* x = std::getenv("XDG_STATE_HOME"); x && *x) return fs::path(x) / "kiln";
  if (const char* h = std::getenv("HOME"); h && *h) return fs::path(h) / ".local" / "state" / "kiln";
  return fs::temp_directory_path() / "kiln-state";
}

HistoryDb::HistoryDb(const fs::path& dir) : dir_(dir) {
  std::error_code ec;
  fs::create_directories(dir_ / "logs", ec);
  if (!ec) fs::create_directories(dir_ / "locks", ec);
  if (ec) throw HistoryError("cannot create the state directory " + dir_.string() + ": " + ec.message());
  fs::path file = dir_ / "builds.db";
  int rc = sqlite3_open_v2(file.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    sqlite3_close(db_);
    db_ = nullptr;
    throw HistoryError("cannot open the history database " + file.string() + ": " + msg);
  }
  try {
    sqlite3_busy_timeout(db_, 15000);
    // Closing does not checkpoint (and fsync) every time: SQLite checkpoints the WAL as it grows,
    // here every 64 pages (a few builds) rather than SQLite's 1000. The first connection of a
    // process reads every frame of the WAL back to rebuild its index, so a long WAL costs every
    // kiln run milliseconds (a 4 MB WAL: ~6 ms) before it does anything.
    sqlite3_db_config(db_, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
    sqlite3_wal_autocheckpoint(db_, 64);
    exec(db_, "PRAGMA synchronous=NORMAL");
    int version = 0;
    {
      Stmt v(db_, "PRAGMA user_version");
      if (v.step() == SQLITE_ROW) version = static_cast<int>(v.col_int(0));
    }
    if (version < 1) {  // a new database (or one being created by another process right now)
      exec(db_, "PRAGMA journal_mode=WAL");
      exec(db_, kSchema);
      exec(db_, "PRAGMA user_version=1");
    }
    if (version < 2) {  // version 2: the `kind` column (build, modelcar, push); old rows read as builds
      try {
        exec(db_, "ALTER TABLE builds ADD COLUMN kind TEXT");
      } catch (const HistoryError& e) {
        // Another process added it first.
        if (std::string(e.what()).find("duplicate column") == std::string::npos) throw;
      }
      exec(db_, "PRAGMA user_version=2");
    }
  } catch (...) {
    sqlite3_close(db_);
    db_ = nullptr;
    throw;
  }
}

HistoryDb::~HistoryDb() { sqlite3_close(db_); }

std::unique_ptr<HistoryDb> HistoryDb::open_existing(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_regular_file(dir / "builds.db", ec)) return nullptr;
  return std::make_unique<HistoryDb>(dir);
}

fs::path HistoryDb::log_path(const std::string& id) const { return dir_ / "logs" / (id + ".log"); }

void HistoryDb::append(const Record& r) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string sql = std::string("INSERT INTO builds (") + kColumns + ") VALUES (";
  for (int i = 1; i <= kNumColumns; ++i) sql += (i > 1 ? ", ?" : "?") + std::to_string(i);
  sql += ")";
  Stmt s(db_, sql);
  bind_record(s, r);
  s.step();
}

void HistoryDb::update(const Record& r) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string sql = std::string("INSERT OR REPLACE INTO builds (") + kColumns + ") VALUES (";
  for (int i = 1; i <= kNumColumns; ++i) sql += (i > 1 ? ", ?" : "?") + std::to_string(i);
  sql += ")";
  Stmt s(db_, sql);
  bind_record(s, r);
  s.step();
}

Record HistoryDb::settle(Record r) const {
  if (r.status != "running") return r;
  bool gone = false;
  if (r.pid > 0 && r.host == hostname() && ::kill(r.pid, 0) != 0 && errno == ESRCH) gone = true;
  if (!gone && !r.repository.empty()) {
    // A running build holds its name lock; a free lock means nobody is building it now.
    fs::path p = NameLock::path_for(dir_, r.repository);
    int fd = ::open(p.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      gone = errno == ENOENT;
    } else {
      if (::flock(fd, LOCK_SH | LOCK_NB) == 0) gone = true;
      ::close(fd);
    }
  }
  if (gone) r.status = "interrupted";
  return r;
}

std::vector<Record> HistoryDb::list(const std::string& name, std::optional<std::size_t> limit) const {
  std::vector<Record> out;
  if (limit && *limit == 0) return out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Stmt s(db_, std::string("SELECT ") + kColumns +
                    " FROM builds WHERE (?1 = '' OR name = ?1 OR repository = ?1) ORDER BY id DESC LIMIT ?2");
    s.text(1, name);
    s.integer(2, limit ? static_cast<std::int64_t>(std::min<std::size_t>(*limit, INT64_MAX)) : -1);
    while (s.step() == SQLITE_ROW) out.push_back(read_record(s));
  }
  for (auto& r : out) r = settle(std::move(r));
  return out;
}

std::optional<Record> HistoryDb::get(const std::string& id_or_prefix) const {
  std::string want = id_or_prefix;
  std::transform(want.begin(), want.end(), want.begin(), [](unsigned char c) { return std::toupper(c); });
  if (want.empty()) return std::nullopt;
  std::vector<Record> found;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Stmt s(db_, std::string("SELECT ") + kColumns +
                    " FROM builds WHERE id = ?1 OR substr(id, 1, length(?1)) = ?1 ORDER BY id LIMIT 3");
    s.text(1, want);
    while (s.step() == SQLITE_ROW) found.push_back(read_record(s));
  }
  for (auto& r : found)
    if (r.id == want) return settle(std::move(r));
  if (found.empty()) return std::nullopt;
  if (found.size() > 1) {
    std::string ids;
    for (const auto& r : found) ids += (ids.empty() ? "" : ", ") + r.id;
    throw std::invalid_argument("build id prefix '" + id_or_prefix + "' is ambiguous (" + ids +
                                (found.size() > 2 ? ", …" : "") + ")");
  }
  return settle(std::move(found[0]));
}

// ---------------------------------------------------------------------------------------------
// diff

namespace {

void diff_json(const std::string& path, const json& a, const json& b, std::vector<Change>* out) {
  if (a == b) return;
  // An object on one side only: name each of its fields (spec.env.N, not spec.env).
  if (a.is_object() && b.is_null()) return diff_json(path, a, json::object(), out);
  if (a.is_null() && b.is_object()) return diff_json(path, json::object(), b, out);
  if (a.is_object() && b.is_object()) {
    std::set<std::string> keys;
    for (auto it = a.begin(); it != a.end(); ++it) keys.insert(it.key());
    for (auto it = b.begin(); it != b.end(); ++it) keys.insert(it.key());
    for (const auto& k : keys) {
      json av = a.contains(k) ? a[k] : json(nullptr);
      json bv = b.contains(k) ? b[k] : json(nullptr);
      diff_json(path + "." + k, av, bv, out);
    }
    return;
  }
  out->push_back({path, a, b});
}

json layer_json(const LayerInfo& l) {
  return {{"label", l.label}, {"digest", l.digest}, {"size", l.size}, {"from_base", l.from_base}};
}

}  // namespace

std::vector<Change> diff(const Record& a, const Record& b) {
  std::vector<Change> out;
  auto field = [&](const char* name, const std::string& x, const std::string& y) {
    if (x != y) out.push_back({name, x.empty() ? json(nullptr) : json(x), y.empty() ? json(nullptr) : json(y)});
  };
  field("name", a.name, b.name);
  field("repository", a.repository, b.repository);
  field("tag", a.tag, b.tag);
  field("status", a.status, b.status);
  field("spec_path", a.spec_path, b.spec_path);
  diff_json("spec", a.spec, b.spec, &out);
  field("base", a.base, b.base);
  field("spec_digest", a.spec_digest, b.spec_digest);
  field("inputs_digest", a.inputs_digest, b.inputs_digest);
  const std::size_t n = std::max(a.layers.size(), b.layers.size());
  for (std::size_t i = 0; i < n; ++i) {
    const LayerInfo* x = i < a.layers.size() ? &a.layers[i] : nullptr;
    const LayerInfo* y = i < b.layers.size() ? &b.layers[i] : nullptr;
    if (x && y && x->digest == y->digest) continue;
    out.push_back({"layers[" + std::to_string(i) + "]", x ? layer_json(*x) : json(nullptr),
                   y ? layer_json(*y) : json(nullptr)});
  }
  field("config_digest", a.config_digest, b.config_digest);
  field("image_digest", a.image_digest, b.image_digest);
  if (a.pushed != b.pushed) out.push_back({"pushed", a.pushed, b.pushed});
  return out;
}

// ---------------------------------------------------------------------------------------------
// NameLock

fs::path NameLock::path_for(const fs::path& state_dir, const std::string& name) {
  std::string enc;
  for (unsigned char c : name) {
    if (std::isalnum(c) || c == '.' || c == '_' || c == '-') {
      enc += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      enc += buf;
    }
  }
  if (enc.empty()) enc = "%00";
  return state_dir / "locks" / (enc + ".lock");
}

namespace {

int open_lock(const fs::path& p) {
  std::error_code ec;
  fs::create_directories(p.parent_path(), ec);
  int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "cannot open " + p.string());
  return fd;
}

void write_pid(int fd) {
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) == 0) {
    ssize_t n = ::pwrite(fd, pid.data(), pid.size(), 0);
    (void)n;
  }
}

int read_pid(int fd) {
  char buf[32] = {0};
  ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  return n > 0 ? std::atoi(buf) : 0;
}

}  // namespace

std::unique_ptr<NameLock> NameLock::try_acquire(const fs::path& state_dir, const std::string& name, int* holder_pid) {
  int fd = open_lock(path_for(state_dir, name));
  if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
    write_pid(fd);
    return std::unique_ptr<NameLock>(new NameLock(fd));
  }
  int e = errno;
  if (holder_pid) *holder_pid = read_pid(fd);
  ::close(fd);
  if (e != EWOULDBLOCK && e != EAGAIN) throw std::system_error(e, std::generic_category(), "cannot lock " + name);
  return nullptr;
}

std::unique_ptr<NameLock> NameLock::acquire(const fs::path& state_dir, const std::string& name) {
  int fd = open_lock(path_for(state_dir, name));
  while (::flock(fd, LOCK_EX) != 0) {
    if (errno == EINTR) continue;
    int e = errno;
    ::close(fd);
    throw std::system_error(e, std::generic_category(), "cannot lock " + name);
  }
  write_pid(fd);
  return std::unique_ptr<NameLock>(new NameLock(fd));
}

NameLock::~NameLock() { ::close(fd_); }

}  // namespace kiln::history
