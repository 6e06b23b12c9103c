// A registry client speaking the OCI distribution protocol over libcurl: the /v2/ ping, Basic
// and Bearer auth (WWW-Authenticate challenges, scopes, token refresh), manifests and blobs,
// uploads (monolithic or chunked), cross-repository mounts, retries with backoff.
//
// Failures are RegistryError values with a kind, so callers (and the CLI's exit codes) can tell a
// wrong password from a missing push permission, a missing repository from a missing tag, and
// a transient failure (safe to retry) from a permanent one.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "registry/auth.h"
#include "registry/http.h"

namespace kiln::registry {

class RegistryError : public std::runtime_error {
 public:
  enum class Kind {
    Unauthorized,     // no or rejected credentials
    Denied,           // authenticated, but not allowed (e.g. a pull-only token pushing)
    NameUnknown,      // repository does not exist
    ManifestUnknown,  // tag or manifest does not exist
    BlobUnknown,      // blob does not exist
    Unreachable,      // cannot connect (closed port, TLS handshake)
    UnknownHost,      // the host name does not resolve: a typo more often than an outage, not retried
    Transient,        // 408, 429, 5xx, connection reset: retry later
    Protocol,         // an answer that breaks the protocol
    Integrity,        // content that does not match its digest (a broken registry, or a proxy altering it)
  };
  RegistryError(Kind kind, const std::string& message, long status = 0, std::string code = "")
      : std::runtime_error(message), kind_(kind), status_(status), code_(std::move(code)) {}
  Kind kind() const { return kind_; }
  long status() const { return status_; }
  const std::string& code() const { return code_; }  // the registry's error code, e.g. NAME_UNKNOWN
  bool transient() const { return kind_ == Kind::Transient || kind_ == Kind::Unreachable; }
  static const char* kind_name(Kind k);

 private:
  Kind kind_;
  long status_;
  std::string code_;
};

struct ClientOptions {
  std::filesystem::path docker_config;         // config.json to read credentials from ("" = none)
  bool allow_http = false;                     // plain HTTP allowed for this registry
  bool prefer_http = false;                    // try plain HTTP first (loopback registries)
  bool skip_tls_verify = false;
  std::string ca_file;                         // extra CA bundle
  int max_attempts = 5;                        // per request, for transient failures
  std::chrono::milliseconds backoff{200};      // first retry delay (doubles, with jitter)
  std::uint64_t chunk_size = 32ull << 20;      // chunked upload piece size
  std::uint64_t monolithic_max = 64ull << 20;  // blobs up to this size go in one PUT
  std::function<void(const std::string&)> log;  // never receives secrets
  bool trace = false;                          // log every request: method, URL (no query, no userinfo), status
};

/// A manifest (or index) as fetched.
struct Manifest {
  std::string bytes, media_type, digest;
};

class Client {
 public:
  Client(std::string registry, ClientOptions opts);
  ~Client();

  const std::string& registry() const { return registry_; }
  /// GET /v2/: reachable, and which scheme it speaks. Does not authenticate.
  void ping();
  /// HEAD a manifest: its digest, or nullopt when absent. `name_unknown` tells whether the
  /// repository itself is missing (NAME_UNKNOWN) rather than only the tag.
  std::optional<std::string> head_manifest(const std::string& repo, const std::string& ref, bool* name_unknown = nullptr);
  Manifest get_manifest(const std::string& repo, const std::string& ref);
  std::optional<std::uint64_t> blob_size(const std::string& repo, const std::string& digest);
  /// Streams a blob to `sink`, verifying its digest (throws Protocol on mismatch).
  void get_blob(const std::string& repo, const std::string& digest, const std::function<void(const void*, std::size_t)>& sink);
  /// Cross-repository mount: true when mounted (201), false when the registry wants an upload.
  bool mount_blob(const std::string& repo, const std::string& digest, const std::string& from_repo);
  /// Uploads a file as a blob (monolithic or chunked); `progress` gets byte counts.
  void upload_blob(const std::string& repo, const std::string& digest, std::uint64_t size,
                   const std::filesystem::path& file, const std::function<void(std::uint64_t)>& progress = {});
  /// PUT a manifest; returns the digest the registry reports.
  std::string put_manifest(const std::string& repo, const std::string& ref, const std::string& bytes,
                           const std::string& media_type);
  /// Opens a blob upload session (proves push permission) and returns its Location.
  std::string start_upload(const std::string& repo);
  /// Cancels an upload session of `repo` (DELETE); errors are ignored.
  void cancel_upload(const std::string& location, const std::string& repo);
  /// Fetches (and caches) a token for these scopes now, so credentials are checked.
  void authenticate(const std::vector<std::string>& scopes);
  /// Requests made so far (for tests and --json).
  std::uint64_t requests() const { return requests_; }
  /// Were credentials found for this registry (once authentication was attempted)?
  bool has_credentials() {
    std::lock_guard<std::mutex> lock(mu_);
    return creds_.has_value();
  }

 private:
  struct Token {
    std::string value;
    std::chrono::steady_clock::time_point expires;
  };
  /// With opts_.trace: "http GET https://host/v2/… 200" through opts_.log (never a header or a body).
  void trace(const HttpRequest& req, const HttpResponse& resp) const;
  HttpResponse send(HttpRequest req, const std::vector<std::string>& scopes, bool retry = true);
  HttpResponse send_once(HttpRequest& req, const std::vector<std::string>& scopes);
  std::string url(const std::string& path) const;
  /// scheme://host:port of the registry (after ping()): where its credentials may go.
  std::string origin() const;
  /// Performs `req`, following redirects itself; `auth` (a header line) is sent only to URLs of
  /// `auth_origin`.
  HttpResponse perform_scoped(HttpRequest req, const std::string& auth, const std::string& auth_origin);
  std::string absolute(const std::string& location) const;
  void fetch_token(const std::string& challenge, const std::vector<std::string>& scopes);
  std::string auth_header(const std::vector<std::string>& scopes);
  [[noreturn]] void fail(const HttpResponse& r, const std::string& what) const;
  std::unique_ptr<HttpClient> acquire();
  void release(std::unique_ptr<HttpClient> c);

  std::string registry_;
  ClientOptions opts_;
  TlsOptions tls_;
  std::string scheme_;  // "https" or "http", after ping()
  std::optional<Credentials> creds_;
  bool creds_loaded_ = false;
  std::mutex mu_;
  std::map<std::string, Token> tokens_;  // by joined scopes
  std::string basic_;                     // "Basic …" when the registry asked for Basic
  std::string bearer_challenge_;          // last Bearer challenge seen
  std::vector<std::unique_ptr<HttpClient>> pool_;
  std::uint64_t requests_ = 0;
};

/// "scheme://host:port" of an http(s) URL (lowercase host, default port filled in); "" for
/// anything else. Two URLs share credentials only when their origins are equal.
std::string url_origin(const std::string& url);
/// `location` (absolute, scheme-relative, absolute-path or relative) resolved against `base`.
std::string resolve_url(const std::string& base, const std::string& location);

/// Scope strings for the token server.
inline std::string pull_scope(const std::string& repo) { return "repository:" + repo + ":pull"; }
inline std::string push_scope(const std::string& repo) { return "repository:" + repo + ":pull,push"; }

}  // namespace kiln::registry
