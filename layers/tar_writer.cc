// Deterministic PAX tar writing over libarchive, with digests computed in the same pass.
#include "layers/tar_writer.h"
#include "layers/input_error.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <locale.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <system_error>

#include "layers/digest.h"
#include "layers/parallel.h"
#include "layers/utf8_locale.h"

namespace kiln::layers {

namespace {

// Files from this size get their content digest on a second thread (hash_contents, with threads >= 2
// or uncompressed).
constexpr std::uint64_t kSideHashMin = 4ull << 20;

void check_rel_path(std::string_view p) {
  if (p.empty() || p.front() == '/' || p.back() == '/')
    throw std::runtime_error("invalid path in layer: '" + std::string(p) + "'");
  std::size_t start = 0;
  while (start <= p.size()) {
    std::size_t end = p.find('/', start);
    if (end == std::string::npos) end = p.size();
    std::string_view seg(p.data() + start, end - start);
    if (seg.empty() || seg == "." || seg == "..")
      throw std::runtime_error("invalid path in layer: '" + std::string(p) + "'");
    start = end + 1;
  }
}

struct Pipeline {
  Sha256 tar_hash;
  Sha256 blob_hash;
  std::uint64_t tar_size = 0, blob_size = 0;
  std::unique_ptr<Encoder> encoder;
  const ByteSink* out = nullptr;
  std::string error;
};

la_ssize_t on_write(struct archive*, void* ctx, const void* buf, size_t n) {
  auto* p = static_cast<Pipeline*>(ctx);
  try {
    p->tar_hash.update(buf, n);
    p->tar_size += n;
    p->encoder->write(buf, n);
  } catch (const std::exception& e) {
    p->error = e.what();
    return -1;
  }
  return static_cast<la_ssize_t>(n);
}

[[noreturn]] void fail(struct archive* a, const std::string& what) {
  throw std::runtime_error(what + ": " + (archive_error_string(a) ? archive_error_string(a) : "tar error"));
}

}  // namespace

LayerOrder::LayerOrder(std::size_t n, std::function<std::string_view(std::size_t)> path) : path_(std::move(path)) {
  if (n > UINT32_MAX) throw std::runtime_error("a layer of more than 4 billion entries");
  for (std::size_t i = 0; i < n; ++i) check_rel_path(path_(i));
  // Sort bytewise (stable, so for a path given twice the last one given wins); walked lists come
  // sorted already.
  std::vector<std::uint32_t> idx(n);
  for (std::size_t i = 0; i < n; ++i) idx[i] = static_cast<std::uint32_t>(i);
  auto by_path = [this](std::uint32_t a, std::uint32_t b) { return path_(a) < path_(b); };
  if (!std::is_sorted(idx.begin(), idx.end(), by_path)) std::stable_sort(idx.begin(), idx.end(), by_path);
  kept_.reserve(n);
  for (std::size_t i = 0; i < n; ++i)
    if (i + 1 == n || path_(idx[i]) != path_(idx[i + 1])) kept_.push_back(idx[i]);
  std::vector<std::uint32_t>().swap(idx);
  kept_.shrink_to_fit();
  // The parents no input is. Entries below one directory are contiguous in bytewise order, so the
  // parents the previous entry was found to have (`known`, by depth) answer for most entries: a
  // directory is looked up once, when its first entry comes.
  auto present = [&](std::string_view p) {
    auto it = std::lower_bound(kept_.begin(), kept_.end(), p,
                               [this](std::uint32_t e, std::string_view x) { return path_(e) < x; });
    return it != kept_.end() && path_(*it) == p;
  };
  std::vector<std::string_view> known;  // views into the inputs' paths (they outlive this loop)
  for (std::uint32_t e : kept_) {
    const std::string_view p = path_(e);
    std::size_t depth = 0;
    for (std::size_t pos = p.find('/'); pos != std::string_view::npos; pos = p.find('/', pos + 1), ++depth) {
      std::string_view parent = p.substr(0, pos);
      if (depth < known.size() && known[depth] == parent) continue;
      known.resize(depth);
      known.push_back(parent);
      if (!present(parent)) missing_.emplace_back(parent);
    }
    known.resize(depth);
  }
  std::sort(missing_.begin(), missing_.end());
  missing_.erase(std::unique(missing_.begin(), missing_.end()), missing_.end());
}

bool LayerOrder::next(std::size_t* index, const std::string** parent) {
  *parent = nullptr;
  if (b_ < missing_.size() && (a_ == kept_.size() || std::string_view(missing_[b_]) < path_(kept_[a_]))) {
    *parent = &missing_[b_++];
    return true;
  }
  if (a_ == kept_.size()) return false;
  *index = kept_[a_++];
  return true;
}

std::vector<TarEntry> normalize_entries(std::vector<TarEntry> entries, std::uint32_t uid, std::uint32_t gid) {
  LayerOrder order(entries.size(), [&entries](std::size_t i) { return std::string_view(entries[i].path); });
  std::vector<TarEntry> out;
  out.reserve(order.size());
  std::size_t i = 0;
  const std::string* parent = nullptr;
  while (order.next(&i, &parent)) {
    if (!parent) {
      out.push_back(std::move(entries[i]));  // (yielded once: its path is not looked at again)
      continue;
    }
    TarEntry d;
    d.path = *parent;
    d.type = TarEntry::Type::Dir;
    d.mode = 0755;
    d.uid = uid;
    d.gid = gid;
    out.push_back(std::move(d));
  }
  return out;
}

WrittenLayer write_layer(const std::vector<TarEntry>& entries, const LayerWriteOptions& opts, const ByteSink& out,
                         const std::function<void(std::uint64_t)>& on_progress) {
  std::size_t i = 0;
  return write_layer(
      [&](TarEntry& e) {
        if (i == entries.size()) return false;
        e = entries[i++];
        return true;
      },
      opts, out, on_progress);
}

WrittenLayer write_layer(const EntrySource& next, const LayerWriteOptions& opts, const ByteSink& out,
                         const std::function<void(std::uint64_t)>& on_progress) {
  Pipeline p;
  p.out = &out;
  const bool plain = opts.compression == Compression::None;  // blob == tar: hash once
  p.encoder = make_encoder(opts.compression, [&p, plain](const void* d, std::size_t n) {
    if (!plain) p.blob_hash.update(d, n);
    p.blob_size += n;
    (*p.out)(d, n);
  }, opts.level, opts.threads);

  Utf8Ctype utf8_ctype;  // outlives the archive objects below
  struct archive* a = archive_write_new();
  if (!a) throw std::runtime_error("libarchive: out of memory");
  struct Guard {
    struct archive* a;
    ~Guard() { archive_write_free(a); }
  } guard{a};
  struct archive_entry* ae = archive_entry_new2(a);
  struct EntryGuard {
    struct archive_entry* e;
    ~EntryGuard() { archive_entry_free(e); }
  } eguard{ae};

  if (archive_write_set_format_pax_restricted(a) != ARCHIVE_OK) fail(a, "tar format");
  archive_write_set_bytes_per_block(a, 10240);
  archive_write_set_bytes_in_last_block(a, 1);
  if (archive_write_open(a, &p, nullptr, on_write, nullptr) != ARCHIVE_OK) fail(a, "tar open");

  WrittenLayer w;
  // The read buffer: 64 KiB, grown to the largest file met (1 MiB at most, the side hasher's
  // piece), so a layer of small files (two are written at once) holds little. The bytes written
  // do not depend on it.
  std::vector<char> buf(64u << 10);
  // Hashes a big file's pieces beside the tar, on the same (read-only) bytes.
  std::unique_ptr<Handoff> side;  // after buf: its thread ends before the buffer goes
  TarEntry e;
  while (next(e)) {
    archive_entry_clear(ae);
    archive_entry_set_pathname_utf8(ae, e.path.c_str());
    archive_entry_set_uid(ae, e.uid);
    archive_entry_set_gid(ae, e.gid);
    archive_entry_set_mtime(ae, opts.mtime, 0);
    archive_entry_set_perm(ae, e.mode & 07777);
    switch (e.type) {
      case TarEntry::Type::Dir:
        archive_entry_set_filetype(ae, AE_IFDIR);
        break;
      case TarEntry::Type::Symlink:
        archive_entry_set_filetype(ae, AE_IFLNK);
        archive_entry_set_symlink_utf8(ae, e.link_target.c_str());
        break;
      case TarEntry::Type::Hardlink:
        archive_entry_set_filetype(ae, AE_IFREG);
        archive_entry_set_hardlink_utf8(ae, e.link_target.c_str());
        archive_entry_set_size(ae, 0);
        break;
      case TarEntry::Type::Whiteout:
        archive_entry_set_filetype(ae, AE_IFREG);
        archive_entry_set_size(ae, 0);
        break;
      case TarEntry::Type::File:
        archive_entry_set_filetype(ae, AE_IFREG);
        archive_entry_set_size(ae, static_cast<la_int64_t>(e.size));
        if (!e.capability.empty())  // written as a PAX SCHILY.xattr record
          archive_entry_xattr_add_entry(ae, "security.capability", e.capability.data(), e.capability.size());
        break;
    }
    // A name with no header form (not valid UTF-8, or no UTF-8 locale on this system): refuse it
    // rather than let libarchive dereference the missing name.
    const bool has_link =
        (e.type == TarEntry::Type::Symlink || e.type == TarEntry::Type::Hardlink) && !e.link_target.empty();
    if (!archive_entry_pathname(ae) ||
        (has_link && !(e.type == TarEntry::Type::Symlink ? archive_entry_symlink(ae) : archive_entry_hardlink(ae))))
      throw std::runtime_error("cannot write the name of '" + e.path + "'" +
                               (has_link ? " -> '" + e.link_target + "'" : std::string()) +
                               " into the layer: not valid UTF-8, or no UTF-8 locale (C.UTF-8) on this system");
    if (archive_write_header(a, ae) < ARCHIVE_WARN) {
      if (!p.error.empty()) throw std::runtime_error(p.error);
      fail(a, "tar header for '" + e.path + "'");
    }
    if (e.type == TarEntry::Type::File && e.size == 0 && opts.hash_contents && opts.on_content)
      opts.on_content(e, Sha256().hex());
    if (e.type != TarEntry::Type::File || e.size == 0) continue;
    if (e.size > buf.size() && buf.size() < (1u << 20)) buf.resize(std::min<std::uint64_t>(e.size, 1u << 20));

    int fd = ::open(e.source.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    if (fd < 0 && (errno == ELOOP || errno == ENOENT || errno == ENOTDIR))
      throw InputError("'" + e.source + "' changed while kiln read the tree (" +
                       (errno == ELOOP ? "a file became a symlink" : "a file disappeared") +
                       "); re-run the build once the tree is stable");
    // A file kiln may not read is bad input (exit 2), wherever it is met: the walk, the hashing
    // (open_walked_file) or here, when its digest came from the stat index.
    if (fd < 0 && (errno == EACCES || errno == EPERM))
      throw InputError("cannot open '" + e.source + "': " + std::strerror(errno));
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "cannot open " + e.source);
    struct FdGuard {
      int fd;
      ~FdGuard() { ::close(fd); }
    } fguard{fd};
    if (e.ino != 0) {
      struct stat id{};
      if (::fstat(fd, &id) != 0 || !S_ISREG(id.st_mode) || id.st_dev != e.dev || id.st_ino != e.ino)
        throw InputError("'" + e.source + "' changed while kiln read the tree (a file, or a directory above it, "
                         "was replaced); re-run the build once the tree is stable");
    }
    if (int fl = ::fcntl(fd, F_GETFL); fl >= 0) ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    std::uint64_t left = e.size;
    std::optional<Sha256> content;
    if (opts.hash_contents) {
      content.emplace();
      if ((opts.threads >= 2 || opts.compression == Compression::None) && e.size >= kSideHashMin && !side)
        side = std::make_unique<Handoff>();
    }
    Handoff* beside = content && e.size >= kSideHashMin ? side.get() : nullptr;
    while (left > 0) {
      ssize_t n = ::read(fd, buf.data(), std::min<std::uint64_t>(buf.size(), left));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw std::system_error(errno, std::generic_category(), "cannot read " + e.source);
      if (n == 0) break;
      if (beside) {
        beside->start([h = &*content, d = buf.data(), n] { h->update(d, static_cast<std::size_t>(n)); });
      } else if (content) {
        content->update(buf.data(), static_cast<std::size_t>(n));
      }
      struct Join {  // the buffer is not read again, nor thrown away, while the side thread reads it
        Handoff* s;
        ~Join() { if (s) s->drain(); }
      } join{beside};
      if (archive_write_data(a, buf.data(), static_cast<std::size_t>(n)) != n) {
        if (!p.error.empty()) throw std::runtime_error(p.error);
        fail(a, "tar data for '" + e.path + "'");
      }
      left -= static_cast<std::uint64_t>(n);
      if (on_progress) on_progress(static_cast<std::uint64_t>(n));
    }
    struct stat st{};
    bool changed = left != 0 || ::fstat(fd, &st) != 0 || static_cast<std::uint64_t>(st.st_size) != e.size;
    if (!changed && (e.mtime_ns || e.ctime_ns)) {
      std::int64_t m = std::int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
      std::int64_t c = std::int64_t(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
      changed = m != e.mtime_ns || c != e.ctime_ns;
    }
    // Content that changed under the read (a file still being written) fails the layer step (exit
    // 3: retry once the tree is stable); a path swapped under the walk (above) is refused as input.
    if (changed)
      throw std::runtime_error("file changed while the build read it: " + e.source +
                               " (re-run the build once the tree is stable)");
    if (content && opts.on_content) opts.on_content(e, content->hex());
  }
  if (archive_write_close(a) != ARCHIVE_OK) {
    if (!p.error.empty()) throw std::runtime_error(p.error);
    fail(a, "tar close");
  }
  p.encoder->finish();

  w.diff_id = p.tar_hash.digest();
  w.digest = opts.compression == Compression::None ? w.diff_id : p.blob_hash.digest();
  w.media_type = layer_media_type(opts.compression);
  w.size = p.blob_size;
  w.tar_size = p.tar_size;
  return w;
}

}  // namespace kiln::layers
