// kiln preflight REF: the dry push. Reports, one check at a time, whether a push to REF would
// work — reference, reachability, credentials, repository, push permission — without pushing.
#include <iostream>

#include "builder/cli/common.h"

namespace kiln::cli {

void add_preflight_command(CLI::App& app, Common& c, std::vector<Command>& out) {
  auto ref = std::make_shared<std::string>();
  auto* pf = app.add_subcommand("preflight", "Check that a push to REF would work, without pushing anything");
  pf->add_option("ref", *ref, "[host[:port]/]repo[:tag]")->required();
  add_common_options(pf, c, /*cache_used=*/false, /*jobs_used=*/false);
  add_registry_options(pf, c);
  out.push_back({pf, [ref](Context& ctx) {
                   builder::RegistrySession session(ctx.registry_settings(), &ctx.view);
                   builder::PreflightReport rep = builder::preflight(session, *ref);
                   Failure f{kOk, "permanent", "", "", ""};
                   if (!rep.ok) {
                     registry::RegistryError e(rep.failure.value_or(registry::RegistryError::Kind::Protocol),
                                               rep.steps.back().message);
                     f = classify(e);
                     if (rep.steps.back().name == "reference") f = Failure{kUsage, "permanent", "reference", e.what(), ""};
                   }
                   if (ctx.common.json_out) {
                     json steps = json::array();
                     for (const auto& s : rep.steps) steps.push_back({{"check", s.name}, {"ok", s.ok}, {"message", s.message}});
                     json j = {{"status", rep.ok ? "ok" : "failed"}, {"reference", *ref}, {"checks", steps},
                               {"seconds", rep.seconds}};
                     if (!rep.ok) {
                       j["exit_code"] = f.code;
                       j["error_class"] = f.error_class;
                       j["error_kind"] = f.kind;
                       j["failed_check"] = rep.steps.back().name;
                     }
                     std::cout << j.dump(2) << std::endl;
                   } else {
                     for (const auto& s : rep.steps)
                       std::cout << (s.ok ? "ok    " : "FAIL  ") << s.name << ": " << s.message << "\n";
                   }
                   return rep.ok ? static_cast<int>(kOk) : f.code;
                 }});
}

}  // namespace kiln::cli
