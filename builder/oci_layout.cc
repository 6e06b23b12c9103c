// Reading and writing OCI image layouts.
#include "builder/oci_layout.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>
#include <system_error>

#include "builder/errors.h"
#include "layers/digest.h"
#include "layers/fsutil.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace kiln::builder {

namespace {

const char* kRefName = "org.opencontainers.image.ref.name";

std::string read_blob_verified(const fs::path& dir, const std::string& digest) {
  std::string s;
  fs::path p = dir / "blobs" / "sha256" / std::string(layers::digest_hex(digest));
  if (!layers::read_file_if_exists(p, &s))
    throw layers::InputError("layout " + dir.string() + " lacks blob " + digest + " (the layout is incomplete)");
  if (layers::sha256_digest(s) != digest)
    throw BaseError("layout " + dir.string() + ": blob " + digest + " does not match its digest (the layout is corrupt)");
  return s;
}

/// A layout's JSON file: malformed is bad input (exit 2), named, without nlohmann's "[json.exception…]".
json parse_json(const std::string& text, const std::string& what) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    std::string why = e.what();
    if (why.rfind("[json.exception.", 0) == 0 && why.find("] ") != std::string::npos) why = why.substr(why.find("] ") + 2);
    throw layers::InputError(what + " is not valid JSON (" + why + ")");
  }
}

bool is_index(const std::string& mt) { return mt == kIndexMediaType || mt == kDockerManifestListMediaType; }

bool platform_matches(const json& p, const Platform& want) {
  if (!p.is_object()) return false;
  if (p.value("os", "") != want.os || p.value("architecture", "") != want.architecture) return false;
  return want.variant.empty() || p.value("variant", "") == want.variant;
}

/// From an index's manifests, the descriptor for `tag` (or the only one) — or, for a nested
/// index, the entry matching the platform.
Descriptor pick(const json& index, const std::string& tag, const Platform* plat, const std::string& where) {
  const json& ms = index.value("manifests", json::array());
  std::vector<Descriptor> cands;
  for (const json& m : ms) cands.push_back(Descriptor::from_json(m));
  if (plat) {
    for (const auto& d : cands)
      if (platform_matches(d.platform, *plat)) return d;
    // The base exists but not for this platform: a property of the input (exit 2, as a
    // single-platform base of another platform is), not something to retry or look up elsewhere.
    throw BaseError(where + " has no image for platform " + plat->os + "/" + plat->architecture +
                    (plat->variant.empty() ? "" : "/" + plat->variant) + " (it has: " + platform_list(ms) +
                    "); kiln does not cross-build: set platform (or --platform) to one of these");
  }
  if (!tag.empty()) {
    for (const auto& d : cands) {
      auto it = d.annotations.find(kRefName);
      if (it != d.annotations.end() && it->second == tag) return d;
    }
    std::string known;
    for (const auto& d : cands) {
      auto it = d.annotations.find(kRefName);
      if (it != d.annotations.end()) known += (known.empty() ? "" : ", ") + it->second;
    }
    throw NotFoundError(where + " has no tag '" + tag + "'" + (known.empty() ? "" : " (tags: " + known + ")"));
  }
  if (cands.size() != 1)
    throw layers::InputError(where + " holds " + std::to_string(cands.size()) + " images; name one with oci:DIR:TAG");
  return cands[0];
}

json read_index(const fs::path& dir) {
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_directory(dir, ec))
    throw layers::InputError("'" + dir.string() + "' is not an OCI image layout (a layout is a directory)");
  std::string text;
  if (!layers::read_file_if_exists(dir / "index.json", &text))
    throw NotFoundError("'" + dir.string() + "' is not an OCI image layout (no index.json)");
  return parse_json(text, (dir / "index.json").string());
}

