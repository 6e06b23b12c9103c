// Lint for KServe modelcar images: the checks that KServe's injected containers depend on, run on
// the image's final filesystem (every layer applied in order, whiteouts included).
//
// Rules (docs/modelcar.md): /models exists, is a directory and is not empty; sh, ln, sleep, ls and
// [ are on PATH (through symlinks, as busybox applets are); no ENTRYPOINT; every file under
// /models readable, and every directory searchable, by any uid; a `latest` tag is a warning.
//
// modelcar/ sits above layers/ and spec/ only: it lints an image given as values (a config and its
// layer blobs), never reaching into the builder.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>


namespace kiln::modelcar {

struct Finding {
  enum class Severity { Error, Warning };
  std::string code;  // models_missing, models_empty, tool_missing, entrypoint, unreadable, latest_tag
  Severity severity = Severity::Error;
  std::string message;
};
const char* to_string(Finding::Severity s);  // "error", "warning"

/// One path of an image's final filesystem.
struct Node {
  enum class Type { File, Dir, Symlink, Other };
  Type type = Type::File;
  std::uint32_t mode = 0;  // permission bits
  std::uint32_t uid = 0, gid = 0;
  std::uint64_t size = 0;
  std::string link_target;  // Symlink
};

/// Path inside the image (no leading '/', never "": the root is implicit) → what is there.
using Filesystem = std::map<std::string, Node>;

/// Applies layer blobs (tar, gzip or zstd) in order: `.wh.NAME` removes NAME from lower layers,
/// `DIR/.wh..wh..opq` empties DIR of lower layers' entries. Reads headers only. Throws
/// std::runtime_error naming the blob on a read error.
Filesystem flatten(const std::vector<std::filesystem::path>& blobs);

/// Follows `path` (absolute or not, relative to the root) through symlinks, as the kernel would
/// inside the image. Returns the resolved path ("" = the root), or nothing when it does not exist.
std::optional<std::string> resolve(const Filesystem& fs, const std::string& path);

/// Finds `tool` on `path_env` (':'-separated): the first PATH entry where it resolves to an
/// executable file. Returns that path ("/bin/sh"), or nothing.
std::optional<std::string> which(const Filesystem& fs, const std::string& tool, const std::string& path_env);

/// The PATH a container gets when the image sets none.
inline constexpr const char* kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// What KServe's injected modelcar and modelcar-init containers run.
const std::vector<std::string>& required_tools();  // sh, ln, sleep, ls, [

struct LintOptions {
  std::string tag;           // the tag the image goes by ("" = none): `latest` is warned about
  bool volume_only = false;  // used only as an image volume: no shell tools needed
};

/// Checks a flattened filesystem against the image config (the full config JSON, with "config").
std::vector<Finding> lint(const Filesystem& fs, const nlohmann::json& config, const LintOptions& opts);
/// Flattens an image's layer blobs (bottom first; each must be on disk: a registry image's layers
/// are fetched first) and checks the result against its config. The image is a value here, a
/// config and its blobs: the lint does not depend on how it was built or where it came from.
std::vector<Finding> lint(const std::vector<std::filesystem::path>& layer_blobs, const nlohmann::json& config,
                          const LintOptions& opts);

bool has_errors(const std::vector<Finding>& findings);
/// [{"code","severity","message"}, ...]
nlohmann::json to_json(const std::vector<Finding>& findings);

}  // namespace kiln::modelcar
