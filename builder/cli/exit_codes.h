// kiln's exit codes: stable, documented in README.md ("Exit codes"). SDKs branch on them.
#pragma once

namespace kiln::cli {

enum ExitCode : int {
  kOk = 0,
  kInternal = 1,        // a bug or an unexpected system failure
  kUsage = 2,           // bad command line, bad spec, bad input files: fix and re-run
  kBuildFailed = 3,     // a build step failed
  kAuth = 4,            // authentication failed: no credentials, or rejected ones
  kNotFound = 5,        // reference, repository, tag or file not found
  kTransient = 6,       // registry or network trouble (unreachable, 5xx, 429): safe to retry
  kDenied = 7,          // authenticated, but not permitted (e.g. push with a pull-only token)
};

}  // namespace kiln::cli
