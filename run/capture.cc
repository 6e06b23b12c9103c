// A RUN step's changes as layer entries (see capture.h).
#include "run/capture.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <optional>
#include <set>
#include <system_error>

#include <xxhash.h>

#include "layers/fsutil.h"

namespace fs = std::filesystem;

namespace kiln::run {

namespace {

[[noreturn]] void sys_fail(const std::string& what, const fs::path& p) {
  throw std::system_error(errno, std::generic_category(), what + " " + p.string());
}

std::int64_t ns(const struct timespec& t) { return std::int64_t(t.tv_sec) * 1000000000 + t.tv_nsec; }

std::optional<Node> stat_node(const fs::path& p) {
  struct stat st{};
  if (::lstat(p.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return std::nullopt;
    sys_fail("cannot stat", p);
  }
  Node n;
  n.mode = st.st_mode;
  n.uid = st.st_uid;
  n.gid = st.st_gid;
  n.size = static_cast<std::uint64_t>(st.st_size);
  n.ino = st.st_ino;
  n.dev = st.st_dev;
  n.nlink = st.st_nlink;
  n.rdev = st.st_rdev;
  n.blocks = static_cast<std::uint64_t>(st.st_blocks);
  n.mtime_ns = ns(st.st_mtim);
  n.ctime_ns = ns(st.st_ctim);
  if (S_ISREG(st.st_mode)) {
    char buf[64];
    ssize_t len = ::lgetxattr(p.c_str(), "security.capability", buf, sizeof buf);
    if (len > 0) n.capability.assign(buf, static_cast<std::size_t>(len));
  }
  if (S_ISLNK(st.st_mode)) {
    std::string buf(static_cast<std::size_t>(st.st_size) + 1, '\0');
    ssize_t len = ::readlink(p.c_str(), buf.data(), buf.size());
    if (len < 0) sys_fail("cannot read link", p);
    buf.resize(static_cast<std::size_t>(len));
    n.link_target = std::move(buf);
  }
  return n;
}

/// A hash of a regular file's bytes that costs what the file holds on disk, not its apparent size:
/// the file is seen as 64 KiB blocks; blocks of zeros (holes, or zeros written out) are skipped,
/// the others hashed with their index, and the size last. Two files with the same bytes get the
/// same hash whatever their holes; SEEK_DATA/SEEK_HOLE find the data, so a 15 TiB sparse file
/// with 2 KB in it is hashed in microseconds.
std::uint64_t content_hash(const fs::path& p) {
  constexpr std::size_t kBlock = 64 * 1024;
  static const std::vector<char> zeros(kBlock, 0);
  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) sys_fail("cannot open", p);
  struct Close {
    int fd;
    ~Close() { ::close(fd); }
  } closer{fd};
  struct stat sb{};
  if (::fstat(fd, &sb) != 0) sys_fail("cannot stat", p);
  const auto size = static_cast<std::uint64_t>(sb.st_size);
  XXH3_state_t* st = XXH3_createState();
  struct Free {
    XXH3_state_t* st;
    ~Free() { XXH3_freeState(st); }
  } free_state{st};
  XXH3_64bits_reset(st);
  std::vector<char> buf(kBlock);
  std::uint64_t next_block = 0;  // blocks below this one are done
  auto hash_blocks = [&](std::uint64_t from, std::uint64_t to) {  // the blocks holding [from, to)
    for (std::uint64_t b = std::max(from / kBlock, next_block); b * kBlock < to; ++b) {
      std::size_t got = 0;
      const std::uint64_t off = b * kBlock;
      const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(kBlock, size - off));
      while (got < want) {
        ssize_t n = ::pread(fd, buf.data() + got, want - got, static_cast<off_t>(off + got));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) sys_fail("cannot read", p);
        if (n == 0) break;  // shrank meanwhile
        got += static_cast<std::size_t>(n);
      }
      if (std::memcmp(buf.data(), zeros.data(), got) != 0) {
        XXH3_64bits_update(st, &b, sizeof b);
        XXH3_64bits_update(st, buf.data(), got);
      }
      next_block = b + 1;
    }
  };
  for (std::uint64_t pos = 0; pos < size;) {
    off_t data = ::lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // only a hole is left
      hash_blocks(pos, size);     // no SEEK_DATA here: read it all
      break;
    }
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    std::uint64_t end = hole < 0 ? size : std::min<std::uint64_t>(static_cast<std::uint64_t>(hole), size);
    if (end <= static_cast<std::uint64_t>(data)) break;
    hash_blocks(static_cast<std::uint64_t>(data), end);
    pos = end;
  }
  XXH3_64bits_update(st, &size, sizeof size);
  return XXH3_64bits_digest(st);
}

