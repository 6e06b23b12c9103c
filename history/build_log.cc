// A build's log, kept in a file.
#include "history/build_log.h"

#include <fstream>

namespace kiln::history {

namespace {
constexpr std::size_t kRecent = 200;
}

BuildLog::BuildLog(const std::filesystem::path& file) : file_(file) {
  if (!file_.empty()) {
    f_ = std::fopen(file_.c_str(), "ae");
    if (!f_) file_.clear();
  }
}

BuildLog::~BuildLog() {
  if (f_) std::fclose(f_);
}

void BuildLog::line(const std::string& text) {
  std::lock_guard<std::mutex> lock(mu_);
  if (f_) {
    std::fputs(text.c_str(), f_);
    std::fputc('\n', f_);
    std::fflush(f_);  // a killed build keeps every line it logged
  }
  recent_.push_back(text);
  if (recent_.size() > kRecent) recent_.erase(recent_.begin(), recent_.begin() + (recent_.size() - kRecent));
}

std::string BuildLog::path() const { return file_.string(); }

std::vector<std::string> BuildLog::tail(std::size_t n) const {
  std::vector<std::string> lines;
  if (!file_.empty()) {
    std::ifstream in(file_);
    for (std::string l; std::getline(in, l);) lines.push_back(l);
  } else {
    std::lock_guard<std::mutex> lock(mu_);
    lines = recent_;
  }
  if (lines.size() > n) lines.erase(lines.begin(), lines.end() - static_cast<std::ptrdiff_t>(n));
  return lines;
}

}  // namespace kiln::history
