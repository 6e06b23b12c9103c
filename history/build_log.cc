// A build's log: passed on, and kept in a file.
#include "history/build_log.h"

#include <fstream>

namespace kiln::history {

namespace {
constexpr std::size_t kRecent = 200;
}

BuildLog::BuildLog(builder::Progress& inner, const std::filesystem::path& file, std::string prefix)
    : inner_(inner), file_(file), prefix_(std::move(prefix)) {
  if (!file_.empty()) {
    f_ = std::fopen(file_.c_str(), "ae");
    if (!f_) file_.clear();
  }
}

BuildLog::~BuildLog() {
  if (f_) std::fclose(f_);
}

void BuildLog::write_line(const std::string& line) {
  std::lock_guard<std::mutex> lock(mu_);
  if (f_) {
    std::fputs(line.c_str(), f_);
    std::fputc('\n', f_);
    std::fflush(f_);  // a killed build keeps every line it logged
  }
  recent_.push_back(line);
  if (recent_.size() > kRecent) recent_.erase(recent_.begin(), recent_.begin() + (recent_.size() - kRecent));
}

void BuildLog::check_cancel(const std::string& id) {
  if (cancel_ && cancel_->load() && id.rfind("layer", 0) == 0) {
    threw_cancel_ = true;
    throw Cancelled("cancelled");
  }
}

void BuildLog::checkpoint() {
  if (cancel_ && cancel_->load()) {
    threw_cancel_ = true;
    throw Cancelled("cancelled");
  }
}

void BuildLog::log(const std::string& line) {
  write_line(line);
  inner_.log(prefix_ + line);
}

void BuildLog::warn(const std::string& line) {
  write_line("warning: " + line);
  inner_.warn(prefix_ + line);
}

void BuildLog::begin(const std::string& id, const std::string& label, std::uint64_t total) {
  check_cancel(id);
  write_line(label + " ...");
  inner_.begin(prefix_ + id, prefix_ + label, total);
}

void BuildLog::advance(const std::string& id, std::uint64_t delta) {
  check_cancel(id);
  inner_.advance(prefix_ + id, delta);
}

void BuildLog::end(const std::string& id, const std::string& summary) {
  write_line(summary);
  inner_.end(prefix_ + id, prefix_ + summary);
}

void BuildLog::note(const std::string& line) { write_line(line); }

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
