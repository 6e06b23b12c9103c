// Applying an OCI layer to a directory (see unpack.h).
//
// Every name is resolved component by component from a descriptor of the root with
// O_NOFOLLOW, so neither a hostile layer nor a symlink an earlier layer left behind can make kiln
// write outside the root; what libarchive reads is written with *at() calls on those descriptors.
#include "run/unpack.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <set>
#include <system_error>

namespace fs = std::filesystem;

namespace kiln::run {

namespace {

/// An owned file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

[[noreturn]] void sys_fail(const std::string& what, const std::string& path) {
  throw std::system_error(errno, std::generic_category(), what + " " + path);
}

/// "a/b/c" → {"a", "b", "c"}; throws on absolute names and ".." (a leading "./" and "." segments
/// are dropped, as tar writers emit them).
std::vector<std::string> split_checked(const std::string& name, const fs::path& blob) {
  if (!name.empty() && name[0] == '/')
    throw UnpackError(blob.string() + ": layer entry '" + name + "' is an absolute path");
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (start <= name.size()) {
    std::size_t slash = name.find('/', start);
    std::string part = name.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (part == "..") throw UnpackError(blob.string() + ": layer entry '" + name + "' leaves the root (\"..\")");
    if (!part.empty() && part != ".") parts.push_back(part);
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return parts;
}

std::string join(const std::vector<std::string>& parts, std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < n; ++i) s += (i ? "/" : "") + parts[i];
  return s;
}

/// Removes `name` in `dirfd`, whatever it is (a directory with everything in it).
void remove_at(int dirfd, const std::string& name, const std::string& shown) {
  struct stat st{};
  if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return;
    sys_fail("cannot stat", shown);
  }
  if (!S_ISDIR(st.st_mode)) {
    if (::unlinkat(dirfd, name.c_str(), 0) != 0 && errno != ENOENT) sys_fail("cannot remove", shown);
    return;
  }
  {
    Fd d(::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!d) sys_fail("cannot open", shown);
    ::fchmod(d.get(), 0700);  // a 0555 directory must still be emptied
    int dup = ::dup(d.get());
    DIR* dir = dup >= 0 ? ::fdopendir(dup) : nullptr;
    if (!dir) sys_fail("cannot read", shown);
    std::vector<std::string> names;
    while (struct dirent* e = ::readdir(dir))
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.emplace_back(e->d_name);
    ::closedir(dir);
    for (const auto& n : names) remove_at(d.get(), n, shown + "/" + n);
  }
  if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) sys_fail("cannot remove", shown);
}

struct Applier {
  const fs::path& blob;
  const UnpackOptions& opts;
  Fd root;
  UnpackStats stats;
  std::set<std::string> written;  // paths this layer created or replaced
  struct DirMeta {
    std::string path;
    mode_t mode;
    struct timespec mtime;
  };
  std::vector<DirMeta> dirs;  // modes and times are set last: children change a dir's mtime