/// Files a layer would have to hold as this many bytes of zeros are refused (see to_entries).
constexpr std::uint64_t kMaxHoleBytes = std::uint64_t(1) << 30;

std::string human(std::uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 6) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

bool same_bytes(const fs::path& a, const fs::path& b) { return content_hash(a) == content_hash(b); }

std::string join(const std::string& dir, const std::string& name) { return dir.empty() ? name : dir + "/" + name; }
std::string parent_of(const std::string& rel) {
  std::size_t s = rel.rfind('/');
  return s == std::string::npos ? "" : rel.substr(0, s);
}
std::string base_of(const std::string& rel) {
  std::size_t s = rel.rfind('/');
  return s == std::string::npos ? rel : rel.substr(s + 1);
}

bool at_or_under(const std::string& rel, const std::string& mp) {
  return rel == mp || (rel.size() > mp.size() && rel.compare(0, mp.size(), mp) == 0 && rel[mp.size()] == '/');
}
bool in_mountpoint(const std::string& rel, const std::vector<std::string>& mps) {
  for (const auto& m : mps)
    if (at_or_under(rel, m)) return true;
  return false;
}
/// Is `rel` a directory above some mount point (one the sandbox may have created for it)?
bool above_mountpoint(const std::string& rel, const std::vector<std::string>& mps) {
  for (const auto& m : mps)
    if (m.size() > rel.size() && m.compare(0, rel.size(), rel) == 0 && m[rel.size()] == '/') return true;
  return false;
}

/// Lists a directory's entries (names only, "." and ".." skipped).
std::vector<std::string> list_dir(const fs::path& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (!d) sys_fail("cannot read directory", dir);
  while (struct dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
    names.emplace_back(e->d_name);
  }
  ::closedir(d);
  return names;
}

/// Walks `root`, calling `visit(rel, node)` for each path below it (pre-order).
template <class F>
void walk(const fs::path& root, const std::string& rel, const std::vector<std::string>& skip, F&& visit) {
  for (const std::string& name : list_dir(rel.empty() ? root : root / rel)) {
    std::string r = join(rel, name);
    if (in_mountpoint(r, skip)) continue;
    std::optional<Node> n = stat_node(root / r);
    if (!n) continue;  // vanished meanwhile
    visit(r, *n);
    if (S_ISDIR(n->mode)) walk(root, r, skip, visit);
  }
}

struct Item {
  Node node;
  enum class Kind { Keep, Parent, Drop } kind = Kind::Drop;
  bool whiteout = false, opaque = false;
};

