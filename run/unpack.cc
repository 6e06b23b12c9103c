// Applying an OCI layer to a directory (see unpack.h).
//
// libarchive only reads the tar; every change to the tree is made here, relative to directory fds
// opened one component at a time with O_NOFOLLOW. So no name in the layer — and no symlink that an
// earlier entry or an earlier layer planted — can make a write land outside the root: a path
// through a symlink is refused, and a symlink or file that is replaced is unlinked first, never
// written through.
//
// Same-layer rule (image-spec "whiteouts"): a whiteout or an opaque marker hides what lower layers
// put there, never what the layer itself holds, and tar order does not matter. The applier keeps
// the set of paths the current layer wrote (closed under parents); removals skip those and only
// descend into them.
#include "run/unpack.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <locale.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <string_view>
#include <system_error>
#include <unordered_set>
#include <utility>

#include <zlib.h>
#include <zstd.h>

#include "layers/compress.h"
#include "layers/digest.h"
#include "layers/unique_fd.h"
#include "layers/utf8_locale.h"

namespace fs = std::filesystem;

namespace kiln::run {

namespace {

constexpr std::string_view kWhiteoutPrefix = ".wh.";
constexpr std::string_view kOpaqueMarker = ".wh..wh..opq";
constexpr std::string_view kAufsMetaPrefix = ".wh..wh.";  // aufs bookkeeping (.wh..wh.plnk, ...)
constexpr const char* kOpaqueXattr = "trusted.overlay.opaque";
constexpr const char* kUserOpaqueXattr = "user.overlay.opaque";

using Fd = layers::UniqueFd;

[[noreturn]] void sys_fail(const std::string& what, int err = errno) {
  throw std::system_error(err, std::generic_category(), what);
}

/// Splits a name from the layer into components: a leading "./" (any number of them), empty and
/// "." components are dropped; an absolute name or a ".." component is refused. Returns why the
/// name is refused, or "" when it is fine. No components at all means the root itself.
std::string split_name(std::string_view name, std::vector<std::string>* parts) {
  parts->clear();
  if (name.empty()) return "empty name";
  if (name.front() == '/') return "absolute name";
  std::size_t start = 0;
  while (start <= name.size()) {
    std::size_t end = name.find('/', start);
    if (end == std::string_view::npos) end = name.size();
    std::string_view seg = name.substr(start, end - start);
    if (seg == "..") return "'..' in the name";
    if (!seg.empty() && seg != ".") parts->emplace_back(seg);
    start = end + 1;
  }
  return "";
}

std::string join(const std::vector<std::string>& parts, std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    if (i) s += '/';
    s += parts[i];
  }
  return s;
}

std::string child_path(const std::string& dir, const std::string& name) {
  return dir.empty() ? name : dir + "/" + name;
}

bool is_overlay_whiteout(const struct stat& st) { return S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0); }

/// How errors name a layer: by its digest when it sits in a blobs/sha256/ directory.
std::string layer_name(const fs::path& blob) {
  if (blob.parent_path().filename() == "sha256") return "sha256:" + blob.filename().string();
  return blob.string();
}

/// The character devices every container gets from its runtime (and a RUN step from the sandbox's
/// own /dev): harmless, and not worth failing a build over when a base ships them.
bool standard_char_device(unsigned major, unsigned minor) {
  if (major == 1) return minor == 3 || minor == 5 || minor == 7 || minor == 8 || minor == 9;  // null zero full random urandom
  if (major == 5) return minor <= 2;                                                          // tty console ptmx
  return false;
}

/// The uncompressed stream of a layer blob, for libarchive's read callback: the codec is told by
/// the magic bytes (a few images label plain tars as gzip), the output is hashed as it goes out,
/// and how much one read may produce is bounded whatever the compression ratio.
class LayerStream {
 public:
  LayerStream(int fd, std::string name) : fd_(fd), name_(std::move(name)), in_(1 << 16), out_(1 << 18) {}
  ~LayerStream() {
    if (gz_init_) inflateEnd(&gz_);
    if (zs_) ZSTD_freeDStream(zs_);
  }
  LayerStream(const LayerStream&) = delete;
  LayerStream& operator=(const LayerStream&) = delete;

  /// The next piece of the uncompressed stream (0 at its end). Throws UnpackError when corrupt.
  std::size_t next(const void** buf) {
    if (!started_) start();
    std::size_t n = 0;
    while (n == 0 && !done_) {
      switch (codec_) {
        case Codec::Plain: n = next_plain(); break;
        case Codec::Gzip: n = next_gzip(); break;
        case Codec::Zstd: n = next_zstd(); break;
      }
    }
    if (n) {
      diff_.update(out_.data(), n);
      total_ += n;
    }
    *buf = out_.data();
    return n;
  }
  /// Reads (and hashes) what the tar reader left: padding after the end-of-archive blocks.
  void drain() {
    const void* b = nullptr;
    while (next(&b) > 0) {
    }
  }
  std::string diff_id() { return diff_.digest(); }

