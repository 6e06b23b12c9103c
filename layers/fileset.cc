// One walk of the project: what source_root (under its copy mode) and `copy` put in the image.
#include "layers/fileset.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <cstring>
#include <mutex>
#include <thread>

#include "layers/digest.h"
#include "layers/fsutil.h"
#include "layers/ignore.h"
#include "layers/parallel.h"

namespace fs = std::filesystem;

namespace kiln::layers {

bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : 99;
    if (n == 99 || i + n >= s.size() + (n ? 0 : 1)) return false;
    if (c == 0xC0 || c == 0xC1 || c > 0xF4) return false;
    if (n >= 2) {  // overlong 3/4-byte forms, UTF-16 surrogates, code points above U+10FFFF
      auto c1 = static_cast<unsigned char>(s[i + 1]);
      if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 > 0x9F) || (c == 0xF0 && c1 < 0x90) ||
          (c == 0xF4 && c1 > 0x8F))
        return false;
    }
    for (std::size_t k = 1; k <= n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    i += n + 1;
  }
  return true;
}

namespace {

std::string printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    }
  }
  return out;
}

const char* special_kind(mode_t m) {
  if (S_ISFIFO(m)) return "a fifo";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  return nullptr;
}

StatIndex::Key key_of(const struct stat& st) {
  StatIndex::Key k;
  k.size = static_cast<std::uint64_t>(st.st_size);
  k.mtime_ns = std::int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  k.ctime_ns = std::int64_t(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
  k.ino = st.st_ino;
  k.dev = st.st_dev;
  return k;
}

std::string join(const std::string& a, const std::string& b) { return a.empty() ? b : b.empty() ? a : a + "/" + b; }

/// Builds an entry for `abs` (already lstat'ed), or throws for a file kind kiln refuses.
FileEntry make_entry(const std::string& rel, const std::string& dest, const std::string& abs, const struct stat& st) {
  if (const char* kind = special_kind(st.st_mode))
    throw InputError("'" + printable(abs) + "' is " + kind + "; only files, directories and symlinks can go into an image");
  FileEntry e;
  e.rel = rel;
  e.dest = dest;
  e.abs = abs;
  e.key = key_of(st);
  e.nlink = st.st_nlink;
  if (S_ISDIR(st.st_mode)) {
    e.type = FileEntry::Type::Dir;
    e.mode = 0755;
    e.key.size = 0;
  } else if (S_ISLNK(st.st_mode)) {
    e.type = FileEntry::Type::Symlink;
    e.mode = 0777;
    std::string target(static_cast<std::size_t>(st.st_size) + 1, '\0');
    ssize_t n = ::readlink(abs.c_str(), target.data(), target.size());
    if (n < 0) throw InputError("cannot read symlink '" + printable(abs) + "': " + std::strerror(errno));
    target.resize(static_cast<std::size_t>(n));
    if (!valid_utf8(target)) throw InputError("symlink '" + printable(abs) + "' has a target that is not valid UTF-8");
    e.link_target = target;
    e.size = 0;
    e.key.size = 0;
  } else {
    e.type = FileEntry::Type::File;
    e.mode = (st.st_mode & 0111) ? 0755 : 0644;
    e.size = static_cast<std::uint64_t>(st.st_size);
  }
  return e;
}

/// Does the lexical target of a symlink at `rel` (relative to a root) stay inside that root?
bool link_stays_inside(const std::string& rel, const std::string& target) {
  if (target.empty() || target.front() == '/') return false;
  fs::path p = fs::path(rel).parent_path() / target;
  int depth = 0;
  for (const auto& part : p) {
    std::string s = part.string();
    if (s == "..") {
      if (--depth < 0) return false;
    } else if (s != "." && !s.empty()) {
      ++depth;
    }
  }
  return true;
}

struct Walker {
  const std::string root;  // absolute, real path
  const std::string dest_prefix;
  IgnoreRules* rules;      // null: keep everything (but the built-in rules in `builtin`)
  IgnoreRules builtin;
  std::vector<FileEntry>* out;
  std::vector<std::string>* warnings;

  void walk(const std::string& rel) {
    std::string dir_abs = rel.empty() ? root : root + "/" + rel;
    DIR* d = ::opendir(dir_abs.c_str());
    if (!d) throw InputError("cannot read directory '" + printable(dir_abs) + "': " + std::strerror(errno));
    struct DirGuard {
      DIR* d;
      ~DirGuard() { ::closedir(d); }
    } guard{d};
    std::vector<std::string> names;
    while (struct dirent* de = ::readdir(d)) {
      std::string n = de->d_name;
      if (n == "." || n == "..") continue;
      names.push_back(std::move(n));
    }
    int dfd = ::dirfd(d);
    if (rules && std::find(names.begin(), names.end(), ".gitignore") != names.end()) {
      std::string text;
      read_file_if_exists(dir_abs + "/.gitignore", &text);
      rules->add_gitignore(rel, text);
    }
    std::sort(names.begin(), names.end());
    std::vector<std::string> subdirs;  // walked after this directory's own entries
    for (const std::string& n : names) {
      std::string child = join(rel, n);
      struct stat st{};
      if (::fstatat(dfd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
        throw InputError("cannot stat '" + printable(root + "/" + child) + "': " + std::strerror(errno));
      bool is_dir = S_ISDIR(st.st_mode);
      const IgnoreRules& r = rules ? *rules : builtin;
      if (r.ignored(child, is_dir)) {
        if (is_dir && !r.can_prune(child)) subdirs.push_back(child);  // look inside, emit nothing
        continue;
      }
      // Checked after the ignore rules, so an excluded name does not matter; the whole path, as a
      // re-included file may sit below an excluded directory whose name is not UTF-8.
      if (!valid_utf8(child))
        throw InputError("file name is not valid UTF-8: '" + printable(root + "/" + child) +
                         "' (rename it, or exclude it with .dockerignore)");
      FileEntry e = make_entry(child, dest_prefix + child, root + "/" + child, st);
      if (e.type == FileEntry::Type::Symlink && !link_stays_inside(child, e.link_target))
        warnings->push_back("symlink '" + child + "' points outside source_root ('" + e.link_target +
                            "'); stored as a symlink, not followed");
      if (is_dir) subdirs.push_back(child);
      out->push_back(std::move(e));
    }
    for (const std::string& s : subdirs) walk(s);
  }
};

/// realpath that throws InputError.
std::string real(const std::string& p, const std::string& what) {
  char* r = ::realpath(p.c_str(), nullptr);
  if (!r) throw InputError(what + " '" + printable(p) + "' " + (errno == ENOENT ? "does not exist" : std::strerror(errno)));
  std::string s(r);
  std::free(r);
  return s;
}

bool inside(const std::string& path, const std::string& root) {
  return path == root || (path.size() > root.size() && path.compare(0, root.size(), root) == 0 &&
                          (root == "/" || path[root.size()] == '/'));
}

/// Adds one listed path (a loaded module, or a copy entry) below `root`, recursing into a directory.
void add_listed(const std::string& root, const std::string& rel, const std::string& dest_prefix, const char* what,
                std::vector<FileEntry>* out, std::vector<std::string>* warnings) {
  std::string abs = root + "/" + rel;
  struct stat st{};
  if (::lstat(abs.c_str(), &st) != 0)
    throw InputError(std::string(what) + " '" + rel + "' not found under " + root);
  // The parent must resolve inside the root: no symlinked directory may lead out.
  std::string parent = real(fs::path(abs).parent_path().string(), what);
  if (!inside(parent, root))
    throw InputError(std::string(what) + " '" + rel + "' resolves outside " + root + " (through a symlink); refused");
  FileEntry e = make_entry(rel, dest_prefix + rel, abs, st);
  if (e.type == FileEntry::Type::Dir) {
    Walker w{abs, dest_prefix + rel + "/", nullptr, {}, out, warnings};
    w.builtin.add_builtin();
    std::size_t first = out->size();
    w.walk("");
    for (std::size_t i = first; i < out->size(); ++i) (*out)[i].rel = rel + "/" + (*out)[i].rel;
  }
  out->push_back(std::move(e));
}

std::string dest_prefix_of(const std::string& dest) {
  std::string p = dest;
  while (!p.empty() && p.front() == '/') p.erase(0, 1);
  if (!p.empty() && p.back() != '/') p += '/';
  return p;
}

/// Marks every later link of a multiply-linked file with the dest of the first one.
void mark_hardlinks(std::vector<FileEntry>& list) {
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::string> first;
  for (FileEntry& e : list) {
    if (e.type != FileEntry::Type::File || e.nlink < 2) continue;
    auto [it, inserted] = first.emplace(std::make_pair(e.key.dev, e.key.ino), e.dest);
    if (!inserted) e.link_to = it->second;
  }
}

}  // namespace

std::uint64_t FileSet::total_bytes() const {
  std::uint64_t n = 0;
  for (auto& e : source) n += e.size;
  for (auto& e : copy) n += e.size;
  return n;
}

bool FileSet::contains_source_file(const std::string& rel) const {
  auto it = std::lower_bound(source.begin(), source.end(), rel,
                             [](const FileEntry& e, const std::string& r) { return e.rel < r; });
  return it != source.end() && it->rel == rel && it->type != FileEntry::Type::Dir;
}

FileSet collect_files(const spec::ImageSpec& spec, const std::vector<std::string>& extra_modules) {
  FileSet set;
  set.dest = spec.source_dest;
  set.mode = spec.source_root ? spec.source_copy_mode : spec::CopyMode::NoCopy;
  const std::string prefix = dest_prefix_of(spec.source_dest);

  if (spec.source_root && set.mode != spec::CopyMode::NoCopy) {
    set.has_source = true;
    std::string root = spec.source_root->string();
    struct stat st{};
    if (::stat(root.c_str(), &st) != 0)
      throw InputError("source_root '" + root + "' does not exist (resolved from " + spec.origin + ")");
    if (!S_ISDIR(st.st_mode)) throw InputError("source_root '" + root + "' is not a directory");
    root = real(root, "source_root");
    if (set.mode == spec::CopyMode::All) {
      IgnoreRules rules;
      rules.add_builtin();
      std::string docker;
      if (read_file_if_exists(root + "/.dockerignore", &docker)) rules.add_dockerignore(docker);
      Walker w{root, prefix, &rules, {}, &set.source, &set.warnings};
      w.walk("");
    } else {
      std::vector<std::string> mods = spec.loaded_modules;
      mods.insert(mods.end(), extra_modules.begin(), extra_modules.end());
      for (const std::string& m : mods) {
        std::string clean = fs::path(m).lexically_normal().generic_string();
        while (!clean.empty() && clean.back() == '/') clean.pop_back();
        if (clean.empty() || clean == "." || clean.front() == '/' || clean.rfind("../", 0) == 0 || clean == "..")
          throw InputError("loaded module '" + m + "' must be a relative path inside source_root");
        add_listed(root, clean, prefix, "loaded module", &set.source, &set.warnings);
      }
    }
    std::sort(set.source.begin(), set.source.end(), [](const FileEntry& a, const FileEntry& b) { return a.rel < b.rel; });
    set.source.erase(std::unique(set.source.begin(), set.source.end(),
                                 [](const FileEntry& a, const FileEntry& b) { return a.rel == b.rel; }),
                     set.source.end());
    mark_hardlinks(set.source);
  }

  if (!spec.copy.empty()) {
    std::string base = real(spec.base_dir.string(), "spec directory");
    for (const std::string& c : spec.copy) add_listed(base, c, prefix, "copy entry", &set.copy, &set.warnings);
    std::sort(set.copy.begin(), set.copy.end(), [](const FileEntry& a, const FileEntry& b) { return a.dest < b.dest; });
    set.copy.erase(std::unique(set.copy.begin(), set.copy.end(),
                               [](const FileEntry& a, const FileEntry& b) { return a.dest == b.dest; }),
                   set.copy.end());
    mark_hardlinks(set.copy);
  }
  if (spec.modelcar) {  // readable by any uid, whatever the checkout's modes (docs/modelcar.md)
    for (auto* list : {&set.source, &set.copy})
      for (FileEntry& e : *list) {
        if (e.type == FileEntry::Type::File) e.mode = spec::kModelcarFileMode;
        if (e.type == FileEntry::Type::Dir) e.mode = spec::kModelcarDirMode;
      }
  }
  return set;
}

void hash_files(FileSet& set, StatIndex* index, int jobs) {
  std::vector<FileEntry*> todo;
  for (auto* list : {&set.source, &set.copy}) {
    for (FileEntry& e : *list) {
      if (e.type != FileEntry::Type::File) continue;
      if (index) {
        if (auto h = index->lookup(e.abs, e.key)) {
          e.sha256 = *h;
          continue;
        }
      }
      todo.push_back(&e);
    }
  }
  if (todo.empty()) return;
  // Largest first, so one big file does not end up last on one thread.
  std::sort(todo.begin(), todo.end(), [](FileEntry* a, FileEntry* b) { return a->size > b->size; });
  parallel_for(todo.size(), jobs, [&](std::size_t i) {
    FileEntry* e = todo[i];
    try {
      e->sha256 = sha256_file_hex(e->abs);
    } catch (const std::system_error& err) {
      throw InputError("cannot read '" + printable(e->abs) + "': " + err.code().message());
    } catch (const std::exception& err) {
      throw InputError("cannot hash '" + printable(e->abs) + "': " + err.what());
    }
  });
  if (index)
    for (FileEntry* e : todo) index->update(e->abs, e->key, e->sha256);
}

}  // namespace kiln::layers
