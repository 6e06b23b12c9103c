// The RUN steps of a spec, in flytekit's default-builder order, as data: what runs, with which
// environment and mounts, and which inputs it reads. Planning does no I/O except hashing the
// input files (a requirements file); running is the builder's job (builder/run_steps.h).
//
//   1. apt        apt_packages: apt-get update, install --no-install-recommends, lists cleaned
//   2. pip        packages + requirements: `PY -m pip install` with the interpreter chosen by
//                 python_exec / python_version (docs/run-steps.md says how), honouring pip_index,
//                 pip_extra_index_url, pip_extra_args and pip_secret_mounts
//   -- the source_root and copy layers go here (built by builder/build.cc) --
//   3. command N  each of commands, as `/bin/sh -c COMMAND`, on top of the source and copy files
// This is flytekit's default-builder order: a code edit never re-runs apt or pip, and commands
// can work on the baked files (`chmod +x /root/serve`), so they re-run when the code changes.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "run/sandbox.h"
#include "spec/image_spec.h"

namespace kiln::run {

struct Step {
  std::string name;            // "apt", "pip", "command 1" — for logs, errors and history
  std::string created_by;      // the history entry ("kiln: RUN apt-get install …")
  std::vector<std::string> argv;               // run in the sandbox
  std::vector<std::pair<std::string, std::string>> env;  // the whole environment, in order
  /// More environment, not part of the cache key and never logged: index URLs with credentials,
  /// and pip_extra_args items with credentials (KILN_PIP_ARG_<i>, which the script names). Their
  /// credential-free form is among `inputs`. The sandbox gets it outside bwrap's command line.
  std::vector<std::pair<std::string, std::string>> secret_env;
  std::string workdir;         // created when missing
  std::vector<Mount> mounts;   // read-only binds, not captured
  std::vector<std::pair<std::string, std::string>> inputs;  // (name, sha256 hex) of files it reads,
                                                            // (name, URL without credentials) of secrets
  bool after_files = false;    // runs after the source and copy layers (commands), not before
};

/// The environment steps run with: the base image's Env, then PYTHONPATH=source_dest when the
/// spec bakes files (flytekit's ENV PYTHONPATH=/root, set before its installs), then the spec's
/// env, then what kiln needs (PATH and HOME when the image has none, SOURCE_DATE_EPOCH so pip's
/// .pyc files are reproducible).
std::vector<std::pair<std::string, std::string>> step_environment(
    const std::vector<std::string>& base_env, const spec::ImageSpec& s, std::int64_t epoch);

/// The steps of `s`, in order (empty when the spec installs nothing). `base_env` and
/// `base_workdir` come from the base image's config. Throws layers::InputError when a
/// requirements file or a pip_secret_mounts source cannot be read.
std::vector<Step> plan_steps(const spec::ImageSpec& s, const std::vector<std::string>& base_env,
                             const std::string& base_workdir, std::int64_t epoch);

/// The files steps read that the spec only names: ("requirements", sha256 hex). For the tag.
std::vector<std::pair<std::string, std::string>> step_inputs(const spec::ImageSpec& s);

/// The cache key of a step's layer: the parent chain id, the step's definition (argv, env,
/// workdir, mount targets, input digests) and what shapes the layer's bytes (`layer_format`:
/// compression, level, mtime, capture mode). Secrets' contents are not part of it.
std::string step_key(const std::string& parent_chain_id, const Step& step, const std::string& layer_format);

/// POSIX shell quoting: 'it'\''s'.
std::string shell_quote(const std::string& s);

}  // namespace kiln::run
