// kiln's command line: argument parsing, files, progress and exit codes over the library. SDKs
// read the result from stdout (or --json); people read logs and progress on stderr. Each command
// lives in its own cmd_*.cc; this file only dispatches.
#include <clocale>
#include <csignal>

#include "builder/cli/common.h"

namespace kiln::cli {

void add_files_command(CLI::App& app, Common& c, std::vector<Command>& out);  // cmd_files.cc

int run(int argc, char** argv) {
  CLI::App app{"kiln: build OCI images from ImageSpec JSON, without a Docker daemon"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("kiln ") + KILN_VERSION);
  Common common;
  std::vector<Command> commands;
  add_build_commands(app, common, commands);
  add_inspect_command(app, common, commands);
  add_cache_commands(app, common, commands);
  add_preflight_command(app, common, commands);
  add_push_command(app, common, commands);
  add_modelcar_commands(app, common, commands);
  add_history_commands(app, common, commands);
  add_files_command(app, common, commands);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? kOk : kUsage;
  }
  ProgressView view(ProgressView::resolve(common.progress));
  Context ctx{common, view};
  try {
    for (auto& cmd : commands)
      if (cmd.app->parsed()) return cmd.run(ctx);
  } catch (const std::exception& e) {
    return report_failure(classify(e), common);
  }
  return kUsage;
}

}  // namespace kiln::cli

int main(int argc, char** argv) {
  // Names are UTF-8 whatever the user's locale, so libarchive converts nothing differently.
  std::setlocale(LC_ALL, "C.UTF-8");
  // A peer that goes away (a credential helper, a closed pipe on stdout) is an error to report,
  // not a reason to die silently.
  std::signal(SIGPIPE, SIG_IGN);
  return kiln::cli::run(argc, argv);
}
