// Unit tests for the CLI's progress view: human units, durations, elision, the rows a terminal
// shows (never wider than it, totals that do not shrink), plain lines, and the layer summary.
#include "builder/cli/progress_view.h"

#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using namespace kiln::cli;
using kiln::builder::Phase;
using Clock = ProgressView::Clock;

namespace {

/// What a view wrote to its FILE*.
std::string read_all(std::FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string s;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) s.append(buf, n);
  return s;
}

/// The percentage in a row ("  40%"), or -1.
int percent_of(const std::string& row) {
  auto p = row.find('%');
  if (p == std::string::npos || p < 3) return -1;
  return std::stoi(row.substr(p - 3, 3));
}

}  // namespace

TEST_CASE("progress: human sizes, rates and durations", "[progress]") {
  CHECK(human_bytes(0) == "0 B");
  CHECK(human_bytes(1023) == "1023 B");
  CHECK(human_bytes(1024) == "1.0 KiB");
  CHECK(human_bytes(1536) == "1.5 KiB");
  CHECK(human_bytes(28 * 1024 * 1024 + 100 * 1024) == "28.1 MiB");
  CHECK(human_bytes(3ull << 30) == "3.0 GiB");
  CHECK(human_pair(12u << 20, 28u << 20) == "12.0/28.0 MiB");
  CHECK(human_pair(512, 2048) == "0.5/2.0 KiB");  // one unit for both, the total's
  CHECK(human_pair(5u << 20, 0) == "5.0 MiB/?");  // unknown total
  CHECK(human_rate(45.25 * 1024 * 1024) == "45.2 MiB/s");
  CHECK(human_rate(-1) == "?");
  CHECK(human_duration(0.314) == "0.31s");
  CHECK(human_duration(4.25) == "4.2s");
  CHECK(human_duration(12.9) == "12s");
  CHECK(human_duration(65) == "1m05s");
  CHECK(human_duration(2 * 3600 + 3 * 60 + 7) == "2h03m");
  CHECK(human_duration(-1) == "?");
  CHECK(group_digits(0) == "0");
  CHECK(group_digits(999) == "999");
  CHECK(group_digits(10001) == "10,001");
  CHECK(group_digits(1234567) == "1,234,567");
}

TEST_CASE("progress: elision counts columns, not bytes", "[progress]") {
  CHECK(elide("short", 10) == "short");
  CHECK(elide("layer source_root 3/12 (1,234 files)", 20) == "layer sou...4 files)");
  CHECK(display_width(elide("layer source_root 3/12 (1,234 files)", 20)) == 20);
  CHECK(elide("abcdef", 3) == "...");
  // UTF-8 names: cut between code points, never inside one.
  std::string name = "large file mod\xc3\xa8les/\xc3\xa9t\xc3\xa9-w\xc3\xa9ights.bin";
  for (std::size_t w = 4; w < display_width(name); ++w) {
    std::string e = elide(name, w);
    CHECK(display_width(e) == w);
    CHECK(display_width(fit(name, w)) == w);
    for (std::size_t i = 0; i + 1 < e.size(); ++i)  // no lead byte without its continuation
      if ((static_cast<unsigned char>(e[i]) & 0xE0) == 0xC0) CHECK((static_cast<unsigned char>(e[i + 1]) & 0xC0) == 0x80);
  }
  CHECK(fit("abcdef", 4) == "abcd");
  CHECK(progress_bar(0.5, 12) == "[=====>    ]");
  CHECK(progress_bar(1.0, 6) == "[====]");
  CHECK(progress_bar(0.0, 6) == "[>   ]");
}

TEST_CASE("progress: a row never outgrows its width", "[progress]") {
  for (std::size_t width : {20u, 40u, 79u, 119u, 200u}) {
    std::string r = progress_row("layer source_root 3/12 (1,234 files)", 40, 300u << 20, 785u << 20,
                                 210.0 * (1 << 20), "1.5s ETA 2.2s", width);
    INFO(width << ": " << r);
    CHECK(display_width(r) <= width);
    if (width >= 79) {
      CHECK(r.find(" 38%") != std::string::npos);
      CHECK(r.find("300.0/785.0 MiB") != std::string::npos);
      CHECK(r.find("210.0 MiB/s") != std::string::npos);
      CHECK(r.find("ETA 2.2s") != std::string::npos);
      if (width == 79) {  // the label elided, its end kept: where labels differ
        CHECK(r.find("layer s...") == 0);
        CHECK(r.find("...ot 3/12 (1,234 files)") != std::string::npos);
      } else {
        CHECK(r.find("layer source_root 3/12 (1,234 files) ") == 0);
      }
      CHECK((r.find('[') != std::string::npos) == (width >= 119));  // a bar where there is room
    }
  }
  CHECK(progress_row("x", 10, 5, 0, 0, "", 79).find("?%") != std::string::npos);
}