 private:
  enum class Codec { Plain, Gzip, Zstd };
  [[noreturn]] void corrupt(const std::string& why) const { throw UnpackError("corrupt layer " + name_ + ": " + why); }

  /// Refills the input buffer when empty; false at the end of the file.
  bool fill() {
    if (in_pos_ < in_len_) return true;
    if (in_eof_) return false;
    for (;;) {
      ssize_t r = ::read(fd_, in_.data(), in_.size());
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) sys_fail("cannot read layer " + name_);
      in_pos_ = 0;
      in_len_ = static_cast<std::size_t>(r);
      if (r == 0) in_eof_ = true;
      return r > 0;
    }
  }
  void start() {
    started_ = true;
    // The magic needs up to 4 bytes; a read may return fewer (a pipe, a tiny blob): gather them.
    while (in_len_ < 4 && !in_eof_) {
      ssize_t r = ::read(fd_, in_.data() + in_len_, in_.size() - in_len_);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) sys_fail("cannot read layer " + name_);
      if (r == 0) in_eof_ = true;
      in_len_ += static_cast<std::size_t>(r);
    }
    const auto* m = reinterpret_cast<const unsigned char*>(in_.data());
    if (in_len_ >= 2 && m[0] == 0x1f && m[1] == 0x8b) {
      codec_ = Codec::Gzip;
      if (inflateInit2(&gz_, 15 + 16) != Z_OK) throw std::runtime_error("zlib: cannot start inflating");
      gz_init_ = true;
    } else if (in_len_ >= 4 && m[0] == 0x28 && m[1] == 0xb5 && m[2] == 0x2f && m[3] == 0xfd) {
      codec_ = Codec::Zstd;
      zs_ = ZSTD_createDStream();
      if (!zs_) throw std::runtime_error("zstd: out of memory");
    }
  }
  std::size_t next_plain() {
    if (!fill()) {
      done_ = true;
      return 0;
    }
    std::size_t n = std::min(out_.size(), in_len_ - in_pos_);
    std::copy_n(in_.data() + in_pos_, n, out_.data());
    in_pos_ += n;
    return n;
  }
  // Each decoder is called once more with no input when the file has ended: output it could not
  // hand out (the output buffer was full) is still in it.
  std::size_t next_gzip() {
    const bool have = fill();
    if (gz_member_done_) {
      // Another gzip member may follow (concatenated gzip); anything else after a complete member
      // (zero padding some tools add) is not part of the tar.
      if (!have || static_cast<unsigned char>(in_[in_pos_]) != 0x1f) {
        done_ = true;
        return 0;
      }
      if (inflateReset(&gz_) != Z_OK) corrupt("gzip stream");
      gz_member_done_ = false;
    }
    gz_.next_in = have ? reinterpret_cast<Bytef*>(in_.data() + in_pos_) : nullptr;
    gz_.avail_in = have ? static_cast<uInt>(in_len_ - in_pos_) : 0;
    gz_.next_out = reinterpret_cast<Bytef*>(out_.data());
    gz_.avail_out = static_cast<uInt>(out_.size());
    int r = inflate(&gz_, Z_NO_FLUSH);
    if (have) in_pos_ = in_len_ - gz_.avail_in;
    const std::size_t produced = out_.size() - gz_.avail_out;
    if (r == Z_STREAM_END) {
      gz_member_done_ = true;
    } else if (r == Z_BUF_ERROR) {
      if (!have && produced == 0) corrupt("truncated gzip stream");
    } else if (r != Z_OK) {
      corrupt(std::string("gzip: ") + (gz_.msg ? gz_.msg : "invalid data"));
    }
    return produced;
  }
  std::size_t next_zstd() {
    const bool have = fill();
    if (!have && !zs_pending_) {
      done_ = true;
      return 0;
    }
    ZSTD_inBuffer in{have ? in_.data() + in_pos_ : nullptr, have ? in_len_ - in_pos_ : 0, 0};
    ZSTD_outBuffer out{out_.data(), out_.size(), 0};
    std::size_t r = ZSTD_decompressStream(zs_, &out, &in);
    if (ZSTD_isError(r)) corrupt(std::string("zstd: ") + ZSTD_getErrorName(r));
    in_pos_ += in.pos;
    zs_pending_ = r != 0;
    if (!have && out.pos == 0) {
      if (zs_pending_) corrupt("truncated zstd stream");
      done_ = true;
    }
    return out.pos;
  }

  int fd_;
  std::string name_;
  std::vector<char> in_, out_;
  std::size_t in_pos_ = 0, in_len_ = 0;
  bool in_eof_ = false, started_ = false, done_ = false;
  Codec codec_ = Codec::Plain;
  z_stream gz_{};
  bool gz_init_ = false, gz_member_done_ = false;
  ZSTD_DStream* zs_ = nullptr;
  bool zs_pending_ = false;
  layers::Sha256 diff_;
  std::uint64_t total_ = 0;
};

