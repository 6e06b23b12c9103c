// The modelcar spec: what `kiln modelcar` builds, as an SDK would write it.
#include "modelcar/spec.h"

#include <cctype>

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
  fs::path dir = (req.base_dir.empty() ? fs::current_path() : req.base_dir) / req.model_dir;
  nlohmann::json j = {{"name", req.name.empty() ? default_name(dir) : req.name},
                      {"modelcar", true},
                      {"source_root", req.model_dir.generic_string()},
                      {"base_image", req.base.empty() ? "scratch" : req.base}};
  if (!req.registry.empty()) j["registry"] = req.registry;
  if (!req.platform.empty()) j["platform"] = req.platform;
  return j;
}

spec::ImageSpec make_spec(const SpecRequest& req) {
  fs::path base = req.base_dir.empty() ? fs::current_path() : req.base_dir;
  return spec::parse_spec(spec_json(req).dump(), base, "kiln modelcar");
}

}  // namespace kiln::modelcar
