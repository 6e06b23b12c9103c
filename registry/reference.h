// Image references as docker and containerd parse them: [host[:port]/]repo[:tag][@digest], with
// docker.io as the default registry and "library/" for its one-component names.
#pragma once

#include <stdexcept>
#include <string>

namespace kiln::registry {

class ReferenceError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

struct Reference {
  std::string registry;    // "docker.io", "localhost:5000", "ghcr.io"
  std::string repository;  // "library/python", "org/app"
  std::string tag;         // "" when only a digest is given
  std::string digest;      // "sha256:…" or ""

  /// The host to talk to ("registry-1.docker.io" for docker.io).
  std::string api_host() const;
  /// "registry/repository" (docker.io kept explicit).
  std::string name() const;
  /// name:tag, name@digest or name:tag@digest.
  std::string str() const;
  /// The tag, else the digest: what /v2/<repo>/manifests/<ref> takes.
  std::string manifest_ref() const { return digest.empty() ? tag : digest; }
  /// Is the registry on this machine (localhost, 127.0.0.0/8, ::1)?
  bool is_loopback() const;
};

/// Parses a reference; a missing tag and digest gives tag "latest". Throws ReferenceError with a
/// message that says what is wrong; a reference with credentials in it ("user:pw@host/repo") is
/// refused with them shown as "***" (spec/userinfo.h).
Reference parse_reference(const std::string& text);

}  // namespace kiln::registry
