// libcurl-based HTTP for the registry client.
#include "registry/http.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <system_error>

namespace kiln::registry {

namespace {

std::once_flag g_init;

struct Transfer {
  CURL* curl;
  const HttpRequest* req;
  HttpResponse* resp;
  int fd = -1;
  std::uint64_t left = 0;
  std::size_t body_pos = 0;
};

std::size_t on_header(char* data, std::size_t size, std::size_t n, void* ctx) {
  auto* t = static_cast<Transfer*>(ctx);
  std::string line(data, size * n);
  if (line.rfind("HTTP/", 0) == 0) t->resp->headers.clear();  // a new response (redirect, 100)
  std::size_t colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    std::string value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.erase(0, 1);
    while (!value.empty() && (value.back() == '\r' || value.back() == '\n' || value.back() == ' ')) value.pop_back();
    t->resp->headers.emplace(name, value);
  }
  return size * n;
}

std::size_t on_body(char* data, std::size_t size, std::size_t n, void* ctx) {
  auto* t = static_cast<Transfer*>(ctx);
  std::size_t len = size * n;
  long status = 0;
  curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &status);
  // Only a success body goes to the sink; error bodies are kept for the error message.
  if (t->req->sink && status >= 200 && status < 300) {
    try {
      t->req->sink(data, len);
    } catch (...) {
      return 0;  // aborts the transfer
    }
  } else if (t->resp->body.size() < (4u << 20)) {
    t->resp->body.append(data, std::min<std::size_t>(len, (4u << 20) - t->resp->body.size()));
  }
  return len;
}

std::size_t on_read(char* buf, std::size_t size, std::size_t n, void* ctx) {
  auto* t = static_cast<Transfer*>(ctx);
  std::size_t want = size * n;
  if (t->req->body) {
    std::size_t m = std::min(want, t->req->body->size() - t->body_pos);
    std::copy_n(t->req->body->data() + t->body_pos, m, buf);
    t->body_pos += m;
    return m;
  }
  if (t->left == 0) return 0;
  ssize_t r = ::read(t->fd, buf, std::min<std::uint64_t>(want, t->left));
  if (r < 0) return CURL_READFUNC_ABORT;
  t->left -= static_cast<std::uint64_t>(r);
  return static_cast<std::size_t>(r);
}

/// Rewinds the request body, so libcurl can send it again (a kept-alive connection the server
/// had closed, a redirect that keeps the method, an auth round trip).
int on_seek(void* ctx, curl_off_t offset, int origin) {
  auto* t = static_cast<Transfer*>(ctx);
  if (origin != SEEK_SET || offset < 0) return CURL_SEEKFUNC_CANTSEEK;
  const auto off = static_cast<std::uint64_t>(offset);
  if (t->req->body) {
    if (off > t->req->body->size()) return CURL_SEEKFUNC_FAIL;
    t->body_pos = static_cast<std::size_t>(off);
    return CURL_SEEKFUNC_OK;
  }
  if (t->fd < 0 || off > t->req->body_size) return CURL_SEEKFUNC_FAIL;
  if (::lseek(t->fd, static_cast<off_t>(t->req->body_offset + off), SEEK_SET) < 0) return CURL_SEEKFUNC_FAIL;
  t->left = t->req->body_size - off;
  return CURL_SEEKFUNC_OK;
}

}  // namespace

std::string HttpResponse::header(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? "" : it->second;
}

HttpClient::HttpClient() {
  std::call_once(g_init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  curl_ = curl_easy_init();
  if (!curl_) throw std::runtime_error("libcurl: cannot create a handle");
}

HttpClient::~HttpClient() { curl_easy_cleanup(curl_); }

HttpResponse HttpClient::perform(const HttpRequest& req, const TlsOptions& tls) {
  HttpResponse resp;
  Transfer t{curl_, &req, &resp};
  CURL* c = curl_;
  curl_easy_reset(c);
  curl_easy_setopt(c, CURLOPT_URL, req.url.c_str());
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "kiln/" KILN_VERSION);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, req.connect_timeout_seconds);
  if (req.timeout_seconds > 0) curl_easy_setopt(c, CURLOPT_TIMEOUT, req.timeout_seconds);
  // A stalled connection (under 1 KiB/s for 60 s) fails instead of hanging forever.
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, req.follow_redirects ? 1L : 0L);
  // Never: a redirect to another host must not carry credentials (kiln's own headers are only
  // added for the registry's origin, and the registry client follows redirects itself).
  curl_easy_setopt(c, CURLOPT_UNRESTRICTED_AUTH, 0L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  if (tls.skip_verify) {
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if (!tls.ca_file.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, tls.ca_file.c_str());

  struct curl_slist* hdrs = nullptr;
  for (const auto& h : req.headers) hdrs = curl_slist_append(hdrs, h.c_str());
  hdrs = curl_slist_append(hdrs, "Expect:");  // no 100-continue round trip
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);

  const bool has_body = req.body || !req.body_file.empty();
  if (req.method == "HEAD") {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  } else if (req.method == "GET") {
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  } else {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req.method.c_str());
    if (has_body || req.method == "PUT" || req.method == "PATCH" || req.method == "POST") {
      curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
      curl_easy_setopt(c, CURLOPT_READDATA, &t);
      curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, on_seek);
      curl_easy_setopt(c, CURLOPT_SEEKDATA, &t);
      std::uint64_t len = req.body ? req.body->size() : req.body_size;
      curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(len));
    }
  }
  if (!req.body_file.empty()) {
    t.fd = ::open(req.body_file.c_str(), O_RDONLY | O_CLOEXEC);
    if (t.fd < 0) {
      curl_slist_free_all(hdrs);
      throw std::system_error(errno, std::generic_category(), "cannot open " + req.body_file.string());
    }
    if (::lseek(t.fd, static_cast<off_t>(req.body_offset), SEEK_SET) < 0) {
      ::close(t.fd);
      curl_slist_free_all(hdrs);
      throw std::system_error(errno, std::generic_category(), "cannot seek " + req.body_file.string());
    }
    t.left = req.body_size;
  }
  CURLcode rc = curl_easy_perform(c);
  if (t.fd >= 0) ::close(t.fd);
  curl_slist_free_all(hdrs);
  char* eff = nullptr;
  curl_easy_getinfo(c, CURLINFO_EFFECTIVE_URL, &eff);
  if (eff) resp.effective_url = eff;
  if (rc != CURLE_OK) {
    resp.status = 0;
    resp.curl_code = rc;
    resp.transport_error = curl_easy_strerror(rc);
    return resp;
  }
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp.status);
  return resp;
}

bool is_tls_mismatch(int code) {
  return code == CURLE_SSL_CONNECT_ERROR || code == CURLE_RECV_ERROR || code == CURLE_SEND_ERROR;
}

bool is_transient_curl(int code) {
  switch (code) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_FAIL_REWIND:  // a resend that could not rewind: the next attempt starts afresh
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_COULDNT_RESOLVE_HOST:
      return true;
    default:
      return false;
  }
}

}  // namespace kiln::registry
