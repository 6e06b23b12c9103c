// Progress on stderr: live rows on a terminal, plain lines otherwise (see progress_view.h).
#include "builder/cli/progress_view.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <set>
#include <string>

namespace kiln::cli {

// ---------------------------------------------------------------------------------------------
// Formatting

namespace {

const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};

/// The unit that shows `n` with at most four digits before the point.
int unit_of(std::uint64_t n) {
  int u = 0;
  double v = static_cast<double>(n);
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u;
}

std::string number_in(std::uint64_t n, int unit) {
  char buf[32];
  if (unit == 0) {
    std::snprintf(buf, sizeof buf, "%llu", static_cast<unsigned long long>(n));
  } else {
    std::snprintf(buf, sizeof buf, "%.1f", static_cast<double>(n) / std::pow(1024.0, unit));
  }
  return buf;
}

std::string pad_left(const std::string& s, std::size_t w) {
  std::size_t n = display_width(s);
  return n >= w ? s : std::string(w - n, ' ') + s;
}

std::string pad_right(const std::string& s, std::size_t w) {
  std::size_t n = display_width(s);
  return n >= w ? s : s + std::string(w - n, ' ');
}

double seconds_between(ProgressView::Clock::time_point a, ProgressView::Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

/// "ETA 3.1s", or "ETA ?" while the rate says nothing yet.
std::string eta(std::uint64_t done, std::uint64_t total, double rate, double elapsed) {
  if (total && done >= total) return "ETA 0s";
  if (!total || rate <= 0 || elapsed < 0.3) return "ETA ?";
  return "ETA " + human_duration(static_cast<double>(total - done) / rate);
}

std::size_t env_size(const char* name, std::size_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  unsigned long n = std::strtoul(v, &end, 10);
  return end && *end == '\0' && n > 0 && n < 10000 ? n : fallback;
}

}  // namespace

std::string human_bytes(std::uint64_t n) {
  int u = unit_of(n);
  return number_in(n, u) + " " + kUnits[u];
}

std::string human_pair(std::uint64_t done, std::uint64_t total) {
  if (!total) return human_bytes(done) + "/?";
  int u = unit_of(std::max(done, total));
  return number_in(done, u) + "/" + number_in(total, u) + " " + kUnits[u];
}

std::string human_rate(double bytes_per_second) {
  if (!(bytes_per_second >= 0) || std::isinf(bytes_per_second)) return "?";
  return human_bytes(static_cast<std::uint64_t>(bytes_per_second)) + "/s";
}

std::string human_duration(double s) {
  if (!(s >= 0) || std::isinf(s)) return "?";
  char buf[32];
  if (s < 1) {
    std::snprintf(buf, sizeof buf, "%.2fs", s);
  } else if (s < 10) {
    std::snprintf(buf, sizeof buf, "%.1fs", s);
  } else if (s < 60) {
    std::snprintf(buf, sizeof buf, "%.0fs", std::floor(s));
  } else if (s < 3600) {
    auto t = static_cast<long long>(s);
    std::snprintf(buf, sizeof buf, "%lldm%02llds", t / 60, t % 60);
  } else {
    auto t = static_cast<long long>(s / 60);
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", t / 60, t % 60);
  }
  return buf;
}

std::string group_digits(std::uint64_t n) {
  std::string d = std::to_string(n), out;
  for (std::size_t i = 0; i < d.size(); ++i) {
    if (i && (d.size() - i) % 3 == 0) out += ',';
    out += d[i];
  }
  return out;
}

std::size_t display_width(std::string_view s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

namespace {

/// Bytes of the first `cols` code points of `s`.
std::size_t prefix_bytes(std::string_view s, std::size_t cols) {
  std::size_t i = 0, n = 0;
  while (i < s.size()) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) {
      if (n == cols) break;
      ++n;
    }
    ++i;
  }
  return i;
}

/// Bytes of the last `cols` code points of `s`, as an offset.
std::size_t suffix_start(std::string_view s, std::size_t cols) {
  std::size_t i = s.size(), n = 0;
  while (i > 0 && n < cols) {
    --i;
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) ++n;
  }
  return i;
}

