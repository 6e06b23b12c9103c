// Progress on stderr.
#include "builder/cli/progress_view.h"

#include <unistd.h>

#include <cstdio>

namespace kiln::cli {

std::string human_bytes(std::uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

ProgressView::Mode ProgressView::resolve(const std::string& flag) {
  if (flag == "quiet") return Mode::Quiet;
  if (flag == "plain") return Mode::Plain;
  const char* term = std::getenv("TERM");
  bool dumb = term && std::string(term) == "dumb";
  return ::isatty(2) && !dumb && !std::getenv("CI") ? Mode::Tty : Mode::Plain;
}

ProgressView::~ProgressView() {
  std::lock_guard<std::mutex> lock(mu_);
  clear_bar();
}

void ProgressView::clear_bar() {
  if (bar_shown_) {
    std::fputs("\r\033[2K", stderr);
    bar_shown_ = false;
  }
}

void ProgressView::draw_bar() {
  if (mode_ != Mode::Tty || tasks_.empty()) return;
  std::uint64_t total = 0, done = 0;
  std::string label;
  for (auto& [_, t] : tasks_) {
    total += t.total;
    done += t.done;
    if (label.empty()) label = t.label;
  }
  if (tasks_.size() > 1) label += " (+" + std::to_string(tasks_.size() - 1) + ")";
  if (label.size() > 40) label = label.substr(0, 37) + "...";
  const int width = 30;
  int filled = total ? static_cast<int>(width * (double(done) / double(total))) : 0;
  if (filled > width) filled = width;
  std::string bar(static_cast<std::size_t>(filled), '#');
  bar.resize(width, '-');
  std::fprintf(stderr, "\r\033[2K%-40s [%s] %s / %s", label.c_str(), bar.c_str(), human_bytes(done).c_str(),
               human_bytes(total).c_str());
  std::fflush(stderr);
  bar_shown_ = true;
}

void ProgressView::log(const std::string& line) {
  if (mode_ == Mode::Quiet) return;
  std::lock_guard<std::mutex> lock(mu_);
  clear_bar();
  std::fprintf(stderr, "%s\n", line.c_str());
  draw_bar();
}

void ProgressView::warn(const std::string& line) {
  std::lock_guard<std::mutex> lock(mu_);
  clear_bar();
  std::fprintf(stderr, "warning: %s\n", line.c_str());
  draw_bar();
}

void ProgressView::begin(const std::string& id, const std::string& label, std::uint64_t total) {
  if (mode_ == Mode::Quiet) return;
  std::lock_guard<std::mutex> lock(mu_);
  tasks_[id] = Task{label, total, 0};
  if (mode_ == Mode::Plain) {
    std::fprintf(stderr, "%s (%s) ...\n", label.c_str(), human_bytes(total).c_str());
  } else {
    draw_bar();
  }
}

void ProgressView::advance(const std::string& id, std::uint64_t delta) {
  if (mode_ != Mode::Tty) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = tasks_.find(id);
  if (it == tasks_.end()) return;
  it->second.done += delta;
  auto now = std::chrono::steady_clock::now();
  if (now - last_draw_ > std::chrono::milliseconds(100)) {
    last_draw_ = now;
    draw_bar();
  }
}

void ProgressView::end(const std::string& id, const std::string& summary) {
  if (mode_ == Mode::Quiet) return;
  std::lock_guard<std::mutex> lock(mu_);
  tasks_.erase(id);
  clear_bar();
  std::fprintf(stderr, "%s\n", summary.c_str());
  draw_bar();
}

}  // namespace kiln::cli
