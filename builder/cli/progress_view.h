// How the CLI shows progress on stderr. On a terminal: a few live rows redrawn in place at most ten
// times a second by one thread (the phase — walking, hashing — the layers being written, and an
// overall line with percentage, rate and ETA), each cut to the terminal's width; finished work
// collapses to one permanent line above them. Plain lines otherwise (no escape codes at all), and
// nothing but warnings when quiet. The per-layer summary after a build is `layer_summary`.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "builder/build.h"
#include "builder/progress.h"

namespace kiln::cli {

// Formatting helpers, shared by the live rows and the summary.
std::string human_bytes(std::uint64_t n);                         // "0 B", "1023 B", "1.5 KiB", "28.1 MiB"
std::string human_pair(std::uint64_t done, std::uint64_t total);  // "12.3/28.1 MiB"; total 0: "12.3 MiB/?"
std::string human_rate(double bytes_per_second);                  // "45.2 MiB/s"
std::string human_duration(double seconds);                       // "0.31s", "4.2s", "12s", "1m05s", "2h03m"
std::string group_digits(std::uint64_t n);                        // "10,001"
/// Columns a string takes: one per UTF-8 code point.
std::size_t display_width(std::string_view s);
/// `s` in at most `width` columns: the middle replaced by "..." when it is longer.
std::string elide(std::string_view s, std::size_t width);
/// `s` cut to at most `width` columns at the end (never inside a UTF-8 sequence).
std::string fit(std::string_view s, std::size_t width);
/// "[=====>    ]" of `width` columns in all.
std::string progress_bar(double fraction, std::size_t width);
/// A progress row in `width` columns: the label (elided to `label_width`), a bar when there is
/// room, then done/total, percentage, rate and `tail` (elapsed, ETA). total 0: unknown ("?").
std::string progress_row(std::string_view label, std::size_t label_width, std::uint64_t done, std::uint64_t total,
                         double rate, std::string_view tail, std::size_t width);
/// Columns of the terminal on `fd`: TIOCGWINSZ, else $COLUMNS, else 80. Likewise rows (24).
std::size_t terminal_width(int fd);
std::size_t terminal_height(int fd);

/// The per-layer summary of a build of `image`: a title line, then per layer its label, whether it
/// was built, cached or from the base (or shared: the same blob as a row above, as an image index's
/// platforms share their source layers), its size compressed and uncompressed, time and rate, and
/// a total that counts each blob once. Lines fit in `width` columns (0: no limit).
std::vector<std::string> layer_summary(const std::string& image, const std::vector<builder::LayerReport>& layers,
                                       std::size_t width);

class ProgressView : public builder::Progress {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Mode { Tty, Plain, Quiet };
  /// "auto" | "plain" | "quiet". auto: live rows only when stderr is a terminal, TERM is not dumb,
  /// and neither CI nor NO_COLOR is set; plain lines otherwise.
  static Mode resolve(const std::string& flag);
  explicit ProgressView(Mode mode, std::FILE* out = stderr) : mode_(mode), out_(out) {}
  ~ProgressView() override;
  Mode mode() const { return mode_; }

  void log(const std::string& line) override;
  void warn(const std::string& line) override;
  void begin(const std::string& id, const std::string& label, std::uint64_t total) override;
  void advance(const std::string& id, std::uint64_t delta) override;
  void end(const std::string& id, const std::string& summary) override;
  void phase_begin(builder::Phase phase, std::uint64_t files, std::uint64_t bytes) override;
  void phase_advance(builder::Phase phase, std::uint64_t files, std::uint64_t bytes) override;
  void phase_end(builder::Phase phase) override;
  void layers_planned(std::size_t count, std::uint64_t bytes) override;
  void layer_cached(const std::string& label, std::uint64_t bytes) override;

  /// Prints what is pending and erases the live rows: call before anything else is written to the
  /// terminal (the result on stdout, an error). Events after it start the rows again.
  void finish();
  /// Lines for stderr in every mode but quiet (a summary), printed above the live rows.
  void print(const std::vector<std::string>& lines);
  /// The live rows as a terminal of `width` columns shows them at `now` (for tests).
  std::vector<std::string> rows(std::size_t width, Clock::time_point now) const;

 private:
  struct Task {
    std::string label;
    std::uint64_t total = 0, done = 0, seq = 0;
    Clock::time_point start;
    bool in_overall = false;  // a planned layer: its bytes count in the overall line
  };
  struct PhaseState {
    bool active = false;
    builder::Phase kind = builder::Phase::Walk;
    std::uint64_t files = 0, files_total = 0, bytes = 0, bytes_total = 0;
    Clock::time_point start;
  };
  struct Overall {
    bool active = false;
    std::size_t count = 0, finished = 0;
    std::uint64_t total = 0, done = 0, written = 0;  // written: bytes this run wrote (for the rate)
    Clock::time_point start;
  };
  bool live_locked() const;
  std::vector<std::string> rows_locked(std::size_t width, std::size_t height, Clock::time_point now) const;
  void line_locked(const std::string& line);   // a permanent line, in order with the others
  void queue_locked(const std::string& line);  // the same, as it is
  void write_locked(const std::string& text);
  std::string repaint_locked(const std::vector<std::string>& lines, std::size_t live);
  void erase_locked();
  void settle_locked();  // nothing live: erase the rows and print what waits
  void draw_locked();
  void wake_locked();  // start the renderer (TTY) when something is live
  void render_loop();
  void overall_done_locked(std::uint64_t bytes, bool finished_layer);

  Mode mode_;
  std::FILE* out_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::thread renderer_;
  bool running_ = false, stop_ = false;
  std::vector<std::string> pending_;  // permanent lines the renderer prints before its next frame
  std::size_t shown_ = 0;             // live rows on screen; the cursor is on the line below them
  Clock::time_point last_draw_{};
  std::map<std::string, Task> tasks_;
  std::uint64_t seq_ = 0;
  PhaseState phase_;
  Overall overall_;
};

}  // namespace kiln::cli