/// A label in `width` columns: a quarter of the room for its start, the rest for its end, where
/// labels differ ("...part 3/15 (604 files)", "...models/weights.safetensors").
std::string elide_label(std::string_view s, std::size_t width) {
  if (display_width(s) <= width) return std::string(s);
  if (width <= 3) return std::string(width, '.');
  std::size_t keep = width - 3, head = keep / 4, tail = keep - head;
  return std::string(s.substr(0, prefix_bytes(s, head))) + "..." + std::string(s.substr(suffix_start(s, tail)));
}

}  // namespace

std::string fit(std::string_view s, std::size_t width) { return std::string(s.substr(0, prefix_bytes(s, width))); }

std::string elide(std::string_view s, std::size_t width) {
  if (display_width(s) <= width) return std::string(s);
  if (width <= 3) return std::string(width, '.');
  std::size_t keep = width - 3, head = (keep + 1) / 2, tail = keep - head;
  return std::string(s.substr(0, prefix_bytes(s, head))) + "..." + std::string(s.substr(suffix_start(s, tail)));
}

std::string progress_bar(double fraction, std::size_t width) {
  if (width < 3) return std::string(width, ' ');
  std::size_t inner = width - 2;
  fraction = std::clamp(std::isnan(fraction) ? 0.0 : fraction, 0.0, 1.0);
  auto filled = static_cast<std::size_t>(fraction * static_cast<double>(inner));
  std::string b = "[";
  b += std::string(filled, '=');
  if (filled < inner) {
    b += '>';
    b += std::string(inner - filled - 1, ' ');
  }
  return b + "]";
}

std::string progress_row(std::string_view label, std::size_t label_width, std::uint64_t done, std::uint64_t total,
                         double rate, std::string_view tail, std::size_t width) {
  std::uint64_t shown = total ? std::min(done, total) : done;
  std::string pct = "  ?%";
  if (total) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%3d%%", static_cast<int>(shown * 100 / total));
    pct = buf;
  }
  // Fixed columns on the right (the tail padded too), so the rows of a frame line up.
  std::string right = " " + pad_left(human_pair(shown, total), 15) + " " + pct + " " +
                      pad_left(rate > 0 ? human_rate(rate) : "", 11) +
                      (tail.empty() ? "" : " " + pad_right(std::string(tail), 14));
  std::size_t rw = display_width(right);
  std::size_t avail = width > rw ? width - rw : 0;
  std::size_t lw = std::min(label_width, avail), bar = 0;
  if (avail >= lw + 9) {
    bar = std::min<std::size_t>(avail - lw - 1, 40);  // room for a bar beside the label
  } else if (avail >= 30 + 11) {
    lw = avail - 11;  // a long label keeps 30 columns, and a bar gets 10
    bar = 10;
  } else {
    lw = avail;  // no room for a bar: the label takes it (the percentage is there)
  }
  std::string row = pad_right(elide_label(label, lw), lw);
  if (bar) row += " " + progress_bar(total ? static_cast<double>(shown) / static_cast<double>(total) : 0.0, bar);
  row += right;
  while (!row.empty() && row.back() == ' ') row.pop_back();
  return fit(row, width);
}

