// One build's log: the lines a build printed, kept in a file of its own next to the build record,
// so a failure can point at the whole log and quote its tail.
//
// history/ receives log lines through its own small interface (LogSink): it knows nothing of
// progress events, terminals or cancellation. Whoever runs the build (session/) turns its
// progress events into lines and hands them over.
#pragma once

#include <cstdio>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

namespace kiln::history {

/// Where log lines go.
class LogSink {
 public:
  virtual ~LogSink() = default;
  /// One line (no trailing newline). Called from any thread.
  virtual void line(const std::string& text) = 0;
};

/// A build's log file (appended to, flushed line by line so a killed build keeps every line),
/// plus the last lines in memory.
class BuildLog : public LogSink {
 public:
  /// `file` ("" = none) is created (appending if it exists); when it cannot be, the log goes on
  /// without it.
  explicit BuildLog(const std::filesystem::path& file);
  ~BuildLog() override;
  BuildLog(const BuildLog&) = delete;
  BuildLog& operator=(const BuildLog&) = delete;

  void line(const std::string& text) override;
  /// The file's path, or "" when there is no file.
  std::string path() const;
  /// The last `n` lines of the file (or of what was logged, without a file).
  std::vector<std::string> tail(std::size_t n) const;

 private:
  std::filesystem::path file_;
  std::FILE* f_ = nullptr;
  mutable std::mutex mu_;
  std::vector<std::string> recent_;  // the last lines, for tail() without a file
};

}  // namespace kiln::history
