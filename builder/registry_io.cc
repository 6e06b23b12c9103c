// Registry source and sink, exists-check and preflight.
#include "builder/registry_io.h"

#include "builder/errors.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

#include "layers/digest.h"
#include "layers/parallel.h"

using nlohmann::json;
namespace fs = std::filesystem;
using kiln::registry::RegistryError;

namespace kiln::builder {

namespace {

bool is_index_type(const std::string& mt) { return mt == kIndexMediaType || mt == kDockerManifestListMediaType; }

/// OCI media type for a layer, docker's included (the bytes are the same).
std::string oci_layer_type(const std::string& mt) {
  if (mt == "application/vnd.docker.image.rootfs.diff.tar.gzip") return "application/vnd.oci.image.layer.v1.tar+gzip";
  if (mt == "application/vnd.docker.image.rootfs.diff.tar") return "application/vnd.oci.image.layer.v1.tar";
  return mt;
}

json parse(const std::string& bytes, const std::string& what) {
  try {
    return json::parse(bytes);
  } catch (const json::exception&) {
    throw RegistryError(RegistryError::Kind::Protocol, what + " is not valid JSON");
  }
}

/// Downloads one blob into the store (verified by the client and by the commit).
void download(registry::Client& c, const std::string& repo, const std::string& digest, layers::Store& store,
              Progress* progress, std::uint64_t size) {
  if (store.has_blob(digest)) return;
  auto w = store.new_blob();
  std::string id = "pull " + digest;
  if (progress) progress->begin(id, "pull " + digest.substr(0, 19), size);
  c.get_blob(repo, digest, [&](const void* d, std::size_t n) {
    w->write(d, n);
    if (progress) progress->advance(id, n);
  });
  w->commit(digest);
  if (progress) progress->end(id, "pulled " + digest.substr(0, 19));
}

}  // namespace

RegistrySession::RegistrySession(RegistrySettings settings, Progress* progress)
    : settings_(std::move(settings)), progress_(progress) {}

registry::Client& RegistrySession::client(const std::string& reg) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = clients_.find(reg);
  if (it != clients_.end()) return *it->second;
  registry::ClientOptions o;
  o.docker_config = registry::docker_config_path(settings_.docker_config);
  registry::Reference probe;
  probe.registry = reg;
  o.allow_http = settings_.allow_http.count(reg) > 0 || probe.is_loopback();
  o.prefer_http = probe.is_loopback();
  o.skip_tls_verify = settings_.skip_tls_verify.count(reg) > 0;
  o.ca_file = settings_.ca_file;
  o.max_attempts = settings_.max_attempts;
  o.trace = settings_.trace;
  Progress* p = progress_;
  if (p) o.log = [p](const std::string& line) { p->log(line); };
  auto c = std::make_unique<registry::Client>(reg, o);
  auto& ref = *c;
  clients_.emplace(reg, std::move(c));
  return ref;
}

std::uint64_t RegistrySession::requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::uint64_t n = 0;
  for (auto& [_, c] : clients_) n += c->requests();
  return n;
}

std::string resolve_remote(RegistrySession& s, const registry::Reference& ref, const std::string& platform,
                           layers::Store& store, std::optional<IndexSummary>* index) {
  registry::Client& c = s.client(ref.registry);
  registry::Manifest m = c.get_manifest(ref.repository, ref.manifest_ref());
  store.put_bytes(m.bytes);
  if (!is_index_type(m.media_type)) return m.digest;
  json idx = parse(m.bytes, "index " + ref.str());
  if (index) *index = IndexSummary::from_json(m.digest, idx.value("manifests", json::array()));
  if (platform.empty()) return m.digest;
  Platform want = parse_platform(platform);
  for (const json& e : idx.value("manifests", json::array())) {
    const json& p = e.value("platform", json::object());
    if (p.value("os", "") == want.os && p.value("architecture", "") == want.architecture &&
        (want.variant.empty() || p.value("variant", "") == want.variant)) {
      std::string d = e.at("digest").get<std::string>();
      if (!store.has_blob(d)) store.put_bytes(c.get_manifest(ref.repository, d).bytes);
      return d;
    }
  }
  // The image exists but not for this platform: an input problem (exit 2), as a single-platform
  // base of another platform is; retrying or logging in again cannot help.
  throw BaseError(ref.str() + " has no image for platform " + platform + " (it has: " +
                  platform_list(idx.value("manifests", json::array())) +
                  "); kiln does not cross-build: set platform (or --platform) to one of these");
}

