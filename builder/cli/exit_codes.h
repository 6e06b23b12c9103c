// kiln's exit codes: stable, documented in README.md ("Exit codes"). SDKs branch on them. They are
// the library's (session/failure.h): a build session records them with each failure.
#pragma once

#include "session/failure.h"

namespace kiln::cli {

using session::ExitCode;
using session::kOk;
using session::kInternal;
using session::kUsage;
using session::kBuildFailed;
using session::kAuth;
using session::kNotFound;
using session::kTransient;
using session::kDenied;

}  // namespace kiln::cli
