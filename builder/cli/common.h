// Shared pieces of kiln's CLI: options every command takes, the run context, failure reporting
// (exit code + --json object), and small argument helpers.
#pragma once

#include <CLI/CLI.hpp>
#include <exception>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "builder/cli/exit_codes.h"
#include "builder/cli/progress_view.h"
#include "builder/registry_io.h"
#include "history/history.h"
#include "layers/store.h"
#include "session/session.h"

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
  bool verbose = false;  // -v/--verbose (or KILN_DEBUG=1): log registry requests
};

/// What a command gets when it runs.
struct Context {
  Common& common;
  ProgressView& view;
  layers::Store open_store() const;
  /// Where the store is (--cache, else the default), without opening or creating it.
  std::filesystem::path store_root() const;
  int jobs() const;
  /// Registry settings from the flags; `spec_config` is a spec's registry_config (flags win).
  builder::RegistrySettings registry_settings(const std::string& spec_config = "") const;
};

/// A parsed subcommand and what to run when it was chosen.
struct Command {
  CLI::App* app;
  std::function<int(Context&)> run;
};

/// Adds --cache, --progress, --json, --jobs to a subcommand. A command that uses no store
/// (`cache_used` false) or no threads (`jobs_used` false) still accepts the flag, so scripts that
/// pass it everywhere keep working, but its help does not show it.
void add_common_options(CLI::App* sub, Common& c, bool cache_used = true, bool jobs_used = true);
/// Adds --insecure-allow-http, --insecure-skip-tls-verify, --registry-ca, --registry-config.
void add_registry_options(CLI::App* sub, Common& c);

/// A failure (exit code, class, kind, step, log) and its classification: the library's.
using session::Failure;
using session::classify;
/// The --json failure object: status "failed", exit_code, error_class, error_kind, message,
/// failed_step, step_exit_code, log_path, log_tail (and field, build_id, spec when known).
json failure_json(const Failure& f);
/// Under GitHub Actions (GITHUB_ACTIONS=true): an `::error file=SPEC,line=N::message`
/// annotation on stderr, pointing at the spec file (and at the line of the faulty field).
void annotate_github(const Failure& f);
/// Prints the failure (stderr line, annotation, --json object on stdout); returns its exit code.
int report_failure(const Failure& f, const Common& c);
/// An InterruptGuard's fallback: the interrupted failure of a `what` ("build", "push") that did
/// not stop in time (stderr line, --json object; no build id or log: it was abandoned mid-way).
void print_interrupted(const Common& c, int sig, const std::string& what, const std::string& spec = "");

/// What a build session shares, from the flags: the store (or why it cannot be opened), the
/// history (or none, with a warning), the view, the registry settings.
struct Resources {
  std::optional<layers::Store> store;
  std::unique_ptr<history::HistoryDb> history;
  session::Environment env;
};
void open_resources(Context& ctx, Resources& r);
/// The build options from the flags and the environment (threads, SOURCE_DATE_EPOCH).
builder::BuildOptions build_options(Context& ctx, int jobs = 0);
/// The --json form of a build's layers and of a successful build.
json layers_json(const std::vector<builder::LayerReport>& ls);
json outcome_json(const session::Outcome& o);
/// A multi-platform outcome's `media_type` (the index's) and `platforms` (each image), added to `j`.
void add_platforms_json(const session::Outcome& o, json& j);

/// Another process is building the same image name right now, and --no-wait was given.
using session::BusyError;

/// The build records (HistoryDb::default_dir()); null, with a warning, when they cannot be opened:
/// a build goes on without its record rather than fail for it.
std::unique_ptr<history::HistoryDb> open_history(ProgressView& view);

std::int64_t source_date_epoch_from_env();
/// Columns on a terminal: UTF-8 continuation bytes take none.
inline std::size_t width(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}
std::vector<std::string> read_module_list(const std::string& file);

// Each command file registers its subcommands.
void add_build_commands(CLI::App& app, Common& c, std::vector<Command>& out);    // build, tag, plan
void add_inspect_command(CLI::App& app, Common& c, std::vector<Command>& out);   // inspect
void add_cache_commands(CLI::App& app, Common& c, std::vector<Command>& out);    // cache du|prune
void add_preflight_command(CLI::App& app, Common& c, std::vector<Command>& out); // preflight
void add_push_command(CLI::App& app, Common& c, std::vector<Command>& out);      // push
void add_modelcar_commands(CLI::App& app, Common& c, std::vector<Command>& out);  // modelcar, k8s-patch
void add_history_commands(CLI::App& app, Common& c, std::vector<Command>& out);   // history, show, diff

}  // namespace kiln::cli
