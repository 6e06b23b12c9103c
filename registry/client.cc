// The OCI distribution client.
#include "registry/client.h"

#include <openssl/evp.h>
#include <sys/stat.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "layers/digest.h"

using nlohmann::json;

namespace kiln::registry {

const char* RegistryError::kind_name(Kind k) {
  switch (k) {
    case Kind::Unauthorized: return "unauthorized";
    case Kind::Denied: return "denied";
    case Kind::NameUnknown: return "name_unknown";
    case Kind::ManifestUnknown: return "manifest_unknown";
    case Kind::BlobUnknown: return "blob_unknown";
    case Kind::Unreachable: return "unreachable";
    case Kind::UnknownHost: return "unknown_host";
    case Kind::Transient: return "transient";
    case Kind::Protocol: return "protocol";
    case Kind::Integrity: return "integrity";
  }
  return "protocol";
}

namespace {

const char* kAccept =
    "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json";

std::string b64(const std::string& s) {
  std::string out(4 * ((s.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(s.data()),
                          static_cast<int>(s.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

std::string url_escape(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || c == '/' || c == ':') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

/// Parses `Bearer realm="…",service="…",scope="…"` into lowercase keys.
std::map<std::string, std::string> parse_challenge(const std::string& h, std::string* scheme) {
  std::map<std::string, std::string> out;
  std::size_t sp = h.find(' ');
  *scheme = h.substr(0, sp);
  std::transform(scheme->begin(), scheme->end(), scheme->begin(), [](unsigned char c) { return std::tolower(c); });
  std::size_t i = sp == std::string::npos ? h.size() : sp + 1;
  while (i < h.size()) {
    while (i < h.size() && (h[i] == ' ' || h[i] == ',')) ++i;
    std::size_t eq = h.find('=', i);
    if (eq == std::string::npos) break;
    std::string key = h.substr(i, eq - i);
    std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) { return std::tolower(c); });
    std::string val;
    i = eq + 1;
    if (i < h.size() && h[i] == '"') {
      ++i;
      while (i < h.size() && h[i] != '"') {
        if (h[i] == '\\' && i + 1 < h.size()) ++i;
        val += h[i++];
      }
      ++i;
    } else {
      while (i < h.size() && h[i] != ',') val += h[i++];
    }
    out[key] = val;
  }
  return out;
}

/// The first error code and message in a registry error body.
std::pair<std::string, std::string> error_of(const std::string& body) {
  try {
    json j = json::parse(body);
    if (j.contains("errors") && j["errors"].is_array() && !j["errors"].empty()) {
      const json& e = j["errors"][0];
      return {e.value("code", ""), e.value("message", "")};
    }
  } catch (const json::exception&) {
  }
  return {"", ""};
}

bool is_redirect(long status) { return status == 301 || status == 302 || status == 303 || status == 307 || status == 308; }

/// "host:port" → "host"; "[v6]:port" → "[v6]".
std::string host_only(const std::string& registry) {
  std::size_t close = registry.rfind(']'), colon = registry.rfind(':');
  if (colon == std::string::npos || (close != std::string::npos && colon < close)) return registry;
  return registry.substr(0, colon);
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

}  // namespace

std::string url_origin(const std::string& url) {
  std::size_t sep = url.find("://");
  if (sep == std::string::npos) return "";
  std::string scheme = url.substr(0, sep);
  std::transform(scheme.begin(), scheme.end(), scheme.begin(), [](unsigned char c) { return std::tolower(c); });
  if (scheme != "http" && scheme != "https") return "";
  std::size_t start = sep + 3;
  std::size_t end = url.find_first_of("/?#", start);
  std::string authority = url.substr(start, end == std::string::npos ? std::string::npos : end - start);
  if (std::size_t at = authority.rfind('@'); at != std::string::npos) authority.erase(0, at + 1);  // userinfo
  std::string host = authority, port;
  if (!authority.empty() && authority[0] == '[') {  // [v6]:port
    std::size_t close = authority.find(']');
    if (close == std::string::npos) return "";
    host = authority.substr(0, close + 1);
    if (close + 1 < authority.size() && authority[close + 1] == ':') port = authority.substr(close + 2);
  } else if (std::size_t colon = authority.rfind(':'); colon != std::string::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  std::transform(host.begin(), host.end(), host.begin(), [](unsigned char c) { return std::tolower(c); });
  if (host.empty()) return "";
  if (port.empty()) port = scheme == "https" ? "443" : "80";
  return scheme + "://" + host + ":" + port;
}

std::string resolve_url(const std::string& base, const std::string& location) {
  if (!url_origin(location).empty() || location.find("://") != std::string::npos) return location;
  std::size_t sep = base.find("://");
  std::size_t path_start = sep == std::string::npos ? std::string::npos : base.find('/', sep + 3);
  std::string root = path_start == std::string::npos ? base : base.substr(0, path_start);
  if (location.rfind("//", 0) == 0) return base.substr(0, sep + 1) + location;  // scheme-relative
  if (!location.empty() && location[0] == '/') return root + location;
  std::string path = path_start == std::string::npos ? "/" : base.substr(path_start);
  path = path.substr(0, path.find_first_of("?#"));
  return root + path.substr(0, path.rfind('/') + 1) + location;
}

Client::Client(std::string registry, ClientOptions opts) : registry_(std::move(registry)), opts_(std::move(opts)) {
  tls_.skip_verify = opts_.skip_tls_verify;
  tls_.ca_file = opts_.ca_file;
}

Client::~Client() = default;

std::unique_ptr<HttpClient> Client::acquire() {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_;
  if (pool_.empty()) return std::make_unique<HttpClient>();
  auto c = std::move(pool_.back());
  pool_.pop_back();
  return c;
}

void Client::release(std::unique_ptr<HttpClient> c) {
  std::lock_guard<std::mutex> lock(mu_);
  pool_.push_back(std::move(c));
}

std::string Client::url(const std::string& path) const {
  std::string host = registry_ == "docker.io" ? "registry-1.docker.io" : registry_;
  return (scheme_.empty() ? "https" : scheme_) + "://" + host + path;
}

std::string Client::origin() const { return url_origin(url("/")); }

HttpResponse Client::perform_scoped(HttpRequest req, const std::string& auth, const std::string& auth_origin) {
  req.follow_redirects = false;
  for (int hop = 0;; ++hop) {
    HttpRequest r = req;
    // Credentials go only where they belong: a Location or a redirect to another scheme, host or
    // port (a CDN serving blobs, or a hostile server) gets none, whatever it answers.
    if (!auth.empty() && !auth_origin.empty() && url_origin(r.url) == auth_origin) r.headers.push_back(auth);
    auto c = acquire();
    HttpResponse resp = c->perform(r, tls_);
    release(std::move(c));
    trace(r, resp);
    if (!is_redirect(resp.status) || hop >= 5) return resp;
    std::string loc = resp.header("location");
    if (loc.empty()) return resp;
    std::string next = resolve_url(r.url, loc);
    if (url_origin(next).empty()) return resp;  // not http(s): answered as the 3xx it is
    if (resp.status == 303 || ((resp.status == 301 || resp.status == 302) && req.method == "POST")) {
      req.method = "GET";
      req.body = nullptr;
      req.body_file.clear();
    }
    req.url = next;
  }
}

void Client::trace(const HttpRequest& req, const HttpResponse& resp) const {
  if (!opts_.trace || !opts_.log) return;
  // The URL without its query (upload state, token scopes) and without any user:password@.
  std::string u = req.url.substr(0, req.url.find_first_of("?#"));
  if (std::size_t scheme = u.find("://"); scheme != std::string::npos) {
    std::size_t host = scheme + 3, slash = u.find('/', host);
    std::size_t at = u.rfind('@', slash == std::string::npos ? std::string::npos : slash);
    if (at != std::string::npos && at >= host) u.erase(host, at + 1 - host);
  }
  if (u.size() < req.url.size() && req.url[u.size()] == '?') u += "?…";
  opts_.log("http " + req.method + " " + u + " " +
            (resp.status ? std::to_string(resp.status) : "failed: " + resp.transport_error));
}

std::string Client::absolute(const std::string& location) const {
  if (location.rfind("http://", 0) == 0 || location.rfind("https://", 0) == 0) return location;
  return url(location.empty() || location[0] != '/' ? "/" + location : location);
}

void Client::ping() {
  if (!scheme_.empty()) return;
  auto attempt = [&](const std::string& scheme) {
    scheme_ = scheme;
    HttpRequest req;
    req.method = "GET";
    req.url = url("/v2/");
    req.timeout_seconds = 15;
    auto c = acquire();
    HttpResponse r = c->perform(req, tls_);
    release(std::move(c));
    trace(req, r);
    return r;
  };
  HttpResponse r;
  if (opts_.allow_http && opts_.prefer_http) {
    // A loopback registry usually speaks plain HTTP: ask that first, and go to TLS when the
    // answer shows a TLS server (400 to plain HTTP) or nothing answered.
    r = attempt("http");
    if (r.status == 400 || r.status == 0) r = attempt("https");
  } else {
    r = attempt("https");
  }
  if (r.status == 0 && opts_.allow_http && !opts_.prefer_http && is_tls_mismatch(r.curl_code)) {
    if (opts_.log) opts_.log(registry_ + " does not speak TLS; using plain HTTP (allowed for this registry)");
    r = attempt("http");
  }
  if (r.status == 0 && r.curl_code == 6 /* CURLE_COULDNT_RESOLVE_HOST */) {
    scheme_.clear();
    throw RegistryError(RegistryError::Kind::UnknownHost,
                        "cannot resolve host '" + host_only(registry_ == "docker.io" ? "registry-1.docker.io" : registry_) + "' (registry " + registry_ +
                            "): is the name right? (" + r.transport_error + ")");
  }
  if (r.status == 0) {
    scheme_.clear();
    std::string hint = is_tls_mismatch(r.curl_code) && !opts_.allow_http
                           ? " (if it serves plain HTTP, allow it with --insecure-allow-http " + registry_ + ")"
                           : "";
    if (r.curl_code == 60 || r.curl_code == 58 || r.curl_code == 77)
      hint = " (certificate not trusted: pass --registry-ca FILE, or --insecure-skip-tls-verify " + registry_ + ")";
    throw RegistryError(RegistryError::Kind::Unreachable, "cannot reach registry " + registry_ + ": " + r.transport_error + hint);
  }
  if (r.status != 200 && r.status != 401)
    throw RegistryError(r.status >= 500 ? RegistryError::Kind::Transient : RegistryError::Kind::Protocol,
                        "registry " + registry_ + " answered " + std::to_string(r.status) + " to /v2/; is it an OCI registry?",
                        r.status);
  if (r.status == 401) {
    std::lock_guard<std::mutex> lock(mu_);
    bearer_challenge_ = r.header("www-authenticate");
  }
}

std::string Client::auth_header(const std::vector<std::string>& scopes) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = tokens_.find(join(scopes, " "));
  if (it != tokens_.end() && it->second.expires > std::chrono::steady_clock::now())
    return "Authorization: Bearer " + it->second.value;
  if (!basic_.empty()) return basic_;
  return "";
}

void Client::fetch_token(const std::string& challenge, const std::vector<std::string>& scopes) {
  std::string scheme;
  auto params = parse_challenge(challenge, &scheme);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!creds_loaded_) {
      try {
        creds_ = find_credentials(registry_, opts_.docker_config);
      } catch (const std::runtime_error& e) {
        throw RegistryError(RegistryError::Kind::Unauthorized, e.what(), 0, "UNAUTHORIZED");
      }
      creds_loaded_ = true;
    }
  }
  if (scheme == "basic") {
    if (!creds_) throw RegistryError(RegistryError::Kind::Unauthorized, "registry " + registry_ + " requires credentials; log in (docker login) or set registry_config", 401, "UNAUTHORIZED");
    std::lock_guard<std::mutex> lock(mu_);
    basic_ = "Authorization: Basic " + b64(creds_->username + ":" + creds_->password);
    return;
  }
  if (scheme != "bearer" || params["realm"].empty())
    throw RegistryError(RegistryError::Kind::Protocol, "registry " + registry_ + " sent an authentication challenge kiln does not know: " + scheme);
  std::string u = params["realm"];
  u += u.find('?') == std::string::npos ? "?" : "&";
  if (!params["service"].empty()) u += "service=" + url_escape(params["service"]) + "&";
  std::vector<std::string> all = scopes;
  if (!params["scope"].empty() && std::find(all.begin(), all.end(), params["scope"]) == all.end()) all.push_back(params["scope"]);
  for (const auto& s : all) u += "scope=" + url_escape(s) + "&";
  u.pop_back();
  HttpRequest req;
  req.url = u;
  req.timeout_seconds = 30;
  // An identity token (docker login with a token, Azure ACR, a helper answering "<token>") is an
  // OAuth2 refresh token: it is traded for an access token with a POSTed refresh-token grant, as
  // docker and go-containerregistry do; it never goes in a Basic header or a URL.
  std::string form;
  if (creds_ && creds_->identity_token) {
    auto form_escape = [](const std::string& v) {
      std::string e = url_escape(v);
      for (std::size_t i = 0; (i = e.find('/', i)) != std::string::npos;) e.replace(i, 1, "%2F");
      for (std::size_t i = 0; (i = e.find(':', i)) != std::string::npos;) e.replace(i, 1, "%3A");
      return e;
    };
    form = "grant_type=refresh_token&refresh_token=" + form_escape(creds_->password) +
           "&service=" + form_escape(params["service"]) + "&scope=" + form_escape(join(all, " ")) +
           "&client_id=kiln";
    req.method = "POST";
    req.url = params["realm"];
    req.body = &form;
    req.headers.push_back("Content-Type: application/x-www-form-urlencoded");
  }
  const std::string realm_origin = url_origin(params["realm"]);
  if (realm_origin.empty())
    throw RegistryError(RegistryError::Kind::Protocol, "registry " + registry_ + " names a token server that is not an http(s) URL");
  // Credentials never travel in plain HTTP unless this registry may be spoken to that way.
  if (realm_origin.rfind("http://", 0) == 0 && !opts_.allow_http)
    throw RegistryError(RegistryError::Kind::Protocol, "registry " + registry_ + " names a token server in plain HTTP (" +
                                                           realm_origin + "); kiln sends credentials only over TLS "
                                                           "(or to a registry allowed with --insecure-allow-http)");
  std::string basic;
  if (creds_ && !creds_->identity_token) basic = "Authorization: Basic " + b64(creds_->username + ":" + creds_->password);
  HttpResponse r;
  for (int attempt = 1;; ++attempt) {
    r = perform_scoped(req, basic, realm_origin);
    bool transient = r.status == 0 ? is_transient_curl(r.curl_code) : (r.status == 429 || r.status >= 500);
    if (!transient || attempt >= opts_.max_attempts) break;
    std::this_thread::sleep_for(opts_.backoff * (1 << (attempt - 1)));
  }
  if (r.status == 0)
    throw RegistryError(RegistryError::Kind::Unreachable, "cannot reach the token server of " + registry_ + ": " + r.transport_error);
  if (r.status == 401 || r.status == 403)
    throw RegistryError(RegistryError::Kind::Unauthorized,
                        creds_ && creds_->identity_token
                            ? "the token server of " + registry_ + " rejected the identity token from the docker config "
                              "(expired or revoked? log in again)"
                        : creds_ ? "registry " + registry_ + " rejected the credentials (wrong user name or password?)"
                               : "registry " + registry_ + " requires credentials; log in (docker login) or set registry_config",
                        r.status, "UNAUTHORIZED");
  if (r.status != 200)
    throw RegistryError(r.status >= 500 ? RegistryError::Kind::Transient : RegistryError::Kind::Protocol,
                        "the token server of " + registry_ + " answered " + std::to_string(r.status), r.status);
  json j;
  try {
    j = json::parse(r.body);
  } catch (const json::exception&) {
    throw RegistryError(RegistryError::Kind::Protocol, "the token server of " + registry_ + " sent malformed JSON");
  }
  std::string token = j.value("token", j.value("access_token", ""));
  if (token.empty()) throw RegistryError(RegistryError::Kind::Protocol, "the token server of " + registry_ + " sent no token");
  int expires = j.value("expires_in", 60);
  Token t{token, std::chrono::steady_clock::now() + std::chrono::seconds(std::max(expires - 10, 5))};
  std::lock_guard<std::mutex> lock(mu_);
  tokens_[join(scopes, " ")] = t;
}

void Client::authenticate(const std::vector<std::string>& scopes) {
  ping();
  std::string challenge;
  {
    std::lock_guard<std::mutex> lock(mu_);
    challenge = bearer_challenge_;
  }
  if (challenge.empty()) return;  // an open registry
  fetch_token(challenge, scopes);
  std::string scheme;
  parse_challenge(challenge, &scheme);
  if (scheme == "basic") {  // Basic credentials are only checked by using them
    HttpRequest req;
    req.url = "/v2/";
    HttpResponse r = send(req, scopes);
    if (r.status == 401)
      throw RegistryError(RegistryError::Kind::Unauthorized,
                          "registry " + registry_ + " rejected the credentials (wrong user name or password?)", 401,
                          "UNAUTHORIZED");
    if (r.status != 200) fail(r, "cannot authenticate to " + registry_);
  }
}

HttpResponse Client::send_once(HttpRequest& req, const std::vector<std::string>& scopes) {
  return perform_scoped(req, auth_header(scopes), origin());
}

HttpResponse Client::send(HttpRequest req, const std::vector<std::string>& scopes, bool retry) {
  ping();
  if (req.url.empty() || req.url[0] == '/') req.url = url(req.url);
  bool authed = false;
  for (int attempt = 1;; ++attempt) {
    HttpResponse r = send_once(req, scopes);
    // Only the registry's own challenge is answered: a 401 from wherever a Location or redirect
    // led must not make kiln hand credentials to a token server that host names.
    if (r.status == 401 && !authed && url_origin(r.effective_url.empty() ? req.url : r.effective_url) == origin()) {
      authed = true;
      std::string challenge = r.header("www-authenticate");
      if (challenge.empty())
        throw RegistryError(RegistryError::Kind::Unauthorized, "registry " + registry_ + " refused the request (401) without a challenge", 401);
      fetch_token(challenge, scopes);
      --attempt;
      continue;
    }
    bool transient = r.status == 0 ? is_transient_curl(r.curl_code) : (r.status == 408 || r.status == 429 || r.status >= 500);
    if (!transient || !retry || attempt >= opts_.max_attempts) return r;
    auto delay = opts_.backoff * (1 << (attempt - 1));
    if (std::string ra = r.header("retry-after"); !ra.empty() && std::all_of(ra.begin(), ra.end(), ::isdigit))
      delay = std::max<std::chrono::milliseconds>(delay, std::chrono::seconds(std::min(std::stoi(ra), 30)));
    static thread_local std::mt19937 rng{std::random_device{}()};
    delay += std::chrono::milliseconds(rng() % (delay.count() / 2 + 1));
    if (opts_.log)
      opts_.log(req.method + " " + registry_ + ": " + (r.status ? std::to_string(r.status) : r.transport_error) +
                ", retrying in " + std::to_string(delay.count()) + " ms");
    std::this_thread::sleep_for(delay);
  }
}

void Client::fail(const HttpResponse& r, const std::string& what) const {
  using K = RegistryError::Kind;
  if (r.status == 0)
    throw RegistryError(r.curl_code == 6 ? K::UnknownHost : is_transient_curl(r.curl_code) ? K::Transient : K::Unreachable,
                        what + ": " + r.transport_error);
  auto [code, message] = error_of(r.body);
  std::string detail = " (" + std::to_string(r.status) + (code.empty() ? "" : " " + code) +
                       (message.empty() ? "" : ": " + message) + ")";
  K kind = K::Protocol;
  if (r.status == 401) {
    bool has_creds = creds_.has_value();
    if (r.header("www-authenticate").find("insufficient_scope") != std::string::npos && has_creds) {
      kind = K::Denied;
    } else {
      kind = K::Unauthorized;
      if (!has_creds)
        throw RegistryError(kind, what + detail + ": registry " + registry_ +
                                      " requires credentials; log in (docker login) or set registry_config",
                            r.status, code);
    }
  }
  else if (r.status == 403 || code == "DENIED") kind = K::Denied;
  else if (code == "NAME_UNKNOWN") kind = K::NameUnknown;
  else if (code == "MANIFEST_UNKNOWN") kind = K::ManifestUnknown;
  else if (code == "BLOB_UNKNOWN") kind = K::BlobUnknown;
  else if (r.status == 404) kind = K::NameUnknown;
  else if (r.status == 408 || r.status == 429 || r.status >= 500) kind = K::Transient;
  throw RegistryError(kind, what + detail, r.status, code);
}

std::optional<std::string> Client::head_manifest(const std::string& repo, const std::string& ref, bool* name_unknown) {
  if (name_unknown) *name_unknown = false;
  HttpRequest req;
  req.method = "HEAD";
  req.url = "/v2/" + repo + "/manifests/" + ref;
  req.headers.push_back(kAccept);
  HttpResponse r = send(req, {pull_scope(repo)});
  if (r.status == 200) {
    std::string d = r.header("docker-content-digest");
    if (d.empty()) d = get_manifest(repo, ref).digest;  // some registries omit it on HEAD
    return d;
  }
  if (r.status == 404) {
    // Missing tag or missing repository? Registries differ in what a manifest 404 says
    // (distribution answers MANIFEST_UNKNOWN for both), but the tag list of a missing repository
    // is NAME_UNKNOWN everywhere.
    if (name_unknown) {
      HttpRequest tags;
      tags.url = "/v2/" + repo + "/tags/list";
      HttpResponse tr = send(tags, {pull_scope(repo)});
      *name_unknown = tr.status == 404 && error_of(tr.body).first == "NAME_UNKNOWN";
    }
    return std::nullopt;
  }
  fail(r, "cannot look up " + registry_ + "/" + repo + ":" + ref);
}

Manifest Client::get_manifest(const std::string& repo, const std::string& ref) {
  HttpRequest req;
  req.url = "/v2/" + repo + "/manifests/" + ref;
  req.headers.push_back(kAccept);
  HttpResponse r = send(req, {pull_scope(repo)});
  if (r.status != 200) fail(r, "cannot fetch " + registry_ + "/" + repo + ":" + ref);
  Manifest m;
  m.bytes = r.body;
  m.media_type = r.header("content-type");
  m.digest = layers::sha256_digest(m.bytes);
  if (ref.rfind("sha256:", 0) == 0 && m.digest != ref)
    throw RegistryError(RegistryError::Kind::Integrity, "manifest " + ref + " from " + registry_ +
                                                            " does not match its digest: its content is " + m.digest);
  std::string said = r.header("docker-content-digest");
  if (!said.empty() && said != m.digest)
    throw RegistryError(RegistryError::Kind::Integrity, "manifest " + registry_ + "/" + repo + ":" + ref +
                                                            " does not match the digest the registry reports (" + said +
                                                            "): its content is " + m.digest);
  try {
    json j = json::parse(m.bytes);
    if (j.contains("mediaType") && j["mediaType"].is_string()) m.media_type = j["mediaType"].get<std::string>();
  } catch (const json::exception&) {
    throw RegistryError(RegistryError::Kind::Protocol, "manifest " + registry_ + "/" + repo + ":" + ref + " is not JSON");
  }
  return m;
}

std::optional<std::uint64_t> Client::blob_size(const std::string& repo, const std::string& digest) {
  HttpRequest req;
  req.method = "HEAD";
  req.url = "/v2/" + repo + "/blobs/" + digest;
  HttpResponse r = send(req, {pull_scope(repo)});
  if (r.status == 200) {
    std::string len = r.header("content-length");
    return len.empty() ? 0 : std::stoull(len);
  }
  if (r.status == 404) return std::nullopt;
  fail(r, "cannot check blob " + digest.substr(0, 19) + " in " + registry_ + "/" + repo);
}

void Client::get_blob(const std::string& repo, const std::string& digest,
                      const std::function<void(const void*, std::size_t)>& sink) {
  for (int attempt = 1;; ++attempt) {
    layers::Sha256 h;
    std::uint64_t n = 0;
    std::string buffered;
    HttpRequest req;
    req.url = "/v2/" + repo + "/blobs/" + digest;
    // The first bytes of a 200 go through the sink only once the status is known to be 200; error
    // bodies are small and end up in `buffered`.
    req.sink = [&](const void* d, std::size_t len) {
      h.update(d, len);
      n += len;
      sink(d, len);
    };
    HttpResponse r = send(req, {pull_scope(repo)}, /*retry=*/false);
    if (r.status == 200) {
      const std::string got = h.digest();
      if (got != digest)
        throw RegistryError(RegistryError::Kind::Integrity, "blob " + digest + " from " + registry_ + "/" + repo +
                                                                " does not match its digest: its content is " + got);
      return;
    }
    bool transient = r.status == 0 ? is_transient_curl(r.curl_code) : (r.status == 429 || r.status >= 500);
    if (!transient || attempt >= opts_.max_attempts || n > 0) fail(r, "cannot download blob " + digest.substr(0, 19));
    std::this_thread::sleep_for(opts_.backoff * (1 << (attempt - 1)));
  }
}

std::string Client::start_upload(const std::string& repo) {
  HttpRequest req;
  req.method = "POST";
  req.url = "/v2/" + repo + "/blobs/uploads/";
  std::string empty;
  req.body = &empty;
  HttpResponse r = send(req, {push_scope(repo)});
  if (r.status != 202) fail(r, "cannot start an upload to " + registry_ + "/" + repo);
  std::string loc = r.header("location");
  if (loc.empty()) throw RegistryError(RegistryError::Kind::Protocol, registry_ + " opened an upload without a Location");
  return absolute(loc);
}

void Client::cancel_upload(const std::string& location, const std::string& repo) {
  HttpRequest req;
  req.method = "DELETE";
  req.url = location;
  try {
    send(req, {push_scope(repo)}, false);
  } catch (const std::exception&) {
  }
}

bool Client::mount_blob(const std::string& repo, const std::string& digest, const std::string& from_repo) {
  HttpRequest req;
  req.method = "POST";
  req.url = "/v2/" + repo + "/blobs/uploads/?mount=" + digest + "&from=" + url_escape(from_repo);
  std::string empty;
  req.body = &empty;
  HttpResponse r = send(req, {push_scope(repo), pull_scope(from_repo)});
  if (r.status == 201) return true;
  if (r.status == 202) {  // not mounted: an upload session was opened instead; close it
    if (std::string loc = r.header("location"); !loc.empty()) cancel_upload(absolute(loc), repo);
    return false;
  }
  fail(r, "cannot mount " + digest.substr(0, 19) + " from " + from_repo);
}

void Client::upload_blob(const std::string& repo, const std::string& digest, std::uint64_t size,
                         const std::filesystem::path& file, const std::function<void(std::uint64_t)>& progress) {
  auto with_query = [](const std::string& loc, const std::string& q) {
    return loc + (loc.find('?') == std::string::npos ? "?" : "&") + q;
  };
  std::chrono::milliseconds hint{0};
  auto note_retry_after = [&](const HttpResponse& r) {
    std::string ra = r.header("retry-after");
    if ((r.status == 429 || r.status == 503) && !ra.empty() && std::all_of(ra.begin(), ra.end(), ::isdigit))
      hint = std::chrono::seconds(std::min(std::stoi(ra), 30));
  };
  for (int attempt = 1;; ++attempt) {
    try {
      HttpRequest post;
      post.method = "POST";
      post.url = "/v2/" + repo + "/blobs/uploads/";
      std::string empty;
      post.body = &empty;
      HttpResponse pr = send(post, {push_scope(repo)});
      if (pr.status != 202) fail(pr, "cannot start an upload to " + registry_ + "/" + repo);
      std::string loc = absolute(pr.header("location"));
      std::uint64_t chunk = opts_.chunk_size;
      if (std::string min = pr.header("oci-chunk-min-length"); !min.empty()) chunk = std::max<std::uint64_t>(chunk, std::stoull(min));
      HttpResponse fin;
      if (size <= opts_.monolithic_max) {
        HttpRequest put;
        put.method = "PUT";
        put.url = with_query(loc, "digest=" + digest);
        put.headers.push_back("Content-Type: application/octet-stream");
        put.body_file = file;
        put.body_size = size;
        fin = send(put, {push_scope(repo)}, false);
        if (progress && (fin.status == 201 || fin.status == 204)) progress(size);
      } else {
        for (std::uint64_t off = 0; off < size; off += chunk) {
          std::uint64_t n = std::min(chunk, size - off);
          HttpRequest patch;
          patch.method = "PATCH";
          patch.url = loc;
          patch.headers.push_back("Content-Type: application/octet-stream");
          patch.headers.push_back("Content-Range: " + std::to_string(off) + "-" + std::to_string(off + n - 1));
          patch.body_file = file;
          patch.body_offset = off;
          patch.body_size = n;
          HttpResponse r = send(patch, {push_scope(repo)}, false);
          if (r.status != 202) {
            note_retry_after(r);
            fail(r, "upload of " + digest.substr(0, 19) + " failed");
          }
          if (std::string l = r.header("location"); !l.empty()) loc = absolute(l);
          if (progress) progress(n);
        }
        HttpRequest put;
        put.method = "PUT";
        put.url = with_query(loc, "digest=" + digest);
        std::string none;
        put.body = &none;
        fin = send(put, {push_scope(repo)}, false);
      }
      if (fin.status == 201 || fin.status == 204) return;
      note_retry_after(fin);
      fail(fin, "upload of " + digest.substr(0, 19) + " to " + registry_ + "/" + repo + " was not committed");
    } catch (const RegistryError& e) {
      if (!e.transient() || attempt >= opts_.max_attempts) throw;
      // The commit may have landed before the connection dropped: look before uploading again.
      try {
        if (blob_size(repo, digest)) return;
      } catch (const RegistryError&) {
      }
      if (opts_.log) opts_.log("upload of " + digest.substr(0, 19) + " failed (" + e.what() + "), retrying");
      std::this_thread::sleep_for(std::max<std::chrono::milliseconds>(opts_.backoff * (1 << (attempt - 1)), hint));
      hint = std::chrono::milliseconds(0);
    }
  }
}

std::string Client::put_manifest(const std::string& repo, const std::string& ref, const std::string& bytes,
                                 const std::string& media_type) {
  HttpRequest req;
  req.method = "PUT";
  req.url = "/v2/" + repo + "/manifests/" + ref;
  req.headers.push_back("Content-Type: " + media_type);
  req.body = &bytes;
  HttpResponse r = send(req, {push_scope(repo)});
  if (r.status != 201 && r.status != 200 && r.status != 204) fail(r, "cannot push manifest " + registry_ + "/" + repo + ":" + ref);
  std::string d = r.header("docker-content-digest");
  std::string mine = layers::sha256_digest(bytes);
  if (!d.empty() && d != mine)
    throw RegistryError(RegistryError::Kind::Integrity, registry_ + " stored the manifest under " + d + ", not " + mine);
  return mine;
}

}  // namespace kiln::registry