/// Applies the entries of one layer to a tree. One instance per apply_layer call.
class Applier {
 public:
  Applier(const fs::path& blob, const fs::path& root, const UnpackOptions& opts)
      : blob_(blob), root_(root), opts_(opts), privileged_(::geteuid() == 0) {
    root_fd_ = Fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!root_fd_) sys_fail("cannot open " + root.string());
    if (!privileged_) make_usable(root_fd_.get(), "");
  }

  void apply(struct archive* a, struct archive_entry* ae);
  /// Restores directory modes and mtimes, deepest first; call once all entries are applied.
  void finish();
  UnpackStats& stats() { return stats_; }

 private:
  /// Permission bits and mtime to give a directory once the layer is applied. A directory is
  /// written into with its owner's rwx bits set; the recorded mode goes on at the end.
  struct DirMeta {
    mode_t mode = 0755;
    bool has_mtime = false;
    struct timespec mtime{};
  };
  enum class Walk {
    Create,    // make missing directories (and replace non-directories) on the way
    Existing,  // return an empty Fd when a component is missing or not a directory
    Probe,     // as Existing, and a symlink on the way is not an error either
  };

  [[noreturn]] void refuse(const std::string& why) const {
    throw UnpackError("layer " + layer_name(blob_) + ": refusing entry '" + entry_name_ + "': " + why);
  }
  std::string full(const std::string& rel) const { return rel.empty() ? root_.string() : (root_ / rel).string(); }

  Fd walk(const std::vector<std::string>& parts, std::size_t n, Walk how);
  int parent_dir(const std::vector<std::string>& parts, Walk how);
  void make_usable(int fd, const std::string& rel);
  bool make_room(int dirfd, const std::string& name, const std::string& rel, bool keep_dir, bool* was_whiteout);
  void remove_at(int dirfd, const std::string& name, const std::string& rel);
  void clear_dir(int fd, const std::string& rel);
  void clear_unwritten(int fd, const std::string& rel);
  std::vector<std::string> list_dir(int fd, const std::string& rel);
  void mark_written(const std::string& rel);
  void set_opaque(int dirfd, const std::string& rel);

  void whiteout(const std::vector<std::string>& parts);
  void write_file(struct archive* a, struct archive_entry* ae, int dirfd, const std::string& name,
                  const std::string& rel);
  void hardlink(const char* target, int dirfd, const std::string& name, const std::string& rel);
  void set_owner(int dirfd, const std::string& name, const std::string& rel, struct archive_entry* ae);
  void set_mtime(int dirfd, const std::string& name, const std::string& rel, struct archive_entry* ae);

  const fs::path blob_, root_;
  const UnpackOptions opts_;
  const bool privileged_;  // root: no permission fix-ups needed
  Fd root_fd_;
  UnpackStats stats_;
  std::string entry_name_;  // the current entry, as named in the layer

  // Paths (relative to the root) this layer created or wrote, with all their parents.
  std::unordered_set<std::string> written_;
  // Directories whose final mode (and mtime) is applied by finish(); "" is the root.
  std::map<std::string, DirMeta> dir_meta_;
  bool finishing_ = false;

  // The parent directory of the last entry: tars list a directory's entries together, so most
  // entries skip the walk from the root. Dropped when anything at or above it is removed.
  std::string cached_path_;
  Fd cached_fd_;
  bool cached_valid_ = false;
};

/// Without root, a directory the layer (or a lower one) made read-only would stop later entries:
/// give the owner rwx now, and put the old mode back in finish().
void Applier::make_usable(int fd, const std::string& rel) {
  if (privileged_ || finishing_) return;
  struct stat st{};
  if (::fstat(fd, &st) != 0) sys_fail("cannot stat " + full(rel));
  if ((st.st_mode & 0700) == 0700 || st.st_uid != ::geteuid()) return;
  if (::fchmod(fd, (st.st_mode & 07777) | 0700) != 0) sys_fail("cannot chmod " + full(rel));
  dir_meta_.try_emplace(rel, DirMeta{static_cast<mode_t>(st.st_mode & 07777), false, {}});
}

