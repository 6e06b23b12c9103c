// kiln preflight REF: the dry push. Reports, one check at a time, whether a push to REF would
// work — reference, reachability, credentials, repository, push permission — without pushing.
// The checks and the failure are the session's (session::Session::preflight); with --json a failed
// preflight prints the failure object every command prints, plus its checks.
#include <iostream>

#include "builder/cli/common.h"
#include "spec/userinfo.h"

namespace kiln::cli {

void add_preflight_command(CLI::App& app, Common& c, std::vector<Command>& out) {
  auto ref = std::make_shared<std::string>();
  auto* pf = app.add_subcommand("preflight", "Check that a push to REF would work, without pushing anything");
  pf->add_option("ref", *ref, "[host[:port]/]repo[:tag]")->required();
  add_common_options(pf, c, /*cache_used=*/false, /*jobs_used=*/false);
  add_registry_options(pf, c);
  out.push_back({pf, [ref](Context& ctx) {
                   session::Environment env;
                   env.progress = &ctx.view;
                   env.registry = ctx.registry_settings();
                   const session::PreflightOutcome r = session::Session(env).preflight(*ref);
                   const builder::PreflightReport& rep = r.report;
                   json j;
                   if (ctx.common.json_out) {
                     // The failure object of every command (or status ok, exit_code 0), plus the checks.
                     j = r.failure ? failure_json(*r.failure) : json{{"status", "ok"}, {"exit_code", static_cast<int>(kOk)}};
                     json checks = json::array();
                     for (const auto& s : rep.steps) checks.push_back({{"check", s.name}, {"ok", s.ok}, {"message", s.message}});
                     j["reference"] = spec::redact_userinfo(*ref).value_or(*ref);  // never credentials
                     j["checks"] = checks;
                     j["seconds"] = rep.seconds;
                     if (r.failure) j["failed_check"] = rep.steps.back().name;
                   } else {
                     for (const auto& s : rep.steps)
                       std::cout << (s.ok ? "ok    " : "FAIL  ") << s.name << ": " << s.message << "\n";
                     std::cout.flush();
                   }
                   if (r.failure) {
                     Common c = ctx.common;
                     c.json_out = false;  // the stderr line (and a GitHub annotation) only: stdout gets j
                     report_failure(*r.failure, c);
                   }
                   if (ctx.common.json_out) std::cout << j.dump(2) << std::endl;
                   return r.failure ? r.failure->code : static_cast<int>(kOk);
                 }});
}

}  // namespace kiln::cli
