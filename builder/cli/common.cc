// Shared pieces of kiln's CLI.
#include "builder/cli/common.h"

#include <cstdio>
#include <fstream>
#include <iostream>
#include <system_error>
#include <thread>

#include "layers/fileset.h"
#include "registry/client.h"
#include "spec/image_spec.h"

namespace fs = std::filesystem;

namespace kiln::cli {

layers::Store Context::open_store() const {
  return layers::Store(common.cache_dir.empty() ? layers::Store::default_root() : fs::path(common.cache_dir));
}

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
  return r;
}

void add_registry_options(CLI::App* sub, Common& c) {
  sub->add_option("--insecure-allow-http", c.allow_http, "Allow plain HTTP to this registry host[:port] (repeatable)");
  sub->add_option("--insecure-skip-tls-verify", c.skip_tls_verify,
                  "Do not verify the TLS certificate of this registry host[:port] (repeatable)");
  sub->add_option("--registry-ca", c.registry_ca, "Extra CA certificates (PEM) to trust for registries");
  sub->add_option("--registry-config", c.registry_config,
                  "docker config.json (or its directory) with credentials (default: the spec's registry_config, "
                  "$DOCKER_CONFIG, ~/.docker)");
}

void add_common_options(CLI::App* sub, Common& c) {
  sub->add_option("--cache", c.cache_dir, "Cache directory (default: $KILN_CACHE, else $XDG_CACHE_HOME/kiln)");
  sub->add_option("--progress", c.progress, "Progress on stderr: auto, plain or quiet")
      ->check(CLI::IsMember({"auto", "plain", "quiet"}));
  sub->add_flag("--json", c.json_out, "Print a machine-readable JSON result on stdout");
  sub->add_option("-j,--jobs", c.jobs, "Threads for hashing and layer writing (default: cores)");
}

Failure classify(const std::exception& e) {
  if (auto* s = dynamic_cast<const spec::SpecError*>(&e)) return {kUsage, "permanent", "spec", s->what(), s->field()};
  if (auto* i = dynamic_cast<const layers::InputError*>(&e)) return {kUsage, "permanent", "input", i->what(), ""};
  if (auto* r = dynamic_cast<const registry::RegistryError*>(&e)) {
    using K = registry::RegistryError::Kind;
    int code = kInternal;
    switch (r->kind()) {
      case K::Unauthorized: code = kAuth; break;
      case K::Denied: code = kDenied; break;
      case K::NameUnknown:
      case K::ManifestUnknown:
      case K::BlobUnknown: code = kNotFound; break;
      case K::Unreachable:
      case K::Transient: code = kTransient; break;
      case K::Protocol: code = kInternal; break;
    }
    return {code, r->transient() ? "transient" : "permanent", registry::RegistryError::kind_name(r->kind()), r->what(), ""};
  }
  if (auto* a = dynamic_cast<const std::invalid_argument*>(&e)) return {kUsage, "permanent", "usage", a->what(), ""};
  if (auto* se = dynamic_cast<const std::system_error*>(&e)) {
    if (se->code() == std::errc::no_such_file_or_directory) return {kNotFound, "permanent", "not_found", se->what(), ""};
    return {kInternal, "permanent", "system", se->what(), ""};
  }
  if (auto* fe = dynamic_cast<const fs::filesystem_error*>(&e)) return {kInternal, "permanent", "system", fe->what(), ""};
  return {kInternal, "permanent", "internal", e.what(), ""};
}

int report_failure(const Failure& f, const Common& c) {
  std::fprintf(stderr, "kiln: error: %s\n", f.message.c_str());
  if (c.json_out) {
    json j = {{"status", "failed"},   {"exit_code", f.code}, {"error_class", f.error_class},
              {"error_kind", f.kind}, {"message", f.message}};
    if (!f.field.empty()) j["field"] = f.field;
    std::cout << j.dump(2) << std::endl;
  }
  return f.code;
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