/// Turns the chosen items into normalized entries: parents of what is kept are kept too (with
/// their real metadata), hardlinks within the layer are linked, owners mapped.
Capture to_entries(std::map<std::string, Item>& items, const fs::path& root, bool map_caller_to_root) {
  // A new link to an unchanged file: the layer holds both names, so the link stays a link.
  std::set<std::pair<std::uint64_t, std::uint64_t>> linked;
  for (auto& [rel, it] : items)
    if (it.kind == Item::Kind::Keep && !it.whiteout && S_ISREG(it.node.mode) && it.node.nlink > 1)
      linked.insert({it.node.dev, it.node.ino});
  for (auto& [rel, it] : items)
    if (it.kind == Item::Kind::Drop && !it.whiteout && S_ISREG(it.node.mode) && it.node.nlink > 1 &&
        linked.count({it.node.dev, it.node.ino}))
      it.kind = Item::Kind::Keep;
  for (auto& [rel, it] : items) {
    if (it.kind != Item::Kind::Keep) continue;
    for (std::string p = parent_of(rel); !p.empty(); p = parent_of(p)) {
      auto a = items.find(p);
      if (a == items.end()) break;  // cannot happen for a walked tree; the writer adds it then
      if (a->second.kind == Item::Kind::Drop) a->second.kind = Item::Kind::Parent;
    }
  }
  const std::uint32_t me_uid = ::getuid(), me_gid = ::getgid();
  auto owner = [&](const Node& n, layers::TarEntry& e) {
    e.uid = map_caller_to_root && n.uid == me_uid ? 0 : n.uid;
    e.gid = map_caller_to_root && n.gid == me_gid ? 0 : n.gid;
  };
  Capture c;
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::string> first_link;
  for (auto& [rel, it] : items) {
    if (it.kind == Item::Kind::Drop) continue;
    const Node& n = it.node;
    layers::TarEntry e;
    e.path = rel;
    e.mode = n.mode & 07777;
    owner(n, e);
    if (it.whiteout) {
      e.type = layers::TarEntry::Type::Whiteout;
      e.path = join(parent_of(rel), ".wh." + base_of(rel));
      e.mode = 0644;
      e.uid = e.gid = 0;
      c.entries.push_back(std::move(e));
      ++c.whiteouts;
      continue;
    }
    if (S_ISDIR(n.mode)) {
      e.type = layers::TarEntry::Type::Dir;
      c.entries.push_back(e);
      if (it.opaque) {
        layers::TarEntry o;
        o.type = layers::TarEntry::Type::Whiteout;
        o.path = join(rel, ".wh..wh..opq");
        o.mode = 0644;
        c.entries.push_back(std::move(o));
        ++c.whiteouts;
      }
    } else if (S_ISLNK(n.mode)) {
      e.type = layers::TarEntry::Type::Symlink;
      e.link_target = n.link_target;
      c.entries.push_back(std::move(e));
    } else if (S_ISREG(n.mode)) {
      if (n.nlink > 1) {
        auto [pos, fresh] = first_link.emplace(std::make_pair(n.dev, n.ino), rel);
        if (!fresh) {  // items are in bytewise order: the first link is already in the layer
          e.type = layers::TarEntry::Type::Hardlink;
          e.link_target = pos->second;
          c.entries.push_back(std::move(e));
          continue;
        }
      }
      // A tar holds a file's holes as zeros: a 15 TiB sparse file would make a 15 TiB layer.
      const std::uint64_t on_disk = n.blocks * 512;
      if (n.size > on_disk && n.size - on_disk > kMaxHoleBytes)
        throw std::runtime_error("/" + rel + " is a sparse file of " + human(n.size) + " (" + human(on_disk) +
                                 " on disk); a layer would hold its holes as zeros, so files with more than " +
                                 human(kMaxHoleBytes) +
                                 " of holes are refused (useradd makes /var/log/lastlog one for a high uid: "
                                 "use useradd --no-log-init)");
      e.type = layers::TarEntry::Type::File;
      e.size = n.size;
      e.source = (root / rel).string();
      e.mtime_ns = n.mtime_ns;
      e.ctime_ns = n.ctime_ns;
      e.capability = n.capability;
      c.bytes += n.size;
      ++c.files;
      c.entries.push_back(std::move(e));
    }
  }
  c.entries = layers::normalize_entries(std::move(c.entries));
  return c;
}

const char* kind_name(std::uint32_t mode) {
  if (S_ISFIFO(mode)) return "fifo";
  if (S_ISSOCK(mode)) return "socket";
  if (S_ISCHR(mode)) return "character device";
  if (S_ISBLK(mode)) return "block device";
  return "special file";
}

std::string skipped(const std::string& rel, std::uint32_t mode) {
  return std::string("skipped /") + rel + ": a " + kind_name(mode) + " (layers hold files, directories and links)";
}

}  // namespace

