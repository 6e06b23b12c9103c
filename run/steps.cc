// RUN steps as data (see steps.h).
#include "run/steps.h"

#include <array>
#include <system_error>

#include "layers/digest.h"
#include "layers/fileset.h"

namespace fs = std::filesystem;

namespace kiln::run {

namespace {

constexpr const char* kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where a step's input files are bound: inside the sandbox's fresh /tmp, so the mount point is
/// never part of what the step changes.
constexpr const char* kRequirementsTarget = "/tmp/kiln/requirements.txt";

void set(std::vector<std::pair<std::string, std::string>>& env, const std::string& k, const std::string& v) {
  for (auto& [ek, ev] : env)
    if (ek == k) {
      ev = v;
      return;
    }
  env.emplace_back(k, v);
}
bool has(const std::vector<std::pair<std::string, std::string>>& env, const std::string& k) {
  for (const auto& [ek, ev] : env)
    if (ek == k) return true;
  return false;
}

fs::path resolve(const spec::ImageSpec& s, const std::string& p) {
  fs::path path(p);
  return path.is_absolute() ? path : s.base_dir / path;
}

/// Runs `body` in `workdir` (created when missing, as Dockerfile WORKDIR does) under /bin/sh.
std::vector<std::string> in_workdir(const std::string& workdir, const std::string& body) {
  std::string q = shell_quote(workdir);
  return {"/bin/sh", "-c", "[ -d " + q + " ] || mkdir -p -- " + q + " || exit 1\ncd -- " + q + " || exit 1\n" + body};
}

std::string apt_script(const spec::ImageSpec& s) {
  std::string pkgs;
  for (const auto& p : s.apt_packages) pkgs += " " + shell_quote(p);
  // The lists, the package cache and apt's logs would make the layer bigger and different on
  // every run; flytekit's builder drops the lists too.
  return "if ! command -v apt-get >/dev/null 2>&1; then\n"
         "  echo 'kiln: apt_packages needs apt-get in the base image, and it has none on PATH' >&2\n"
         "  exit 127\n"
         "fi\n"
         "set -e\n"
         "apt-get update\n"
         "apt-get install -y --no-install-recommends" + pkgs + "\n"
         "apt-get clean\n"
         "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log "
         "/var/log/alternatives.log /var/cache/ldconfig/aux-cache\n";
}

/// pip's arguments that may hold a URL with credentials, and the variables (prefix + index) that
/// carry such an item to pip: pip_extra_args ("--index-url", "https://user:token@host/simple", or
/// "--extra-index-url=https://…") and packages given as a direct URL ("pkg @ https://…").
struct SecretArgs {
  const std::vector<std::string>& items;
  const char* field;
  const char* var_prefix;
};
std::array<SecretArgs, 2> secret_args(const spec::ImageSpec& s) {
  return {SecretArgs{s.pip_extra_args, "pip_extra_args", "KILN_PIP_ARG_"},
          SecretArgs{s.packages, "packages", "KILN_PIP_PKG_"}};
}

/// Item i of `a` on pip's command line: quoted, or, when it holds a credential, the variable that
/// carries it (the script is part of the cache key and of bwrap's command line: it only names it).
std::string pip_arg(const SecretArgs& a, std::size_t i) {
  const std::string& v = a.items[i];
  return spec::without_userinfo(v) == v ? shell_quote(v) : "\"$" + std::string(a.var_prefix) + std::to_string(i) + "\"";
}

/// Chooses the interpreter (python_exec; else pythonX.Y for python_version, then python3, then
/// python, checking the version), then installs with its pip.
std::string pip_script(const spec::ImageSpec& s, bool with_requirements) {
  std::string want = s.python_version.value_or("");
  std::string candidates;
  if (s.python_exec) {
    candidates = shell_quote(*s.python_exec);
  } else {
    if (!want.empty()) candidates += "python" + want + " ";
    candidates += "python3 python";
  }
  std::string args;  // pip_index and pip_extra_index_url come as PIP_INDEX_URL / PIP_EXTRA_INDEX_URL
  const auto [extra_args, packages] = secret_args(s);
  for (std::size_t i = 0; i < extra_args.items.size(); ++i) args += " " + pip_arg(extra_args, i);
  if (with_requirements) args += std::string(" -r ") + kRequirementsTarget;
  for (std::size_t i = 0; i < packages.items.size(); ++i) args += " " + pip_arg(packages, i);

  std::string sh = "PY=\n"
                   "for c in " + candidates + "; do\n"
                   "  if command -v \"$c\" >/dev/null 2>&1; then PY=$(command -v \"$c\"); break; fi\n"
                   "done\n"
                   "if [ -z \"$PY\" ]; then\n"
                   "  echo 'kiln: packages and requirements need Python in the image: none of " + candidates +
                   " is on PATH. Use a base image with Python (e.g. python:3.12-slim), or add python3 and python3-pip "
                   "to apt_packages.' >&2\n"
                   "  exit 127\n"
                   "fi\n";
  if (!want.empty())
    sh += "if ! \"$PY\" -c 'import sys; w = sys.argv[1].split(\".\"); "
          "sys.exit(0 if [str(x) for x in sys.version_info[:len(w)]] == w else 1)' " + shell_quote(want) + "; then\n"
          "  echo \"kiln: python_version is " + want + " but the image's $PY is $(\"$PY\" -V 2>&1). "
          "kiln does not download interpreters: use a base image with Python " + want + ", or set python_exec.\" >&2\n"
          "  exit 1\n"
          "fi\n";
  sh += "if ! \"$PY\" -m pip --version >/dev/null 2>&1; then\n"
        "  echo \"kiln: $PY has no pip: add python3-pip to apt_packages, or use a base image with pip\" >&2\n"
        "  exit 127\n"
        "fi\n"
        "echo \"kiln: installing with $PY ($(\"$PY\" -m pip --version))\"\n"
        "exec \"$PY\" -m pip install" + args + "\n";
  return sh;
}

}  // namespace

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

std::vector<std::pair<std::string, std::string>> step_environment(const std::vector<std::string>& base_env,
                                                                   const spec::ImageSpec& s, std::int64_t epoch) {
  std::vector<std::pair<std::string, std::string>> env;
  for (const std::string& kv : base_env) {
    std::size_t eq = kv.find('=');
    set(env, kv.substr(0, eq), eq == std::string::npos ? "" : kv.substr(eq + 1));
  }
  if (s.bakes_files() && !s.modelcar) set(env, "PYTHONPATH", s.source_dest);
  for (const auto& [k, v] : s.env) set(env, k, v);
  if (!has(env, "PATH")) set(env, "PATH", kDefaultPath);
  if (!has(env, "HOME")) set(env, "HOME", "/root");
  set(env, "SOURCE_DATE_EPOCH", std::to_string(epoch));
  return env;
}

std::vector<std::pair<std::string, std::string>> step_inputs(const spec::ImageSpec& s) {
  std::vector<std::pair<std::string, std::string>> out;
  if (s.requirements) {
    fs::path p = resolve(s, *s.requirements);
    std::error_code ec;
    if (!fs::is_regular_file(p, ec))
      throw layers::InputError(s.origin + ": field 'requirements': " + p.string() + " is not a readable file");
    try {
      out.emplace_back("requirements", layers::sha256_file_hex(p));
    } catch (const std::system_error& e) {
      throw layers::InputError(s.origin + ": field 'requirements': " + e.what());
    }
  }
  return out;
}

std::vector<Step> plan_steps(const spec::ImageSpec& s, const std::vector<std::string>& base_env,
                             const std::string& base_workdir, std::int64_t epoch) {
  std::vector<Step> steps;
  const auto env = step_environment(base_env, s, epoch);
  const std::string workdir = s.workdir.value_or(base_workdir.empty() ? "/" : base_workdir);
  auto make = [&](std::string name, std::string created_by, const std::string& body) {
    Step st;
    st.name = std::move(name);
    st.created_by = std::move(created_by);
    st.argv = in_workdir(workdir, body);
    st.env = env;
    st.workdir = workdir;
    return st;
  };

  if (!s.apt_packages.empty()) {
    std::string list;
    for (const auto& p : s.apt_packages) list += " " + p;
    Step st = make("apt", "kiln: RUN apt-get install --no-install-recommends" + list, apt_script(s));
    set(st.env, "DEBIAN_FRONTEND", "noninteractive");
    steps.push_back(std::move(st));
  }

  const bool pip = !s.packages.empty() || s.requirements;
  if (pip) {
    std::string what;
    // The file's bytes are an input of the step; its host path is not (it differs per checkout).
    if (s.requirements) what += std::string(" -r ") + kRequirementsTarget;
    for (const auto& p : s.packages) what += " " + spec::without_userinfo(p);  // the history is pushed
    Step st = make("pip", "kiln: RUN pip install" + what, pip_script(s, s.requirements.has_value()));
    // Debian and Ubuntu mark their Python "externally managed" (PEP 668); an image is the
    // environment, so kiln installs into it as flytekit's builder does. Older pips ignore these.
    set(st.env, "PIP_BREAK_SYSTEM_PACKAGES", "1");
    set(st.env, "PIP_ROOT_USER_ACTION", "ignore");
    set(st.env, "PIP_DISABLE_PIP_VERSION_CHECK", "1");
    set(st.env, "PIP_NO_CACHE_DIR", "1");
    set(st.env, "PIP_PROGRESS_BAR", "off");
    st.inputs = step_inputs(s);
    // Index URLs may carry a token: they reach pip through the environment, outside the cache key
    // (which sees them without credentials) and outside every log.
    if (s.pip_index) {
      st.secret_env.emplace_back("PIP_INDEX_URL", *s.pip_index);
      st.inputs.emplace_back("pip_index", spec::without_userinfo(*s.pip_index));
    }
    if (!s.pip_extra_index_url.empty()) {
      std::string all, shown;
      for (const auto& u : s.pip_extra_index_url) {
        all += (all.empty() ? "" : " ") + u;
        shown += (shown.empty() ? "" : " ") + spec::without_userinfo(u);
      }
      st.secret_env.emplace_back("PIP_EXTRA_INDEX_URL", all);
      st.inputs.emplace_back("pip_extra_index_url", shown);
    }
    // So may pip_extra_args and packages items: such an item reaches pip as "$KILN_PIP_ARG_<i>"
    // (or KILN_PIP_PKG_) in the script, its value in the environment, and the key sees it
    // without the credentials.
    for (const SecretArgs& a : secret_args(s))
      for (std::size_t i = 0; i < a.items.size(); ++i) {
        std::string shown = spec::without_userinfo(a.items[i]);
        if (shown == a.items[i]) continue;
        st.secret_env.emplace_back(a.var_prefix + std::to_string(i), a.items[i]);
        st.inputs.emplace_back(std::string(a.field) + "[" + std::to_string(i) + "]", std::move(shown));
      }
    if (s.requirements) st.mounts.push_back({resolve(s, *s.requirements), kRequirementsTarget, true});
    for (const auto& [src, target] : s.pip_secret_mounts) {
      fs::path p = resolve(s, src);
      std::error_code ec;
      if (!fs::exists(p, ec))
        throw layers::InputError(s.origin + ": field 'pip_secret_mounts': source " + p.string() + " does not exist");
      st.mounts.push_back({p, target, true});
    }
    steps.push_back(std::move(st));
  }
  // python_version / python_exec alone install nothing: they choose (and check) the interpreter
  // of the pip step. kiln never downloads one (docs/run-steps.md).

  for (std::size_t i = 0; i < s.commands.size(); ++i) {
    std::string name = s.commands.size() == 1 ? "command" : "command " + std::to_string(i + 1);
    // `sh -c COMMAND`, as a Dockerfile RUN line: the command is passed as $1, untouched.
    Step st = make(name, "kiln: RUN " + s.commands[i], "exec /bin/sh -c \"$1\"");
    st.argv.push_back("sh");
    st.argv.push_back(s.commands[i]);
    st.after_files = true;
    steps.push_back(std::move(st));
  }
  return steps;
}

std::string step_key(const std::string& parent_chain_id, const Step& step, const std::string& layer_format) {
  layers::KeyHasher h;
  h.field("kiln-step-v4");  // v4: the parent is keyed by the base's blob digests too; v3: kiln's fast_deflate
  h.field(parent_chain_id);
  h.field(layer_format);
  h.field(static_cast<std::uint64_t>(step.argv.size()));
  for (const auto& a : step.argv) h.field(a);
  h.field(static_cast<std::uint64_t>(step.env.size()));
  for (const auto& [k, v] : step.env) {
    h.field(k);
    h.field(v);
  }
  h.field(step.workdir);
  h.field(static_cast<std::uint64_t>(step.mounts.size()));
  for (const auto& m : step.mounts) h.field(m.target);
  for (const auto& [name, sha] : step.inputs) {
    h.field(name);
    h.field(sha);
  }
  return h.hex();
}

}  // namespace kiln::run
