// The ImageSpec model: flytekit's ImageSpec field names as-is, plus kiln's own fields.
//
// parse_spec() turns JSON text into a validated ImageSpec; every error is a SpecError whose message
// names the field (and, for syntax errors, the line and column). Relative paths resolve against
// `base_dir` (the spec file's directory, or the working directory for stdin).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace kiln::spec {

/// A spec the user must fix: bad JSON, an unknown field, a wrong type, an unsupported feature.
class SpecError : public std::runtime_error {
 public:
  SpecError(std::string field, const std::string& message)
      : std::runtime_error(message), field_(std::move(field)) {}
  /// The offending field ("" when the error is not about one field, e.g. a JSON syntax error).
  const std::string& field() const { return field_; }

 private:
  std::string field_;
};

/// flytekit's CopyFileDetection.
enum class CopyMode { LoadedModules, All, NoCopy };
const char* to_string(CopyMode mode);  // "loaded_modules", "all", "no_copy"

/// Layer compression.
enum class Compression { Gzip, Zstd, None };
const char* to_string(Compression c);  // "gzip", "zstd", "none"

struct ImageSpec;

/// The environment variable flytekit's ImageSpec.is_container() reads (and the spec field name).
inline constexpr const char* kFlyteImageIdEnv = "_F_IMG_ID";

/// A modelcar (KServe, docs/modelcar.md): `"modelcar": true` puts source_root at /models (copy
/// mode all), directories 0775 and files 0644 (readable by any uid), and no Entrypoint or Cmd.
inline constexpr const char* kModelcarDest = "/models";
inline constexpr std::uint32_t kModelcarDirMode = 0775;
inline constexpr std::uint32_t kModelcarFileMode = 0644;

/// Where the image starts: "scratch", a local OCI layout, a registry reference, or a nested spec.
struct BaseImage {
  enum class Kind { Scratch, OciLayout, Registry, Spec };
  Kind kind = Kind::Scratch;
  std::string ref;                           // as written ("scratch", "oci:./dir:tag", "python:3.12")
  std::filesystem::path layout_dir;          // OciLayout: absolute directory
  std::string layout_tag;                    // OciLayout: tag ("" = the only image in the layout)
  std::shared_ptr<const ImageSpec> spec;     // Spec: the nested spec
};

struct ImageSpec {
  // ---- flytekit fields ----
  std::string name = "flytekit";                  // lowercased
  std::optional<std::string> python_version;
  std::optional<std::string> builder;             // accepted; kiln is the builder
  std::optional<std::filesystem::path> source_root;  // absolute, lexically normal
  std::map<std::string, std::string> env;
  std::optional<std::string> registry;            // lowercased
  std::vector<std::string> packages;
  std::vector<std::string> conda_packages;
  std::vector<std::string> conda_channels;
  std::optional<std::string> requirements;        // path as written
  std::vector<std::string> apt_packages;
  std::optional<std::string> cuda;
  std::optional<std::string> cudnn;
  BaseImage base_image;                            // default: scratch
  /// os/arch[/variant], or several comma-separated ("linux/amd64,linux/arm64", flytekit's and
  /// buildx's form): one image per platform, under one image index. Normalized: lowercase, no
  /// spaces, no repeats.
  std::string platform = "linux/amd64";
  std::optional<std::string> pip_index;
  std::vector<std::string> pip_extra_index_url;
  std::vector<std::pair<std::string, std::string>> pip_secret_mounts;
  std::vector<std::string> pip_extra_args;
  std::optional<std::filesystem::path> registry_config;  // absolute
  /// Absent: inherit the base's Entrypoint (and Cmd). Present: replaces them; `[]` clears them
  /// (flytekit's meaning: "set to [] to remove the entrypoint").
  std::optional<std::vector<std::string>> entrypoint;
  std::vector<std::string> commands;
  std::optional<std::string> tag_format;          // e.g. "{spec_hash}-dev"
  CopyMode source_copy_mode = CopyMode::LoadedModules;  // meaningful only with source_root
  std::vector<std::string> copy;                  // relative paths, checked: no "..", not absolute
  std::optional<std::string> python_exec;
  nlohmann::json builder_options;                 // an object, null when absent; kept, ignored by kiln
  /// flytekit's builder images (uv, micromamba ...), a field of its own beside builder_options;
  /// any JSON (flytekit does not check it), null when absent; kept, ignored by kiln.
  nlohmann::json builder_config;
  std::vector<std::string> runtime_packages;