std::size_t terminal_width(int fd) {
  struct winsize ws{};
  if (::ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return env_size("COLUMNS", 80);
}

std::size_t terminal_height(int fd) {
  struct winsize ws{};
  if (::ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0) return ws.ws_row;
  return env_size("LINES", 24);
}

std::vector<std::string> layer_summary(const std::string& image, const std::vector<builder::LayerReport>& layers,
                                       std::size_t width) {
  std::size_t built = 0, cached = 0, base = 0, shared_n = 0;
  std::uint64_t size = 0, tar = 0;
  std::size_t label_w = 5;  // "LAYER"
  // A blob listed above already (an image index's platforms share their source layers) is
  // "shared": counted once in the total, as it is stored and pushed once.
  std::vector<char> shared(layers.size());
  std::set<std::string> seen;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const auto& l = layers[i];
    shared[i] = !l.digest.empty() && !seen.insert(l.digest).second;
    label_w = std::max(label_w, display_width(l.label));
    if (shared[i]) {
      ++shared_n;
      continue;
    }
    (l.from_base ? base : l.cache_hit ? cached : built) += 1;
    size += l.size;
    tar += l.tar_size;
  }
  auto row = [&](std::string label, const std::string& status, const std::string& c, const std::string& u,
                 const std::string& t, const std::string& r) {
    std::string rest = "  " + pad_right(status, 6) + "  " + pad_left(c, 10) + "  " + pad_left(u, 12) + "  " +
                       pad_left(t, 6) + "  " + pad_left(r, 11);
    std::size_t lw = label_w;
    if (width) {
      std::size_t rw = display_width(rest) + 2;
      lw = std::min(lw, width > rw + 8 ? width - rw : 8);
    }
    std::string line = "  " + pad_right(elide_label(label, lw), lw) + rest;
    while (!line.empty() && line.back() == ' ') line.pop_back();
    return width ? fit(line, width) : line;
  };
  // The counts first: a narrow terminal cuts the end of the image reference.
  std::string head = std::to_string(layers.size()) + " layer(s): " + std::to_string(built) + " built, " +
                     std::to_string(cached) + " cached, " + std::to_string(base) + " from the base, " +
                     (shared_n ? std::to_string(shared_n) + " shared, " : std::string()) + "in " + image;
  std::vector<std::string> out{width ? fit(head, width) : head};
  out.push_back(row("LAYER", "STATUS", "COMPRESSED", "UNCOMPRESSED", "TIME", "RATE"));
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const auto& l = layers[i];
    const char* status = shared[i] ? "shared" : l.from_base ? "base" : l.cache_hit ? "cached" : "built";
    std::string rate = "-";
    if (!shared[i] && !l.from_base && !l.cache_hit && l.seconds > 0.001 && l.tar_size)
      rate = human_rate(static_cast<double>(l.tar_size) / l.seconds);
    out.push_back(row(l.label, status, human_bytes(l.size), l.tar_size ? human_bytes(l.tar_size) : "-",
                      l.from_base ? "-" : human_duration(l.seconds), rate));
  }
  out.push_back(row("total", "", human_bytes(size), tar ? human_bytes(tar) : "-", "", ""));
  return out;
}

// ---------------------------------------------------------------------------------------------
// ProgressView

ProgressView::Mode ProgressView::resolve(const std::string& flag) {
  if (flag == "quiet") return Mode::Quiet;
  if (flag == "plain") return Mode::Plain;
  const char* term = std::getenv("TERM");
  const char* no_color = std::getenv("NO_COLOR");
  bool dumb = !term || std::string(term) == "dumb";
  bool plain = dumb || std::getenv("CI") || (no_color && *no_color);
  return ::isatty(2) && !plain ? Mode::Tty : Mode::Plain;
}

ProgressView::~ProgressView() { finish(); }

void ProgressView::finish() {
  std::unique_lock<std::mutex> lk(mu_);
  if (renderer_.joinable()) {
    stop_ = true;
    cv_.notify_all();
    lk.unlock();
    renderer_.join();
    lk.lock();
    stop_ = false;
    running_ = false;
  }
  tasks_.clear();
  phase_ = PhaseState{};
  overall_ = Overall{};
  settle_locked();
}

void ProgressView::write_locked(const std::string& text) {
  if (text.empty()) return;
  std::fwrite(text.data(), 1, text.size(), out_);
  std::fflush(out_);
}