/// Follows index → (nested index →) manifest; returns the manifest descriptor (and, in `index`,
/// the first image index it went through).
Descriptor resolve(const fs::path& dir, const std::string& tag, const std::string& platform,
                   std::optional<IndexSummary>* index = nullptr) {
  Platform plat = parse_platform(platform);
  Descriptor d = pick(read_index(dir), tag, nullptr, "layout " + dir.string());
  for (int depth = 0; is_index(d.media_type); ++depth) {
    if (depth > 4) throw layers::InputError("layout " + dir.string() + ": image indexes nested too deep");
    json nested = parse_json(read_blob_verified(dir, d.digest), "index " + d.digest);
    if (index && !*index) *index = IndexSummary::from_json(d.digest, nested.value("manifests", json::array()));
    d = pick(nested, "", &plat, "layout " + dir.string() + (tag.empty() ? "" : ":" + tag) + " (index " + d.digest.substr(0, 19) + ")");
  }
  return d;
}

class DirLock {
 public:
  explicit DirLock(const fs::path& dir) {
    fs::path p = dir / ".kiln.lock";
    fd_ = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "cannot lock " + dir.string());
    while (::flock(fd_, LOCK_EX) != 0 && errno == EINTR) {
    }
  }
  ~DirLock() { ::close(fd_); }

 private:
  int fd_;
};

/// Puts a blob into the layout unless present; true when it wrote one.
bool put_blob(const fs::path& dir, const std::string& digest, std::uint64_t size, const fs::path* src,
              const std::string* bytes) {
  fs::path dest = dir / "blobs" / "sha256" / std::string(layers::digest_hex(digest));
  struct stat st{};
  // A blob already there is kept only when it is right: the store's own (verified) file, hardlinked,
  // or bytes that hash to its name. Anything else (a torn copy, a blob another tool or a person
  // changed) is replaced, atomically as always. A layout on another file system (a copy, not a
  // link) has its blobs hashed again on each write.
  if (::stat(dest.c_str(), &st) == 0 && static_cast<std::uint64_t>(st.st_size) == size) {
    struct stat ss{};
    if (src && ::stat(src->c_str(), &ss) == 0 && ss.st_dev == st.st_dev && ss.st_ino == st.st_ino) return false;
    try {
      std::string have;
      if (bytes ? layers::read_file_if_exists(dest, &have) && have == *bytes
                : "sha256:" + layers::sha256_file_hex(dest) == digest)
        return false;
    } catch (const std::exception&) {
      // unreadable: replaced below
    }
  }
  fs::path tmp = dir / layers::unique_name(".kiln-tmp");
  if (src) {
    layers::link_or_copy(*src, tmp);  // removes its partial copy when it fails
  } else {
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "cannot create " + tmp.string());
    try {
      layers::write_all(fd, bytes->data(), bytes->size(), tmp);
      if (::fsync(fd) != 0) throw std::system_error(errno, std::generic_category(), "fsync " + tmp.string());
    } catch (...) {
      ::close(fd);
      ::unlink(tmp.c_str());
      throw;
    }
    ::close(fd);
  }
  if (::rename(tmp.c_str(), dest.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw std::system_error(e, std::generic_category(), "cannot write blob " + digest);
  }
  return true;
}

}  // namespace

void split_oci_ref(const std::string& ref, fs::path* dir, std::string* tag) {
  std::string rest = ref.rfind("oci:", 0) == 0 ? ref.substr(4) : ref;
  std::size_t c = rest.rfind(':');
  if (c != std::string::npos && rest.find('/', c) == std::string::npos) {
    *dir = rest.substr(0, c);
    *tag = rest.substr(c + 1);
  } else {
    *dir = rest;
    tag->clear();
  }
  if (dir->empty()) throw layers::InputError("'" + ref + "' names no directory; use oci:DIR[:TAG]");
}

std::optional<IndexSummary> oci_layout_index_summary(const fs::path& dir, const std::string& tag) {
  Descriptor d = pick(read_index(dir), tag, nullptr, "layout " + dir.string());
  if (!is_index(d.media_type)) return std::nullopt;
  json idx = parse_json(read_blob_verified(dir, d.digest), "index " + d.digest);
  return IndexSummary::from_json(d.digest, idx.value("manifests", json::array()));
}

