// Cached unpacked trees (see rootfs.h).
#include "run/rootfs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <system_error>

#include "layers/digest.h"
#include "layers/fsutil.h"
#include "run/unpack.h"

namespace fs = std::filesystem;

namespace kiln::run {

std::string next_chain_id(const std::string& parent, const std::string& diff_id) {
  return parent.empty() ? diff_id : layers::sha256_digest(parent + " " + diff_id);
}

std::string chain_id(const std::vector<std::string>& diff_ids) {
  std::string c;
  for (const auto& d : diff_ids) c = next_chain_id(c, d);
  return c;
}

std::string base_chain_id(const std::vector<LayerBlob>& layers) {
  if (layers.empty()) return {};
  std::string text = "kiln-base-chain-v1";  // digests and diff_ids are fixed-form: no separator is ambiguous
  for (const auto& l : layers) {
    if (l.digest.empty()) throw std::logic_error("base_chain_id: a base layer without its blob digest");
    text += " " + l.digest + " " + l.diff_id;
  }
  return layers::sha256_digest(text);
}

void copy_tree(const fs::path& from, const fs::path& to) {
  // coreutils' cp keeps hardlinks, owners, modes, times and special files, and reflinks on
  // file systems that can; nothing in Debian's libraries does all of that.
  fs::create_directories(to);
  pid_t pid = ::fork();
  if (pid < 0) throw std::system_error(errno, std::generic_category(), "fork");
  if (pid == 0) {
    std::string src = (from / ".").string(), dst = to.string();
    ::execlp("cp", "cp", "-a", "--reflink=auto", "--", src.c_str(), dst.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error("cannot copy " + from.string() + " to " + to.string() + " (cp -a failed)");
}

RootfsCache::RootfsCache(const layers::Store& store) : store_(store), dir_(store.root() / "rootfs") {
  fs::create_directories(dir_);
  // The trees hold a base's files as the image has them (setuid binaries, world-writable
  // directories): no other user of the machine may reach them.
  if (::chmod(dir_.c_str(), 0700) != 0) throw std::system_error(errno, std::generic_category(), "cannot chmod " + dir_.string());
}

RootfsCache::Scratch::~Scratch() {
  if (dir_.empty()) return;
  try {
    layers::remove_tree(dir_);
  } catch (...) {
  }
}

RootfsCache::Scratch RootfsCache::scratch() const {
  fs::path d = store_.tmp_dir() / layers::unique_name("run");
  fs::create_directories(d);
  return Scratch(d);
}

fs::path RootfsCache::build(const std::string& name, const std::function<void(const fs::path&)>& fill) {
  fs::path final_dir = dir_ / name;
  auto touch = [&] { ::utimensat(AT_FDCWD, final_dir.c_str(), nullptr, 0); };  // last use, for prune
  std::error_code ec;
  if (fs::is_directory(final_dir, ec)) {
    touch();
    return final_dir;
  }
  layers::FileLock lock = store_.lock_layer("rootfs-" + name);
  if (fs::is_directory(final_dir, ec)) {
    touch();
    return final_dir;
  }
  fs::path tmp = dir_ / ("." + layers::unique_name(name));
  fs::create_directories(tmp);
  try {
    fill(tmp);
    // The tree's root keeps the mode a layer gave "/" (or 0755): steps see it as their "/".
    fs::rename(tmp, final_dir);
  } catch (...) {
    try {
      layers::remove_tree(tmp);
    } catch (...) {
    }
    throw;
  }
  return final_dir;
}

fs::path RootfsCache::flat(const std::vector<LayerBlob>& layers, const std::function<void(const std::string&)>& log) {
  std::string chain = base_chain_id(layers);
  std::string name = "flat-" + (chain.empty() ? std::string("scratch") : std::string(layers::digest_hex(chain)));
  return build(name, [&](const fs::path& tmp) {
    if (log && !layers.empty()) log("unpacking the base (" + std::to_string(layers.size()) + " layers) for RUN steps");
    ::chmod(tmp.c_str(), 0755);
    UnpackOptions o;
    o.format = UnpackFormat::Flat;
    o.preserve_owner = ::geteuid() == 0;
    // Each layer's content is checked against its diff_id as it is applied, so the tree only
    // ever gets the name of verified (blob, diff_id) pairs: a base that claims another image's
    // diff_ids can neither plant its files in that image's tree nor use that tree.
    for (std::size_t i = 0; i < layers.size(); ++i) {
      o.expect_diff_id = layers[i].diff_id;
      try {
        UnpackStats st = apply_layer(layers[i].blob, layers[i].media_type, tmp, o);
        if (log)
          for (const auto& w : st.warnings) log("base layer " + std::to_string(i + 1) + ": " + w);
      } catch (const UnpackError& e) {
        throw BaseLayerError("base layer " + std::to_string(i + 1) + " of " + std::to_string(layers.size()) + ": " + e.what());
      }
    }
  });
}

fs::path RootfsCache::adopt_diff(const std::string& chain, const fs::path& upper) {
  fs::path final_dir = dir_ / ("diff-" + std::string(layers::digest_hex(chain)));
  std::error_code ec;
  if (fs::is_directory(final_dir, ec)) return final_dir;
  layers::FileLock lock = store_.lock_layer("rootfs-" + final_dir.filename().string());
  if (fs::is_directory(final_dir, ec)) return final_dir;
  ::chmod(upper.c_str(), 0755);
  fs::rename(upper, final_dir);
  return final_dir;
}

fs::path RootfsCache::diff(const std::string& chain, const LayerBlob& layer) {
  return build("diff-" + std::string(layers::digest_hex(chain)), [&](const fs::path& tmp) {
    ::chmod(tmp.c_str(), 0755);
    UnpackOptions o;
    o.format = UnpackFormat::Overlay;
    o.preserve_owner = true;
    o.expect_diff_id = layer.diff_id;
    apply_layer(layer.blob, layer.media_type, tmp, o);
  });
}

}  // namespace kiln::run
