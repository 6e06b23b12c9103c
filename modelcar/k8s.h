// Pod spec fragments that run a modelcar image the way KServe does, for a pod (or a pod template)
// that has no KServe webhook to inject them: a strategic-merge patch, merged by container and
// volume name. Three modes (docs/modelcar.md):
//
//   init         the `modelcar` container (sh -c "ln -sf /proc/$$/root/models /mnt/models &&
//                sleep infinity"), a `modelcar-init` init container that fails unless /models is
//                non-empty, an emptyDir at /mnt shared with the server, shareProcessNamespace
//   sidecar      the same, with `modelcar` as a native sidecar (an init container with
//                restartPolicy: Always and a startupProbe; Kubernetes ≥ 1.29)
//   imagevolume  an image volume mounted read-only at /mnt/models with subPath models
//                (Kubernetes ≥ 1.33 for subPath on image volumes)
//
// The image is always a digest reference. `$` in args is written `$$`: the kubelet expands
// $(VAR) in args and turns `$$` into `$`, so the shell sees `$$` (its PID) where the patch says
// `$$$$`, exactly as KServe writes it.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace kiln::modelcar {

enum class PatchMode { Init, Sidecar, ImageVolume };
/// "init", "sidecar", "imagevolume". Throws std::invalid_argument.
PatchMode parse_patch_mode(const std::string& s);
const char* to_string(PatchMode m);

// KServe's names and defaults (pkg/constants), so a patched pod looks like an injected one.
inline constexpr const char* kModelcarContainer = "modelcar";
inline constexpr const char* kModelcarInitContainer = "modelcar-init";
inline constexpr const char* kServerContainer = "kserve-container";
inline constexpr const char* kModelVolume = "kserve-provision-location";
inline constexpr const char* kModelMountPath = "/mnt/models";
inline constexpr const char* kModelInitModeEnv = "MODEL_INIT_MODE";
inline constexpr const char* kModelcarCpu = "10m";
inline constexpr const char* kModelcarMemory = "15Mi";

struct PatchOptions {
  std::string image;  // repo@sha256:<64 hex> (required)
  PatchMode mode = PatchMode::Init;
  std::string container = kServerContainer;                  // the model server container to wire up
  std::string cpu = kModelcarCpu, memory = kModelcarMemory;  // modelcar containers' requests = limits
  std::optional<long long> run_as_user;                      // runAsUser for modelcar and server (must match)
  bool template_wrap = false;                                // {"spec":{"template":{"spec":…}}} for a Deployment
};

/// The patch: {"spec": {pod spec fields}} (or wrapped for a pod template), keys in Kubernetes'
/// usual order. Throws std::invalid_argument when the image is not a digest reference.
nlohmann::ordered_json pod_patch(const PatchOptions& opts);

/// The shell commands, as the container's shell runs them (after the kubelet's `$$` → `$`).
std::string modelcar_command(const std::string& mount_path = kModelMountPath);  // ln -sf … && sleep infinity
std::string modelcar_init_command();                                            // the /models check

/// Block-style YAML for a JSON document: deterministic, strings quoted whenever YAML could read
/// them as something else. `comment` lines go first, each prefixed with "# ".
std::string to_yaml(const nlohmann::ordered_json& doc, const std::string& comment = "");

/// Does `ref` end in "@sha256:<64 lowercase hex>"?
bool is_digest_reference(const std::string& ref);

}  // namespace kiln::modelcar
