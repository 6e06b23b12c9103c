// The registry as a source and a sink of images: pull a base (resolving an index to the
// platform, verifying every digest, layers fetched only when needed), push an image (skipping
// blobs the registry has, mounting from other repositories), check whether a tag exists, and
// the push-permission preflight ("dry push").
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "builder/image.h"
#include "builder/progress.h"
#include "layers/store.h"
#include "registry/client.h"
#include "registry/reference.h"

namespace kiln::builder {

/// Registry settings shared by every client of one run.
struct RegistrySettings {
  std::filesystem::path docker_config;          // config.json ("" = the default lookup)
  std::set<std::string> allow_http;             // hosts that may be spoken to in plain HTTP
  std::set<std::string> skip_tls_verify;        // hosts whose certificate is not checked
  std::string ca_file;                          // extra CA bundle
  int jobs = 4;                                 // parallel blob transfers
  int max_attempts = 5;
  bool trace = false;                           // log each request (method, URL, status; no secrets)
};

/// One client per registry host, shared by sources and sinks.
class RegistrySession {
 public:
  RegistrySession(RegistrySettings settings, Progress* progress);
  registry::Client& client(const std::string& registry);
  const RegistrySettings& settings() const { return settings_; }
  Progress* progress() const { return progress_; }
  std::uint64_t requests() const;

 private:
  RegistrySettings settings_;
  Progress* progress_;
  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<registry::Client>> clients_;
};

/// The manifest digest `ref` resolves to for `platform` (an index is resolved; with `platform` "",
/// not: the digest `ref` names, verified). Manifests and configs read along the way are kept in
/// the store.
std::string resolve_remote(RegistrySession& s, const registry::Reference& ref, const std::string& platform,
                           layers::Store& store, std::optional<IndexSummary>* index = nullptr);

/// The image at `ref` for `platform`. Layers are not downloaded: each Layer has `remote` set and
/// `blob` pointing where fetch_layers() puts it in the store.
struct RemoteImage {
  Image image;
  std::string manifest_digest;
  std::optional<IndexSummary> index;  // the reference named an image index, resolved to the platform
};
RemoteImage pull_remote(RegistrySession& s, const registry::Reference& ref, const std::string& platform,
                        layers::Store& store);

/// Downloads the layers of `img` that are remote and not in the store yet (verified).
void fetch_layers(RegistrySession& s, const Image& img, layers::Store& store);

struct PushResult {
  std::string reference;          // registry/repo:tag@sha256:…
  std::string digest;
  std::size_t uploaded = 0, skipped = 0, mounted = 0;
  std::uint64_t bytes_uploaded = 0;
  std::string previous_digest;    // what the tag pointed at before, when it moved
};
/// Pushes `img` to `target` (its tag), blobs first (HEAD, mount or upload, in parallel), the
/// manifest last: a failed push never leaves a tag pointing at a half-pushed image.
PushResult push_remote(RegistrySession& s, const Image& img, const registry::Reference& target, layers::Store& store);
/// Pushes a multi-platform image: each platform's image by digest (its blobs, then its manifest),
/// then the index, under `target`'s tag, last.
PushResult push_remote(RegistrySession& s, const ImageIndex& index, const registry::Reference& target,
                       layers::Store& store);

/// Does `ref` exist? `repo_missing` tells a missing repository from a missing tag.
std::optional<std::string> remote_exists(RegistrySession& s, const registry::Reference& ref, bool* repo_missing);

/// The dry push: every check that a push to `target` will work, without pushing anything.
struct PreflightStep {
  std::string name;      // "reference", "reachable", "credentials", "repository", "push"
  bool ok = false;
  std::string message;
};
struct PreflightReport {
  std::vector<PreflightStep> steps;
  bool ok = false;
  std::optional<registry::RegistryError::Kind> failure;
  double seconds = 0;
};
/// `describe_repository` adds the (informational) repository check: whether the repository and
/// tag exist. Builds skip it, since their exists-check asks that anyway.
PreflightReport preflight(RegistrySession& s, const std::string& target, bool describe_repository = true);

}  // namespace kiln::builder