RemoteImage pull_remote(RegistrySession& s, const registry::Reference& ref, const std::string& platform,
                        layers::Store& store) {
  RemoteImage out;
  out.manifest_digest = resolve_remote(s, ref, platform, store, &out.index);
  registry::Client& c = s.client(ref.registry);
  json man = parse(store.read_bytes(out.manifest_digest), "manifest " + out.manifest_digest);
  if (man.contains("annotations") && man["annotations"].is_object())
    for (const auto& [k, v] : man["annotations"].items())
      if (v.is_string()) out.image.annotations[k] = v.get<std::string>();
  Descriptor cfg = Descriptor::from_json(man.at("config"));
  if (!store.has_blob(cfg.digest)) download(c, ref.repository, cfg.digest, store, nullptr, cfg.size);
  out.image.config = parse(store.read_bytes(cfg.digest), "config " + cfg.digest);
  const json& diff_ids = out.image.config.at("rootfs").at("diff_ids");
  const json& ls = man.value("layers", json::array());
  if (diff_ids.size() != ls.size())
    throw RegistryError(RegistryError::Kind::Protocol, ref.str() + ": layer count does not match the config's diff_ids");
  for (std::size_t i = 0; i < ls.size(); ++i) {
    Layer l;
    l.desc = Descriptor::from_json(ls[i]);
    l.desc.media_type = oci_layer_type(l.desc.media_type);
    l.diff_id = diff_ids[i].get<std::string>();
    l.blob = store.blob_path(l.desc.digest);
    l.remote = RemoteBlob{ref.registry, ref.repository};
    out.image.layers.push_back(std::move(l));
  }
  return out;
}

void fetch_layers(RegistrySession& s, const Image& img, layers::Store& store) {
  std::vector<const Layer*> todo;
  for (const Layer& l : img.layers)
    if (l.remote && !store.has_blob(l.desc.digest)) todo.push_back(&l);
  layers::parallel_for(todo.size(), s.settings().jobs, [&](std::size_t i) {
    const Layer& l = *todo[i];
    download(s.client(l.remote->registry), l.remote->repository, l.desc.digest, store, s.progress(), l.desc.size);
  });
}

std::optional<std::string> remote_exists(RegistrySession& s, const registry::Reference& ref, bool* repo_missing) {
  return s.client(ref.registry).head_manifest(ref.repository, ref.manifest_ref(), repo_missing);
}

namespace {

/// Authenticates for a push to `target`; returns what its tag names now ("" when nothing, or when
/// the registry will not say).
std::string start_push(registry::Client& c, const registry::Reference& target) {
  c.authenticate({registry::push_scope(target.repository)});
  try {
    if (!target.tag.empty())
      if (auto prev = c.head_manifest(target.repository, target.tag)) return *prev;
  } catch (const RegistryError& e) {
    if (e.kind() == RegistryError::Kind::Unauthorized || e.kind() == RegistryError::Kind::Denied) throw;
  }
  return "";
}

/// Puts the manifest (or index) last, under the tag (or its digest), and fills in what `r`
/// reports of it.
void put_last(registry::Client& c, const registry::Reference& target, const std::string& bytes, const char* media_type,
              PushResult& r) {
  r.digest = c.put_manifest(target.repository, target.tag.empty() ? layers::sha256_digest(bytes) : target.tag, bytes,
                            media_type);
  if (r.previous_digest == r.digest) r.previous_digest.clear();
  registry::Reference done = target;
  done.digest = r.digest;
  r.reference = done.str();
}

}  // namespace

PushResult push_remote(RegistrySession& s, const Image& img, const registry::Reference& target, layers::Store& store) {
  registry::Client& c = s.client(target.registry);
  const std::string& repo = target.repository;
  Progress* progress = s.progress();
  PushResult r;
  r.previous_digest = start_push(c, target);
  std::string cfg = img.config_bytes();
  std::string cfg_digest = store.put_bytes(cfg);
  struct Blob {
    std::string digest;
    std::uint64_t size;
    fs::path path;
    const std::optional<RemoteBlob>* remote;
  };
  std::vector<Blob> blobs;
  std::set<std::string> seen;
  for (const Layer& l : img.layers)
    if (seen.insert(l.desc.digest).second) blobs.push_back({l.desc.digest, l.desc.size, l.blob, &l.remote});
  static const std::optional<RemoteBlob> none;
  blobs.push_back({cfg_digest, cfg.size(), store.blob_path(cfg_digest), &none});
  std::mutex mu;
  layers::parallel_for(blobs.size(), s.settings().jobs, [&](std::size_t i) {
    const Blob& b = blobs[i];
    if (c.blob_size(repo, b.digest)) {
      std::lock_guard<std::mutex> lock(mu);
      ++r.skipped;
      return;
    }
    const auto& remote = *b.remote;
    if (remote && remote->registry == target.registry && remote->repository != repo &&
        c.mount_blob(repo, b.digest, remote->repository)) {
      std::lock_guard<std::mutex> lock(mu);
      ++r.mounted;
      return;
    }
    if (remote && !store.has_blob(b.digest))
      download(s.client(remote->registry), remote->repository, b.digest, store, progress, b.size);
    std::string id = "push " + b.digest;
    if (progress) progress->begin(id, "push " + b.digest.substr(0, 19), b.size);
    c.upload_blob(repo, b.digest, b.size, b.path, [&](std::uint64_t n) {
      if (progress) progress->advance(id, n);
    });
    if (progress) progress->end(id, "pushed " + b.digest.substr(0, 19));
    std::lock_guard<std::mutex> lock(mu);
    ++r.uploaded;
    r.bytes_uploaded += b.size;
  });
  put_last(c, target, img.manifest_bytes(), kManifestMediaType, r);
  return r;
}