/// Opens the directory made of the first `n` components below the root, one component at a time,
/// never following a symlink (refused, except when probing).
Fd Applier::walk(const std::vector<std::string>& parts, std::size_t n, Walk how) {
  Fd cur(::fcntl(root_fd_.get(), F_DUPFD_CLOEXEC, 0));
  if (!cur) sys_fail("cannot open " + root_.string());
  std::string rel;
  for (std::size_t i = 0; i < n; ++i) {
    const std::string& name = parts[i];
    rel = child_path(rel, name);
    bool created = false;
    for (int attempt = 0;; ++attempt) {
      int fd = ::openat(cur.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd >= 0) {
        cur = Fd(fd);
        // A parent the layer does not list gets 0755 whatever the umask, as with tar.
        if (created && ::fchmod(cur.get(), 0755) != 0) sys_fail("cannot chmod " + full(rel));
        break;
      }
      const int err = errno;
      if (attempt > 1) sys_fail("cannot open directory " + full(rel), err);
      struct stat st{};
      if (::fstatat(cur.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno != ENOENT) sys_fail("cannot stat " + full(rel));
        if (how != Walk::Create) return Fd();
        if (::mkdirat(cur.get(), name.c_str(), 0755) != 0) sys_fail("cannot create " + full(rel));
        created = true;
        continue;
      }
      if (S_ISLNK(st.st_mode)) {
        if (how == Walk::Probe) return Fd();
        refuse("'" + rel + "' is a symlink");
      }
      if (!S_ISDIR(st.st_mode)) {
        if (how != Walk::Create) return Fd();
        // A lower layer's file where this layer has a directory: the directory wins.
        remove_at(cur.get(), name, rel);
        continue;
      }
      // A directory we may not enter (no root): open it up, if it is ours.
      if (err != EACCES || privileged_ || finishing_ || st.st_uid != ::geteuid())
        sys_fail("cannot open " + full(rel), err);
      if (::fchmodat(cur.get(), name.c_str(), (st.st_mode & 07777) | 0700, 0) != 0)
        sys_fail("cannot chmod " + full(rel));
      dir_meta_.try_emplace(rel, DirMeta{static_cast<mode_t>(st.st_mode & 07777), false, {}});
    }
    make_usable(cur.get(), rel);
  }
  return cur;
}

/// The directory holding the last component of `parts`, from the cache when it is the same one
/// as the last entry's. Returns -1 when it does not exist (not with Walk::Create). The fd stays
/// valid until the next call.
int Applier::parent_dir(const std::vector<std::string>& parts, Walk how) {
  std::string rel = join(parts, parts.size() - 1);
  if (cached_valid_ && rel == cached_path_) return cached_fd_.get();
  Fd fd = walk(parts, parts.size() - 1, how);
  if (!fd) return -1;
  cached_fd_ = std::move(fd);
  cached_path_ = std::move(rel);
  cached_valid_ = true;
  return cached_fd_.get();
}

void Applier::mark_written(const std::string& rel) {
  std::string p = rel;
  while (!p.empty() && written_.insert(p).second) {
    std::size_t slash = p.rfind('/');
    p.resize(slash == std::string::npos ? 0 : slash);
  }
}

std::vector<std::string> Applier::list_dir(int fd, const std::string& rel) {
  int dfd = ::openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) sys_fail("cannot open " + full(rel));
  DIR* d = ::fdopendir(dfd);
  if (!d) {
    int err = errno;
    ::close(dfd);
    sys_fail("cannot read " + full(rel), err);
  }
  std::vector<std::string> names;
  errno = 0;
  while (struct dirent* de = ::readdir(d)) {
    std::string_view n = de->d_name;
    if (n != "." && n != "..") names.emplace_back(n);
    errno = 0;
  }
  int err = errno;
  ::closedir(d);
  if (err) sys_fail("cannot read " + full(rel), err);
  return names;
}

/// Removes `name` in `dirfd` and, for a directory, everything below it. Nothing is followed.
void Applier::remove_at(int dirfd, const std::string& name, const std::string& rel) {
  if (cached_valid_ && (cached_path_ == rel || cached_path_.starts_with(rel + "/"))) cached_valid_ = false;
  if (::unlinkat(dirfd, name.c_str(), 0) == 0 || errno == ENOENT) return;
  const int unlink_err = errno;
  if (unlink_err != EISDIR && unlink_err != EPERM) sys_fail("cannot remove " + full(rel));  // EPERM: BSDs
  int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0 && errno == EACCES && !privileged_) {
    ::fchmodat(dirfd, name.c_str(), 0700, 0);  // going away anyway
    fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  }
  if (fd < 0) sys_fail("cannot remove " + full(rel), errno == ENOTDIR || errno == ELOOP ? unlink_err : errno);
  {
    Fd dir(fd);
    if (!privileged_) ::fchmod(dir.get(), 0700);
    clear_dir(dir.get(), rel);
  }
  if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) != 0) sys_fail("cannot remove " + full(rel));
}

