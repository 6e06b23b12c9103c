// kiln history [NAME], kiln show ID, kiln diff ID1 ID2: the build records (history/), as tables
// for people or JSON for programs.
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>

#include "builder/cli/common.h"
#include "builder/oci_layout.h"
#include "history/history.h"

namespace kiln::cli {
namespace {

struct HistoryArgs {
  std::string name, id, id2;
  std::optional<std::size_t> limit;  // -n: at most this many (0: none); unset: all
  bool log = false;
};

std::string utc(std::int64_t ms) {
  std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string seconds(const history::Record& r) {
  if (r.finished_ms == 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2fs", double(r.finished_ms - r.started_ms) / 1000.0);
  return buf;
}

std::string short_digest(const std::string& d) { return d.size() > 19 ? d.substr(0, 19) + "…" : (d.empty() ? "-" : d); }

std::string status_of(const history::Record& r) {
  if (r.status == "failed" || r.status == "cancelled" || (r.status == "interrupted" && r.exit_code))
    return r.status + " (" + std::to_string(r.exit_code) + ")";
  if (!r.tag_moved_from.empty()) return r.status + " (tag moved)";
  return r.status;
}

history::Record get_or_throw(const history::HistoryDb& db, const std::string& id) {
  auto r = db.get(id);
  if (!r) throw builder::NotFoundError("no build with id '" + id + "' in " + db.dir().string() + " (see `kiln history`)");
  return *r;
}

std::string value_text(const json& v) {
  if (v.is_null()) return "(none)";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("digest"))
    return short_digest(v.value("digest", "")) + " " + v.value("label", "") +
           (v.value("from_base", false) ? " (base)" : "");
  return v.dump();
}

/// The records, read without creating a state directory: none is no build recorded yet.
std::unique_ptr<history::HistoryDb> open_db() { return history::HistoryDb::open_existing(history::HistoryDb::default_dir()); }

history::Record get_or_throw(const std::unique_ptr<history::HistoryDb>& db, const std::string& id) {
  if (!db)
    throw builder::NotFoundError("no build with id '" + id + "': no build recorded in " +
                                 history::HistoryDb::default_dir().string() + " yet");
  return get_or_throw(*db, id);
}

int run_history(Context& ctx, const HistoryArgs& a) {
  auto db = open_db();
  auto records = db ? db->list(a.name, a.limit) : std::vector<history::Record>{};
  if (ctx.common.json_out) {
    json arr = json::array();
    for (const auto& r : records) arr.push_back(r.to_json());
    std::cout << arr.dump(2) << std::endl;
    return kOk;
  }
  if (records.empty()) {
    if (a.limit && *a.limit == 0) return kOk;  // -n 0: none asked for
    std::fprintf(stderr, "no builds recorded%s (in %s)\n", a.name.empty() ? "" : (" for " + a.name).c_str(),
                 history::HistoryDb::default_dir().c_str());
    return kOk;
  }
  std::vector<std::array<std::string, 7>> rows;
  rows.push_back({"ID", "STARTED (UTC)", "NAME", "TAG", "STATUS", "DIGEST", "TIME"});
  for (const auto& r : records) {
    std::string tag = r.tag.size() > 12 ? r.tag.substr(0, 12) + "…" : (r.tag.empty() ? "-" : r.tag);
    rows.push_back({r.id, utc(r.started_ms), r.repository.empty() ? r.spec_path : r.repository, tag, status_of(r),
                    short_digest(r.image_digest), seconds(r)});
  }
  std::array<std::size_t, 7> w{};
  for (const auto& row : rows)
    for (std::size_t i = 0; i < row.size(); ++i) w[i] = std::max(w[i], width(row[i]));
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i)
      line += row[i] + (i + 1 < row.size() ? std::string(w[i] - width(row[i]) + 2, ' ') : "");
    std::cout << line << "\n";
  }
  std::cout.flush();
  return kOk;
}

int run_show(Context& ctx, const HistoryArgs& a) {
  history::Record r = get_or_throw(open_db(), a.id);
  if (a.log) {
    if (r.log_path.empty()) throw builder::NotFoundError("build " + r.id + " has no log");
    std::ifstream in(r.log_path);
    if (!in) throw builder::NotFoundError("the log of build " + r.id + " is gone: " + r.log_path);
    std::cout << in.rdbuf();
    std::cout.flush();
    return kOk;
  }
  if (ctx.common.json_out) {
    std::cout << r.to_json().dump(2) << std::endl;
    return kOk;
  }
  auto line = [](const std::string& k, const std::string& v) {
    if (!v.empty()) std::cout << "  " << k << std::string(k.size() < 16 ? 16 - k.size() : 1, ' ') << v << "\n";
  };
  std::cout << (r.kind.empty() ? std::string("build") : r.kind) << " " << r.id << "\n";
  line("name:", r.name);
  line("repository:", r.repository);
  std::string status = r.status;
  if (r.status == "failed" || r.status == "cancelled" || (r.status == "interrupted" && r.exit_code))
    status += " (exit " + std::to_string(r.exit_code) + ", " + r.error_class + ", " + r.error_kind + ")";
  line("status:", status);
  line("failed step:", r.failed_step);
  line("message:", r.message);
  line(r.kind == "push" ? "source:" : r.kind == "modelcar" ? "model:" : "spec:",
       r.spec_path + (r.spec_digest.empty() ? "" : " (" + short_digest(r.spec_digest) + ")"));
  line("tag:", r.tag);
  line("base:", r.base);
  line("inputs:", r.inputs_digest);
  line("image:", r.image_digest);
  line("config:", r.config_digest);
  line("started:", utc(r.started_ms) + " UTC, took " + seconds(r) + (r.pid ? " (pid " + std::to_string(r.pid) + " on " + r.host + ")" : ""));
  for (const auto& o : r.outputs) line("output:", o);
  for (const auto& p : r.pushed) line("pushed:", p);
  if (!r.tag_moved_from.empty())
    line("tag moved from:", r.tag_moved_from + " (roll back: push that digest to the tag again)");
  for (const auto& w : r.warnings) line("warning:", w);
  line("log:", r.log_path);
  if (!r.layers.empty()) {
    std::cout << "  layers:\n";
    for (const auto& l : r.layers)
      std::cout << "    " << short_digest(l.digest) << "  " << l.size << " B  " << l.label
                << (l.from_base ? "" : l.cache_hit ? "  (cache hit)" : "  (built)") << "\n";
  }
  std::cout.flush();
  return kOk;
}

int run_diff(Context& ctx, const HistoryArgs& a) {
  auto db = open_db();
  history::Record x = get_or_throw(db, a.id), y = get_or_throw(db, a.id2);
  auto changes = history::diff(x, y);
  if (ctx.common.json_out) {
    json arr = json::array();
    for (const auto& c : changes) arr.push_back({{"field", c.field}, {"before", c.before}, {"after", c.after}});
    std::cout << json{{"from", x.id}, {"to", y.id}, {"changes", arr}}.dump(2) << std::endl;
    return kOk;
  }
  std::cout << "from " << x.id << " (" << (x.repository.empty() ? x.spec_path : x.repository) << ", " << x.status
            << ")\n  to " << y.id << " (" << (y.repository.empty() ? y.spec_path : y.repository) << ", " << y.status
            << ")\n";
  if (changes.empty()) std::cout << "no differences\n";
  for (const auto& c : changes) std::cout << "  " << c.field << ": " << value_text(c.before) << " → " << value_text(c.after) << "\n";
  std::cout.flush();
  return kOk;
}

}  // namespace

