// How a build (or push) fails, as data: the exit code an SDK branches on, whether a retry may
// help, what kind of error, which step, and where the log is. The session fills one for every
// failure it records; the CLI prints it (a line, or the --json object) and exits with its code.
#pragma once

#include <exception>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "modelcar/lint.h"

namespace kiln::session {

/// kiln's exit codes: stable, documented in README.md ("Exit codes"). SDKs branch on them.
enum ExitCode : int {
  kOk = 0,
  kInternal = 1,        // a bug or an unexpected system failure
  kUsage = 2,           // bad command line, bad spec, bad input files: fix and re-run
  kBuildFailed = 3,     // a build step failed
  kAuth = 4,            // authentication failed: no credentials, or rejected ones
  kNotFound = 5,        // reference, repository, tag or file not found
  kTransient = 6,       // registry or network trouble (unreachable, 5xx, 429): safe to retry
  kDenied = 7,          // authenticated, but not permitted (e.g. push with a pull-only token)
  kRegistry = 8,        // the registry broke the protocol, or sent content that does not match its digest
};

/// A failure with its exit code and class. For a build, it also says which step failed and where
/// its log is.
struct Failure {
  int code = kInternal;
  std::string error_class = "permanent";  // "permanent" | "transient"
  std::string kind = "internal";          // "usage", "spec", "input", "step", "not_found", "busy", "lint", ...
  std::string message;
  std::string field;                      // the spec field at fault, if known
  std::string step;                       // failed_step: "spec", "prepare", "layer …", "push", ...
  std::optional<int> step_exit_code;      // the failed step's command status (steps running commands)
  std::string log_path;
  std::vector<std::string> log_tail;
  std::string spec_path;                  // the spec the failure is about ("-" = stdin)
  std::string build_id;
  bool cancelled = false;                 // --fail-fast stopped it: another build failed first
  std::vector<modelcar::Finding> lint;    // a modelcar that fails its lint: the findings
  std::string digest;                     // ... and the digest of the image that was not written
};

/// The exception's failure: exit code, class and kind by its type.
Failure classify(const std::exception& e);
Failure classify(std::exception_ptr e);

/// A run stopped by a signal (SIGINT, SIGTERM): exit 128 + the signal (130, 143, as a shell
/// reports a process the signal killed), kind "interrupted", class "permanent" (stopped on
/// purpose: not retried automatically).
Failure interrupted_failure(int signal);

/// The failure object an SDK reads (README, "Exit codes"), the same for every command: status
/// "failed", exit_code, error_class, error_kind, message, failed_step, step_exit_code, log_path,
/// log_tail, field (null when unknown or none), and build_id, spec, cancelled, digest, lint when
/// they apply.
nlohmann::json failure_object(const Failure& f);

/// Another process is building the same image name right now, and the caller asked not to wait.
class BusyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Thrown into a build once it is cancelled (another build of the same run failed, --fail-fast).
class Cancelled : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A modelcar image fails its lint: nothing was written or pushed. Exit 2, kind "lint".
class LintError : public std::invalid_argument {
 public:
  LintError(const std::string& message, std::vector<modelcar::Finding> findings, std::string digest)
      : std::invalid_argument(message), findings_(std::move(findings)), digest_(std::move(digest)) {}
  const std::vector<modelcar::Finding>& findings() const { return findings_; }
  const std::string& digest() const { return digest_; }

 private:
  std::vector<modelcar::Finding> findings_;
  std::string digest_;
};

}  // namespace kiln::session
