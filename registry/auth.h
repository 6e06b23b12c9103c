// Registry credentials from docker's config.json: `auths` (base64 "auth", or username/password,
// or an identity token), `credsStore` and `credHelpers` (docker-credential-<name> get). Secrets
// never reach logs, errors or JSON output.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace kiln::registry {

struct Credentials {
  std::string username;
  std::string password;       // or the identity token
  bool identity_token = false;
};

/// Where docker's config lives: `explicit_path` when given (the spec's registry_config, a file or
/// a directory), else $DOCKER_CONFIG/config.json, else ~/.docker/config.json.
std::filesystem::path docker_config_path(const std::filesystem::path& explicit_path = {});

/// Credentials for `registry` ("docker.io", "localhost:5000"), or nullopt for anonymous access.
/// Throws std::runtime_error when the config is malformed or a helper fails (the message names
/// the helper and the registry, never a secret).
std::optional<Credentials> find_credentials(const std::string& registry, const std::filesystem::path& config_file);

}  // namespace kiln::registry
