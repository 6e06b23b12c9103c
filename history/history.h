// Build records: every build, success or failure, appended to an embedded SQLite database (WAL
// mode) under the state directory ($KILN_STATE_DIR, else $XDG_STATE_HOME/kiln, else
// ~/.local/state/kiln), with each build's log next to it. Records are never rewritten by a later
// build and never deleted: reusing a name adds a record.
//
// The interface is small and prints nothing: open a HistoryDb, append() a record when a build
// starts, update() it when the build ends, list() / get() to read, diff() to compare two.
//
// On disk (README, "Build history"):
//   builds.db              SQLite, table `builds` (one row per build, keyed by a time-ordered id)
//   logs/<id>.log          the build's log lines (what it printed on stderr)
//   locks/<name>.lock      flock held while a build of that image name runs (NameLock)
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

struct sqlite3;

namespace kiln::history {

/// One layer of a built image, as recorded.
struct LayerInfo {
  std::string label, digest, diff_id, media_type;
  std::uint64_t size = 0;
  bool cache_hit = false, from_base = false;
};

/// One build.
struct Record {
  std::string id;               // time-ordered, sortable (see new_id)
  std::string kind = "build";   // what ran: "build" (kiln build), "modelcar", "push" (kiln push)
  std::string name;             // the spec's name ("" when the spec could not be read)
  std::string repository;       // [registry/]name
  std::string tag;
  std::string spec_path;        // as given on the command line (the model directory; the push's oci: source)
  std::string spec_digest;      // sha256 of `spec` (its JSON, keys sorted)
  std::string inputs_digest;    // sha256:<spec hash>: spec, base and every copied file (docs/tag.md)
  std::string image_digest;     // the manifest digest ("" when the build failed before it)
  std::string config_digest;
  std::string base;             // the base image's id ("scratch", a digest, "spec:<hash>")
  std::vector<std::string> outputs;  // targets written ("oci:DIR:TAG", "docker-archive:FILE")
  std::vector<std::string> pushed;   // references pushed (registry/repo:tag@sha256:…)
  std::string tag_moved_from;   // a pushed tag pointed at this digest before: roll back with a push of it
  // "running" | "success" | "exists" (pushed tag already there) | "failed" | "cancelled" |
  // "interrupted" (stopped by SIGINT/SIGTERM, exit_code 130/143); reads report a "running" record
  // whose process is gone as "interrupted" too (exit_code 0: it never ended).
  std::string status = "running";
  int exit_code = 0;
  std::string error_class;      // "permanent" | "transient" ("" on success)
  std::string error_kind;       // "spec", "input", "step", "unauthorized", ...
  std::string failed_step;      // "spec", "preflight", "prepare", "layer <label>", "output <target>", "push"
  std::string message;
  std::int64_t started_ms = 0, finished_ms = 0;  // Unix time, milliseconds
  nlohmann::json timings = nlohmann::json::object();  // seconds by phase
  nlohmann::json spec = nlohmann::json::object();     // the canonical spec, plus name/registry/tag_format
  std::vector<LayerInfo> layers;
  std::vector<std::string> warnings;
  std::string log_path;
  std::string host;
  int pid = 0;

  nlohmann::json to_json() const;
  static Record from_json(const nlohmann::json& j);
  /// A record for a build starting now in this process: a new id, started_ms, host and pid.
  static Record start();
};

/// A new build id: 26 characters of Crockford base32, 48 bits of milliseconds then 80 random
/// bits (as a ULID). Ids sort by creation time; within one process they strictly increase.
std::string new_id();

/// Thrown when the history database cannot be opened or written.
class HistoryError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class HistoryDb {
 public:
  /// $KILN_STATE_DIR, else $XDG_STATE_HOME/kiln, else $HOME/.local/state/kiln.
  static std::filesystem::path default_dir();

  /// Opens (creating if needed) the database in `dir`. Throws HistoryError.
  explicit HistoryDb(const std::filesystem::path& dir);
  /// The database in `dir` when one is there, else null: for readers (`kiln history`, `show`,
  /// `diff`), which create no state directory. Throws HistoryError when it cannot be opened.
  static std::unique_ptr<HistoryDb> open_existing(const std::filesystem::path& dir);
  ~HistoryDb();
  HistoryDb(const HistoryDb&) = delete;
  HistoryDb& operator=(const HistoryDb&) = delete;

  const std::filesystem::path& dir() const { return dir_; }
  /// Where the log of build `id` goes (logs/<id>.log; the directory exists).
  std::filesystem::path log_path(const std::string& id) const;

  /// Adds a record (its id must be new). Thread-safe; safe across processes.
  void append(const Record& r);
  /// Replaces the record with r.id (a running build's end). Thread-safe.
  void update(const Record& r);
  /// Records, newest first; `name` ("" = all) matches the name or the repository. At most
  /// `limit` of them (nullopt = all; 0 = none).
  std::vector<Record> list(const std::string& name = "", std::optional<std::size_t> limit = std::nullopt) const;
  /// The record with this id, or with this unique id prefix; nullopt when none. Throws
  /// std::invalid_argument when the prefix is ambiguous.
  std::optional<Record> get(const std::string& id_or_prefix) const;

 private:
  Record settle(Record r) const;  // running → interrupted when its process is gone
  std::filesystem::path dir_;
  sqlite3* db_ = nullptr;
  mutable std::mutex mu_;
};

/// One difference between two records: `field` is a dotted path ("spec.env.FOO", "layers[1]",
/// "image_digest"); before/after are null when absent on that side.
struct Change {
  std::string field;
  nlohmann::json before, after;
};
/// What changed from `a` to `b`: spec fields, tag, inputs/image/config digests, base, layers (by
/// position, with their labels), pushed references, status.
std::vector<Change> diff(const Record& a, const Record& b);

/// "A build of image NAME is running": an exclusive flock on <state>/locks/<NAME>.lock, held for
/// the lifetime of the object, released by the kernel if the process dies. The holder's pid is
/// written into the file so others can name it. In the file name, '/' is "%2F" and ':' is "%3A".
class NameLock {
 public:
  static std::filesystem::path path_for(const std::filesystem::path& state_dir, const std::string& name);
  /// Takes the lock if free; otherwise returns null and sets *holder_pid (0 if unknown).
  static std::unique_ptr<NameLock> try_acquire(const std::filesystem::path& state_dir, const std::string& name,
                                               int* holder_pid);
  /// Waits for the lock.
  static std::unique_ptr<NameLock> acquire(const std::filesystem::path& state_dir, const std::string& name);
  ~NameLock();
  NameLock(const NameLock&) = delete;
  NameLock& operator=(const NameLock&) = delete;

 private:
  explicit NameLock(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace kiln::history
