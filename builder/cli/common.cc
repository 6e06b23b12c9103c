// Shared pieces of kiln's CLI.
#include "builder/cli/common.h"

#include <cerrno>
#include <cstdlib>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <system_error>
#include <thread>

#include "modelcar/lint.h"
#include "registry/reference.h"

namespace fs = std::filesystem;

namespace kiln::cli {

fs::path Context::store_root() const {
  return common.cache_dir.empty() ? layers::Store::default_root() : fs::path(common.cache_dir);
}

layers::Store Context::open_store() const { return layers::Store(store_root()); }

int Context::jobs() const {
  if (common.jobs > 0) return common.jobs;
  unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 2;
}

builder::RegistrySettings Context::registry_settings(const std::string& spec_config) const {
  builder::RegistrySettings r;
  r.allow_http.insert(common.allow_http.begin(), common.allow_http.end());
  r.skip_tls_verify.insert(common.skip_tls_verify.begin(), common.skip_tls_verify.end());
  r.ca_file = common.registry_ca;
  r.docker_config = !common.registry_config.empty() ? common.registry_config : spec_config;
  r.jobs = std::max(4, jobs());
  const char* debug = std::getenv("KILN_DEBUG");
  r.trace = common.verbose || (debug && *debug && std::string(debug) != "0");
  return r;
}

void add_registry_options(CLI::App* sub, Common& c) {
  sub->add_option("--insecure-allow-http", c.allow_http, "Allow plain HTTP to this registry host[:port] (repeatable)")
      ->allow_extra_args(false);
  sub->add_option("--insecure-skip-tls-verify", c.skip_tls_verify,
                  "Do not verify the TLS certificate of this registry host[:port] (repeatable)")
      ->allow_extra_args(false);
  sub->add_option("--registry-ca", c.registry_ca, "Extra CA certificates (PEM) to trust for registries");
  sub->add_option("--registry-config", c.registry_config,
                  "docker config.json (or its directory) with credentials (default: the spec's registry_config, "
                  "$DOCKER_CONFIG, ~/.docker)");
}

void add_common_options(CLI::App* sub, Common& c, bool cache_used, bool jobs_used) {
  auto* cache = sub->add_option("--cache", c.cache_dir, "Cache directory (default: $KILN_CACHE, else $XDG_CACHE_HOME/kiln)");
  sub->add_option("--progress", c.progress, "Progress on stderr: auto, plain or quiet")
      ->check(CLI::IsMember({"auto", "plain", "quiet"}));
  sub->add_flag("--json", c.json_out, "Print a machine-readable JSON result on stdout");
  auto* jobs = sub->add_option("-j,--jobs", c.jobs, "Threads for hashing and layer writing (default: cores)")
                   ->check([](const std::string& v) {
                     // CLI11 has converted nothing yet: "0", "-1" and "abc" all come here as text.
                     std::size_t used = 0;
                     long n = 0;
                     try {
                       n = std::stol(v, &used);
                     } catch (const std::exception&) {
                       used = 0;
                     }
                     return used == v.size() && !v.empty() && n >= 1 && n <= INT_MAX
                                ? std::string()
                                : "must be a positive number of threads (1 or more), not '" + v + "'";
                   });
  if (!cache_used) cache->group("");  // accepted, not shown
  if (!jobs_used) jobs->group("");
}

json failure_json(const Failure& f) { return session::failure_object(f); }

namespace {

// GitHub workflow commands: data escapes %, CR, LF; properties also ':' and ','.
std::string gh_escape(const std::string& s, bool property) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '%': out += "%25"; break;
      case '\r': out += "%0D"; break;
      case '\n': out += "%0A"; break;
      case ':': out += property ? "%3A" : ":"; break;
      case ',': out += property ? "%2C" : ","; break;
      default: out += c;
    }
  }
  return out;
}