std::string ProgressView::repaint_locked(const std::vector<std::string>& lines, std::size_t live) {
  // Line by line over the old rows (erase in line, never erase in display: a terminal such as tmux
  // scrolls a whole cleared screen into its history), then blank the old rows left over.
  std::string t;
  if (shown_) t = "\r\033[" + std::to_string(shown_) + "A";
  for (std::size_t i = 0; i < lines.size(); ++i) t += (i < shown_ ? "\033[2K" : "") + lines[i] + "\n";
  if (shown_ > lines.size()) {
    const std::size_t extra = shown_ - lines.size();
    for (std::size_t i = 0; i < extra; ++i) t += "\033[2K\n";
    t += "\033[" + std::to_string(extra) + "A";
  }
  shown_ = live;
  return t;
}

void ProgressView::erase_locked() {
  if (shown_) write_locked(repaint_locked({}, 0));
}

void ProgressView::line_locked(const std::string& line) {
  if (mode_ != Mode::Tty) {
    write_locked(line + "\n");
    return;
  }
  // Cut to the terminal's width like the rows (the build's log keeps it whole).
  const std::size_t width = terminal_width(::fileno(out_));
  queue_locked(elide(line, width > 1 ? width - 1 : 1));
}

void ProgressView::queue_locked(const std::string& line) {
  if (live_locked()) {  // the renderer prints it, in order, before its next frame
    pending_.push_back(line);
    return;
  }
  settle_locked();
  write_locked(line + "\n");
}

void ProgressView::settle_locked() {
  if (live_locked()) return;
  // Nothing live: no row stays on screen and no line waits, so whatever is written next (the
  // result on stdout) lands below everything.
  std::string text = repaint_locked(pending_, 0);
  pending_.clear();
  write_locked(text);
}

bool ProgressView::live_locked() const {
  return (phase_.active && (phase_.kind == builder::Phase::Walk || phase_.bytes_total || phase_.files_total)) ||
         !tasks_.empty() || overall_.active;
}

void ProgressView::wake_locked() {
  if (mode_ != Mode::Tty || running_ || stop_ || !live_locked()) return;
  if (renderer_.joinable()) renderer_.join();  // one that went idle: it needs the lock no more
  running_ = true;
  renderer_ = std::thread([this] { render_loop(); });
}

void ProgressView::render_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    // At most ten frames a second, all drawn here: events only change the state.
    cv_.wait_for(lk, std::chrono::milliseconds(100), [&] { return stop_; });
    if (stop_) break;
    draw_locked();
    if (!live_locked()) break;  // nothing left to show: the next event starts another
  }
  running_ = false;
}

void ProgressView::draw_locked() {
  const int fd = ::fileno(out_);
  const std::size_t width = terminal_width(fd), height = terminal_height(fd);
  // One column spare: a row that fills the last column leaves some terminals' cursor there.
  const std::size_t cols = width > 1 ? width - 1 : 1;
  std::vector<std::string> rs = rows_locked(cols, height, Clock::now());
  const std::size_t live = rs.size();
  rs.insert(rs.begin(), pending_.begin(), pending_.end());
  pending_.clear();
  last_draw_ = Clock::now();
  write_locked(repaint_locked(rs, live));
}

std::vector<std::string> ProgressView::rows(std::size_t width, Clock::time_point now) const {
  std::lock_guard<std::mutex> lock(mu_);
  return rows_locked(width, 1000, now);
}