void add_history_commands(CLI::App& app, Common& c, std::vector<Command>& out) {
  auto a = std::make_shared<HistoryArgs>();

  auto* hist = app.add_subcommand("history", "List recorded builds, newest first (all, or those of NAME)");
  hist->add_option("name", a->name, "Image name or [registry/]name");
  hist->add_option("-n,--limit", a->limit, "Show at most this many builds (0: none)")
      ->check([](const std::string& v) {
        return !v.empty() && v.find_first_not_of("0123456789") == std::string::npos
                   ? std::string()
                   : "must be a number of builds (0 or more), not '" + v + "'";
      });
  hist->add_flag("--json", c.json_out, "Print the records as a JSON array");
  out.push_back({hist, [a](Context& ctx) { return run_history(ctx, *a); }});

  auto* show = app.add_subcommand("show", "Show one recorded build (by id, or a unique id prefix)");
  show->add_option("id", a->id, "Build id (see `kiln history`)")->required();
  show->add_flag("--log", a->log, "Print the build's log instead");
  show->add_flag("--json", c.json_out, "Print the record as JSON");
  out.push_back({show, [a](Context& ctx) { return run_show(ctx, *a); }});

  auto* diff = app.add_subcommand("diff", "What changed between two recorded builds: spec fields, layers, digests");
  diff->add_option("id1", a->id, "The earlier build")->required();
  diff->add_option("id2", a->id2, "The later build")->required();
  diff->add_flag("--json", c.json_out, "Print {from, to, changes: [{field, before, after}]}");
  out.push_back({diff, [a](Context& ctx) { return run_diff(ctx, *a); }});
}

}  // namespace kiln::cli