/// The line of the spec file a failure points at: "SPEC:LINE:COL: …" in the message (JSON syntax
/// errors), else the line where the faulty field's key is written; 0 when unknown.
int spec_line(const Failure& f) {
  const std::string prefix = f.spec_path + ":";
  if (f.message.rfind(prefix, 0) == 0) {
    std::size_t i = prefix.size(), j = i;
    while (j < f.message.size() && std::isdigit(static_cast<unsigned char>(f.message[j]))) ++j;
    if (j > i && j < f.message.size() && f.message[j] == ':') return std::atoi(f.message.substr(i, j - i).c_str());
  }
  if (f.field.empty()) return 0;
  std::ifstream in(f.spec_path);
  if (!in) return 0;
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string last = f.field.substr(f.field.rfind('.') == std::string::npos ? 0 : f.field.rfind('.') + 1);
  std::string first = f.field.substr(0, f.field.find('.'));
  // Where `"key":` is written, from `from` on (npos when nowhere).
  auto key_at = [&](const std::string& key, std::size_t from) {
    std::string quoted = "\"" + key + "\"";
    for (std::size_t pos = text.find(quoted, from); pos != std::string::npos; pos = text.find(quoted, pos + 1)) {
      std::size_t k = pos + quoted.size();
      while (k < text.size() && std::isspace(static_cast<unsigned char>(text[k]))) ++k;
      if (k < text.size() && text[k] == ':') return pos;
    }
    return std::string::npos;
  };
  auto line_of = [&](std::size_t pos) { return 1 + static_cast<int>(std::count(text.begin(), text.begin() + pos, '\n')); };
  // A nested field ("base_image.source_root"): its last key after its first one, so a nested
  // spec's field is not taken for the outer spec's.
  if (last != first) {
    std::size_t outer = key_at(first, 0);
    if (outer != std::string::npos) {
      std::size_t inner = key_at(last, outer + 1);
      return line_of(inner != std::string::npos ? inner : outer);
    }
  }
  for (const std::string& key : {last, first})
    if (std::size_t pos = key_at(key, 0); pos != std::string::npos) return line_of(pos);
  return 0;
}

}  // namespace

void annotate_github(const Failure& f) {
  const char* gha = std::getenv("GITHUB_ACTIONS");
  if (!gha || std::string(gha) != "true") return;
  std::string props;
  if (!f.spec_path.empty() && f.spec_path != "-") {
    std::string file = f.spec_path;
    if (const char* ws = std::getenv("GITHUB_WORKSPACE"); ws && *ws) {
      std::error_code ec;
      fs::path abs = fs::weakly_canonical(fs::absolute(f.spec_path), ec);
      fs::path root = fs::weakly_canonical(ws, ec);
      fs::path rel = abs.lexically_relative(root);
      if (!rel.empty() && *rel.begin() != "..") file = rel.generic_string();
    }
    props = "file=" + gh_escape(file, true);
    if (int line = spec_line(f)) props += ",line=" + std::to_string(line);
  }
  std::string title = f.cancelled ? "kiln build cancelled"
                                   : "kiln build failed (exit " + std::to_string(f.code) +
                                         (f.step.empty() ? std::string() : ", " + f.step) + ")";
  props += (props.empty() ? "" : ",") + std::string("title=") + gh_escape(title, true);
  std::fprintf(stderr, "::error %s::%s\n", props.c_str(), gh_escape(f.message, false).c_str());
}

int report_failure(const Failure& f, const Common& c) {
  for (const auto& l : f.lint)
    if (l.severity == modelcar::Finding::Severity::Error)
      std::fprintf(stderr, "kiln: lint error %s: %s\n", l.code.c_str(), l.message.c_str());
  if (f.kind == "step" && !f.step.empty()) {
    std::fprintf(stderr, "kiln: error: %s: %s\n", f.step.c_str(), f.message.c_str());
  } else {
    std::fprintf(stderr, "kiln: error: %s\n", f.message.c_str());
  }
  if (!f.log_path.empty() && c.progress != "quiet") std::fprintf(stderr, "kiln: the build's log: %s\n", f.log_path.c_str());
  annotate_github(f);
  if (c.json_out) std::cout << failure_json(f).dump(2) << std::endl;
  return f.code;
}

void print_interrupted(const Common& c, int sig, const std::string& what, const std::string& spec) {
  Failure f = session::interrupted_failure(sig);
  f.message += ": the " + what + " did not stop in time and was abandoned (nothing half written is kept)";
  if (!spec.empty()) f.spec_path = spec;
  std::fprintf(stderr, "kiln: error: %s\n", f.message.c_str());
  if (c.json_out) std::cout << failure_json(f).dump(2) << std::endl;
}

std::unique_ptr<history::HistoryDb> open_history(ProgressView& view) {
  try {
    return std::make_unique<history::HistoryDb>(history::HistoryDb::default_dir());
  } catch (const std::exception& e) {
    view.warn(std::string("build history unavailable, this build is not recorded: ") + e.what());
    return nullptr;
  }
}

void open_resources(Context& ctx, Resources& r) {
  try {
    r.store.emplace(ctx.open_store());
    r.env.store = &*r.store;
  } catch (...) {
    r.env.store_error = std::current_exception();  // reported (and recorded) by each build
  }
  r.history = open_history(ctx.view);
  r.env.history = r.history.get();
  r.env.progress = &ctx.view;
  r.env.registry = ctx.registry_settings();
}