TEST_CASE("progress: live rows show phases, layers and a stable overall line", "[progress]") {
  std::FILE* f = std::tmpfile();
  REQUIRE(f);
  {
    ProgressView v(ProgressView::Mode::Plain, f);  // no renderer thread: rows() alone
    auto t = Clock::now() + std::chrono::seconds(2);
    v.phase_begin(Phase::Walk, 0, 0);
    v.phase_advance(Phase::Walk, 1, 100);
    v.phase_advance(Phase::Walk, 1, 100);
    auto rows = v.rows(79, t);
    REQUIRE(rows.size() == 1);
    CHECK(rows[0].rfind("walking: 2 files (200 B)", 0) == 0);
    v.phase_end(Phase::Walk);
    CHECK(v.rows(79, t).empty());

    v.phase_begin(Phase::Hash, 4, 4u << 20);
    v.phase_advance(Phase::Hash, 1, 1u << 20);
    rows = v.rows(79, t);
    REQUIRE(rows.size() == 1);
    CHECK(rows[0].find("hashing 1/4 files") != std::string::npos);
    CHECK(rows[0].find("1.0/4.0 MiB") != std::string::npos);
    CHECK(percent_of(rows[0]) == 25);
    v.phase_end(Phase::Hash);

    // Three layers planned, 300 bytes: one cached, two written; the total never shrinks and the
    // percentage never goes down, whatever order the events come in.
    v.layers_planned(3, 300);
    int last = -1;
    auto overall = [&] {
      auto rs = v.rows(79, t);
      REQUIRE(!rs.empty());
      for (const auto& r : rs) CHECK(display_width(r) <= 79);
      std::string o = rs.back();
      CHECK(o.rfind("layers ", 0) == 0);
      CHECK(o.find("/300 B") != std::string::npos);
      int p = percent_of(o);
      CHECK(p >= last);
      last = p;
      return rs;
    };
    overall();
    v.layer_cached("layer a", 100);
    CHECK(percent_of(overall().back()) == 33);
    v.begin("layer1", "layer b with a very long label that has to be elided somewhere in the middle", 100);
    v.begin("layer2", "layer c", 100);
    v.advance("layer1", 60);
    auto rs = overall();
    CHECK(rs.size() == 3);  // two layers and the overall line
    v.advance("layer2", 150);  // more than announced: counted up to its total
    overall();
    v.end("layer2", "layer c: sha256:abc");
    v.end("layer1", "layer b: sha256:def");  // its last 40 bytes (hardlinks) count with it
    CHECK(v.rows(79, t).empty());  // all done: the overall line is gone
  }
  std::string out = read_all(f);
  std::fclose(f);
  CHECK(out.find('\033') == std::string::npos);  // plain: no escape codes
  CHECK(out.find("walked 2 files (200 B) in ") != std::string::npos);
  CHECK(out.find("hashing 4 files (4.0 MiB) ...") != std::string::npos);
  CHECK(out.find("hashed 4 files (4.0 MiB) in ") != std::string::npos);
  CHECK(out.find("layer c (100 B) ...\n") != std::string::npos);
  CHECK(out.find("layer c: sha256:abc (100 B in ") != std::string::npos);
}