PushResult push_remote(RegistrySession& s, const ImageIndex& index, const registry::Reference& target,
                       layers::Store& store) {
  registry::Client& c = s.client(target.registry);
  PushResult r;
  r.previous_digest = start_push(c, target);
  registry::Reference by_digest = target;
  by_digest.tag.clear();
  by_digest.digest.clear();
  for (const auto& [platform, img] : index.images) {
    PushResult one = push_remote(s, img, by_digest, store);
    r.uploaded += one.uploaded;
    r.skipped += one.skipped;
    r.mounted += one.mounted;
    r.bytes_uploaded += one.bytes_uploaded;
  }
  put_last(c, target, index.index_bytes(), kIndexMediaType, r);
  return r;
}

PreflightReport preflight(RegistrySession& s, const std::string& text, bool describe_repository) {
  auto t0 = std::chrono::steady_clock::now();
  PreflightReport rep;
  auto step = [&](const std::string& name, bool ok, const std::string& msg) { rep.steps.push_back({name, ok, msg}); };
  auto finish = [&] {
    rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return rep;
  };
  registry::Reference ref;
  try {
    ref = registry::parse_reference(text);
    step("reference", true, ref.str());
  } catch (const registry::ReferenceError& e) {
    step("reference", false, e.what());
    rep.failure = RegistryError::Kind::Protocol;
    return finish();
  }
  registry::Client& c = s.client(ref.registry);
  const std::string repo = ref.repository;
  auto failed = [&](const std::string& name, const RegistryError& e) {
    step(name, false, e.what());
    rep.failure = e.kind();
    return finish();
  };
  try {
    c.ping();
    step("reachable", true, ref.registry + " answers the registry API");
  } catch (const RegistryError& e) {
    return failed("reachable", e);
  }
  try {
    c.authenticate({registry::push_scope(repo)});
    step("credentials", true, "accepted");
  } catch (const RegistryError& e) {
    return failed("credentials", e);
  }
  // Was a tag written? ("host:5000/repo" has a ':' only before the last '/').
  const std::string last = text.substr(text.rfind('/') == std::string::npos ? 0 : text.rfind('/'));
  const bool explicit_tag = last.find(':') != std::string::npos && !ref.tag.empty();
  if (describe_repository) try {
    bool name_unknown = false;
    auto d = c.head_manifest(repo, ref.tag.empty() ? "latest" : ref.tag, &name_unknown);
    if (name_unknown) step("repository", true, repo + " does not exist yet; a push creates it");
    else if (d && explicit_tag) step("repository", true, repo + " exists; tag " + ref.tag + " is at " + *d + " and would move");
    else step("repository", true, repo + " exists" + (explicit_tag ? "; tag " + ref.tag + " is new" : ""));
  } catch (const RegistryError& e) {
    // A push-only credential may not read: that is no reason to stop a push.
    if (e.kind() != RegistryError::Kind::Denied && e.kind() != RegistryError::Kind::Unauthorized) return failed("repository", e);
    step("repository", true, "cannot be read with these credentials (push may still be allowed)");
  }
  try {
    std::string loc = c.start_upload(repo);
    c.cancel_upload(loc, repo);
    step("push", true, "an upload session opened and was cancelled: push is permitted");
  } catch (const RegistryError& e) {
    if (e.kind() == RegistryError::Kind::Unauthorized && c.has_credentials()) {
      RegistryError denied(RegistryError::Kind::Denied,
                           std::string("push to ") + ref.name() + " is not permitted with these credentials (" + e.what() + ")",
                           e.status(), e.code());
      return failed("push", denied);
    }
    if (e.kind() == RegistryError::Kind::NameUnknown) {
      RegistryError missing(RegistryError::Kind::NameUnknown,
                            "repository " + ref.name() + " does not exist and the registry does not create it on push (" +
                                e.what() + ")",
                            e.status(), e.code());
      return failed("push", missing);
    }
    return failed("push", e);
  }
  rep.ok = true;
  return finish();
}

}  // namespace kiln::builder
