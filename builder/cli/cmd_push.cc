// kiln push oci:DIR[:TAG] REF: copy an image from an OCI layout to a registry — blobs the
// registry has are skipped, the manifest goes last. The same sink as `kiln build --push`, through a
// build session: the push is recorded in the history (kind "push", with tag_moved_from).
#include <cstdio>
#include <iostream>

#include "builder/cli/common.h"
#include "builder/cli/interrupt.h"
#include "registry/reference.h"
#include "session/session.h"
#include "spec/userinfo.h"

namespace kiln::cli {

void add_push_command(CLI::App& app, Common& c, std::vector<Command>& out) {
  struct Args {
    std::string src, dest, platform;
  };
  auto a = std::make_shared<Args>();
  auto* push = app.add_subcommand("push", "Push an image from an OCI layout to a registry");
  push->add_option("source", a->src, "oci:DIR[:TAG]")->required();
  push->add_option("ref", a->dest, "[host[:port]/]repo[:tag]")->required();
  push->add_option("--platform", a->platform,
                   "Push only this platform's image of an image index (default: the whole index)");
  add_common_options(push, c);
  add_registry_options(push, c);
  out.push_back({push, [a](Context& ctx) -> int {
                   if (a->src.rfind("oci:", 0) != 0)
                     throw std::invalid_argument("'" + spec::redact_userinfo(a->src).value_or(a->src) +
                                                 "': the source must be oci:DIR[:TAG]");
                   registry::Reference target = registry::parse_reference(a->dest);
                   if (!target.digest.empty())
                     throw std::invalid_argument("'" + a->dest + "': push to a tag, not a digest");
                   // SIGINT/SIGTERM: the upload stops at its next piece, the manifest is not sent,
                   // and the failure is printed (exit 130/143), as for kiln build.
                   InterruptGuard guard([&ctx](int sig) { print_interrupted(ctx.common, sig, "push"); });
                   Resources res;
                   open_resources(ctx, res);
                   res.env.interrupt = guard.flag();
                   session::Session sess(res.env);
                   session::Outcome r = sess.push(a->src, a->platform, target, session::Options{});
                   auto claimed = guard.claim_output(r.ok() ? static_cast<int>(kOk) : r.failure.code);
                   if (!r.ok()) return report_failure(r.failure, ctx.common);
                   const builder::PushResult& pr = *r.pushed;
                   if (ctx.common.json_out) {
                     json out{{"status", "success"},    {"exit_code", static_cast<int>(kOk)},
                                       {"reference", pr.reference}, {"digest", pr.digest},
                                       {"uploaded", pr.uploaded}, {"skipped", pr.skipped},     {"mounted", pr.mounted},
                                       {"bytes_uploaded", pr.bytes_uploaded},
                                       {"previous_digest", pr.previous_digest.empty() ? json(nullptr)
                                                                                      : json(pr.previous_digest)},
                                       {"build_id", r.build_id},
                                       {"log_path", r.log_path.empty() ? json(nullptr) : json(r.log_path)}};
                     add_platforms_json(r, out);
                     std::cout << out.dump(2) << std::endl;
                   } else {
                     std::cout << pr.reference << std::endl;
                   }
                   return kOk;
                 }});
}

}  // namespace kiln::cli
