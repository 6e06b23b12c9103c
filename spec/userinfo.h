// Credentials written into an image reference or a registry, URL-style: "user:password@host/repo".
// Docker's references have no such syntax, so kiln refuses them up front, and never echoes one:
// the user[:password] is shown as "***". Used by the spec (fields registry and base_image) and by
// registry::parse_reference (every command that takes a reference). Header-only: spec/ sits below
// registry/, and both need it.
#pragma once

#include <cctype>
#include <optional>
#include <string>

namespace kiln::spec {

/// `text` with its user[:password]@ replaced by "***@" when it carries one, else nullopt.
///
/// An '@' in a reference only introduces a digest ("name@sha256:…"), which never holds a '/'. So
/// an '@' with a '/' after it (in "user:pw@host/repo", or in a password holding '/') ends
/// credentials. With no '/' after the last '@' ("user:pw@host", "user@localhost:5000"), the part
/// after it is credentials' host unless it looks like a digest (an algorithm and a colon): the part
/// before holds a ':' or another '@', or the part after a '.' or a ':', or is "localhost". A typo
/// like "ubuntu@latest" is left to the parser, which says the digest is wrong.
inline std::optional<std::string> redact_userinfo(const std::string& text) {
  const std::size_t slash = text.rfind('/');
  std::size_t at = std::string::npos;
  if (slash != std::string::npos) at = text.rfind('@', slash);  // the last '@' with a '/' after it
  if (at == std::string::npos) {
    at = text.rfind('@');
    if (at == std::string::npos) return std::nullopt;
    const std::string before = text.substr(0, at), after = text.substr(at + 1);
    // A digest: an algorithm ("sha256", "sha512", "blake3"…), then ':' and the encoded hash.
    const std::size_t colon = after.find(':');
    bool digest_like = colon != std::string::npos && colon > 0 && after.find('.') == std::string::npos;
    if (digest_like) {
      const std::string algo = after.substr(0, colon), encoded = after.substr(colon + 1);
      for (char c : algo) digest_like &= std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '_' || c == '-';
      bool hex = !encoded.empty();
      for (char c : encoded) hex &= std::isxdigit(static_cast<unsigned char>(c)) != 0;
      // "localhost:5000" is a host and a port; "sha256:abc" a (short) digest.
      digest_like &= algo.rfind("sha", 0) == 0 || (hex && encoded.size() >= 32);
    }
    if (digest_like && before.find('@') == std::string::npos) return std::nullopt;
    const bool credentials = before.find(':') != std::string::npos || before.find('@') != std::string::npos ||
                             after.find('.') != std::string::npos || after.find(':') != std::string::npos ||
                             after == "localhost" || digest_like;
    if (!credentials) return std::nullopt;
  }
  return "***" + text.substr(at);
}

/// The message for a reference (or registry) that carries credentials, naming it redacted.
inline std::string userinfo_message(const std::string& redacted) {
  return "'" + redacted +
         "': a registry reference cannot hold credentials (user[:password]@ before the host); kiln reads them "
         "from docker's config.json (docker login, $DOCKER_CONFIG, --registry-config, the spec's registry_config)";
}

}  // namespace kiln::spec
