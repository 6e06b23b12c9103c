// kiln push oci:DIR[:TAG] REF: copy an image from an OCI layout to a registry — blobs the
// registry has are skipped, the manifest goes last. The same sink as `kiln build --push`.
#include <iostream>

#include "builder/cli/common.h"
#include "builder/oci_layout.h"
#include "builder/registry_io.h"
#include "registry/reference.h"

namespace fs = std::filesystem;

namespace kiln::cli {

void add_push_command(CLI::App& app, Common& c, std::vector<Command>& out) {
  struct Args {
    std::string src, dest, platform = "linux/amd64";
  };
  auto a = std::make_shared<Args>();
  auto* push = app.add_subcommand("push", "Push an image from an OCI layout to a registry");
  push->add_option("source", a->src, "oci:DIR[:TAG]")->required();
  push->add_option("ref", a->dest, "[host[:port]/]repo[:tag]")->required();
  push->add_option("--platform", a->platform, "Platform to pick from an image index");
  add_common_options(push, c);
  add_registry_options(push, c);
  out.push_back({push, [a](Context& ctx) {
                   if (a->src.rfind("oci:", 0) != 0)
                     throw std::invalid_argument("'" + a->src + "': the source must be oci:DIR[:TAG]");
                   registry::Reference target = registry::parse_reference(a->dest);
                   if (!target.digest.empty())
                     throw std::invalid_argument("'" + a->dest + "': push to a tag, not a digest");
                   fs::path dir;
                   std::string tag;
                   builder::split_oci_ref(a->src, &dir, &tag);
                   builder::LayoutImage li = builder::read_oci_layout(dir, tag, a->platform);
                   layers::Store store = ctx.open_store();
                   builder::RegistrySession session(ctx.registry_settings(), &ctx.view);
                   builder::PushResult pr = builder::push_remote(session, li.image, target, store);
                   if (pr.digest != li.manifest_digest)
                     ctx.view.warn("the registry holds the manifest as " + pr.digest + ", the layout as " +
                                   li.manifest_digest);
                   if (!pr.previous_digest.empty())
                     ctx.view.warn("tag " + target.name() + ":" + target.tag + " moved from " + pr.previous_digest);
                   if (ctx.common.json_out) {
                     std::cout << json{{"status", "success"},    {"reference", pr.reference}, {"digest", pr.digest},
                                       {"uploaded", pr.uploaded}, {"skipped", pr.skipped},     {"mounted", pr.mounted},
                                       {"bytes_uploaded", pr.bytes_uploaded},
                                       {"previous_digest", pr.previous_digest.empty() ? json(nullptr)
                                                                                      : json(pr.previous_digest)}}
                                       .dump(2)
                               << std::endl;
                   } else {
                     std::cout << pr.reference << std::endl;
                   }
                   return kOk;
                 }});
}

}  // namespace kiln::cli