std::vector<std::string> sandbox_mountpoints(const std::vector<std::string>& extra_targets) {
  std::vector<std::string> out = {"proc", "dev", "sys", "tmp", "etc/resolv.conf"};
  for (const std::string& t : extra_targets) {
    std::string rel = fs::path(t).lexically_normal().relative_path().generic_string();
    while (!rel.empty() && rel.back() == '/') rel.pop_back();
    if (!rel.empty() && !in_mountpoint(rel, out)) out.push_back(rel);
  }
  return out;
}

namespace {
// An overlay mounted by the host's root marks opaque directories with trusted.overlay.opaque; one
// mounted from a user namespace (RUN steps of a root kiln, see run/sandbox.h) with
// user.overlay.opaque.
constexpr const char* kOpaqueXattrs[] = {"trusted.overlay.opaque", "user.overlay.opaque"};

bool opaque_dir(const fs::path& dir) {
  for (const char* name : kOpaqueXattrs) {
    char v[4] = {0};
    if (::lgetxattr(dir.c_str(), name, v, sizeof v) == 1 && v[0] == 'y') return true;
  }
  return false;
}

/// Sets both opaque markers on the opaque directories of an upper dir, so it serves as a lower
/// dir for either kind of overlay.
void mark_opaque_dirs(const fs::path& upper) {
  walk(upper, "", {}, [&](const std::string& rel, const Node& n) {
    if (!S_ISDIR(n.mode) || !opaque_dir(upper / rel)) return;
    for (const char* name : kOpaqueXattrs) ::lsetxattr((upper / rel).c_str(), name, "y", 1, 0);
  });
}

/// What a step saw below its upper dir at `rel`: the topmost lower that has it, unless a whiteout
/// there hides it.
std::optional<std::pair<Node, fs::path>> lower_view(const std::vector<fs::path>& lowers, const std::string& rel) {
  for (const fs::path& l : lowers) {
    std::optional<Node> n = stat_node(l / rel);
    if (!n) continue;
    if (S_ISCHR(n->mode) && n->rdev == makedev(0, 0)) return std::nullopt;  // a whiteout
    return std::make_pair(*n, l / rel);
  }
  return std::nullopt;
}
}  // namespace

void drop_mountpoints(const fs::path& upper, const std::vector<fs::path>& lowers,
                      const std::vector<std::string>& mountpoints) {
  mark_opaque_dirs(upper);
  for (const std::string& mp : mountpoints) {
    std::error_code ec;
    if (!stat_node(upper / mp) || lower_view(lowers, mp)) continue;
    fs::remove_all(upper / mp, ec);
    for (std::string p = parent_of(mp); !p.empty(); p = parent_of(p)) {
      if (lower_view(lowers, p)) break;
      if (::rmdir((upper / p).c_str()) != 0) break;  // not empty: the step wrote there too
    }
  }
}

