// How the CLI shows progress on stderr: bars on a TTY, plain lines otherwise, nothing but warnings
// when quiet.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "builder/progress.h"

namespace kiln::cli {

class ProgressView : public builder::Progress {
 public:
  enum class Mode { Tty, Plain, Quiet };
  static Mode resolve(const std::string& flag);  // "auto" | "plain" | "quiet"
  explicit ProgressView(Mode mode) : mode_(mode) {}
  ~ProgressView() override;
  void log(const std::string& line) override;
  void warn(const std::string& line) override;
  void begin(const std::string& id, const std::string& label, std::uint64_t total) override;
  void advance(const std::string& id, std::uint64_t delta) override;
  void end(const std::string& id, const std::string& summary) override;

 private:
  struct Task {
    std::string label;
    std::uint64_t total = 0, done = 0;
  };
  void clear_bar();
  void draw_bar();
  Mode mode_;
  std::mutex mu_;
  std::map<std::string, Task> tasks_;
  bool bar_shown_ = false;
  std::chrono::steady_clock::time_point last_draw_{};
};

std::string human_bytes(std::uint64_t n);

}  // namespace kiln::cli
