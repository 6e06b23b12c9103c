// kiln inspect: an image's config, labels, layers and baked source, as JSON.
#include <iostream>

#include "builder/build.h"
#include "builder/cli/common.h"
#include "builder/oci_layout.h"
#include "builder/registry_io.h"
#include "registry/reference.h"

namespace fs = std::filesystem;

namespace kiln::cli {
namespace {

json inspect_json(const builder::Image& img, const std::string& digest, const std::string& ref,
                  const std::optional<builder::IndexSummary>& index) {
  json ls = json::array();
  const json& hist = img.config.value("history", json::array());
  std::vector<json> layer_hist;
  for (const auto& h : hist)
    if (!h.value("empty_layer", false)) layer_hist.push_back(h);
  for (std::size_t i = 0; i < img.layers.size(); ++i) {
    const auto& l = img.layers[i];
    json j = {{"digest", l.desc.digest}, {"diff_id", l.diff_id}, {"media_type", l.desc.media_type}, {"size", l.desc.size}};
    if (i < layer_hist.size()) j["created_by"] = layer_hist[i].value("created_by", "");
    ls.push_back(j);
  }
  json labels = img.config.contains("config") ? img.config["config"].value("Labels", json::object()) : json::object();
  if (labels.is_null()) labels = json::object();
  json source = nullptr;
  if (labels.contains(builder::kLabelSourceDigest))
    source = {{"digest", labels[builder::kLabelSourceDigest]},
              {"dest", labels.value(builder::kLabelSourceDest, "")},
              {"copy_mode", labels.value(builder::kLabelSourceMode, "")},
              {"files", std::stoul(labels.value(builder::kLabelSourceFiles, "0"))}};
  json out = {{"reference", ref}, {"digest", digest}, {"config", img.config}, {"labels", labels},
              {"layers", ls},     {"source", source}, {"annotations", img.annotations}};
  // Resolved through an image index (--platform picked this image): the index and its images.
  if (index) {
    json ms = json::array();
    for (const auto& [platform, d] : index->manifests)
      ms.push_back({{"platform", platform.empty() ? json(nullptr) : json(platform)}, {"digest", d}});
    out["index"] = {{"digest", index->digest}, {"manifests", ms}};
  }
  return out;
}

}  // namespace

void add_inspect_command(CLI::App& app, Common& c, std::vector<Command>& out) {
  struct Args {
    std::string ref, platform = "linux/amd64";
  };
  auto a = std::make_shared<Args>();
  auto* inspect = app.add_subcommand("inspect", "Print an image's config, labels and layers as JSON");
  inspect->add_option("ref", a->ref, "oci:DIR[:TAG] or a registry reference")->required();
  inspect->add_option("--platform", a->platform,
                      "Platform to pick from an image index (default linux/amd64); the output's index field lists them all");
  add_common_options(inspect, c);
  add_registry_options(inspect, c);
  out.push_back({inspect, [a](Context& ctx) {
                   if (a->ref.rfind("oci:", 0) != 0) {
                     std::error_code ec;
                     if (a->ref[0] == '/' || a->ref.rfind("./", 0) == 0 || a->ref.rfind("../", 0) == 0 ||
                         fs::is_directory(a->ref, ec))
                       throw std::invalid_argument("'" + a->ref + "' looks like a local path, not a registry reference: for an OCI layout, use oci:" +
                                                   a->ref + "[:TAG]");
                     registry::Reference ref = registry::parse_reference(a->ref);
                     layers::Store store = ctx.open_store();
                     builder::RegistrySession session(ctx.registry_settings(), &ctx.view);
                     builder::RemoteImage ri = builder::pull_remote(session, ref, a->platform, store);
                     registry::Reference done = ref;
                     done.digest = ri.manifest_digest;
                     std::cout << inspect_json(ri.image, ri.manifest_digest, done.str(), ri.index).dump(2) << std::endl;
                     return kOk;
                   }
                   fs::path dir;
                   std::string t;
                   builder::split_oci_ref(a->ref, &dir, &t);
                   builder::LayoutImage li = builder::read_oci_layout(dir, t, a->platform);
                   std::cout << inspect_json(li.image, li.manifest_digest, a->ref, li.index).dump(2) << std::endl;
                   return kOk;
                 }});
}

}  // namespace kiln::cli
