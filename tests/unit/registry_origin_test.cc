// Unit tests for the registry client's origin rules: which URLs share a registry's credentials
// (scheme, host and port, default ports filled in) and how Location headers resolve.
#include <catch2/catch.hpp>

#include "registry/client.h"
#include "registry/reference.h"
#include "spec/userinfo.h"

using kiln::registry::resolve_url;
using kiln::registry::url_origin;

TEST_CASE("url_origin: scheme, host and port, default ports filled in", "[registry]") {
  CHECK(url_origin("https://ghcr.io/v2/") == "https://ghcr.io:443");
  CHECK(url_origin("https://GHCR.io:443/v2/x?y=1") == "https://ghcr.io:443");
  CHECK(url_origin("http://127.0.0.1:5000/v2/") == "http://127.0.0.1:5000");
  CHECK(url_origin("http://127.0.0.1") == "http://127.0.0.1:80");
  CHECK(url_origin("https://[::1]:5000/v2/") == "https://[::1]:5000");
  CHECK(url_origin("https://user:pw@host.example/p") == "https://host.example:443");
  CHECK(url_origin("ftp://host/x").empty());
  CHECK(url_origin("/v2/relative").empty());
  // Credentials of one origin do not go to another.
  CHECK(url_origin("https://reg.example/v2/") != url_origin("http://reg.example/v2/"));
  CHECK(url_origin("http://127.0.0.1:5000/") != url_origin("http://127.0.0.1:5001/"));
  CHECK(url_origin("http://127.0.0.1:5000/") != url_origin("http://127.0.0.2:5000/"));
  CHECK(url_origin("https://reg.example/") != url_origin("https://reg.example.evil.com/"));
  CHECK(url_origin("https://reg.example@evil.com/") == "https://evil.com:443");
}

TEST_CASE("resolve_url: absolute, scheme-relative, absolute-path and relative Locations", "[registry]") {
  const std::string base = "https://reg.example:5000/v2/app/blobs/uploads/?x=1";
  CHECK(resolve_url(base, "https://cdn.example/blob") == "https://cdn.example/blob");
  CHECK(resolve_url(base, "//cdn.example/blob") == "https://cdn.example/blob");
  CHECK(resolve_url(base, "/v2/app/blobs/uploads/123") == "https://reg.example:5000/v2/app/blobs/uploads/123");
  CHECK(resolve_url(base, "123?state=s") == "https://reg.example:5000/v2/app/blobs/uploads/123?state=s");
}

TEST_CASE("references with credentials are refused, the credentials shown as ***", "[registry]") {
  using kiln::spec::redact_userinfo;
  CHECK(redact_userinfo("user:SECRET@host.example/x") == "***@host.example/x");
  CHECK(redact_userinfo("user:SECRET@host:5000/x:tag") == "***@host:5000/x:tag");
  CHECK(redact_userinfo("user:pa/ss@host/x") == "***@host/x");  // a '/' in the password
  CHECK(redact_userinfo("user:p@ss@host/x") == "***@host/x");   // an '@' in the password
  CHECK(redact_userinfo("user:SECRET@localhost:1") == "***@localhost:1");
  CHECK(redact_userinfo("user@localhost") == "***@localhost");
  CHECK(redact_userinfo("token@ghcr.io") == "***@ghcr.io");
  // References, not credentials.
  const std::string digest = "sha256:" + std::string(64, 'a');
  CHECK_FALSE(redact_userinfo("ubuntu"));
  CHECK_FALSE(redact_userinfo("ghcr.io/org/app:v1"));
  CHECK_FALSE(redact_userinfo("ubuntu@" + digest));
  CHECK_FALSE(redact_userinfo("ubuntu:22.04@" + digest));
  CHECK_FALSE(redact_userinfo("host:5000/org/app:v1@" + digest));
  CHECK_FALSE(redact_userinfo("ubuntu@sha256:short"));  // a bad digest: the parser says so
  CHECK_FALSE(redact_userinfo("ubuntu@latest"));
  // parse_reference refuses them without echoing the secret.
  try {
    kiln::registry::parse_reference("user:SECRET@host.example/x");
    FAIL("accepted a reference with credentials");
  } catch (const kiln::registry::ReferenceError& e) {
    const std::string what = e.what();
    CHECK(what.find("SECRET") == std::string::npos);
    CHECK(what.find("'***@host.example/x'") != std::string::npos);
  }
  CHECK(kiln::registry::parse_reference("ubuntu:22.04@" + digest).digest == digest);
}