std::string resolve_oci_layout(const fs::path& dir, const std::string& tag, const std::string& platform) {
  if (platform.empty()) return pick(read_index(dir), tag, nullptr, "layout " + dir.string()).digest;
  return resolve(dir, tag, platform).digest;
}

namespace {

/// The image whose manifest `md` describes, every blob verified.
LayoutImage read_manifest(const fs::path& dir, const Descriptor& md) {
  std::string where = "image " + md.digest + " in " + dir.string();
  json manifest = parse_json(read_blob_verified(dir, md.digest), where);
  LayoutImage out;
  out.manifest_digest = md.digest;
  Descriptor cfgd = Descriptor::from_json(manifest.at("config"));
  out.image.config = parse_json(read_blob_verified(dir, cfgd.digest), "config of " + where);
  if (manifest.contains("annotations") && manifest["annotations"].is_object())
    for (const auto& [k, v] : manifest["annotations"].items())
      if (v.is_string()) out.image.annotations[k] = v.get<std::string>();
  const json& diff_ids = out.image.config.at("rootfs").at("diff_ids");
  const json& ls = manifest.value("layers", json::array());
  if (diff_ids.size() != ls.size())
    throw layers::InputError(where + ": " + std::to_string(ls.size()) + " layers but " +
                             std::to_string(diff_ids.size()) + " diff_ids");
  for (std::size_t i = 0; i < ls.size(); ++i) {
    Layer l;
    l.desc = Descriptor::from_json(ls[i]);
    l.diff_id = diff_ids[i].get<std::string>();
    l.blob = dir / "blobs" / "sha256" / std::string(layers::digest_hex(l.desc.digest));
    struct stat st{};
    if (::stat(l.blob.c_str(), &st) != 0)
      throw layers::InputError(where + " lacks layer blob " + l.desc.digest + " (the layout is incomplete)");
    if (static_cast<std::uint64_t>(st.st_size) != l.desc.size)
      throw BaseError(where + ": layer blob " + l.desc.digest + " has the wrong size (" + std::to_string(st.st_size) +
                      " bytes, the manifest says " + std::to_string(l.desc.size) + ")");
    out.image.layers.push_back(std::move(l));
  }
  return out;
}

}  // namespace

LayoutImage read_oci_layout(const fs::path& dir, const std::string& tag, const std::string& platform) {
  std::optional<IndexSummary> index;
  LayoutImage out = read_manifest(dir, resolve(dir, tag, platform, &index));
  out.index = std::move(index);
  return out;
}

std::optional<ImageIndex> read_oci_layout_index(const fs::path& dir, const std::string& tag) {
  const std::string where = "layout " + dir.string() + (tag.empty() ? "" : ":" + tag);
  Descriptor d = pick(read_index(dir), tag, nullptr, where);
  if (!is_index(d.media_type)) return std::nullopt;
  const std::string bytes = read_blob_verified(dir, d.digest);
  json idx = parse_json(bytes, "index " + d.digest);
  ImageIndex out;
  const std::string cannot = where + " names an image index that kiln cannot push as it is (";
  const std::string instead = "); push one platform with --platform, or the whole index with skopeo copy --all";
  for (const json& m : idx.value("manifests", json::array())) {
    Descriptor md = Descriptor::from_json(m);
    if (is_index(md.media_type)) throw layers::InputError(cannot + "it nests another index" + instead);
    const json& p = md.platform;
    if (!p.is_object() || !p.contains("os") || !p.contains("architecture"))
      throw layers::InputError(cannot + "an entry names no platform" + instead);
    const std::string platform = platform_string(p);
    LayoutImage li = read_manifest(dir, md);
    if (li.manifest_digest != li.image.manifest_digest())
      throw layers::InputError(cannot + "the manifest of " + platform + " is not in the form kiln writes" + instead);
    out.images.emplace_back(platform, std::move(li.image));
  }
  if (out.images.empty()) throw layers::InputError(cannot + "it is empty" + instead);
  if (out.digest() != d.digest)
    throw layers::InputError(cannot + "it is not in the form kiln writes" + instead);
  return out;
}

