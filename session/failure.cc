// Exceptions → failures (exit code, class, kind).
#include "session/failure.h"

#include <csignal>
#include <filesystem>
#include <system_error>

#include "builder/build.h"
#include "builder/errors.h"
#include "layers/fileset.h"
#include "registry/client.h"
#include "registry/reference.h"
#include "spec/image_spec.h"

namespace fs = std::filesystem;

namespace kiln::session {

Failure classify(const std::exception& e) {
  if (auto* fe = dynamic_cast<const builder::FieldError*>(&e)) {
    // The error itself decides the code and kind; the field it is about goes in front of any
    // field the error names (a nested base spec's: "base_image.source_root").
    Failure f = fe->nested_ptr() ? classify(fe->nested_ptr()) : Failure{kUsage, "permanent", "input", fe->what(), ""};
    f.field = f.field.empty() ? fe->field() : fe->field() + "." + f.field;
    return f;
  }
  if (auto* s = dynamic_cast<const spec::SpecError*>(&e)) return {kUsage, "permanent", "spec", s->what(), s->field()};
  if (auto* st = dynamic_cast<const builder::StepError*>(&e)) {
    Failure f{kBuildFailed, "permanent", "step", st->what(), ""};
    f.step = st->step();
    if (st->exit_code() >= 0) f.step_exit_code = st->exit_code();
    return f;
  }
  if (auto* n = dynamic_cast<const builder::NotFoundError*>(&e)) return {kNotFound, "permanent", "not_found", n->what(), ""};
  if (auto* b = dynamic_cast<const BusyError*>(&e)) return {kTransient, "transient", "busy", b->what(), ""};
  if (auto* b = dynamic_cast<const builder::BaseError*>(&e)) return {kUsage, "permanent", "base", b->what(), b->field()};
  if (auto* l = dynamic_cast<const LintError*>(&e)) {
    Failure f{kUsage, "permanent", "lint", l->what(), ""};
    f.lint = l->findings();
    f.digest = l->digest();
    return f;
  }
  if (auto* i = dynamic_cast<const layers::InputError*>(&e)) return {kUsage, "permanent", "input", i->what(), i->field()};
  if (auto* r = dynamic_cast<const registry::RegistryError*>(&e)) {
    using K = registry::RegistryError::Kind;
    int code = kInternal;
    switch (r->kind()) {
      case K::Unauthorized: code = kAuth; break;
      case K::Denied: code = kDenied; break;
      case K::NameUnknown:
      case K::ManifestUnknown:
      case K::BlobUnknown:
      case K::UnknownHost: code = kNotFound; break;
      case K::Unreachable:
      case K::Transient: code = kTransient; break;
      case K::Protocol:
      case K::Integrity: code = kRegistry; break;
    }
    return {code, r->transient() ? "transient" : "permanent", registry::RegistryError::kind_name(r->kind()), r->what(), ""};
  }
  if (auto* r = dynamic_cast<const registry::ReferenceError*>(&e)) return {kUsage, "permanent", "reference", r->what(), ""};
  if (auto* a = dynamic_cast<const std::invalid_argument*>(&e)) return {kUsage, "permanent", "usage", a->what(), ""};
  if (auto* se = dynamic_cast<const std::system_error*>(&e)) {
    if (se->code() == std::errc::no_such_file_or_directory) return {kNotFound, "permanent", "not_found", se->what(), ""};
    return {kInternal, "permanent", "system", se->what(), ""};
  }
  if (auto* fe = dynamic_cast<const fs::filesystem_error*>(&e)) return {kInternal, "permanent", "system", fe->what(), ""};
  return {kInternal, "permanent", "internal", e.what(), ""};
}

Failure interrupted_failure(int signal) {
  const char* name = signal == SIGINT ? "SIGINT" : signal == SIGTERM ? "SIGTERM" : nullptr;
  Failure f{128 + signal, "permanent", "interrupted",
            std::string("interrupted by ") + (name ? name : "signal " + std::to_string(signal)), ""};
  return f;
}

nlohmann::json failure_object(const Failure& f) {
  using nlohmann::json;
  auto opt = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
  json j = {{"status", "failed"},
            {"exit_code", f.code},
            {"error_class", f.error_class},
            {"error_kind", f.kind},
            {"message", f.message},
            {"failed_step", opt(f.step)},
            {"step_exit_code", f.step_exit_code ? json(*f.step_exit_code) : json(nullptr)},
            {"log_path", opt(f.log_path)},
            {"log_tail", f.log_tail},
            {"field", opt(f.field)}};
  if (!f.build_id.empty()) j["build_id"] = f.build_id;
  if (!f.spec_path.empty()) j["spec"] = f.spec_path;
  if (f.cancelled) j["cancelled"] = true;
  if (!f.digest.empty()) j["digest"] = f.digest;
  if (!f.lint.empty()) j["lint"] = modelcar::to_json(f.lint);
  return j;
}

Failure classify(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return classify(x);
  } catch (...) {
    return {kInternal, "permanent", "internal", "unknown error", ""};
  }
}

}  // namespace kiln::session
