// The modelcar spec: what `kiln modelcar` builds, as an SDK would write it.
#include "modelcar/spec.h"

#include <cctype>

#include "builder/oci_layout.h"

namespace fs = std::filesystem;

namespace kiln::modelcar {

std::string default_name(const fs::path& model_dir) {
  std::string base = fs::absolute(model_dir).lexically_normal().filename().string();
  if (base.empty()) base = fs::absolute(model_dir).lexically_normal().parent_path().filename().string();
  std::string out;
  for (unsigned char c : base) {
    char l = static_cast<char>(std::tolower(c));
    bool alnum = (l >= 'a' && l <= 'z') || (l >= '0' && l <= '9');
    if (alnum) {
      out += l;
    } else if (!out.empty() && out.back() != '-') {
      out += '-';
    }
  }
  while (!out.empty() && out.back() == '-') out.pop_back();
  return out.empty() ? "model" : out;
}

nlohmann::json spec_json(const SpecRequest& req) {
  fs::path dir = fs::absolute(req.model_dir).lexically_normal();
  std::string base = req.base.empty() ? "scratch" : req.base;
  if (base.rfind("oci:", 0) == 0) {
    // The layout is named relative to where the command runs, not to the model directory.
    fs::path layout;
    std::string tag;
    builder::split_oci_ref(base, &layout, &tag);
    base = "oci:" + fs::absolute(layout).lexically_normal().string() + (tag.empty() ? "" : ":" + tag);
  }
  nlohmann::json j = {{"name", req.name.empty() ? default_name(dir) : req.name},
                      {"modelcar", true},
                      {"source_root", dir.string()},
                      {"base_image", base}};
  if (!req.registry.empty()) j["registry"] = req.registry;
  if (!req.platform.empty()) j["platform"] = req.platform;
  return j;
}

spec::ImageSpec make_spec(const SpecRequest& req) {
  fs::path dir = fs::absolute(req.model_dir).lexically_normal();
  return spec::parse_spec(spec_json(req).dump(), dir, "kiln modelcar");
}

}  // namespace kiln::modelcar
