// kiln's command line: argument parsing, files, progress and exit codes over the library. SDKs
// read the result from stdout (or --json); people read logs and progress on stderr. Each command
// lives in its own cmd_*.cc; this file only dispatches.
#include <algorithm>
#include <clocale>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <string_view>

#include "builder/cli/common.h"

namespace kiln::cli {

void add_files_command(CLI::App& app, Common& c, std::vector<Command>& out);    // cmd_files.cc
void add_version_command(CLI::App& app, Common& c, std::vector<Command>& out);  // cmd_version.cc
std::string version_text();                                                    // cmd_version.cc
void add_completion_command(CLI::App& app, Common& c, std::vector<Command>& out);  // cmd_completion.cc

namespace {

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

/// The closest of `known` to `word`, or "" when none is close (at most a third of its length off).
std::string closest(const std::string& word, const std::vector<std::string>& known) {
  std::string best;
  std::size_t best_d = std::max<std::size_t>(2, word.size() / 3) + 1;
  for (const auto& k : known) {
    std::size_t d = edit_distance(word, k);
    if (d < best_d) best = k, best_d = d;
  }
  return best;
}

/// After a failed parse: an unknown subcommand or flag that is close to a known one gets a
/// "did you mean". Returns the message, or "" to let CLI11 explain.
std::string did_you_mean(CLI::App& app, int argc, char** argv) {
  std::vector<std::string> subs;
  for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) subs.push_back(sub->get_name());
  CLI::App* cmd = &app;
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a.empty() || a[0] == '-') break;
    CLI::App* next = nullptr;
    try {
      next = cmd->get_subcommand(a);
    } catch (const CLI::OptionNotFound&) {
    }
    if (!next) {
      std::vector<std::string> names;
      for (const CLI::App* sub : cmd->get_subcommands([](CLI::App*) { return true; })) names.push_back(sub->get_name());
      bool positional = !cmd->get_options([](const CLI::Option* o) { return o->get_positional(); }).empty();
      if (names.empty() || positional) break;  // a positional argument of a command
      std::string best = closest(a, names);
      std::string where = cmd == &app ? "kiln" : "kiln " + cmd->get_name();
      return "unknown command '" + a + "' for " + where + (best.empty() ? "" : "; did you mean '" + best + "'?");
    }
    cmd = next;
  }
  std::vector<std::string> flags;
  for (const CLI::Option* o : cmd->get_options([](const CLI::Option*) { return true; })) {
    for (const auto& l : o->get_lnames()) flags.push_back("--" + l);
  }
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") break;
    if (a.rfind("--", 0) != 0) continue;
    std::string name = a.substr(0, a.find('='));
    if (std::find(flags.begin(), flags.end(), name) != flags.end()) continue;
    std::string best = closest(name, flags);
    if (!best.empty()) return "unknown flag '" + name + "'; did you mean '" + best + "'?";
  }
  return "";
}

}  // namespace

int run(int argc, char** argv) {
  CLI::App app{"kiln: build OCI images from ImageSpec JSON, without a Docker daemon"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::function<std::string()>(version_text));  // only when asked: it opens libcurl and libarchive
  Common common;
  // -v before or after the command: CLI11 passes the parent's flags through to subcommands.
  app.fallthrough();
  app.add_flag("-v,--verbose", common.verbose, "Log each registry request (method, URL, status; never credentials)");
  std::vector<Command> commands;
  add_build_commands(app, common, commands);
  add_inspect_command(app, common, commands);
  add_cache_commands(app, common, commands);
  add_preflight_command(app, common, commands);
  add_push_command(app, common, commands);
  add_modelcar_commands(app, common, commands);
  add_history_commands(app, common, commands);
  add_files_command(app, common, commands);
  add_version_command(app, common, commands);
  add_completion_command(app, common, commands);  // last: it describes the others
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e) == 0 ? kOk : kUsage;  // --help, --version
    std::string message = did_you_mean(app, argc, argv);
    if (!message.empty()) {
      std::fprintf(stderr, "kiln: error: %s\nRun with --help for more information.\n", message.c_str());
    } else {
      app.exit(e);
      message = e.what();
    }
    // With --json a caller reads stdout: a flag error is a usage failure like any other (exit 2).
    bool json_out = false;
    for (int i = 1; i < argc && std::string_view(argv[i]) != "--"; ++i) json_out |= std::string_view(argv[i]) == "--json";
    if (json_out) {
      Failure f;
      f.code = kUsage;
      f.kind = "usage";
      f.message = message;
      std::cout << failure_json(f).dump(2) << std::endl;
    }
    return kUsage;
  }
  ProgressView view(ProgressView::resolve(common.progress));
  Context ctx{common, view};
  try {
    for (auto& cmd : commands)
      if (cmd.app->parsed()) return cmd.run(ctx);
  } catch (const std::exception& e) {
    view.finish();  // no live row left above the error
    return report_failure(classify(e), common);
  }
  return kUsage;
}

}  // namespace kiln::cli

int main(int argc, char** argv) {
  // Names are UTF-8 whatever the user's locale, so libarchive converts nothing differently.
  // Only the character type: the other categories stay "C" (and are not read from disk).
  std::setlocale(LC_CTYPE, "C.UTF-8");
  // A peer that goes away (a credential helper, a closed pipe on stdout) is an error to report,
  // not a reason to die silently.
  std::signal(SIGPIPE, SIG_IGN);
  return kiln::cli::run(argc, argv);
}