void Applier::clear_dir(int fd, const std::string& rel) {
  for (const std::string& n : list_dir(fd, rel)) remove_at(fd, n, child_path(rel, n));
}

/// Removes what lower layers put below the directory `fd`: every child this layer did not write,
/// and, in the children it did write, the same again.
void Applier::clear_unwritten(int fd, const std::string& rel) {
  for (const std::string& n : list_dir(fd, rel)) {
    std::string c = child_path(rel, n);
    if (!written_.count(c)) {
      remove_at(fd, n, c);
      continue;
    }
    struct stat st{};
    if (::fstatat(fd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) sys_fail("cannot stat " + full(c));
    if (!S_ISDIR(st.st_mode)) continue;
    Fd sub(::openat(fd, n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!sub) sys_fail("cannot open " + full(c));
    make_usable(sub.get(), c);
    clear_unwritten(sub.get(), c);
  }
}

void Applier::set_opaque(int dirfd, const std::string& rel) {
  if (::fsetxattr(dirfd, kOpaqueXattr, "y", 1, 0) != 0)
    sys_fail("cannot set " + std::string(kOpaqueXattr) + " on " + full(rel));
  // The same marker for an overlay mounted from a user namespace (userxattr), as RUN steps run.
  if (::fsetxattr(dirfd, kUserOpaqueXattr, "y", 1, 0) != 0)
    sys_fail("cannot set " + std::string(kUserOpaqueXattr) + " on " + full(rel));
}

/// Clears the way for a new entry `name`: whatever is there goes, unless it is a directory and
/// `keep_dir` (a directory entry merges into an existing directory). Returns whether a directory
/// was kept; `was_whiteout` tells whether an overlay whiteout was replaced.
bool Applier::make_room(int dirfd, const std::string& name, const std::string& rel, bool keep_dir, bool* was_whiteout) {
  *was_whiteout = false;
  struct stat st{};
  if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return false;
    sys_fail("cannot stat " + full(rel));
  }
  if (keep_dir && S_ISDIR(st.st_mode)) return true;
  *was_whiteout = is_overlay_whiteout(st);
  remove_at(dirfd, name, rel);
  return false;
}

void Applier::set_owner(int dirfd, const std::string& name, const std::string& rel, struct archive_entry* ae) {
  if (!opts_.preserve_owner) return;
  if (::fchownat(dirfd, name.c_str(), static_cast<uid_t>(archive_entry_uid(ae)),
                 static_cast<gid_t>(archive_entry_gid(ae)), AT_SYMLINK_NOFOLLOW) != 0)
    sys_fail("cannot chown " + full(rel));
}

void Applier::set_mtime(int dirfd, const std::string& name, const std::string& rel, struct archive_entry* ae) {
  struct timespec ts[2];
  ts[0].tv_sec = ts[1].tv_sec = archive_entry_mtime(ae);
  ts[0].tv_nsec = ts[1].tv_nsec = archive_entry_mtime_nsec(ae);
  if (::utimensat(dirfd, name.c_str(), ts, AT_SYMLINK_NOFOLLOW) != 0) sys_fail("cannot set the mtime of " + full(rel));
}

/// `.wh.NAME` and `.wh..wh..opq`: removals in flat form, markers in overlay form.
void Applier::whiteout(const std::vector<std::string>& parts) {
  const std::string& leaf = parts.back();
  const std::string dir_rel = join(parts, parts.size() - 1);
  ++stats_.whiteouts;

  if (leaf == kOpaqueMarker) {
    Fd dir = walk(parts, parts.size() - 1, Walk::Create);  // the directory is part of this layer
    mark_written(dir_rel);
    if (opts_.format == UnpackFormat::Overlay)
      set_opaque(dir.get(), dir_rel);
    else
      clear_unwritten(dir.get(), dir_rel);
    return;
  }

  std::string name = leaf.substr(kWhiteoutPrefix.size());
  if (name.empty() || name == "." || name == "..") refuse("whiteout of '" + name + "'");
  const std::string rel = child_path(dir_rel, name);
  const bool overlay = opts_.format == UnpackFormat::Overlay;
  int dirfd = parent_dir(parts, overlay ? Walk::Create : Walk::Existing);
  if (dirfd < 0) return;  // flat: nothing there to remove
  struct stat st{};
  const bool exists = ::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
  if (!exists && errno != ENOENT) sys_fail("cannot stat " + full(rel));

  if (exists && written_.count(rel)) {
    // The layer has NAME too: it stays, and only what lower layers had below it goes.
    if (!S_ISDIR(st.st_mode)) return;
    Fd sub(::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!sub) sys_fail("cannot open " + full(rel));
    make_usable(sub.get(), rel);
    if (overlay)
      set_opaque(sub.get(), rel);
    else
      clear_unwritten(sub.get(), rel);
    return;
  }
  if (exists) remove_at(dirfd, name, rel);
  if (!overlay) return;
  mark_written(dir_rel);
  // overlayfs' whiteout: a character device 0/0.
  if (::mknodat(dirfd, name.c_str(), S_IFCHR | 0, makedev(0, 0)) != 0) sys_fail("cannot create whiteout " + full(rel));
}

/// A regular file, streamed from the archive (sparse holes stay holes).
void Applier::write_file(struct archive* a, struct archive_entry* ae, int dirfd, const std::string& name,
                         const std::string& rel) {
  Fd fd(::openat(dirfd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) sys_fail("cannot create " + full(rel));
  la_int64_t end = 0;
  for (;;) {
    const void* buf = nullptr;
    std::size_t size = 0;
    la_int64_t offset = 0;
    int r = archive_read_data_block(a, &buf, &size, &offset);
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN)
      throw UnpackError("corrupt layer " + layer_name(blob_) + " at '" + entry_name_ +
                        "': " + (archive_error_string(a) ? archive_error_string(a) : "read error"));
    const char* p = static_cast<const char*>(buf);
    std::size_t left = size;
    off_t at = static_cast<off_t>(offset);
    while (left > 0) {
      ssize_t n = ::pwrite(fd.get(), p, left, at);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) sys_fail("cannot write " + full(rel));
      p += n;
      at += n;
      left -= static_cast<std::size_t>(n);
    }
    stats_.bytes += size;
    end = std::max<la_int64_t>(end, offset + static_cast<la_int64_t>(size));
  }
  if (archive_entry_size_is_set(ae) && archive_entry_size(ae) > end &&
      ::ftruncate(fd.get(), static_cast<off_t>(archive_entry_size(ae))) != 0)  // a trailing hole
    sys_fail("cannot write " + full(rel));
  // Owner before mode: chown clears setuid/setgid.
  if (opts_.preserve_owner &&
      ::fchown(fd.get(), static_cast<uid_t>(archive_entry_uid(ae)), static_cast<gid_t>(archive_entry_gid(ae))) != 0)
    sys_fail("cannot chown " + full(rel));
  if (::fchmod(fd.get(), archive_entry_perm(ae) & 07777) != 0) sys_fail("cannot chmod " + full(rel));
  // File capabilities, after the chown (which clears them); setting them needs root.
  if (opts_.preserve_owner) {
    const char* name = nullptr;
    const void* value = nullptr;
    std::size_t size = 0;
    archive_entry_xattr_reset(ae);
    while (archive_entry_xattr_next(ae, &name, &value, &size) == ARCHIVE_OK)
      if (name && std::string_view(name) == "security.capability" &&
          ::fsetxattr(fd.get(), name, value, size, 0) != 0)
        sys_fail("cannot set the file capabilities of " + full(rel));
  }
  struct timespec ts[2];
  ts[0].tv_sec = ts[1].tv_sec = archive_entry_mtime(ae);
  ts[0].tv_nsec = ts[1].tv_nsec = archive_entry_mtime_nsec(ae);
  if (::futimens(fd.get(), ts) != 0) sys_fail("cannot set the mtime of " + full(rel));
}