std::vector<std::string> ProgressView::rows_locked(std::size_t width, std::size_t height, Clock::time_point now) const {
  std::vector<const Task*> active;
  for (const auto& [_, t] : tasks_) active.push_back(&t);
  std::sort(active.begin(), active.end(), [](const Task* a, const Task* b) { return a->seq < b->seq; });
  // A bounded block: the phase, up to eight layers, "and N more", the overall line.
  const std::size_t max_tasks = std::min<std::size_t>(8, height > 5 ? height - 4 : 1);
  const std::size_t more = active.size() > max_tasks ? active.size() - max_tasks : 0;
  if (more) active.resize(max_tasks);

  std::string phase_label;
  if (phase_.active) {
    phase_label = phase_.kind == builder::Phase::Walk
                      ? "walking: " + group_digits(phase_.files) + " files"
                      : "hashing " + group_digits(phase_.files) + "/" + group_digits(phase_.files_total) + " files";
  }
  std::string overall_label = "layers " + std::to_string(overall_.finished) + "/" + std::to_string(overall_.count);
  std::size_t label_w = display_width(overall_label);
  if (phase_.active && phase_.kind == builder::Phase::Hash)  // as wide as it will get: no jump
    label_w = std::max(label_w, 2 * display_width(group_digits(phase_.files_total)) + 15);
  for (const Task* t : active) label_w = std::max(label_w, display_width(t->label));
  label_w = std::min(label_w, std::max<std::size_t>(12, width * 2 / 5));

  std::vector<std::string> out;
  if (phase_.active && phase_.kind == builder::Phase::Walk) {
    out.push_back(fit(phase_label + " (" + human_bytes(phase_.bytes) + ")  " +
                          human_duration(seconds_between(phase_.start, now)),
                      width));
  } else if (phase_.active && (phase_.bytes_total || phase_.files_total)) {
    double el = seconds_between(phase_.start, now);
    double rate = el > 0 ? static_cast<double>(phase_.bytes) / el : 0;
    out.push_back(progress_row(phase_label, label_w, phase_.bytes, phase_.bytes_total, rate,
                               eta(phase_.bytes, phase_.bytes_total, rate, el), width));
  }
  for (const Task* t : active) {
    double el = seconds_between(t->start, now);
    double rate = el > 0 ? static_cast<double>(std::min(t->done, t->total ? t->total : t->done)) / el : 0;
    out.push_back(progress_row(t->label, label_w, t->done, t->total, rate, human_duration(el), width));
  }
  if (more) out.push_back(fit("  ... and " + std::to_string(more) + " more", width));
  if (overall_.active) {
    double el = seconds_between(overall_.start, now);
    double rate = el > 0 ? static_cast<double>(overall_.written) / el : 0;
    out.push_back(progress_row(overall_label, label_w, overall_.done, overall_.total, rate,
                               human_duration(el) + " " + eta(overall_.done, overall_.total, rate, el), width));
  }
  return out;
}

void ProgressView::log(const std::string& line) {
  if (mode_ == Mode::Quiet) return;
  std::lock_guard<std::mutex> lock(mu_);
  line_locked(line);
}

void ProgressView::warn(const std::string& line) {
  std::lock_guard<std::mutex> lock(mu_);
  if (mode_ == Mode::Tty) {
    queue_locked("warning: " + line);  // in order with the other lines, and never cut
    return;
  }
  write_locked("warning: " + line + "\n");
}

void ProgressView::print(const std::vector<std::string>& lines) {
  if (mode_ == Mode::Quiet) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& l : lines) line_locked(l);
}

void ProgressView::begin(const std::string& id, const std::string& label, std::uint64_t total) {
  if (mode_ == Mode::Quiet) return;
  std::lock_guard<std::mutex> lock(mu_);
  Task t;
  t.label = label;
  t.total = total;
  t.seq = ++seq_;
  t.start = Clock::now();
  // A layer written while planned layers remain counts in the overall line.
  t.in_overall = overall_.active && id.find("layer") != std::string::npos;
  tasks_[id] = t;
  if (mode_ == Mode::Plain) line_locked(label + " (" + human_bytes(total) + ") ...");
  wake_locked();
}

void ProgressView::advance(const std::string& id, std::uint64_t delta) {
  if (mode_ == Mode::Quiet) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = tasks_.find(id);
  if (it == tasks_.end()) return;
  Task& t = it->second;
  std::uint64_t counted = t.total > t.done ? std::min(delta, t.total - t.done) : 0;
  t.done += delta;
  if (t.in_overall) {
    overall_.written += counted;
    overall_done_locked(counted, false);
  }
  wake_locked();
}