builder::BuildOptions build_options(Context& ctx, int jobs) {
  builder::BuildOptions opts;
  opts.jobs = jobs > 0 ? jobs : ctx.jobs();
  opts.source_date_epoch = source_date_epoch_from_env();
  // Entries a walk thread holds before it spills sorted runs to the store's tmp/ (docs/flat-memory.md).
  if (const char* v = std::getenv("KILN_WALK_BUDGET"); v && *v) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long n = std::strtoull(v, &end, 10);
    if (errno || *end || n == 0 || n > (1ull << 30) || *v == '-')
      throw std::invalid_argument(std::string("KILN_WALK_BUDGET must be a number of entries from 1 to 1073741824, not '") + v + "'");
    opts.walk_spill_budget = static_cast<std::size_t>(n);
  }
  return opts;
}

json layers_json(const std::vector<builder::LayerReport>& ls) {
  json arr = json::array();
  for (const auto& l : ls) {
    json j = {{"label", l.label},       {"digest", l.digest}, {"diff_id", l.diff_id},
              {"media_type", l.media_type}, {"size", l.size}, {"cache", l.cache_hit ? "hit" : "miss"},
              {"from_base", l.from_base}};
    if (!l.from_base) {
      j["uncompressed_size"] = l.tar_size;
      j["files"] = l.files;
      j["seconds"] = l.seconds;
    }
    arr.push_back(j);
  }
  return arr;
}

namespace {
json outputs_json(const session::Outcome& o) {
  json outs = json::array();
  for (const auto& w : o.outputs) outs.push_back({{"target", w.target}, {"digest", w.digest}});
  return outs;
}
}  // namespace

void add_platforms_json(const session::Outcome& o, json& j) {
  if (o.platforms.empty()) return;
  j["media_type"] = builder::kIndexMediaType;  // a multi-platform image: `digest` is its index's
  j["platforms"] = json::array();
  for (const auto& p : o.platforms)
    j["platforms"].push_back({{"platform", p.platform}, {"digest", p.digest}, {"config_digest", p.config_digest}});
}

json outcome_json(const session::Outcome& o) {
  auto opt = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
  json j;
  if (o.status == "exists") {
    registry::Reference done = *o.push_target;
    done.digest = o.digest;
    j = {{"status", "exists"}, {"image", o.image}, {"digest", o.digest}, {"reference", done.str()},
         {"tag", o.tag},       {"spec_hash", o.spec_hash}, {"outputs", outputs_json(o)}};
  } else {
    json pushed = nullptr;
    if (o.pushed) {
      const auto& pr = *o.pushed;
      pushed = {{"reference", pr.reference}, {"digest", pr.digest},   {"uploaded", pr.uploaded},
                {"skipped", pr.skipped},     {"mounted", pr.mounted}, {"bytes_uploaded", pr.bytes_uploaded},
                {"previous_digest", opt(pr.previous_digest)}};
    }
    j = {{"status", "success"},
         {"image", o.image},
         {"repository", o.repository},
         {"tag", o.tag},
         {"digest", o.digest},
         {"reference", o.repository + "@" + o.digest},
         {"config_digest", o.config_digest},
         {"spec_hash", o.spec_hash},
         {"outputs", outputs_json(o)},
         {"layers", layers_json(o.layers)},
         {"timings", o.timings},
         {"warnings", o.warnings},
         {"pushed", pushed}};
    if (o.has_source) j["source"] = {{"digest", o.source_digest}, {"dest", o.source_dest}, {"copy_mode", o.copy_mode}};
  }
  add_platforms_json(o, j);
  j["exit_code"] = static_cast<int>(kOk);  // as in a failure object and the several-spec wrapper
  j["build_id"] = o.build_id;
  j["log_path"] = opt(o.log_path);
  return j;
}

std::int64_t source_date_epoch_from_env() {
  const char* v = std::getenv("SOURCE_DATE_EPOCH");
  if (!v || !*v) return 0;
  char* end = nullptr;
  long long x = std::strtoll(v, &end, 10);
  if (*end || x < 0) throw std::invalid_argument(std::string("SOURCE_DATE_EPOCH='") + v + "' is not a non-negative integer");
  return x;
}

std::vector<std::string> read_module_list(const std::string& file) {
  std::istream* in = &std::cin;
  std::ifstream f;
  if (file != "-") {
    f.open(file);
    if (!f) throw std::invalid_argument("cannot read the module list '" + file + "'");
    in = &f;
  }
  std::vector<std::string> out;
  for (std::string line; std::getline(*in, line);) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty() && line[0] != '#') out.push_back(line);
  }
  return out;
}

}  // namespace kiln::cli