Capture capture_overlay(const fs::path& upper, const std::vector<fs::path>& lowers,
                        const std::vector<std::string>& mountpoints) {
  auto lower = [&](const std::string& rel) { return lower_view(lowers, rel); };

  std::map<std::string, Item> items;
  std::vector<std::string> warnings;
  walk(upper, "", {}, [&](const std::string& rel, const Node& n) {
    Item it;
    it.node = n;
    if (in_mountpoint(rel, mountpoints)) {
      items.emplace(rel, it);  // Drop
      return;
    }
    auto lo = lower(rel);
    if (S_ISCHR(n.mode) && n.rdev == makedev(0, 0)) {
      it.whiteout = true;
      if (lo) it.kind = Item::Kind::Keep;  // hides a lower file; else it hides nothing
      items.emplace(rel, it);
      return;
    }
    if (S_ISDIR(n.mode)) {
      it.opaque = opaque_dir(upper / rel);
      bool same = lo && S_ISDIR(lo->first.mode) && (lo->first.mode & 07777) == (n.mode & 07777) &&
                  lo->first.uid == n.uid && lo->first.gid == n.gid;
      if (it.opaque || (lo && !same)) it.kind = Item::Kind::Keep;
      else if (!lo && !above_mountpoint(rel, mountpoints)) it.kind = Item::Kind::Keep;  // a new directory
    } else if (S_ISREG(n.mode)) {
      bool same = lo && S_ISREG(lo->first.mode) && (lo->first.mode & 07777) == (n.mode & 07777) &&
                  lo->first.uid == n.uid && lo->first.gid == n.gid && lo->first.size == n.size &&
                  lo->first.capability == n.capability && same_bytes(upper / rel, lo->second);
      if (!same) it.kind = Item::Kind::Keep;
    } else if (S_ISLNK(n.mode)) {
      bool same = lo && S_ISLNK(lo->first.mode) && lo->first.link_target == n.link_target &&
                  lo->first.uid == n.uid && lo->first.gid == n.gid;
      if (!same) it.kind = Item::Kind::Keep;
    } else {
      warnings.push_back(skipped(rel, n.mode));
    }
    items.emplace(rel, it);
  });
  Capture c = to_entries(items, upper, false);
  c.warnings = std::move(warnings);
  return c;
}

Snapshot take_snapshot(const fs::path& root, const std::vector<std::string>& mountpoints) {
  Snapshot s;
  walk(root, "", mountpoints, [&](const std::string& rel, const Node& n) {
    Node copy = n;
    if (S_ISREG(n.mode)) copy.content = content_hash(root / rel);
    s.emplace(rel, std::move(copy));
  });
  return s;
}

Capture capture_snapshot(const Snapshot& before, const fs::path& root, const std::vector<std::string>& mountpoints,
                         bool map_caller_to_root) {
  std::map<std::string, Item> items;
  std::vector<std::string> warnings;
  walk(root, "", mountpoints, [&](const std::string& rel, const Node& n) {
    Item it;
    it.node = n;
    auto b = before.find(rel);
    const bool type_changed = b == before.end() || (b->second.mode & S_IFMT) != (n.mode & S_IFMT);
    const bool meta_changed = type_changed || (b->second.mode & 07777) != (n.mode & 07777) ||
                              b->second.uid != n.uid || b->second.gid != n.gid ||
                              b->second.capability != n.capability;
    if (S_ISDIR(n.mode)) {
      if (meta_changed && !(b == before.end() && above_mountpoint(rel, mountpoints))) it.kind = Item::Kind::Keep;
    } else if (S_ISLNK(n.mode)) {
      if (meta_changed || b->second.link_target != n.link_target) it.kind = Item::Kind::Keep;
    } else if (S_ISREG(n.mode)) {
      const Node& o = b == before.end() ? n : b->second;
      bool touched = o.size != n.size || o.mtime_ns != n.mtime_ns || o.ctime_ns != n.ctime_ns || o.ino != n.ino;
      // stat first; the content hash only for what the stat says was touched
      if (meta_changed || o.size != n.size || (touched && content_hash(root / rel) != o.content))
        it.kind = Item::Kind::Keep;
    } else if (type_changed) {
      warnings.push_back(skipped(rel, n.mode));
    }
    items.emplace(rel, it);
  });
  // What is gone: one whiteout for the top of each removed subtree (a path whose parent
  // survives). A path that changed type is replaced by its new entry and needs none.
  for (const auto& [rel, n] : before) {
    if (items.count(rel) || in_mountpoint(rel, mountpoints)) continue;
    std::string parent = parent_of(rel);
    if (!parent.empty()) {
      auto p = items.find(parent);
      if (p == items.end() || p->second.whiteout || !S_ISDIR(p->second.node.mode)) continue;
    }
    Item it;
    it.node = n;
    it.whiteout = true;
    it.kind = Item::Kind::Keep;
    items.emplace(rel, it);
  }
  Capture c = to_entries(items, root, map_caller_to_root);
  c.warnings = std::move(warnings);
  return c;
}

}  // namespace kiln::run