/// A hardlink to an earlier entry (or a lower layer's file). The target is looked up like any
/// name — inside the root, through no symlink — and must not be a directory. (It may be a symlink
/// or a special file: linkat does not follow it, and tar writers do link those.)
void Applier::hardlink(const char* target, int dirfd, const std::string& name, const std::string& rel) {
  std::vector<std::string> tparts;
  if (std::string why = split_name(target, &tparts); !why.empty())
    refuse("hardlink target '" + std::string(target) + "': " + why);
  if (tparts.empty()) refuse("hardlink to the root");
  const std::string trel = join(tparts, tparts.size());
  if (trel == rel) return;  // a link to itself: already there
  bool was_whiteout = false;
  make_room(dirfd, name, rel, false, &was_whiteout);
  Fd tdir = walk(tparts, tparts.size() - 1, Walk::Existing);
  struct stat st{};
  if (!tdir || ::fstatat(tdir.get(), tparts.back().c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
    refuse("hardlink target '" + trel + "' does not exist");
  if (S_ISDIR(st.st_mode)) refuse("hardlink target '" + trel + "' is a directory");
  if (::linkat(tdir.get(), tparts.back().c_str(), dirfd, name.c_str(), 0) != 0)
    sys_fail("cannot link " + full(rel) + " to " + full(trel));
}

void Applier::apply(struct archive* a, struct archive_entry* ae) {
  ++stats_.entries;
  const char* raw = archive_entry_pathname(ae);
  entry_name_ = raw ? raw : "";
  if (!raw) refuse("no usable name");
  std::vector<std::string> parts;
  if (std::string why = split_name(raw, &parts); !why.empty()) refuse(why);
  const char* link = archive_entry_hardlink(ae);
  const auto type = archive_entry_filetype(ae);
  if (parts.empty()) {
    // "./": the root is the caller's (containerd ignores this entry too).
    if (type != AE_IFDIR || link) refuse("names the root but is not a directory");
    return;
  }
  for (std::size_t i = 0; i + 1 < parts.size(); ++i)
    if (std::string_view(parts[i]).starts_with(kAufsMetaPrefix)) return;  // inside .wh..wh.plnk/ etc.
  const std::string& leaf = parts.back();
  if (leaf.starts_with(kWhiteoutPrefix)) {
    if (leaf != kOpaqueMarker && std::string_view(leaf).starts_with(kAufsMetaPrefix)) return;
    whiteout(parts);
    return;
  }

  const std::string rel = join(parts, parts.size());
  const int dirfd = parent_dir(parts, Walk::Create);
  bool was_whiteout = false;
  if (link) {
    hardlink(link, dirfd, leaf, rel);
    mark_written(rel);
    return;
  }
  const mode_t perm = archive_entry_perm(ae) & 07777;
  switch (type) {
    case AE_IFDIR: {
      if (!make_room(dirfd, leaf, rel, true, &was_whiteout) && ::mkdirat(dirfd, leaf.c_str(), 0700) != 0)
        sys_fail("cannot create " + full(rel));
      if (was_whiteout && opts_.format == UnpackFormat::Overlay) {
        // This layer whited NAME out and then made it a directory: lower NAME/ stays hidden.
        Fd sub(::openat(dirfd, leaf.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!sub) sys_fail("cannot open " + full(rel));
        set_opaque(sub.get(), rel);
      }
      set_owner(dirfd, leaf, rel, ae);
      DirMeta& m = dir_meta_[rel];  // replaces a fix-up recorded for a lower layer's directory
      m.mode = perm;
      m.has_mtime = true;
      m.mtime.tv_sec = archive_entry_mtime(ae);
      m.mtime.tv_nsec = archive_entry_mtime_nsec(ae);
      break;
    }
    case AE_IFREG:
      make_room(dirfd, leaf, rel, false, &was_whiteout);
      write_file(a, ae, dirfd, leaf, rel);
      break;
    case AE_IFLNK: {
      const char* target = archive_entry_symlink(ae);
      if (!target) refuse("symlink without a target");
      make_room(dirfd, leaf, rel, false, &was_whiteout);
      if (::symlinkat(target, dirfd, leaf.c_str()) != 0) sys_fail("cannot create symlink " + full(rel));
      set_owner(dirfd, leaf, rel, ae);
      set_mtime(dirfd, leaf, rel, ae);
      break;
    }
    case AE_IFCHR:
    case AE_IFBLK: {
      // Never made: a device node in a tree a RUN step runs on could open the host's disks or
      // memory. The usual /dev entries are harmless to skip (the sandbox brings its own /dev).
      const unsigned major = archive_entry_rdevmajor(ae), minor = archive_entry_rdevminor(ae);
      const std::string what = std::string(type == AE_IFBLK ? "block" : "character") + " device " +
                               std::to_string(major) + ":" + std::to_string(minor);
      if (type == AE_IFCHR && (standard_char_device(major, minor) || (major == 0 && minor == 0))) {
        stats_.warnings.push_back("skipped " + what + " '" + rel + "' (RUN steps get their own /dev)");
        return;
      }
      refuse(what + ": kiln does not create device nodes from a layer");
    }
    case AE_IFIFO: {
      make_room(dirfd, leaf, rel, false, &was_whiteout);
      if (::mknodat(dirfd, leaf.c_str(), S_IFIFO | perm, 0) != 0) sys_fail("cannot create " + full(rel));
      set_owner(dirfd, leaf, rel, ae);
      // Just created by us, and not a symlink: fchmodat may follow nothing here.
      if (::fchmodat(dirfd, leaf.c_str(), perm, 0) != 0) sys_fail("cannot chmod " + full(rel));
      set_mtime(dirfd, leaf, rel, ae);
      break;
    }
    default:
      stats_.warnings.push_back("skipped '" + rel + "' (sockets and unknown entry types are not unpacked)");
      return;
  }
  mark_written(rel);
}

void Applier::finish() {
  finishing_ = true;
  // Reverse order visits children before their parents, so a parent made read-only (or
  // non-searchable) no longer needs to be entered.
  for (auto it = dir_meta_.rbegin(); it != dir_meta_.rend(); ++it) {
    const auto& [rel, meta] = *it;
    Fd fd;
    if (rel.empty()) {
      fd = Fd(::fcntl(root_fd_.get(), F_DUPFD_CLOEXEC, 0));
    } else {
      std::vector<std::string> parts;
      split_name(rel, &parts);
      fd = walk(parts, parts.size(), Walk::Probe);  // replaced or removed since: nothing to do
    }
    if (!fd) continue;
    if (::fchmod(fd.get(), meta.mode) != 0) sys_fail("cannot chmod " + full(rel));
    if (meta.has_mtime) {
      struct timespec ts[2] = {meta.mtime, meta.mtime};
      if (::futimens(fd.get(), ts) != 0) sys_fail("cannot set the mtime of " + full(rel));
    }
  }
}

/// libarchive's read callback over a LayerStream. An exception must not cross libarchive's C
/// frames: it is kept, and rethrown once libarchive has returned.
struct ReadContext {
  LayerStream* stream;
  std::exception_ptr error;
};

la_ssize_t read_layer(struct archive* a, void* ctx, const void** buf) {
  auto* c = static_cast<ReadContext*>(ctx);
  try {
    return static_cast<la_ssize_t>(c->stream->next(buf));
  } catch (...) {
    c->error = std::current_exception();
    archive_set_error(a, EIO, "layer stream failed");
    return -1;
  }
}

[[noreturn]] void corrupt(struct archive* a, const ReadContext& ctx, const fs::path& blob) {
  if (ctx.error) std::rethrow_exception(ctx.error);
  const char* msg = archive_error_string(a);
  throw UnpackError("corrupt layer " + layer_name(blob) + ": " + (msg ? msg : "unreadable tar"));
}

}  // namespace

UnpackStats apply_layer(const fs::path& blob, const std::string& media_type, const fs::path& root,
                        const UnpackOptions& opts) {
  try {
    (void)layers::compression_of_media_type(media_type);  // the codec itself is told by its magic
  } catch (const std::exception& e) {
    throw UnpackError("layer " + layer_name(blob) + ": " + e.what());
  }
  Fd blob_fd(::open(blob.c_str(), O_RDONLY | O_CLOEXEC));
  if (!blob_fd) sys_fail("cannot open layer " + blob.string());
  Applier applier(blob, root, opts);
  LayerStream stream(blob_fd.get(), layer_name(blob));
  ReadContext ctx{&stream, nullptr};

  layers::Utf8Ctype utf8_ctype;  // outlives the archive below
  struct archive* a = archive_read_new();
  if (!a) throw std::runtime_error("libarchive: out of memory");
  struct Guard {
    struct archive* a;
    ~Guard() { archive_read_free(a); }
  } guard{a};
  // Only the tar formats: decompression is LayerStream's, so the diff_id is computed on exactly
  // the bytes the entries come from. The tar reader takes ustar, PAX and GNU tar.
  archive_read_support_format_tar(a);
  archive_read_support_format_empty(a);
  if (archive_read_open(a, &ctx, nullptr, read_layer, nullptr) != ARCHIVE_OK) corrupt(a, ctx, blob);

  for (;;) {
    struct archive_entry* ae = nullptr;
    int r = archive_read_next_header(a, &ae);
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN) corrupt(a, ctx, blob);
    try {
      applier.apply(a, ae);
    } catch (...) {
      if (ctx.error) std::rethrow_exception(ctx.error);  // the stream's own error says more
      throw;
    }
  }
  if (ctx.error) std::rethrow_exception(ctx.error);
  stream.drain();
  UnpackStats& stats = applier.stats();
  stats.diff_id = stream.diff_id();
  if (!opts.expect_diff_id.empty() && stats.diff_id != opts.expect_diff_id)
    throw UnpackError("layer " + layer_name(blob) + " does not match its diff_id: the image config says " +
                      opts.expect_diff_id + ", its content is " + stats.diff_id);
  applier.finish();
  return std::move(stats);
}

}  // namespace kiln::run
