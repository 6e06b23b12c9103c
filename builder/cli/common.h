// Shared pieces of kiln's CLI: options every command takes, the run context, failure reporting
// (exit code + --json object), and small argument helpers.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "builder/cli/exit_codes.h"
#include "builder/cli/progress_view.h"
#include "builder/registry_io.h"
#include "layers/store.h"

namespace kiln::cli {

using nlohmann::json;

/// Options shared by most commands.
struct Common {
  std::string cache_dir;
  std::string progress = "auto";
  bool json_out = false;
  int jobs = 0;
  // Registry access.
  std::vector<std::string> allow_http, skip_tls_verify;
  std::string registry_ca, registry_config;
};

/// What a command gets when it runs.
struct Context {
  Common& common;
  ProgressView& view;
  layers::Store open_store() const;
  int jobs() const;
  /// Registry settings from the flags; `spec_config` is a spec's registry_config (flags win).
  builder::RegistrySettings registry_settings(const std::string& spec_config = "") const;
};

/// A parsed subcommand and what to run when it was chosen.
struct Command {
  CLI::App* app;
  std::function<int(Context&)> run;
};

/// Adds --cache, --progress, --json, --jobs to a subcommand.
void add_common_options(CLI::App* sub, Common& c);
/// Adds --insecure-allow-http, --insecure-skip-tls-verify, --registry-ca, --registry-config.
void add_registry_options(CLI::App* sub, Common& c);

/// A failure with its exit code and class, for the human line and the --json object.
struct Failure {
  int code;
  std::string error_class;  // "permanent" | "transient"
  std::string kind;         // "usage", "spec", "input", "internal", ...
  std::string message;
  std::string field;
};
Failure classify(const std::exception& e);
int report_failure(const Failure& f, const Common& c);

std::int64_t source_date_epoch_from_env();
std::vector<std::string> read_module_list(const std::string& file);

// Each command file registers its subcommands.
void add_build_commands(CLI::App& app, Common& c, std::vector<Command>& out);    // build, tag, plan
void add_inspect_command(CLI::App& app, Common& c, std::vector<Command>& out);   // inspect
void add_cache_commands(CLI::App& app, Common& c, std::vector<Command>& out);    // cache du|prune
void add_preflight_command(CLI::App& app, Common& c, std::vector<Command>& out); // preflight
void add_modelcar_commands(CLI::App& app, Common& c, std::vector<Command>& out);  // modelcar, k8s-patch
void add_history_commands(CLI::App& app, Common& c, std::vector<Command>& out);   // history, show, diff

}  // namespace kiln::cli