  // ---- kiln's own fields ----
  std::optional<std::string> workdir;             // default: source_dest when source_root is set
  std::optional<std::string> user;
  std::map<std::string, std::string> labels;
  std::map<std::string, std::string> annotations;
  std::string source_dest = "/root";              // where source_root and copy land in the image
  std::vector<std::string> loaded_modules;        // relative to source_root (loaded_modules mode)
  Compression compression = Compression::Gzip;
  std::optional<int> compression_level;           // gzip 1-9 (default 1), zstd 1-19 (default 3)
  std::uint64_t large_file_threshold = 64ull << 20;  // bytes; files this big get their own layer
  std::optional<std::int64_t> source_date_epoch;  // overrides $SOURCE_DATE_EPOCH
  bool modelcar = false;                          // a KServe modelcar image (see kModelcarDest)
  /// `"_F_IMG_ID"`: flytekit's ImageSpec.id, which its ImageSpec.is_container() compares with the
  /// container's $_F_IMG_ID. kiln cannot compute it (it hashes Python's repr of the spec), so the
  /// caller passes it; the builder sets it as the config's last Env entry. It is outside the tag
  /// and outside every cached layer key (docs/tag.md), as flytekit keeps it out of its layer cache.
  std::optional<std::string> f_img_id;

  // ---- context ----
  /// Absolute directory relative paths resolve against: `context_dir` when the spec gives it,
  /// else the spec file's directory (the working directory for stdin), else the parent spec's.
  std::filesystem::path base_dir;
  std::string origin;                             // spec file path as given, or "<stdin>"

  /// The normalized spec as JSON: defaults applied, empty fields dropped, keys sorted. No host
  /// path enters it (source_root, requirements, pip_secret_mounts sources, oci: base directories,
  /// context_dir, the spec's own location): what they point to enters the tag as file entries and
  /// input digests. Fields that do not shape the image's content (registry, registry_config,
  /// builder, builder_options, builder_config, tag_format, name, _F_IMG_ID) are left out too.
  /// This is the spec part of the tag hash (see docs/tag.md).
  nlohmann::json canonical() const;

  /// Does the image get files at source_dest (source_root not in no_copy mode, or copy entries)?
  /// Then flytekit's WorkingDir and PYTHONPATH apply.
  bool bakes_files() const {
    return (source_root && source_copy_mode != CopyMode::NoCopy) || !copy.empty();
  }

  /// The platforms `platform` lists, in its order (one for most specs).
  std::vector<std::string> platforms() const;
  bool multi_platform() const { return platform.find(',') != std::string::npos; }
};

/// The most platforms one spec may list.
inline constexpr std::size_t kMaxPlatforms = 16;

/// Normalizes a `platform` value: one os/arch[/variant] or several, comma-separated (spaces
/// around items allowed, letters lowercased). Returns "" and sets `error` when it is not one.
std::string normalize_platform(std::string_view text, std::string* error);

/// `s` with `platform` set (normalized already) on it and on every nested base spec: a base built
/// for another platform is not one the image can use.
ImageSpec with_platform(const ImageSpec& s, const std::string& platform);

/// The largest uid or gid `user` may give: 2^32-2 ((uid_t)-1 means "no id").
inline constexpr std::uint64_t kMaxUserId = 4294967294;

/// The owner of the files kiln copies for a spec's `user`: (uid, gid) when it is numeric, "UID"
/// (the group is the same id) or "UID:GID" — decimal digits, however many ("00001000" is 1000),
/// up to kMaxUserId; nullopt when a part is a name (kiln does not read the base's /etc/passwd: the
/// files stay root's). Throws SpecError (field "user") for what the spec's validation refuses,
/// "4294967295" ((uid_t)-1) and "1000:" among them.
std::optional<std::pair<std::uint32_t, std::uint32_t>> numeric_owner(const std::string& user);

/// `url` without credentials: "https://user:token@host/simple" → "https://host/simple", for every
/// URL in the text ("--find-links=https://a/x,https://u:t@b/y" → "--find-links=https://a/x,https://b/y").
/// Index URLs may carry a token; it shapes nothing in the image, so the tag, the history and the
/// step cache keys see the URL without it (and nothing prints it). Unchanged: nothing to hide.
std::string without_userinfo(const std::string& url);

/// Limits that keep a hostile spec from exhausting the stack.
inline constexpr int kMaxBaseImageDepth = 32;   // nested base_image specs
inline constexpr int kMaxJsonDepth = 128;       // nested JSON arrays and objects anywhere
/// source_date_epoch's range: 1970-01-01T00:00:00Z … 9999-12-31T23:59:59Z, what every tool can read.
inline constexpr std::int64_t kMaxSourceDateEpoch = 253402300799;

/// Is `s` a Debian package name as apt takes it: name[:arch][=version|/release]?
bool valid_apt_package(std::string_view s);

/// Parse and validate JSON text. Throws SpecError.
ImageSpec parse_spec(std::string_view text, const std::filesystem::path& base_dir,
                     const std::string& origin);

/// Read a spec file ("-" reads stdin; relative paths then resolve against the working directory).
ImageSpec load_spec(const std::string& path);

/// All field names kiln accepts (flytekit's and kiln's own), sorted.
const std::vector<std::string>& known_fields();

}  // namespace kiln::spec
