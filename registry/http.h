// A small HTTP client over libcurl for the registry protocol: one connection-reusing handle per
// client, streaming request bodies from files and response bodies to sinks.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

typedef void CURL;

namespace kiln::registry {

struct HttpRequest {
  std::string method = "GET";
  std::string url;
  std::vector<std::string> headers;          // "Name: value"
  const std::string* body = nullptr;         // small bodies
  std::filesystem::path body_file;           // or a range of a file
  std::uint64_t body_offset = 0, body_size = 0;
  std::function<void(const void*, std::size_t)> sink;  // response body; null: collect (capped)
  bool follow_redirects = true;
  long timeout_seconds = 0;                  // 0: none (a stall limit still applies)
  long connect_timeout_seconds = 10;
};

struct HttpResponse {
  long status = 0;                           // 0 when the transport failed
  std::multimap<std::string, std::string> headers;  // lowercase names
  std::string body;                          // when no sink was given (first 4 MiB)
  std::string transport_error;               // curl's message when status == 0
  int curl_code = 0;
  std::string header(const std::string& lowercase_name) const;
  std::string effective_url;
};

struct TlsOptions {
  bool skip_verify = false;
  std::string ca_file;                       // extra CA bundle ("" = system)
};

class HttpClient {
 public:
  HttpClient();
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;
  HttpResponse perform(const HttpRequest& req, const TlsOptions& tls);

 private:
  CURL* curl_;
};

/// curl error codes that mean "the peer spoke something other than TLS" (a plain-HTTP server).
bool is_tls_mismatch(int curl_code);
/// curl error codes worth a retry (connection reset, timeouts, partial transfers).
bool is_transient_curl(int curl_code);

}  // namespace kiln::registry
