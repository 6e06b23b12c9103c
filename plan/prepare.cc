// The glue between the task plan and the builder (plan/prepare.h).
#include "plan/prepare.h"

namespace fs = std::filesystem;

namespace kiln::plan {

std::map<std::string, builder::Prepared> prepare_images(const PlanInput& in, const builder::BuildOptions& opts) {
  std::map<std::string, builder::Prepared> out;
  for (const auto& im : in.images) {
    if (!im.spec) continue;
    builder::BuildOptions o = opts;
    if (im.spec->source_root && im.spec->source_copy_mode == spec::CopyMode::LoadedModules)
      for (auto& rel : loaded_modules_under(in, *im.spec->source_root)) o.extra_modules.push_back(std::move(rel));
    out.emplace(im.id, builder::prepare(*im.spec, o));
  }
  return out;
}

PreparedImage prepared_image(const builder::Prepared& p) {
  PreparedImage im;
  im.image_ref = p.image_ref();
  im.files = &p.file_set();
  im.source_digest = p.source_digest;
  if (p.spec) {
    if (p.spec->source_root) im.source_root = *p.spec->source_root;
    im.source_dest = p.spec->source_dest;
    im.workdir = p.spec->workdir.value_or(p.spec->source_dest);
  }
  return im;
}

nlohmann::json decide(const PlanInput& in, const std::map<std::string, builder::Prepared>& prepared) {
  std::map<std::string, PreparedImage> images;
  for (const auto& [id, p] : prepared) images.emplace(id, prepared_image(p));
  return decide(in, images);
}

}  // namespace kiln::plan