void check_oci_output(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return;
  if (!fs::is_directory(dir, ec))
    throw layers::InputError("'" + dir.string() + "' exists and is not a directory (an OCI image layout is one)");
  std::string text;
  if (layers::read_file_if_exists(dir / "index.json", &text)) {
    json index = parse_json(text, (dir / "index.json").string());
    if (!index.is_object() || (index.contains("manifests") && !index["manifests"].is_array()))
      throw layers::InputError((dir / "index.json").string() + " is not an OCI image index");
  }
  if (::access(dir.c_str(), W_OK) != 0)
    throw layers::InputError("cannot write the OCI layout '" + dir.string() + "': " + std::strerror(errno));
}

void stage_oci_layout(const Image& img, const fs::path& dir) {
  fs::create_directories(dir / "blobs" / "sha256");
  std::string cfg = img.config_bytes();
  std::string man = img.manifest_bytes();
  // Blobs first, each atomically; a crash here leaves only complete, unreferenced blobs.
  bool wrote = false;
  for (const Layer& l : img.layers) wrote |= put_blob(dir, l.desc.digest, l.desc.size, &l.blob, nullptr);
  wrote |= put_blob(dir, layers::sha256_digest(cfg), cfg.size(), nullptr, &cfg);
  wrote |= put_blob(dir, layers::sha256_digest(man), man.size(), nullptr, &man);
  if (wrote) layers::sync_dir(dir / "blobs" / "sha256");
}

namespace {

/// Points `tag` at `d` (a manifest or an index, staged already) in index.json, under the layout's
/// lock, atomically. Returns d's digest.
std::string tag_in_layout(const fs::path& dir, const Descriptor& target, const std::string& tag) {
  const std::string& man_digest = target.digest;
  DirLock lock(dir);
  std::string text;
  if (!layers::read_file_if_exists(dir / "oci-layout", &text))
    layers::atomic_write(dir / "oci-layout", "{\"imageLayoutVersion\":\"1.0.0\"}", dir);
  json index = {{"schemaVersion", 2}, {"mediaType", kIndexMediaType}, {"manifests", json::array()}};
  if (layers::read_file_if_exists(dir / "index.json", &text)) index = parse_json(text, (dir / "index.json").string());
  json kept = json::array();
  Descriptor d = target;
  if (!tag.empty()) d.annotations[kRefName] = tag;
  const json entry = d.to_json();
  bool unchanged = false;
  for (const json& m : index.value("manifests", json::array())) {
    bool same_tag = m.contains("annotations") && m["annotations"].value(kRefName, "") == tag;
    if (same_tag && !tag.empty()) {
      unchanged = m == entry;
      continue;
    }
    kept.push_back(m);
  }
  if (unchanged && !tag.empty()) return man_digest;  // the tag already points here: write nothing
  kept.push_back(entry);
  index["manifests"] = kept;
  if (!index.contains("mediaType")) index["mediaType"] = kIndexMediaType;
  layers::atomic_write(dir / "index.json", index.dump(), dir);
  return man_digest;
}

}  // namespace

std::string write_oci_layout(const Image& img, const fs::path& dir, const std::string& tag) {
  stage_oci_layout(img, dir);
  std::string man = img.manifest_bytes();
  return tag_in_layout(dir, Descriptor{kManifestMediaType, layers::sha256_digest(man), man.size(), {}, nullptr}, tag);
}

void stage_oci_layout(const ImageIndex& index, const fs::path& dir) {
  for (const auto& [platform, img] : index.images) stage_oci_layout(img, dir);
  std::string bytes = index.index_bytes();
  if (put_blob(dir, layers::sha256_digest(bytes), bytes.size(), nullptr, &bytes)) layers::sync_dir(dir / "blobs" / "sha256");
}

std::string write_oci_layout(const ImageIndex& index, const fs::path& dir, const std::string& tag) {
  stage_oci_layout(index, dir);
  std::string bytes = index.index_bytes();
  return tag_in_layout(dir, Descriptor{kIndexMediaType, layers::sha256_digest(bytes), bytes.size(), {}, nullptr}, tag);
}

}  // namespace kiln::builder
