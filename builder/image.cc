// The image value and its mutations.
#include "builder/image.h"

#include <ctime>
#include <stdexcept>

#include "layers/digest.h"

namespace kiln::builder {

nlohmann::json Descriptor::to_json() const {
  nlohmann::json j = {{"mediaType", media_type}, {"digest", digest}, {"size", size}};
  if (!annotations.empty()) j["annotations"] = annotations;
  if (!platform.is_null()) j["platform"] = platform;
  return j;
}

Descriptor Descriptor::from_json(const nlohmann::json& j) {
  try {
    Descriptor d;
    d.media_type = j.value("mediaType", "");
    d.digest = j.at("digest").get<std::string>();
    d.size = j.at("size").get<std::uint64_t>();
    if (j.contains("annotations")) d.annotations = j.at("annotations").get<std::map<std::string, std::string>>();
    if (j.contains("platform")) d.platform = j.at("platform");
    if (!layers::is_sha256_digest(d.digest)) throw std::runtime_error("unsupported digest '" + d.digest + "'");
    return d;
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(std::string("malformed descriptor: ") + e.what());
  }
}

std::string Image::config_bytes() const { return config.dump(); }

std::string Image::manifest_bytes() const {
  std::string cfg = config_bytes();
  nlohmann::json m = {{"schemaVersion", 2},
                      {"mediaType", kManifestMediaType},
                      {"config", {{"mediaType", kConfigMediaType}, {"digest", layers::sha256_digest(cfg)}, {"size", cfg.size()}}},
                      {"layers", nlohmann::json::array()}};
  for (const Layer& l : layers) m["layers"].push_back(l.desc.to_json());
  if (!annotations.empty()) m["annotations"] = annotations;
  return m.dump();
}

std::string Image::manifest_digest() const { return layers::sha256_digest(manifest_bytes()); }

std::vector<Descriptor> ImageIndex::manifests() const {
  std::vector<Descriptor> out;
  for (const auto& [platform, img] : images) {
    std::string man = img.manifest_bytes();
    Platform p = parse_platform(platform);
    Descriptor d{kManifestMediaType, layers::sha256_digest(man), man.size(), {}, nullptr};
    d.platform = {{"architecture", p.architecture}, {"os", p.os}};
    if (!p.variant.empty()) d.platform["variant"] = p.variant;
    out.push_back(std::move(d));
  }
  return out;
}

std::string ImageIndex::index_bytes() const {
  nlohmann::json idx = {{"schemaVersion", 2}, {"mediaType", kIndexMediaType}, {"manifests", nlohmann::json::array()}};
  for (const Descriptor& d : manifests()) idx["manifests"].push_back(d.to_json());
  return idx.dump();
}

std::string ImageIndex::digest() const { return layers::sha256_digest(index_bytes()); }

Platform parse_platform(const std::string& p) {
  Platform out;
  std::size_t a = p.find('/');
  if (a == std::string::npos) throw std::runtime_error("platform '" + p + "' must be os/arch[/variant]");
  out.os = p.substr(0, a);
  std::size_t b = p.find('/', a + 1);
  out.architecture = p.substr(a + 1, b == std::string::npos ? std::string::npos : b - a - 1);
  if (b != std::string::npos) out.variant = p.substr(b + 1);
  return out;
}

std::string platform_string(const nlohmann::json& p) {
  if (!p.is_object()) return "";
  auto str = [&](const char* k) { return p.contains(k) && p[k].is_string() ? p[k].get<std::string>() : std::string(); };
  if (str("os").empty()) return "";
  std::string out = str("os") + "/" + (str("architecture").empty() ? "?" : str("architecture"));
  if (!str("variant").empty()) out += "/" + str("variant");
  return out;
}

std::string platform_list(const nlohmann::json& manifests) {
  std::string out;
  if (manifests.is_array())
    for (const nlohmann::json& m : manifests) {
      const std::string one = m.is_object() && m.contains("platform") ? platform_string(m["platform"]) : "";
      if (!one.empty()) out += (out.empty() ? "" : ", ") + one;
    }
  return out.empty() ? "no platform named" : out;
}

IndexSummary IndexSummary::from_json(const std::string& digest, const nlohmann::json& manifests) {
  IndexSummary out;
  out.digest = digest;
  if (manifests.is_array())
    for (const nlohmann::json& m : manifests) {
      if (!m.is_object() || !m.contains("digest") || !m["digest"].is_string()) continue;
      out.manifests.emplace_back(m.contains("platform") ? platform_string(m["platform"]) : "",
                                 m["digest"].get<std::string>());
    }
  return out;
}

Image scratch_image(const std::string& platform) {
  Platform p = parse_platform(platform);
  Image img;
  img.config = {{"architecture", p.architecture},
                {"os", p.os},
                {"config", nlohmann::json::object()},
                {"rootfs", {{"type", "layers"}, {"diff_ids", nlohmann::json::array()}}},
                {"history", nlohmann::json::array()}};
  if (!p.variant.empty()) img.config["variant"] = p.variant;
  return img;
}

void append_layer(Image& img, Layer layer, const std::string& created_by, const std::string& created) {
  auto& rootfs = img.config["rootfs"];
  if (!rootfs.is_object()) rootfs = {{"type", "layers"}, {"diff_ids", nlohmann::json::array()}};
  rootfs["diff_ids"].push_back(layer.diff_id);
  nlohmann::json h = {{"created", created}, {"created_by", created_by}, {"comment", "kiln"}};
  if (!img.config.contains("history") || !img.config["history"].is_array()) img.config["history"] = nlohmann::json::array();
  img.config["history"].push_back(h);
  img.layers.push_back(std::move(layer));
}

std::string rfc3339(std::int64_t seconds) {
  std::time_t t = static_cast<std::time_t>(seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace kiln::builder
