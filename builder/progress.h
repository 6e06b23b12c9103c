// How the library reports progress: events only. The CLI decides how to show them (bars on a TTY,
// plain lines otherwise, nothing when quiet, JSON for SDKs) — the library has no I/O policy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kiln::builder {

/// The phases before any layer, so that a view never sits blank: the walk of the tree, and the
/// hashing of the files the stat index does not know.
enum class Phase { Walk, Hash };

class Progress {
 public:
  virtual ~Progress() = default;
  /// A line for the log (stderr, for the CLI).
  virtual void log(const std::string& line) = 0;
  /// A warning the user should read.
  virtual void warn(const std::string& line) { log("warning: " + line); }
  /// A task with `total` units (bytes) starts; `id` is unique while it runs. Called from any thread.
  virtual void begin(const std::string& id, const std::string& label, std::uint64_t total) = 0;
  virtual void advance(const std::string& id, std::uint64_t done_delta) = 0;
  virtual void end(const std::string& id, const std::string& summary) = 0;
  /// A phase starts. `files` and `bytes` are its totals when known (hashing: the files to read),
  /// 0 when not (the walk: it counts what it finds).
  virtual void phase_begin(Phase, std::uint64_t /*files*/, std::uint64_t /*bytes*/) {}
  /// `files` more done (walked, or hashed to the end), `bytes` more read. Called from any thread.
  virtual void phase_advance(Phase, std::uint64_t /*files*/, std::uint64_t /*bytes*/) {}
  virtual void phase_end(Phase) {}
  /// The layers a build will write or take from the cache, once planned: `count` layers of `bytes`
  /// file bytes in all. Announced once, so an overall line's total never shrinks.
  virtual void layers_planned(std::size_t /*count*/, std::uint64_t /*bytes*/) {}
  /// A planned layer came from the cache: its `bytes` count as done (it gets no begin/end).
  virtual void layer_cached(const std::string& /*label*/, std::uint64_t /*bytes*/) {}
  /// Has whoever started the build asked it to stop (--fail-fast)? Long waits poll this; the next
  /// layer event then throws.
  virtual bool stop_requested() const { return false; }
};

/// Discards everything.
class NullProgress : public Progress {
 public:
  void log(const std::string&) override {}
  void warn(const std::string&) override {}
  void begin(const std::string&, const std::string&, std::uint64_t) override {}
  void advance(const std::string&, std::uint64_t) override {}
  void end(const std::string&, const std::string&) override {}
};

}  // namespace kiln::builder
