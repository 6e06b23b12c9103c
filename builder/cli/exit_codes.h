// kiln's exit codes: stable, documented in README.md ("Exit codes"). SDKs branch on them.
#pragma once

namespace kiln::cli {

enum ExitCode : int {
  kOk = 0,
  kInternal = 1,        // a bug or an unexpected system failure
  kUsage = 2,           // bad command line, bad spec, bad input files: fix and re-run
  kBuildFailed = 3,     // a build step failed
  kAuth = 4,            // authentication or permission denied
  kNotFound = 5,        // reference, repository, tag or file not found
  kTransient = 6,       // registry or network trouble: safe to retry
};

}  // namespace kiln::cli
