// Reference parsing, following the grammar of distribution's reference package.
#include "registry/reference.h"

#include <cctype>

#include "spec/userinfo.h"

namespace kiln::registry {

namespace {

bool is_lower_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

/// path-component: [a-z0-9]+ (separator [a-z0-9]+)*, separator: [_.]|__|[-]*
bool valid_component(const std::string& s) {
  if (s.empty() || !is_lower_alnum(s.front()) || !is_lower_alnum(s.back())) return false;
  for (std::size_t i = 0; i < s.size();) {
    if (is_lower_alnum(s[i])) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < s.size() && !is_lower_alnum(s[j])) ++j;
    std::string sep = s.substr(i, j - i);
    bool dashes = sep.find_first_not_of('-') == std::string::npos;
    if (!(sep == "." || sep == "_" || sep == "__" || dashes)) return false;
    i = j;
  }
  return true;
}

bool valid_tag(const std::string& t) {
  if (t.empty() || t.size() > 128) return false;
  auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  if (!word(t[0])) return false;
  for (char c : t)
    if (!(word(c) || c == '.' || c == '-')) return false;
  return true;
}

bool valid_digest(const std::string& d) {
  if (d.rfind("sha256:", 0) != 0 || d.size() != 71) return false;
  for (std::size_t i = 7; i < d.size(); ++i)
    if (!std::isxdigit(static_cast<unsigned char>(d[i])) || std::isupper(static_cast<unsigned char>(d[i]))) return false;
  return true;
}

bool valid_host(const std::string& h) {
  if (h.empty()) return false;
  std::string host = h, port;
  if (h.front() == '[') {  // [ipv6]:port
    std::size_t close = h.find(']');
    if (close == std::string::npos) return false;
    if (close + 1 < h.size()) {
      if (h[close + 1] != ':') return false;
      port = h.substr(close + 2);
    }
  } else {
    std::size_t colon = h.rfind(':');
    if (colon != std::string::npos) {
      host = h.substr(0, colon);
      port = h.substr(colon + 1);
    }
    for (char c : host)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-')) return false;
    if (host.empty() || host.front() == '-' || host.back() == '-') return false;
  }
  if (h.find(':') != std::string::npos && h.front() != '[' && port.empty()) return false;
  for (char c : port)
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  return port.size() <= 5;
}

}  // namespace

std::string Reference::api_host() const { return registry == "docker.io" ? "registry-1.docker.io" : registry; }

std::string Reference::name() const { return registry + "/" + repository; }

std::string Reference::str() const {
  std::string s = name();
  if (!tag.empty()) s += ":" + tag;
  if (!digest.empty()) s += "@" + digest;
  return s;
}

bool Reference::is_loopback() const {
  std::string host = registry;
  if (host.front() == '[') return host.rfind("[::1]", 0) == 0;
  host = host.substr(0, host.find(':'));
  return host == "localhost" || host.rfind("127.", 0) == 0;
}

Reference parse_reference(const std::string& text) {
  if (text.empty()) throw ReferenceError("empty image reference");
  // Before anything echoes the text: credentials in it are refused, and never shown.
  if (auto redacted = spec::redact_userinfo(text)) throw ReferenceError(spec::userinfo_message(*redacted));
  if (text.size() > 255 + 128 + 72) throw ReferenceError("image reference is too long: " + text);
  Reference r;
  std::string rest = text;
  std::size_t at = rest.find('@');
  if (at != std::string::npos) {
    r.digest = rest.substr(at + 1);
    rest = rest.substr(0, at);
    if (!valid_digest(r.digest))
      throw ReferenceError("'" + text + "': the digest must be sha256: followed by 64 lowercase hex characters");
  }
  // Registry: the first component when it looks like a host (has '.' or ':', or is localhost).
  std::size_t slash = rest.find('/');
  if (slash != std::string::npos) {
    std::string first = rest.substr(0, slash);
    if (first.find('.') != std::string::npos || first.find(':') != std::string::npos || first == "localhost" ||
        first.front() == '[') {
      if (!valid_host(first)) throw ReferenceError("'" + text + "': '" + first + "' is not a valid registry host[:port]");
      r.registry = first;
      rest = rest.substr(slash + 1);
    }
  }
  // Tag: after the last ':' of the path part.
  std::size_t colon = rest.rfind(':');
  if (colon != std::string::npos) {
    r.tag = rest.substr(colon + 1);
    rest = rest.substr(0, colon);
    if (!valid_tag(r.tag))
      throw ReferenceError("'" + text + "': tag '" + r.tag + "' is invalid (letters, digits, '_', '.', '-'; at most 128)");
  }
  if (rest.empty()) throw ReferenceError("'" + text + "' names no repository");
  for (char c : rest)
    if (std::isupper(static_cast<unsigned char>(c)))
      throw ReferenceError("'" + text + "': repository names must be lowercase");
  std::size_t start = 0;
  while (start <= rest.size()) {
    std::size_t end = rest.find('/', start);
    if (end == std::string::npos) end = rest.size();
    std::string comp = rest.substr(start, end - start);
    if (!valid_component(comp))
      throw ReferenceError("'" + text + "': '" + comp +
                           "' is not a valid repository path component (lowercase letters, digits, separators . _ __ -)");
    start = end + 1;
  }
  if (r.registry.empty() || r.registry == "index.docker.io" || r.registry == "registry-1.docker.io")
    r.registry = "docker.io";
  if (r.registry == "docker.io" && rest.find('/') == std::string::npos) rest = "library/" + rest;
  if (r.registry.size() + 1 + rest.size() > 255) throw ReferenceError("'" + text + "': repository name is too long");
  r.repository = rest;
  if (r.tag.empty() && r.digest.empty()) r.tag = "latest";
  return r;
}

}  // namespace kiln::registry
