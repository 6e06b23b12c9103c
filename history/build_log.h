// One build's log: a Progress that passes every event on (to the terminal, for the CLI) and also
// appends the log lines to the build's own file, so a failure can point at the whole log and
// quote its tail. It can also stop its build: once `cancel` is set, the next layer event throws
// Cancelled (for --fail-fast).
#pragma once

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "builder/progress.h"

namespace kiln::history {

/// Thrown into a build from its BuildLog once the build is cancelled.
class Cancelled : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class BuildLog : public builder::Progress {
 public:
  /// `file` ("" = none) is created (appending if it exists); when it cannot be, the log goes on
  /// without it. `prefix` goes before every line passed on to `inner` (not into the file).
  BuildLog(builder::Progress& inner, const std::filesystem::path& file, std::string prefix = "");
  ~BuildLog() override;

  void log(const std::string& line) override;
  void warn(const std::string& line) override;
  void begin(const std::string& id, const std::string& label, std::uint64_t total) override;
  void advance(const std::string& id, std::uint64_t delta) override;
  void end(const std::string& id, const std::string& summary) override;
  bool stop_requested() const override { return cancel_ && cancel_->load(); }

  /// A line for the file only (not shown).
  void note(const std::string& line);
  /// The file's path, or "" when there is no file.
  std::string path() const;
  /// The last `n` lines of the file (or of what was logged, without a file).
  std::vector<std::string> tail(std::size_t n) const;

  /// From now on, the next layer event (begin/advance of a "layer…" task) throws Cancelled.
  void watch(const std::atomic<bool>* cancel) { cancel_ = cancel; }
  /// Throws Cancelled if the build is cancelled (for callers between steps).
  void checkpoint();
  /// Did this log throw Cancelled into its build?
  bool cancelled() const { return threw_cancel_.load(); }

 private:
  void write_line(const std::string& line);
  void check_cancel(const std::string& id);
  builder::Progress& inner_;
  std::filesystem::path file_;
  std::string prefix_;
  std::FILE* f_ = nullptr;
  mutable std::mutex mu_;
  std::vector<std::string> recent_;  // the last lines, for tail() without a file
  const std::atomic<bool>* cancel_ = nullptr;
  std::atomic<bool> threw_cancel_{false};
};

}  // namespace kiln::history
