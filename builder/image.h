// The image value, as in go-containerregistry: a config, a list of layers and manifest
// annotations. Sources (scratch, an OCI layout, a nested spec) produce one; mutations (append a
// layer, set config fields) return it changed without copying blob bytes; sinks (OCI layout,
// docker-archive) write it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace kiln::builder {

inline constexpr const char* kManifestMediaType = "application/vnd.oci.image.manifest.v1+json";
inline constexpr const char* kIndexMediaType = "application/vnd.oci.image.index.v1+json";
inline constexpr const char* kConfigMediaType = "application/vnd.oci.image.config.v1+json";
inline constexpr const char* kDockerManifestMediaType = "application/vnd.docker.distribution.manifest.v2+json";
inline constexpr const char* kDockerManifestListMediaType = "application/vnd.docker.distribution.manifest.list.v2+json";
inline constexpr const char* kDockerConfigMediaType = "application/vnd.docker.container.image.v1+json";

struct Descriptor {
  std::string media_type;
  std::string digest;
  std::uint64_t size = 0;
  std::map<std::string, std::string> annotations;
  nlohmann::json platform;  // null when absent

  nlohmann::json to_json() const;
  static Descriptor from_json(const nlohmann::json& j);  // throws std::runtime_error
};

/// Where a layer of a registry base can be fetched (or mounted) from.
struct RemoteBlob {
  std::string registry, repository;
};

/// One layer: its blob descriptor, diff_id, and a file holding the blob bytes.
struct Layer {
  Descriptor desc;
  std::string diff_id;
  std::filesystem::path blob;   // in the store, or in a source layout
  std::uint64_t tar_size = 0;   // uncompressed size, 0 when unknown (a base layer)
  std::optional<RemoteBlob> remote;  // a registry base layer: `blob` exists once fetched
};

struct Image {
  nlohmann::json config;        // the full image config, rootfs and history included
  std::vector<Layer> layers;
  std::map<std::string, std::string> annotations;  // manifest annotations

  /// Serialized config (deterministic: sorted keys, no whitespace).
  std::string config_bytes() const;
  /// Serialized manifest for `config_bytes()`.
  std::string manifest_bytes() const;
  std::string manifest_digest() const;
};

/// A multi-platform image: one image per platform (os/arch[/variant]), in the spec's order, under
/// one OCI image index.
struct ImageIndex {
  std::vector<std::pair<std::string, Image>> images;

  /// Each image's manifest descriptor, with its platform.
  std::vector<Descriptor> manifests() const;
  /// The serialized index (deterministic: sorted keys, no whitespace).
  std::string index_bytes() const;
  std::string digest() const;
};

/// The image index a reference resolved through, as `kiln inspect` shows it: its digest and, for
/// each entry, its platform ("os/arch[/variant]", "" when it names none) and manifest digest.
struct IndexSummary {
  std::string digest;
  std::vector<std::pair<std::string, std::string>> manifests;
  /// From an index's `manifests` array.
  static IndexSummary from_json(const std::string& digest, const nlohmann::json& manifests);
};

/// An empty image for a platform ("linux/amd64[/variant]").
Image scratch_image(const std::string& platform);

/// Appends a layer: rootfs.diff_ids and history grow by one.
void append_layer(Image& img, Layer layer, const std::string& created_by, const std::string& created);

/// RFC 3339 UTC time for seconds since the epoch ("1970-01-01T00:00:00Z").
std::string rfc3339(std::int64_t seconds);

/// Splits "os/arch[/variant]".
struct Platform {
  std::string os, architecture, variant;
};
Platform parse_platform(const std::string& platform);

/// "os/arch[/variant]" of a descriptor's `platform` object ("?" for a missing architecture), or ""
/// when it names no os.
std::string platform_string(const nlohmann::json& platform);

/// "linux/amd64, linux/arm64/v8": the platforms an index's `manifests` name (for errors), or
/// "no platform named".
std::string platform_list(const nlohmann::json& manifests);

}  // namespace kiln::builder
