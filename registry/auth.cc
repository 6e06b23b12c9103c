// Docker config.json credentials and credential helpers.
#include "registry/auth.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace fs = std::filesystem;
using nlohmann::json;

namespace kiln::registry {

namespace {

std::string b64decode(const std::string& in) {
  std::string out(in.size() * 3 / 4 + 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(in.data()),
                          static_cast<int>(in.size()));
  if (n < 0) throw std::runtime_error("malformed base64 'auth' entry in docker config");
  std::size_t pad = 0;
  for (auto it = in.rbegin(); it != in.rend() && *it == '='; ++it) ++pad;
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

/// The keys docker may have stored a registry under.
std::vector<std::string> keys_for(const std::string& registry) {
  if (registry == "docker.io")
    return {"https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io",
            "https://registry-1.docker.io"};
  return {registry, "https://" + registry, "http://" + registry, "https://" + registry + "/v1/",
          "https://" + registry + "/v2/"};
}

/// Runs `docker-credential-<helper> get` with the server URL on stdin; returns its stdout.
std::string run_helper(const std::string& helper, const std::string& server) {
  std::string prog = "docker-credential-" + helper;
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    int devnull = ::open("/dev/null", O_WRONLY);
    if (devnull >= 0) ::dup2(devnull, 2);
    ::execlp(prog.c_str(), prog.c_str(), "get", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  std::string input = server + "\n";
  {
    // A helper that exits without reading its stdin (or that is not installed) must not kill
    // kiln with SIGPIPE: ignore it around the write (EPIPE is fine, the exit status tells).
    struct sigaction ign {}, old {};
    ign.sa_handler = SIG_IGN;
    ::sigaction(SIGPIPE, &ign, &old);
    (void)!::write(in[1], input.data(), input.size());
    ::sigaction(SIGPIPE, &old, nullptr);
  }
  ::close(in[1]);
  std::string result;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(out[0], buf, sizeof buf)) > 0) result.append(buf, static_cast<std::size_t>(n));
  ::close(out[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
    throw std::runtime_error("credential helper '" + prog + "' (for " + server + ") is not installed");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    if (result.find("credentials not found") != std::string::npos) return "";
    throw std::runtime_error("credential helper '" + prog + "' failed for " + server);
  }
  return result;
}

std::optional<Credentials> from_helper(const std::string& helper, const std::string& registry) {
  for (const std::string& server : keys_for(registry)) {
    std::string out = run_helper(helper, server);
    if (out.empty()) continue;
    json j;
    try {
      j = json::parse(out);
    } catch (const json::exception&) {
      throw std::runtime_error("credential helper 'docker-credential-" + helper + "' printed malformed JSON");
    }
    Credentials c;
    c.username = j.value("Username", "");
    c.password = j.value("Secret", "");
    if (c.username == "<token>") {
      c.identity_token = true;
      c.username.clear();
    }
    if (!c.password.empty()) return c;
  }
  return std::nullopt;
}

}  // namespace

fs::path docker_config_path(const fs::path& explicit_path) {
  if (!explicit_path.empty()) return fs::is_directory(explicit_path) ? explicit_path / "config.json" : explicit_path;
  if (const char* d = std::getenv("DOCKER_CONFIG"); d && *d) return fs::path(d) / "config.json";
  if (const char* h = std::getenv("HOME"); h && *h) return fs::path(h) / ".docker" / "config.json";
  return {};
}

std::optional<Credentials> find_credentials(const std::string& registry, const fs::path& config_file) {
  if (config_file.empty()) return std::nullopt;
  std::ifstream f(config_file);
  if (!f) return std::nullopt;
  std::stringstream ss;
  ss << f.rdbuf();
  json cfg;
  try {
    cfg = json::parse(ss.str());
  } catch (const json::exception&) {
    throw std::runtime_error("docker config " + config_file.string() + " is not valid JSON");
  }
  if (cfg.contains("credHelpers") && cfg["credHelpers"].is_object()) {
    for (const std::string& k : keys_for(registry))
      if (cfg["credHelpers"].contains(k)) return from_helper(cfg["credHelpers"][k].get<std::string>(), registry);
  }
  if (cfg.contains("auths") && cfg["auths"].is_object()) {
    for (const std::string& k : keys_for(registry)) {
      if (!cfg["auths"].contains(k)) continue;
      const json& a = cfg["auths"][k];
      Credentials c;
      if (a.contains("identitytoken") && a["identitytoken"].is_string() && !a["identitytoken"].get<std::string>().empty()) {
        c.password = a["identitytoken"].get<std::string>();
        c.identity_token = true;
        return c;
      }
      if (a.contains("auth") && a["auth"].is_string() && !a["auth"].get<std::string>().empty()) {
        std::string up = b64decode(a["auth"].get<std::string>());
        std::size_t colon = up.find(':');
        if (colon == std::string::npos) throw std::runtime_error("docker config: the 'auth' entry for " + registry + " is not user:password");
        c.username = up.substr(0, colon);
        c.password = up.substr(colon + 1);
        return c;
      }
      if (a.contains("username") && a.contains("password")) {
        c.username = a.value("username", "");
        c.password = a.value("password", "");
        return c;
      }
    }
  }
  if (cfg.contains("credsStore") && cfg["credsStore"].is_string() && !cfg["credsStore"].get<std::string>().empty())
    return from_helper(cfg["credsStore"].get<std::string>(), registry);
  return std::nullopt;
}

}  // namespace kiln::registry