  /// Opens the directory `parts[0..n)` below the root, creating missing ones (0755) when
  /// `create`. A component that is a symlink or not a directory is refused.
  Fd open_dir(const std::vector<std::string>& parts, std::size_t n, bool create, const std::string& entry) {
    Fd cur(::dup(root.get()));
    for (std::size_t i = 0; i < n; ++i) {
      Fd next(::openat(cur.get(), parts[i].c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!next && errno == ENOENT && create) {
        if (::mkdirat(cur.get(), parts[i].c_str(), 0755) != 0 && errno != EEXIST)
          sys_fail("cannot create directory", join(parts, i + 1));
        next = Fd(::openat(cur.get(), parts[i].c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      }
      if (!next) {
        if (errno == ELOOP || errno == ENOTDIR)
          throw UnpackError(blob.string() + ": layer entry '" + entry + "' goes through '" + join(parts, i + 1) +
                            "', which is not a directory (a symlink would lead outside the root)");
        sys_fail("cannot open directory", join(parts, i + 1));
      }
      cur = std::move(next);
    }
    return cur;
  }

  void whiteout(const std::vector<std::string>& parts, const std::string& entry) {
    ++stats.whiteouts;
    const std::string& base = parts.back();
    const std::string parent = join(parts, parts.size() - 1);
    Fd dir = open_dir(parts, parts.size() - 1, true, entry);
    if (base == ".wh..wh..opq") {
      if (opts.format == UnpackFormat::Overlay) {
        if (::fsetxattr(dir.get(), "trusted.overlay.opaque", "y", 1, 0) != 0)
          sys_fail("cannot mark opaque (needs root)", parent);
        return;
      }
      // Everything lower layers put here goes; what this layer wrote already stays.
      int dup = ::dup(dir.get());
      DIR* d = dup >= 0 ? ::fdopendir(dup) : nullptr;
      if (!d) sys_fail("cannot read", parent);
      std::vector<std::string> names;
      while (struct dirent* e = ::readdir(d))
        if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.emplace_back(e->d_name);
      ::closedir(d);
      for (const auto& n : names) {
        std::string child = parent.empty() ? n : parent + "/" + n;
        if (!written.count(child)) remove_at(dir.get(), n, child);
      }
      return;
    }
    const std::string name = base.substr(4);
    if (name.empty() || name == "." || name == "..")
      throw UnpackError(blob.string() + ": layer entry '" + entry + "' is not a valid whiteout");
    const std::string target = parent.empty() ? name : parent + "/" + name;
    if (opts.format == UnpackFormat::Overlay) {
      remove_at(dir.get(), name, target);
      if (::mknodat(dir.get(), name.c_str(), S_IFCHR | 0, makedev(0, 0)) != 0)
        sys_fail("cannot create whiteout (needs root)", target);
      return;
    }
    if (!written.count(target)) remove_at(dir.get(), name, target);
  }

  void owner_and_mode(int fd, const std::string& path, archive_entry* ae, bool is_dir) {
    if (opts.preserve_owner &&
        ::fchown(fd, static_cast<uid_t>(archive_entry_uid(ae)), static_cast<gid_t>(archive_entry_gid(ae))) != 0)
      sys_fail("cannot set the owner of", path);
    mode_t mode = archive_entry_perm(ae) & 07777;
    if (is_dir) {
      struct timespec t{archive_entry_mtime(ae), archive_entry_mtime_nsec(ae)};
      dirs.push_back({path, mode, t});
      return;
    }
    if (::fchmod(fd, mode) != 0) sys_fail("cannot set the mode of", path);  // after chown: keeps setuid
  }

  void extract(struct archive* a, archive_entry* ae) {
    const char* raw = archive_entry_pathname(ae);
    if (!raw) throw UnpackError(blob.string() + ": a layer entry has no name");
    const std::string entry = raw;
    std::vector<std::string> parts = split_checked(entry, blob);
    if (parts.empty()) return;  // "./": the root itself
    ++stats.entries;
    const std::string path = join(parts, parts.size());
    const std::string& base = parts.back();
    if (base.rfind(".wh.", 0) == 0) {
      whiteout(parts, entry);
      return;
    }
    Fd dir = open_dir(parts, parts.size() - 1, true, entry);
    const char* hardlink = archive_entry_hardlink(ae);
    const mode_t type = hardlink ? AE_IFREG : archive_entry_filetype(ae);

    struct stat old{};
    const bool exists = ::fstatat(dir.get(), base.c_str(), &old, AT_SYMLINK_NOFOLLOW) == 0;
    if (type == AE_IFDIR) {
      if (exists && !S_ISDIR(old.st_mode)) remove_at(dir.get(), base, path);
      if ((!exists || !S_ISDIR(old.st_mode)) && ::mkdirat(dir.get(), base.c_str(), 0700) != 0)
        sys_fail("cannot create directory", path);
      Fd d(::openat(dir.get(), base.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!d) sys_fail("cannot open directory", path);
      owner_and_mode(d.get(), path, ae, true);
      written.insert(path);
      return;
    }
    if (exists) remove_at(dir.get(), base, path);
    written.insert(path);

    if (hardlink) {
      std::vector<std::string> tparts = split_checked(hardlink, blob);
      if (tparts.empty()) throw UnpackError(blob.string() + ": hardlink '" + entry + "' has no target");
      Fd tdir = open_dir(tparts, tparts.size() - 1, false, entry);
      struct stat tst{};
      if (::fstatat(tdir.get(), tparts.back().c_str(), &tst, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(tst.st_mode))
        throw UnpackError(blob.string() + ": hardlink '" + entry + "' points at '" + hardlink +
                          "', which is not a file in the layer's tree");
      if (::linkat(tdir.get(), tparts.back().c_str(), dir.get(), base.c_str(), 0) != 0)
        sys_fail("cannot link", path);
      return;
    }
    switch (type) {
      case AE_IFREG: {
        Fd f(::openat(dir.get(), base.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
        if (!f) sys_fail("cannot create", path);
        const void* buf;
        size_t size;
        la_int64_t offset;
        for (;;) {
          int r = archive_read_data_block(a, &buf, &size, &offset);
          if (r == ARCHIVE_EOF) break;
          if (r < ARCHIVE_WARN)
            throw UnpackError(blob.string() + ": cannot read '" + entry + "': " + archive_error_string(a));
          const char* p = static_cast<const char*>(buf);
          while (size > 0) {
            ssize_t n = ::pwrite(f.get(), p, size, offset);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) sys_fail("cannot write", path);
            p += n;
            size -= static_cast<size_t>(n);
            offset += n;
            stats.bytes += static_cast<std::uint64_t>(n);
          }
        }
        // Sparse files end in a hole that no block covers.
        if (archive_entry_size_is_set(ae) && ::ftruncate(f.get(), archive_entry_size(ae)) != 0)
          sys_fail("cannot size", path);
        owner_and_mode(f.get(), path, ae, false);
        struct timespec t[2] = {{0, UTIME_OMIT}, {archive_entry_mtime(ae), archive_entry_mtime_nsec(ae)}};
        ::futimens(f.get(), t);
        return;
      }
      case AE_IFLNK: {
        const char* target = archive_entry_symlink(ae);
        if (::symlinkat(target ? target : "", dir.get(), base.c_str()) != 0) sys_fail("cannot create symlink", path);
        if (opts.preserve_owner &&
            ::fchownat(dir.get(), base.c_str(), static_cast<uid_t>(archive_entry_uid(ae)),
                       static_cast<gid_t>(archive_entry_gid(ae)), AT_SYMLINK_NOFOLLOW) != 0)
          sys_fail("cannot set the owner of", path);
        struct timespec t[2] = {{0, UTIME_OMIT}, {archive_entry_mtime(ae), archive_entry_mtime_nsec(ae)}};
        ::utimensat(dir.get(), base.c_str(), t, AT_SYMLINK_NOFOLLOW);
        return;
      }
      case AE_IFIFO:
      case AE_IFCHR:
      case AE_IFBLK: {
        if (type != AE_IFIFO && !opts.preserve_owner) {
          stats.warnings.push_back("skipped device node /" + path + " (creating it needs root)");
          written.erase(path);
          return;
        }
        dev_t dev = type == AE_IFIFO ? 0 : makedev(archive_entry_rdevmajor(ae), archive_entry_rdevminor(ae));
        if (::mknodat(dir.get(), base.c_str(), type | 0600, dev) != 0) sys_fail("cannot create node", path);
        if (opts.preserve_owner &&
            ::fchownat(dir.get(), base.c_str(), static_cast<uid_t>(archive_entry_uid(ae)),
                       static_cast<gid_t>(archive_entry_gid(ae)), AT_SYMLINK_NOFOLLOW) != 0)
          sys_fail("cannot set the owner of", path);
        if (::fchmodat(dir.get(), base.c_str(), archive_entry_perm(ae) & 07777, 0) != 0)
          sys_fail("cannot set the mode of", path);
        return;
      }
      default:
        stats.warnings.push_back("skipped /" + path + ": an entry type layers do not hold");
        written.erase(path);
    }
  }

  /// Directory modes and times, deepest first (a 0555 parent must not block its children).
  void finish_dirs() {
    for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
      std::vector<std::string> parts = split_checked(it->path, blob);
      Fd d;
      try {
        d = open_dir(parts, parts.size(), false, it->path);
      } catch (const std::exception&) {
        continue;  // removed again later in the layer
      }
      if (::fchmod(d.get(), it->mode) != 0) sys_fail("cannot set the mode of", it->path);
      struct timespec t[2] = {{0, UTIME_OMIT}, it->mtime};
      ::futimens(d.get(), t);
    }
  }
};

bool known_media_type(const std::string& mt) {
  static const char* types[] = {
      "application/vnd.oci.image.layer.v1.tar",
      "application/vnd.oci.image.layer.v1.tar+gzip",
      "application/vnd.oci.image.layer.v1.tar+zstd",
      "application/vnd.oci.image.layer.nondistributable.v1.tar",
      "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
      "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
      "application/vnd.docker.image.rootfs.diff.tar.gzip",
      "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
      "application/vnd.docker.image.rootfs.diff.tar",
  };
  for (const char* t : types)
    if (mt == t) return true;
  return false;
}

}  // namespace

UnpackStats apply_layer(const fs::path& blob, const std::string& media_type, const fs::path& root,
                        const UnpackOptions& opts) {
  if (!known_media_type(media_type))
    throw UnpackError(blob.string() + ": cannot unpack a layer of media type '" + media_type + "'");
  Applier ap{blob, opts, Fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)), {}, {}, {}};
  if (!ap.root) sys_fail("cannot open", root.string());

  struct archive* a = archive_read_new();
  if (!a) throw std::runtime_error("libarchive: out of memory");
  struct Guard {
    struct archive* a;
    ~Guard() { archive_read_free(a); }
  } guard{a};
  archive_read_support_filter_all(a);  // gzip, zstd, or none: the media type names one of them
  archive_read_support_format_tar(a);
  archive_read_support_format_gnutar(a);
  if (archive_read_open_filename(a, blob.c_str(), 1 << 20) != ARCHIVE_OK)
    throw UnpackError(blob.string() + ": cannot read the layer: " + archive_error_string(a));
  struct archive_entry* ae = nullptr;
  for (;;) {
    int r = archive_read_next_header(a, &ae);
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN)
      throw UnpackError(blob.string() + ": corrupt or truncated layer: " + archive_error_string(a));
    ap.extract(a, ae);
  }
  ap.finish_dirs();
  return std::move(ap.stats);
}

}  // namespace kiln::run