void ProgressView::end(const std::string& id, const std::string& summary) {
  if (mode_ == Mode::Quiet) return;
  std::lock_guard<std::mutex> lock(mu_);
  std::string line = summary;
  auto it = tasks_.find(id);
  if (it != tasks_.end()) {
    const Task& t = it->second;
    double el = seconds_between(t.start, Clock::now());
    line += " (" + human_bytes(t.total) + " in " + human_duration(el);
    if (el >= 0.001 && t.total) line += ", " + human_rate(static_cast<double>(t.total) / el);
    line += ")";
    if (t.in_overall) {
      // The rest of its bytes (hardlinks are written once) count as done with it.
      std::uint64_t rest = t.total > t.done ? t.total - t.done : 0;
      overall_.written += rest;
      overall_done_locked(rest, true);
    }
    tasks_.erase(it);
  }
  line_locked(line);
  settle_locked();
}

void ProgressView::overall_done_locked(std::uint64_t bytes, bool finished_layer) {
  if (!overall_.active) return;
  overall_.done = std::min(overall_.total, overall_.done + bytes);
  if (finished_layer && ++overall_.finished >= overall_.count) overall_ = Overall{};
}

void ProgressView::phase_begin(builder::Phase phase, std::uint64_t files, std::uint64_t bytes) {
  if (mode_ == Mode::Quiet) return;
  std::lock_guard<std::mutex> lock(mu_);
  phase_ = PhaseState{};
  phase_.active = true;
  phase_.kind = phase;
  phase_.files_total = files;
  phase_.bytes_total = bytes;
  phase_.start = Clock::now();
  if (mode_ == Mode::Plain && phase == builder::Phase::Hash && files)
    line_locked("hashing " + group_digits(files) + " files (" + human_bytes(bytes) + ") ...");
  wake_locked();
}

void ProgressView::phase_advance(builder::Phase phase, std::uint64_t files, std::uint64_t bytes) {
  if (mode_ == Mode::Quiet) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (!phase_.active || phase_.kind != phase) return;
  phase_.files += files;
  phase_.bytes += bytes;
  if (phase_.files_total) phase_.files = std::min(phase_.files, phase_.files_total);
  if (phase_.bytes_total) phase_.bytes = std::min(phase_.bytes, phase_.bytes_total);
}

void ProgressView::phase_end(builder::Phase phase) {
  if (mode_ == Mode::Quiet) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (!phase_.active || phase_.kind != phase) return;
  double el = seconds_between(phase_.start, Clock::now());
  if (phase == builder::Phase::Walk && phase_.files) {
    line_locked("walked " + group_digits(phase_.files) + " files (" + human_bytes(phase_.bytes) + ") in " +
                human_duration(el));
  } else if (phase == builder::Phase::Hash && phase_.files_total) {
    std::string line = "hashed " + group_digits(phase_.files_total) + " files (" + human_bytes(phase_.bytes_total) +
                       ") in " + human_duration(el);
    if (el >= 0.001) line += ", " + human_rate(static_cast<double>(phase_.bytes_total) / el);
    line_locked(line);
  }
  phase_ = PhaseState{};
  settle_locked();
}

void ProgressView::layers_planned(std::size_t count, std::uint64_t bytes) {
  if (mode_ == Mode::Quiet || count == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (!overall_.active) {
    overall_ = Overall{};
    overall_.active = true;
    overall_.start = Clock::now();
  }
  overall_.count += count;
  overall_.total += bytes;
  wake_locked();
}

void ProgressView::layer_cached(const std::string&, std::uint64_t bytes) {
  if (mode_ == Mode::Quiet) return;
  std::lock_guard<std::mutex> lock(mu_);
  overall_done_locked(bytes, true);
  settle_locked();
}

}  // namespace kiln::cli