TEST_CASE("progress: on a terminal, every line fits and every log line is printed once, in order",
          "[progress]") {
  std::FILE* f = std::tmpfile();
  REQUIRE(f);
  ::setenv("COLUMNS", "80", 1);
  {
    ProgressView v(ProgressView::Mode::Tty, f);  // not a terminal: $COLUMNS columns
    v.layers_planned(2, 2000);
    v.begin("layer0", "layer " + std::string(200, 'x'), 1000);
    for (int i = 0; i < 20; ++i) {
      v.advance("layer0", 50);
      v.log("line " + std::to_string(i) + " " + std::string(150, 'y'));
      std::this_thread::sleep_for(std::chrono::milliseconds(15));
    }
    v.end("layer0", "layer x: done");
    v.warn("a warning longer than the terminal is never cut: " + std::string(100, 'w'));
    v.begin("layer1", "layer two", 1000);  // left running: finish() erases its row
    v.advance("layer1", 10);
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    v.finish();
    v.log("after finish");
  }
  std::string out = read_all(f);
  std::fclose(f);
  // Split what a terminal would show into rows: escape sequences out, \r and \n end a row.
  std::vector<std::string> segs{""};
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (out[i] == '\033' && i + 1 < out.size() && out[i + 1] == '[') {
      i += 2;
      while (i < out.size() && !(out[i] >= '@' && out[i] <= '~')) ++i;
      continue;
    }
    if (out[i] == '\n' || out[i] == '\r') {
      segs.emplace_back();
      continue;
    }
    segs.back() += out[i];
  }
  std::size_t next = 0;
  for (const auto& s : segs) {
    if (s.rfind("warning: ", 0) != 0) CHECK(display_width(s) <= 79);
    if (s.rfind("line ", 0) == 0) {
      CHECK(s.rfind("line " + std::to_string(next) + " ", 0) == 0);
      ++next;
    }
  }
  CHECK(next == 20);
  CHECK(out.find(std::string(100, 'w')) != std::string::npos);
  CHECK(out.find("layer x: done (1000 B in ") != std::string::npos);
  CHECK(out.size() >= 13);
  CHECK(out.substr(out.size() - 13) == "after finish\n");  // nothing live after finish()
}

TEST_CASE("progress: the layer summary says built, cached or base, with sizes, time and rate", "[progress]") {
  std::vector<kiln::builder::LayerReport> ls(3);
  ls[0].label = "base";
  ls[0].from_base = ls[0].cache_hit = true;
  ls[0].size = 30u << 20;
  ls[1].label = "source_root 1/2 (4,012 files) with a long label that a narrow terminal elides";
  ls[1].size = 9u << 20;
  ls[1].tar_size = 28u << 20;
  ls[1].seconds = 0.5;
  ls[2].label = "large file models/w.bin";
  ls[2].cache_hit = true;
  ls[2].size = ls[2].tar_size = 512u << 20;
  ls[2].seconds = 0.001;
  auto lines = layer_summary("x:1", ls, 79);
  REQUIRE(lines.size() == 6);
  for (const auto& l : lines) CHECK(display_width(l) <= 79);
  CHECK(lines[0] == "3 layer(s): 1 built, 1 cached, 1 from the base, in x:1");
  CHECK(lines[1].find("LAYER") != std::string::npos);
  CHECK(lines[2].find("base") != std::string::npos);
  CHECK(lines[3].find("built") != std::string::npos);
  CHECK(lines[3].find("9.0 MiB") != std::string::npos);
  CHECK(lines[3].find("28.0 MiB") != std::string::npos);
  CHECK(lines[3].find("0.50s") != std::string::npos);
  CHECK(lines[3].find("56.0 MiB/s") != std::string::npos);
  CHECK(lines[4].find("cached") != std::string::npos);
  CHECK(lines[5].find("total") != std::string::npos);
  CHECK(lines[5].find("551.0 MiB") != std::string::npos);
  // No width: labels whole.
  auto wide = layer_summary("t", ls, 0);
  CHECK(wide[3].find(ls[1].label) != std::string::npos);
}

TEST_CASE("progress: in the layer summary, a blob listed above is shared and counted once", "[progress]") {
  // An index of two platforms: the second one's source layer is the first one's blob.
  std::vector<kiln::builder::LayerReport> ls(3);
  ls[0].label = "linux/amd64: source_root (3 files)";
  ls[0].digest = "sha256:aaa";
  ls[0].size = 2u << 20;
  ls[0].tar_size = 6u << 20;
  ls[0].seconds = 0.1;
  ls[1].label = "linux/arm64: base";
  ls[1].digest = "sha256:bbb";
  ls[1].from_base = ls[1].cache_hit = true;
  ls[1].size = 1u << 20;
  ls[2].label = "linux/arm64: source_root (3 files)";
  ls[2].digest = "sha256:aaa";
  ls[2].cache_hit = true;
  ls[2].size = 2u << 20;
  ls[2].tar_size = 6u << 20;
  auto lines = layer_summary("idx:1", ls, 0);
  REQUIRE(lines.size() == 6);
  CHECK(lines[0] == "3 layer(s): 1 built, 0 cached, 1 from the base, 1 shared, in idx:1");
  CHECK(lines[4].find("shared") != std::string::npos);
  CHECK(lines[5].find("total") != std::string::npos);
  CHECK(lines[5].find("3.0 MiB") != std::string::npos);  // 2 + 1, not 2 + 1 + 2
  CHECK(lines[5].find("6.0 MiB") != std::string::npos);
}
