// One walk of the project: what source_root (under its copy mode) and `copy` put in the image.
#include "layers/fileset.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <shared_mutex>
#include <unordered_set>
#include <map>
#include <cstring>
#include <mutex>
#include <new>
#include <optional>
#include <thread>

#include "layers/digest.h"
#include "layers/entry_spill.h"
#include "layers/fsutil.h"
#include "layers/git_repo.h"
#include "layers/ignore.h"
#include "layers/parallel.h"
#include "layers/string_sort.h"
#include "layers/unique_fd.h"

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


/// Builds an entry for `name` in the directory `dfd` (already lstat'ed as `st`; `abs` names it in
/// messages), or throws for a file kind kiln refuses.
FileEntry make_entry(std::string rel, std::string dest, const std::shared_ptr<const std::string>& root,
                     const struct stat& st, int dfd, const char* name) {
  auto abs = [&] { return *root + "/" + rel; };
  if (const char* kind = special_kind(st.st_mode))
    throw InputError("'" + printable(abs()) + "' is " + kind + "; only files, directories and symlinks can go into an image");
  FileEntry e;
  e.set_paths(std::move(rel), std::move(dest));
  e.root = root;
  e.key = key_of(st);
  e.nlink = static_cast<std::uint16_t>(std::min<std::uint64_t>(st.st_nlink, UINT16_MAX));
  if (S_ISDIR(st.st_mode)) {
    e.type = FileEntry::Type::Dir;
    e.mode = 0755;
    e.key.size = 0;
  } else if (S_ISLNK(st.st_mode)) {
    e.type = FileEntry::Type::Symlink;
    e.mode = 0777;
    std::string target(static_cast<std::size_t>(st.st_size) + 1, '\0');
    ssize_t n = ::readlinkat(dfd, name, target.data(), target.size());
    if (n < 0) throw InputError("cannot read symlink '" + printable(e.abs()) + "': " + std::strerror(errno));
    target.resize(static_cast<std::size_t>(n));
    if (!valid_utf8(target)) throw InputError("symlink '" + printable(e.abs()) + "' has a target that is not valid UTF-8");
    e.set_link(std::move(target));
    e.size = 0;
    e.key.size = 0;
  } else {
    e.type = FileEntry::Type::File;
    e.mode = (st.st_mode & 0111) ? 0755 : 0644;
    e.size = static_cast<std::uint64_t>(st.st_size);
  }
  return e;
}

[[noreturn]] void changed_during_walk(const std::string& abs, const char* what) {
  throw InputError("'" + printable(abs) + "' changed while kiln read the tree (" + what +
                   "); nothing outside the source is read: re-run the build once the tree is stable");
}

/// Opens the directory `name` of `dfd` without following a symlink, and checks it is the one
/// lstat'ed as `st` (a directory swapped for a symlink since is refused, never followed).
UniqueFd open_child_dir(int dfd, const char* name, const struct stat& st, const std::string& abs) {
  UniqueFd fd(::openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) {
    if (errno == ELOOP || errno == ENOTDIR || errno == ENOENT) changed_during_walk(abs, "a directory became something else");
    throw InputError("cannot read directory '" + printable(abs) + "': " + std::strerror(errno));
  }
  struct stat now{};
  if (::fstat(fd.get(), &now) != 0 || now.st_dev != st.st_dev || now.st_ino != st.st_ino)
    changed_during_walk(abs, "a directory was replaced");
  return fd;
}

/// The directory listings of one walk, stacked: each level appends its names (each followed by a
/// NUL) to one buffer and drops them when done, so a listing allocates nothing once the buffers
/// have grown to the deepest path's needs (a std::string per name was a malloc each, and on a
/// 100k-file tree some thousand fresh heap pages, each a page fault).
struct NameStack {
  std::string bytes;
  std::vector<std::uint32_t> starts;  // where each listed name begins in `bytes`
  const char* at(std::size_t i) const { return bytes.data() + starts[i]; }
  /// Is `name` among the (sorted) names first .. last - 1?
  bool contains(std::size_t first, std::size_t last, const char* name) const {
    auto b = starts.begin() + static_cast<std::ptrdiff_t>(first), e = starts.begin() + static_cast<std::ptrdiff_t>(last);
    auto it = std::lower_bound(b, e, name, [&](std::uint32_t x, const char* n) { return std::strcmp(bytes.data() + x, n) < 0; });
    return it != e && std::strcmp(bytes.data() + *it, name) == 0;
  }
};

/// Appends the names in the directory `dfd`, without "." and "..", sorted bytewise (as
/// std::string orders them), to `names`. Reads with getdents64 into `buf`, reused from one
/// directory to the next (opendir's buffer was a fresh 32 KiB per directory, and fresh heap pages
/// on every one of them once the heap's top had been given back). Leaves `dfd`'s offset at the end.
void list_dir(int dfd, const std::string& abs, NameStack& names, std::vector<char>& buf) {
  if (buf.size() < (64u << 10)) buf.resize(64u << 10);
  const std::size_t first = names.starts.size();
  for (;;) {
    ssize_t n = ::getdents64(dfd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw InputError("cannot read directory '" + printable(abs) + "': " + std::strerror(errno));
    if (n == 0) break;
    for (ssize_t at = 0; at < n;) {
      const auto* de = reinterpret_cast<const struct dirent64*>(buf.data() + at);
      at += de->d_reclen;
      const char* name = de->d_name;
      if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0))) continue;
      names.starts.push_back(static_cast<std::uint32_t>(names.bytes.size()));
      names.bytes.append(name, std::strlen(name) + 1);
    }
  }
  const char* b = names.bytes.data();
  std::sort(names.starts.begin() + static_cast<std::ptrdiff_t>(first), names.starts.end(),
            [b](std::uint32_t x, std::uint32_t y) { return std::strcmp(b + x, b + y) < 0; });
}

/// Reads a small regular file `name` of `dfd` (not through a symlink unless `follow`; never a
/// fifo). False when it is missing or not a regular file.
bool read_small_file_at(int dfd, const char* name, std::string* out, bool follow = false) {
  UniqueFd fd(::openat(dfd, name, O_RDONLY | (follow ? 0 : O_NOFOLLOW) | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (!fd) return false;
  struct stat st{};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  out->clear();
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out->append(buf, static_cast<std::size_t>(n));
  }
  return true;
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

/// Is the directory open at `dfd` the top of another git work tree than `git`'s (a nested
/// repository, or a submodule's checkout), for `git ls-files` run in `git`'s? As git's
/// treat_directory decides it (dir.c, current git: 2.39 here), in its order:
///   - not when the index holds a path below it (directory_exists_in_index: index_directory):
///     git walks it as its own directory, with the outer rules and the .gitignore files met
///     there, whatever .git it holds (a repository `git init`ed or cloned over tracked files) —
///     `indexes_below`, asked only when the rest says yes (it reads the index);
///   - a ".git" that is a valid git directory, or a ".git" file naming one
///     (is_nonbare_repository_dir: a stale submodule .git file or a .git directory of junk is not;
///     nonbare_repository_at), but not the repository's own git directory (a symlink to it: git
///     compares real paths; a .git *file* naming it is another repository for git, since the file
///     is not the directory).
/// A submodule the index records is handled by GitRepo::tracked: git does not look inside it
/// whatever its .git holds. The .git entry is never walked into (symlinks are not followed), and
/// only its HEAD, objects/, refs/ and commondir are looked at, as git looks at them.
bool nested_work_tree(int dfd, const GitRepo& git, const std::function<bool()>& indexes_below) {
  struct stat st{};
  if (::fstatat(dfd, ".git", &st, 0) != 0) return false;  // most directories: one failed stat
  if (S_ISDIR(st.st_mode) && git.is_own_gitdir(st)) return false;  // not even read through
  return nonbare_repository_at(dfd) && !indexes_below();
}

/// A walk thread's files, in 1 MiB chunks, each a mapping of its own: the list grows without
/// copying and without a doubling's slack, and each chunk goes back to the system as soon as its
/// entries are moved out, so merging the threads' lists never holds the tree's entries twice.
class EntryChunks {
 public:
  EntryChunks() = default;
  EntryChunks(const EntryChunks&) = delete;
  EntryChunks& operator=(const EntryChunks&) = delete;
  ~EntryChunks() {
    for (std::size_t c = 0; c < chunks_.size(); ++c) release(chunks_[c], c + 1 == chunks_.size() ? used_ : kPer);
  }
  void push_back(FileEntry&& e) {
    if (chunks_.empty() || used_ == kPer) grow();
    new (chunks_.back() + used_) FileEntry(std::move(e));
    ++used_;
    ++size_;
  }
  std::size_t size() const { return size_; }
  template <class F>
  void for_each(F f) const {
    for (std::size_t c = 0; c < chunks_.size(); ++c)
      for (std::size_t i = 0, n = c + 1 == chunks_.size() ? used_ : kPer; i < n; ++i) f(chunks_[c][i]);
  }
  /// Moves every entry to the end of `out` (room reserved by the caller), releasing each chunk
  /// once emptied; leaves this empty.
  void move_into(std::vector<FileEntry>& out) {
    for (std::size_t c = 0; c < chunks_.size(); ++c) {
      const std::size_t n = c + 1 == chunks_.size() ? used_ : kPer;
      for (std::size_t i = 0; i < n; ++i) out.push_back(std::move(chunks_[c][i]));
      release(chunks_[c], n);
      chunks_[c] = nullptr;
    }
    chunks_.clear();
    used_ = size_ = 0;
  }

 private:
  static constexpr std::size_t kBytes = std::size_t(1) << 20;
  static constexpr std::size_t kPer = kBytes / sizeof(FileEntry);
  void grow() {
    chunks_.reserve(chunks_.size() + 1);  // before the mapping: a throw here leaks nothing
    void* p = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    chunks_.push_back(static_cast<FileEntry*>(p));
    used_ = 0;
  }
  static void release(FileEntry* chunk, std::size_t n) {
    if (!chunk) return;
    for (std::size_t i = 0; i < n; ++i) chunk[i].~FileEntry();
    ::munmap(chunk, kBytes);
  }
  std::vector<FileEntry*> chunks_;
  std::size_t used_ = 0, size_ = 0;  // entries in the last chunk; in all
};

/// What the threads of a parallel walk share (Walker::shared). Each thread walks whole directories
/// (a task: a directory already opened and checked by its parent's walker) with its own Walker;
/// a walker hands a subdirectory to the queue instead of descending into it while the queue has
/// room (queue_cap).
struct WalkShared {
  struct Task {
    UniqueFd dir;
    std::string rel;
    bool use_git;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Task> queue;
  std::size_t pending = 0;  // queued or being walked
  std::size_t idle = 0;     // threads waiting for a task
  std::size_t queue_cap = 8;  // directories queued at most (each holds a descriptor)
  // Each on a cache line of its own: a walker reads them for every entry, and a line another
  // thread writes would move between the cores at every read.
  alignas(64) std::atomic<bool> wants{false};   // the queue has room: a subdirectory is handed over
  alignas(64) std::atomic<bool> failed{false};  // a walker threw: the others stop (the walk is redone serially)
  alignas(64) std::atomic<std::size_t> next_slot{0};  // Walker::slots: the next block free
  alignas(64) std::shared_mutex rules_mu;       // git_rules grows as .gitignore files are met
  std::mutex git_mu;                // the GitRepo (libgit2's index) is asked by one thread at a time

  // While the queue has room, a walker queues the subdirectories it meets rather than descending:
  // a thread done with its directory finds the next one waiting, instead of idling until another
  // walker happens to meet a subdirectory.
  void update_wants() { wants.store(queue.size() < queue_cap, std::memory_order_relaxed); }
  void push(Task t) {
    {
      std::lock_guard<std::mutex> lock(mu);
      queue.push_back(std::move(t));
      ++pending;
      update_wants();
    }
    cv.notify_one();
  }
};

/// Thrown in a parallel walk's other threads once one has failed.
struct WalkAborted {};

/// One walk below a root, every directory opened relative to its parent's descriptor with
/// O_NOFOLLOW and checked against what lstat saw: a swapped path is an error, never followed.
struct Walker {
  const std::string root;         // absolute, real path of the walk's top (for messages)
  const std::string dest_prefix;
  const IgnoreRules* rules;       // builtin/flytekit and Docker-style files (paths relative to root)
  IgnoreRules* git_rules = nullptr;  // .gitignore files met on the way are added here; null: none
  std::string git_prefix;         // root relative to git_rules' base (the work tree): "" or "sub/app/"
  const GitRepo* git = nullptr;   // the repository holding the root: its tracked files are kept
  bool dirs_need_content = false; // emit a directory only when something below it is emitted
  std::vector<FileEntry>* out;
  std::vector<std::string>* warnings;
  /// What entries are relative to (FileEntry::root), and the path of the walk's top below it ("" or
  /// "listed/dir/"), prepended to each entry's rel.
  std::shared_ptr<const std::string> entry_root;
  std::string rel_prefix;

  std::string abs_of(const std::string& child) const { return root + "/" + child; }
  std::function<void(std::uint64_t, std::uint64_t)> walked;  // files found and their bytes, for a progress view
  std::uint64_t walked_files_ = 0, walked_bytes_ = 0;           // found, not yet reported to `walked`
  void report_walked() {
    if (walked && walked_files_) walked(walked_files_, walked_bytes_);
    walked_files_ = walked_bytes_ = 0;
  }
  NameStack names_;                            // the listings of the directories being walked
  std::vector<char> dents_;                    // getdents64's buffer
  std::string git_path_;                       // git_prefix + a path, for git_rules
  /// A parallel walk (dirs_need_content only): the shared queue and locks; directories go to
  /// `dirs` as candidates (kept after the walk when an entry lies below them), warnings to
  /// `keyed_warnings` with the path they are about (ordered after the walk as a serial walk
  /// would have met them).
  WalkShared* shared = nullptr;
  std::vector<FileEntry>* slots = nullptr;  // the caller's list, presized: files go to its free slots
  std::size_t slot_next = 0, slot_end = 0;  // this walker's block of slots: the next free, the end
  static constexpr std::size_t kSlotBlock = 64;  // slots claimed at a time (one atomic add per block)
  EntryChunks* files = nullptr;              // where files go (not `out`) when set
  /// A streamed walk (collect_files_streamed): files go here, before `slots` and `files`; in a
  /// parallel one, their ancestors go to `below_dirs` (what `dirs` keeps after the walk).
  EntryRuns* runs = nullptr;
  std::unordered_set<std::string>* below_dirs = nullptr;
  std::string last_parent_;                  // the directory whose ancestors below_dirs holds already
  std::size_t emitted = 0;                   // entries this walker has emitted so far
  std::vector<FileEntry>* dirs = nullptr;
  std::vector<std::pair<std::string, std::string>>* keyed_warnings = nullptr;

  /// `use_git` is false below a nested repository or submodule: `git ls-files` does not look
  /// inside one, so flytekit's GitIgnore ignores nothing there.
  void walk(int dfd, const std::string& rel, bool use_git = true) {
    auto git_ignored = [&](const std::string& child, bool is_dir) {
      if (!use_git || !git_rules) return false;
      git_path_.assign(git_prefix).append(child);  // reused: no string per entry
      if (!shared) return git_rules->ignored(git_path_, is_dir);
      std::shared_lock<std::shared_mutex> lock(shared->rules_mu);
      return git_rules->ignored(git_path_, is_dir);
    };
    auto git_keeps = [&](const std::string& child, bool is_dir) {  // tracked (below), so kept though ignored
      if (!git) return false;
      std::unique_lock<std::mutex> lock;
      if (shared) lock = std::unique_lock<std::mutex>(shared->git_mu);
      return is_dir ? git->tracks_below(child) : git->tracked(child);
    };
    // This directory's names: names_.at(first) .. names_.at(last - 1), dropped on return. A
    // deeper listing may move the buffer: a name is looked up again after the recursion.
    struct Drop {
      NameStack& s;
      std::size_t bytes, starts;
      ~Drop() {
        s.bytes.resize(bytes);
        s.starts.resize(starts);
      }
    } drop{names_, names_.bytes.size(), names_.starts.size()};
    const std::size_t first = names_.starts.size();
    list_dir(dfd, rel.empty() ? root : abs_of(rel), names_, dents_);
    const std::size_t last = names_.starts.size();
    if (use_git && git_rules && names_.contains(first, last, ".gitignore")) {
      std::string text;
      if (read_small_file_at(dfd, ".gitignore", &text)) {
        std::unique_lock<std::shared_mutex> lock;
        if (shared) lock = std::unique_lock<std::shared_mutex>(shared->rules_mu);
        git_rules->add_gitignore(git_prefix + rel, text);
      }
    }
    std::string child = rel;  // reused: rel + "/" + name
    if (!child.empty()) child += '/';
    const std::size_t base_len = child.size();
    // Is rel + "/" + name valid UTF-8? '/' is ASCII (no sequence spans it): exactly when rel is and
    // the name is, so rel is checked once per directory rather than once per entry.
    const bool rel_utf8 = valid_utf8(rel);
    auto child_utf8 = [&](const char* name) { return rel_utf8 && valid_utf8(name); };
    for (std::size_t k = first; k < last; ++k) {
      if (shared && shared->failed.load(std::memory_order_relaxed)) throw WalkAborted{};
      const char* n = names_.at(k);
      child.resize(base_len);
      child += n;
      struct stat st{};
      if (::fstatat(dfd, n, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) changed_during_walk(abs_of(child), "a file disappeared");
        throw InputError("cannot stat '" + printable(abs_of(child)) + "': " + std::strerror(errno));
      }
      if (S_ISDIR(st.st_mode)) {
        if (rules->can_prune(child)) continue;
        // Below a directory git excludes, only tracked files stay (git ls-files -io lists the rest).
        // An excluded directory is not baked even when a repository is nested in it (flytekit
        // bakes that one: docs/files.md).
        if (git_ignored(child, true) && !git_keeps(child, true)) continue;
        UniqueFd sub = open_child_dir(dfd, n, st, abs_of(child));
        bool nested = use_git && git && nested_work_tree(sub.get(), *git, [&] {
                        std::unique_lock<std::mutex> lock;
                        if (shared) lock = std::unique_lock<std::mutex>(shared->git_mu);
                        return git->indexes_below(child);
                      });
        bool emit = !dirs_need_content && !rules->ignored(child, true);
        if (emit && !child_utf8(names_.at(k)))
          throw InputError("file name is not valid UTF-8: '" + printable(abs_of(child)) +
                           "' (rename it, or exclude it with .dockerignore)");
        if (shared) {  // emit is false (dirs_need_content): kept after the walk if something lies below
          dirs->push_back(make_entry(rel_prefix + child, dest_prefix + child, entry_root, st, dfd, n));
          if (shared->wants.load(std::memory_order_relaxed))
            shared->push({std::move(sub), child, use_git && !nested});
          else
            walk(sub.get(), child, use_git && !nested);
          continue;
        }
        const std::size_t before = emitted;
        walk(sub.get(), child, use_git && !nested);
        if (emit || (dirs_need_content && emitted > before)) {
          out->push_back(make_entry(rel_prefix + child, dest_prefix + child, entry_root, st, dfd, names_.at(k)));
          ++emitted;
        }
        continue;
      }
      if (rules->ignored(child, false)) continue;
      if (git_ignored(child, false) && !git_keeps(child, false)) continue;
      // Checked after the ignore rules, so an excluded name does not matter; the whole path, as a
      // re-included file may sit below an excluded directory whose name is not UTF-8.
      if (!child_utf8(n))
        throw InputError("file name is not valid UTF-8: '" + printable(abs_of(child)) +
                         "' (rename it, or exclude it with .dockerignore)");
      FileEntry e = make_entry(rel_prefix + child, dest_prefix + child, entry_root, st, dfd, n);
      if (e.type == FileEntry::Type::Symlink && !link_stays_inside(child, e.link_target())) {
        std::string w = "symlink '" + child + "' points outside source_root ('" + e.link_target() +
                        "'); stored as a symlink, not followed";
        if (keyed_warnings)
          keyed_warnings->emplace_back(child, std::move(w));
        else
          warnings->push_back(std::move(w));
      }
      ++walked_files_;
      walked_bytes_ += e.size;
      if (walked_files_ == 256) report_walked();  // a big directory: not only once it is done
      ++emitted;
      if (runs) {
        if (below_dirs) mark_parents(e.rel());
        runs->add(std::move(e));
        continue;
      }
      if (slots) {  // a parallel walk: the next slot of this walker's block of the shared, presized list
        if (slot_next == slot_end) {
          slot_next = std::min(shared->next_slot.fetch_add(kSlotBlock, std::memory_order_relaxed), slots->size());
          slot_end = std::min(slot_next + kSlotBlock, slots->size());
        }
        if (slot_next < slot_end) {
          (*slots)[slot_next++] = std::move(e);
          continue;
        }
        slots = nullptr;  // all claimed (the tree outgrew its hint): the rest go to `files`
      }
      if (files) {
        files->push_back(std::move(e));
        continue;
      }
      out->push_back(std::move(e));
    }
    report_walked();
  }

  /// Adds the ancestors of `rel` to below_dirs (a directory's files lie side by side: once each).
  void mark_parents(std::string_view rel) {
    const std::size_t slash = rel.rfind('/');
    if (slash == std::string::npos || slash == 0) return;
    if (rel.substr(0, slash) == last_parent_) return;
    last_parent_.assign(rel.substr(0, slash));
    for (std::size_t p = slash; p != std::string::npos && p > 0; p = rel.rfind('/', p - 1))
      if (!below_dirs->emplace(rel.substr(0, p)).second) break;
  }
};

/// Is `a` before `b` in the order a serial walk meets paths (names bytewise within a directory,
/// a directory's contents right at its name): bytewise, '/' before any other byte.
bool walk_order_less(std::string_view a, std::string_view b) {
  const std::size_t n = std::min(a.size(), b.size());
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned char x = a[i] == '/' ? 0 : static_cast<unsigned char>(a[i]);
    const unsigned char y = b[i] == '/' ? 0 : static_cast<unsigned char>(b[i]);
    if (x != y) return x < y;
  }
  return a.size() < b.size();
}

/// Walks the directory `root_fd` as `proto.walk(root_fd, "")` does (proto.dirs_need_content set),
/// with `threads` threads (WalkShared). Appends the entries to `out` and the warnings to
/// `warnings`: the same entries (in another order: the caller sorts them) and the same warnings
/// in the same order. False, with nothing added, when a walker failed: the caller walks again
/// serially, for the very error a serial walk reports.
///
/// Streamed (`runs` set, `spill_dir` and `spill_budget` for them): each thread's files go to
/// EntryRuns of its own, moved to `runs` at the end; only the kept directories go to `out`.
bool walk_parallel(const Walker& proto, int root_fd, std::size_t threads, std::size_t expected,
                   std::vector<FileEntry>* out, std::vector<std::string>* warnings,
                   std::vector<EntryRuns>* runs = nullptr, const fs::path& spill_dir = {},
                   std::size_t spill_budget = 0) {
  struct Part {
    std::vector<FileEntry> dirs;
    EntryChunks files;
    std::vector<std::pair<std::string, std::string>> warnings;
    std::optional<EntryRuns> runs;
    std::unordered_set<std::string> below;  // streamed: the ancestors of this thread's files
  };
  std::vector<Part> parts(threads);
  if (runs)
    for (Part& part : parts) part.runs.emplace(spill_dir, spill_budget);
  const std::size_t before = out->size();
  WalkShared sh;
  sh.queue_cap = 4 * threads;
  // Its own open file: the offset the walk reads the root's entries at is not root_fd's.
  UniqueFd top(::openat(root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!top) return false;
  sh.push({std::move(top), "", true});
  // Files go straight into `out`'s reserved room (no list per thread to grow, then copy): room
  // for the `expected` entries is made slots, claimed a block at a time; a thread keeps what does
  // not fit.
  sh.next_slot.store(before);
  out->resize(before + std::min(out->capacity() - before, expected));
  auto work = [&](std::size_t t) {
    Walker w = proto;
    Part& part = parts[t];
    // Each thread's entries share a copy of the root of their own: every entry holds a reference,
    // and one count updated from every core would move between them at every file.
    if (w.entry_root && t > 0) w.entry_root = std::make_shared<const std::string>(*w.entry_root);
    w.out = nullptr;  // files go to a slot or to `files`, directories to `dirs`
    w.files = &part.files;
    w.slots = out;
    w.dirs = &part.dirs;
    w.keyed_warnings = &part.warnings;
    w.shared = &sh;
    if (part.runs) {
      w.runs = &*part.runs;
      w.below_dirs = &part.below;
    }
    std::unique_lock<std::mutex> lock(sh.mu);
    for (;;) {
      ++sh.idle;
      sh.update_wants();
      sh.cv.wait(lock, [&] { return !sh.queue.empty() || sh.pending == 0; });
      --sh.idle;
      if (sh.queue.empty()) {  // every task done
        sh.update_wants();
        return;
      }
      WalkShared::Task task = std::move(sh.queue.front());
      sh.queue.pop_front();
      sh.update_wants();
      lock.unlock();
      if (!sh.failed.load()) {
        try {
          w.walk(task.dir.get(), task.rel, task.use_git);
        } catch (...) {
          sh.failed.store(true);
        }
      }
      task.dir.reset();
      lock.lock();
      if (--sh.pending == 0) sh.cv.notify_all();
    }
  };
  std::vector<std::thread> pool;
  for (std::size_t t = 1; t < threads; ++t) {
    try {
      pool.emplace_back(work, t);
    } catch (const std::system_error&) {
      break;  // no more threads: fewer walk
    }
  }
  work(0);
  for (auto& th : pool) th.join();
  // The blocks claimed; a walker's last block may be partly empty (an empty dest: no entry has one).
  out->resize(std::min(sh.next_slot.load(), out->size()));
  out->erase(std::remove_if(out->begin() + static_cast<std::ptrdiff_t>(before), out->end(),
                            [](const FileEntry& e) { return e.dest.empty(); }),
             out->end());
  if (sh.failed.load()) {
    out->erase(out->begin() + static_cast<std::ptrdiff_t>(before), out->end());
    return false;
  }
  // A directory is kept when an entry lies below it (a serial walk emits it once its walk emitted
  // something): every ancestor of every file and symlink.
  std::unordered_set<std::string_view> below;
  std::string_view last_parent;  // a directory's files lie side by side: its parent is marked once
  auto mark = [&](const FileEntry& e) {
    const std::string_view rel = e.rel();
    const std::size_t slash = rel.rfind('/');
    if (slash == std::string::npos || slash == 0) return;
    if (rel.substr(0, slash) == last_parent) return;
    last_parent = rel.substr(0, slash);
    for (std::size_t p = slash; p != std::string::npos && p > 0; p = rel.rfind('/', p - 1))
      if (!below.emplace(rel.data(), p).second) break;
  };
  for (std::size_t i = before; i < out->size(); ++i) mark((*out)[i]);
  for (const Part& part : parts) part.files.for_each(mark);
  auto is_below = [&](std::string_view dir) {
    if (below.count(dir)) return true;
    for (const Part& part : parts)
      if (!part.below.empty() && part.below.count(std::string(dir))) return true;
    return false;
  };
  std::vector<FileEntry> kept_dirs;
  for (Part& part : parts)
    for (FileEntry& d : part.dirs)
      if (is_below(d.rel())) kept_dirs.push_back(std::move(d));
  if (runs)
    for (Part& part : parts) runs->push_back(std::move(*part.runs));
  below.clear();  // its views point into the entries moved below
  std::size_t total = out->size() + kept_dirs.size();
  for (const Part& part : parts) total += part.files.size();
  out->reserve(total);
  for (Part& part : parts) part.files.move_into(*out);
  out->insert(out->end(), std::make_move_iterator(kept_dirs.begin()), std::make_move_iterator(kept_dirs.end()));
  std::vector<std::pair<std::string, std::string>> ws;
  for (Part& part : parts)
    for (auto& w : part.warnings) ws.push_back(std::move(w));
  std::stable_sort(ws.begin(), ws.end(), [](const auto& a, const auto& b) { return walk_order_less(a.first, b.first); });
  for (auto& w : ws) warnings->push_back(std::move(w.second));
  return true;
}

/// Threads for a walk: `jobs`, or (0) one per core this process may run on, at most 4 (beyond a
/// few, lstat and directory reads contend in the kernel more than they gain). Not fewer when the
/// machine is busy: measured on 2 cores (no-change rebuild, 10k files), a second walker cost 4%
/// beside one CPU-bound process and saved 15% beside two, and a sample of the run queue mostly
/// catches the kernel's writeback of the previous command, not a competitor.
std::size_t walk_threads(int jobs) {
  if (jobs > 0) return static_cast<std::size_t>(jobs);
  cpu_set_t set;
  CPU_ZERO(&set);
  const int cores = ::sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : static_cast<int>(std::thread::hardware_concurrency());
  return static_cast<std::size_t>(std::clamp(cores, 1, 4));
}

/// realpath that throws InputError (about the spec field `field`, when it is one's).
std::string real(const std::string& p, const std::string& what, const std::string& field = "") {
  char* r = ::realpath(p.c_str(), nullptr);
  if (!r)
    throw InputError(field, what + " '" + printable(p) + "' " + (errno == ENOENT ? "does not exist" : std::strerror(errno)));
  std::string s(r);
  std::free(r);
  return s;
}

bool inside(const std::string& path, const std::string& root) {
  return path == root || (path.size() > root.size() && path.compare(0, root.size(), root) == 0 &&
                          (root == "/" || path[root.size()] == '/'));
}

UniqueFd open_root(const std::string& root, const std::string& field = "") {
  UniqueFd fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) throw InputError(field, "cannot read directory '" + printable(root) + "': " + std::strerror(errno));
  return fd;
}

/// Opens the directory `rel` below `root_fd`, following only symlinks that stay below the root
/// (openat2 RESOLVE_BENEATH). Returns an invalid fd with errno set; ENOSYS on kernels before 5.6.
UniqueFd open_dir_beneath(int root_fd, const std::string& rel) {
  struct open_how how{};
  how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  long fd = ::syscall(SYS_openat2, root_fd, rel.c_str(), &how, sizeof how);
  return UniqueFd(fd < 0 ? -1 : static_cast<int>(fd));
}

/// Adds one listed path (a loaded module, or a copy entry) below `root`, recursing into a directory.
void add_listed(const std::shared_ptr<const std::string>& root_ptr, int root_fd, const std::string& rel,
                const std::string& dest_prefix, const char* what, std::vector<FileEntry>* out,
                std::vector<std::string>* warnings, bool whole_dir = false) {
  const std::string& root = *root_ptr;
  const std::string field = whole_dir ? "copy" : "loaded_modules";  // the spec field the entry is in
  // A copy entry's directory is copied whole (`whole_dir`), as flytekit's shutil.copytree does: no
  // ignore rule applies inside it. A listed module directory is walked minus .git, __pycache__, *.pyc.
  IgnoreRules none;
  IgnoreRules builtin;
  builtin.add_builtin();
  const IgnoreRules* rules = whole_dir ? &none : &builtin;
  if (rel == ".") {  // copy ["."]: the whole directory, at dest_prefix (flytekit: COPY . /root/./)
    UniqueFd dir(::fcntl(root_fd, F_DUPFD_CLOEXEC, 0));
    if (!dir) throw InputError(field, std::string(what) + " '.': cannot open " + root + ": " + std::strerror(errno));
    Walker w{root, dest_prefix, rules, nullptr, "", nullptr, false, out, warnings, root_ptr, ""};
    w.walk(dir.get(), "");
    return;
  }
  const std::string abs = root + "/" + rel;
  const std::string parent_rel = fs::path(rel).parent_path().string();
  const std::string name = fs::path(rel).filename().string();
  UniqueFd parent;
  if (parent_rel.empty()) {
    parent = UniqueFd(::fcntl(root_fd, F_DUPFD_CLOEXEC, 0));
  } else {
    parent = open_dir_beneath(root_fd, parent_rel);
    if (!parent && errno == ENOSYS) {  // no openat2: resolve, then check the result stays inside
      std::string real_parent = real(root + "/" + parent_rel, what, field);
      if (!inside(real_parent, root))
        throw InputError(field, std::string(what) + " '" + rel + "' resolves outside " + root + " (through a symlink); refused");
      parent = UniqueFd(::open(real_parent.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    }
    if (!parent && errno == EXDEV)
      throw InputError(field, std::string(what) + " '" + rel + "' resolves outside " + root + " (through a symlink); refused");
  }
  if (!parent) throw InputError(field, std::string(what) + " '" + rel + "' not found under " + root);
  struct stat st{};
  if (::fstatat(parent.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
    throw InputError(field, std::string(what) + " '" + rel + "' not found under " + root);
  FileEntry e = make_entry(rel, dest_prefix + rel, root_ptr, st, parent.get(), name.c_str());
  if (e.type == FileEntry::Type::Symlink && !link_stays_inside(rel, e.link_target()))
    warnings->push_back(std::string(what) + " '" + rel + "' is a symlink pointing outside " +
                        (whole_dir ? std::string("its directory") : std::string("source_root")) + " ('" +
                        e.link_target() + "'); stored as a symlink, not followed: the image holds a dangling link");
  if (e.type == FileEntry::Type::Dir) {
    UniqueFd dir = open_child_dir(parent.get(), name.c_str(), st, abs);
    Walker w{abs, dest_prefix + rel + "/", rules, nullptr, "", nullptr, false, out, warnings, root_ptr, rel + "/"};
    w.walk(dir.get(), "");
  }
  out->push_back(std::move(e));
}

std::string dest_prefix_of(const std::string& dest) {
  std::string p = dest;
  while (!p.empty() && p.front() == '/') p.erase(0, 1);
  if (!p.empty() && p.back() != '/') p += '/';
  return p;
}

/// Sorts entries by the string `key` gives (bytewise), moving each entry at most once: the keys
/// are sorted with their positions (sort_keyed), then the permutation applied in place, cycle by
/// cycle (sorting the entries themselves moved each one log n times).
template <class Key>
void sort_entries(std::vector<FileEntry>& list, Key key) {
  std::vector<KeyedIndex> items(list.size());
  bool sorted = true;
  for (std::size_t i = 0; i < list.size(); ++i) {
    items[i] = {key(list[i]), static_cast<std::uint32_t>(i)};
    if (i > 0 && items[i].key() < items[i - 1].key()) sorted = false;
  }
  if (sorted) return;
  sort_keyed(items.data(), items.size());
  std::vector<std::uint32_t> order(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) order[i] = items[i].index;
  items = std::vector<KeyedIndex>();
  // Position i receives list[order[i]]; each cycle is walked once, marked by order[i] = i.
  for (std::size_t i = 0; i < order.size(); ++i) {
    if (order[i] == i) continue;
    FileEntry held = std::move(list[i]);
    std::size_t at = i;
    while (order[at] != i) {
      std::size_t from = order[at];
      list[at] = std::move(list[from]);
      order[at] = static_cast<std::uint32_t>(at);
      at = from;
    }
    list[at] = std::move(held);
    order[at] = static_cast<std::uint32_t>(at);
  }
}

/// Reserves room for `n` entries, in transparent huge pages where the system offers them on
/// request (THP "madvise" mode; elsewhere this is a plain reserve). Filling a list of 100k entries
/// (24 MB) otherwise takes ~6000 page faults, one per 4 KiB first written, and on a virtualized
/// host a fault is the walk's costliest step after lstat itself. The room is rounded up so that
/// malloc maps a whole number of 2 MiB (the kernel then aligns the mapping to 2 MiB, and every
/// page of it can be huge).
void reserve_entries(std::vector<FileEntry>& list, std::size_t n) {
  constexpr std::size_t kHuge = 2u << 20, kPage = 4096;
  std::size_t bytes = n * sizeof(FileEntry);
  if (bytes + kPage < kHuge) {
    list.reserve(n);
    return;
  }
  const std::size_t huge_pages = (bytes + kPage + kHuge - 1) / kHuge;  // malloc's header and page rounding
  list.reserve((huge_pages * kHuge - kPage) / sizeof(FileEntry));
  const auto b = reinterpret_cast<std::uintptr_t>(list.data());
  const std::uintptr_t lo = b & ~std::uintptr_t(kPage - 1);
  const std::uintptr_t hi = (b + list.capacity() * sizeof(FileEntry) + kPage - 1) & ~std::uintptr_t(kPage - 1);
  ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
}

/// Marks every later link of a multiply-linked file with the dest of the first one.
void mark_hardlinks(std::vector<FileEntry>& list) {
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::string> first;
  for (FileEntry& e : list) {
    if (e.type != FileEntry::Type::File || e.nlink < 2) continue;
    auto [it, inserted] = first.emplace(std::make_pair(e.key.dev, e.key.ino), e.dest);
    if (!inserted) e.set_link(it->second);
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
                             [](const FileEntry& e, const std::string& r) { return e.rel() < r; });
  return it != source.end() && it->rel() == rel && it->type != FileEntry::Type::Dir;
}

bool FileSet::source_file_resolves(const std::string& rel, std::string* why) const {
  auto find = [&](std::string_view p) -> const FileEntry* {
    auto it = std::lower_bound(source.begin(), source.end(), p, [](const FileEntry& e, std::string_view r) { return e.rel() < r; });
    return it != source.end() && it->rel() == p ? &*it : nullptr;
  };
  // A directory of the image: an entry, or (loaded_modules lists files only) a prefix of one.
  auto implicit_dir = [&](const std::string& p) {
    const std::string prefix = p + "/";
    auto it = std::lower_bound(source.begin(), source.end(), std::string_view(prefix),
                               [](const FileEntry& e, std::string_view r) { return e.rel() < r; });
    return it != source.end() && it->rel().substr(0, prefix.size()) == prefix;
  };
  auto split = [](std::string_view p) {
    std::vector<std::string> parts;
    std::size_t i = 0;
    while (i <= p.size()) {
      std::size_t j = p.find('/', i);
      if (j == std::string_view::npos) j = p.size();
      if (j > i) parts.emplace_back(p.substr(i, j - i));
      i = j + 1;
    }
    return parts;
  };
  const std::string dest_dir = dest_prefix_of(dest);  // "root/" (no leading '/')
  std::vector<std::string> done;                      // the directories resolved so far
  std::vector<std::string> todo = split(rel);         // what is left, last component first
  std::reverse(todo.begin(), todo.end());
  std::string first_link, first_target;  // the link `rel` itself is (or passes through), for `why`
  auto fail = [&](const std::string& where) {
    if (why && !first_link.empty())
      *why = "'" + first_link + "' is a symlink to '" + first_target + "', " + where;
    return false;
  };
  int hops = 0;
  while (!todo.empty()) {
    std::string c = std::move(todo.back());
    todo.pop_back();
    if (c == ".") continue;
    if (c == "..") {
      if (done.empty()) return fail("which leads outside source_root: the image holds a dangling link");
      done.pop_back();
      continue;
    }
    std::string cand;
    for (const auto& d : done) cand += d + "/";
    cand += c;
    const FileEntry* e = find(cand);
    if (!e) {
      if (!todo.empty() && implicit_dir(cand)) {
        done.push_back(std::move(c));
        continue;
      }
      return fail("whose target the image does not hold (not baked)");
    }
    if (e->type == FileEntry::Type::Symlink) {
      if (first_link.empty()) first_link = cand, first_target = e->link_target();
      if (++hops > 40) return fail("in a loop of symlinks");
      const std::string& t = e->link_target();
      std::string_view target = t;
      if (!target.empty() && target.front() == '/') {  // absolute: in the image's tree
        std::string_view inner = target.substr(1);
        while (!inner.empty() && inner.front() == '/') inner.remove_prefix(1);
        if (inner.substr(0, dest_dir.size()) != dest_dir)
          return fail("which leads outside source_root: the image does not hold it from source_root");
        target = inner.substr(dest_dir.size());
        done.clear();
      }
      std::vector<std::string> parts = split(target);
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) todo.push_back(std::move(*it));
      continue;
    }
    if (e->type == FileEntry::Type::Dir) {
      done.push_back(std::move(c));
      continue;
    }
    if (todo.empty()) return true;  // a regular file, at the end of the path
    return fail("whose target the image does not hold (not baked)");
  }
  return fail("which leads to a directory, not a file");  // a path that ends at a directory
}

FileSet collect_files(const spec::ImageSpec& spec, const std::vector<std::string>& extra_modules) {
  CollectOptions opts;
  opts.extra_modules = extra_modules;
  return collect_files(spec, opts);
}

namespace {

/// collect_files, or (`stream` set) collect_files_streamed.
FileSet collect(const spec::ImageSpec& spec, const CollectOptions& opts, std::unique_ptr<SourceStream>* stream) {
  FileSet set;
  const fs::path spill_dir = !stream ? fs::path() : !opts.spill_dir.empty() ? opts.spill_dir : fs::temp_directory_path();
  std::vector<EntryRuns> runs;  // streamed: the source files, in runs
  set.dest = spec.source_dest;
  set.mode = spec.source_root ? spec.source_copy_mode : spec::CopyMode::NoCopy;
  const std::string prefix = dest_prefix_of(spec.source_dest);

  if (spec.source_root && set.mode != spec::CopyMode::NoCopy) {
    set.has_source = true;
    // The hint is bounded, so a stale index cannot make kiln reserve much more than it needs.
    if (opts.expected_entries && !stream) reserve_entries(set.source, std::min<std::size_t>(opts.expected_entries, std::size_t(4) << 20));
    std::string root = spec.source_root->string();
    struct stat st{};
    if (::stat(root.c_str(), &st) != 0)
      throw InputError("source_root", "source_root '" + root + "' does not exist (resolved from " + spec.origin + ")");
    if (!S_ISDIR(st.st_mode)) throw InputError("source_root", "source_root '" + root + "' is not a directory");
    root = real(root, "source_root", "source_root");
    auto root_ptr = std::make_shared<const std::string>(root);
    UniqueFd root_fd = open_root(root, "source_root");
    if (set.mode == spec::CopyMode::All) {
      // flytekit's image builder: IgnoreGroup([GitIgnore, DockerIgnore, StandardIgnore]); the
      // fast-register bundle adds FlyteIgnore.
      IgnoreRules rules;
      rules.add_flytekit_standard();
      std::string text;
      // The image follows Docker's reading of .dockerignore; pyflyte's bundle reads both files
      // with docker-py's matcher (docs/files.md).
      if (read_small_file_at(root_fd.get(), ".dockerignore", &text, true)) {
        if (opts.pyflyte_bundle)
          rules.add_dockerpy_ignore(text, ".dockerignore");
        else
          rules.add_dockerignore(text, ".dockerignore");
      }
      if (opts.pyflyte_bundle && read_small_file_at(root_fd.get(), ".flyteignore", &text, true))
        rules.add_dockerpy_ignore(text, ".flyteignore");
      // Inside a git work tree, git's exclude sources from the work tree's root down and the index;
      // outside one, the tree's own .gitignore files.
      IgnoreRules git_rules;
      std::unique_ptr<GitRepo> git = GitRepo::open_remembered(root, opts.git_memo);
      if (git) {
        set.git_workdir = git->workdir();
        git->add_rules(git_rules);
      }
      Walker w{root,       prefix,      &rules,         &git_rules, git ? git->prefix() : "", git.get(), true,
               &set.source, &set.warnings, root_ptr, "", opts.walked};
      const std::size_t threads = walk_threads(opts.jobs);
      if (threads < 2 || !walk_parallel(w, root_fd.get(), threads, stream ? 0 : opts.expected_entries, &set.source,
                                        &set.warnings, stream ? &runs : nullptr, spill_dir, opts.spill_budget)) {
        if (threads >= 2) {  // a walker failed: again, serially, for the error a serial walk meets first
          git_rules = IgnoreRules();  // the .gitignore files met so far are added again as the walk meets them
          if (git) git->add_rules(git_rules);
        }
        // Without a size hint (a first build), files go to chunks first and then to an exact
        // list: a list grown by doubling would keep up to half its room unused all build long.
        EntryChunks chunks;
        if (set.source.capacity() == 0) w.files = &chunks;
        std::optional<EntryRuns> serial_runs;
        if (stream) {  // files to runs, directories (kept when something below them is) to the list
          serial_runs.emplace(spill_dir, opts.spill_budget);
          w.runs = &*serial_runs;
        }
        w.walk(root_fd.get(), "");
        w.files = nullptr;
        w.runs = nullptr;
        if (serial_runs) runs.push_back(std::move(*serial_runs));
        set.source.reserve(set.source.size() + chunks.size());
        chunks.move_into(set.source);
      }
      if (git) git->remember_index_use();
      // source_root inside a directory git ignores: flytekit's `git ls-files -io` selection keeps
      // only tracked files there (often none). Say so rather than bake an empty tree silently.
      if (git && !git->prefix().empty()) {
        std::string p = git->prefix();
        while (!p.empty() && p.back() == '/') p.pop_back();
        for (std::size_t cut = 0; cut != std::string::npos;) {
          cut = p.find('/', cut + 1);
          std::string dir = p.substr(0, cut);
          if (git_rules.ignored(dir, true)) {
            std::size_t files = 0;
            for (const auto& e : set.source) files += e.type != FileEntry::Type::Dir;
            for (const auto& r : runs) files += r.size();  // files and symlinks only
            set.warnings.push_back("source_root " + root + " lies in '" + dir + "/', which git ignores in " +
                                   git->workdir() + ": only files git tracks there are baked (" +
                                   std::to_string(files) + "), as flytekit selects them");
            break;
          }
        }
      }
    } else {
      std::vector<std::string> mods = spec.loaded_modules;
      mods.insert(mods.end(), opts.extra_modules.begin(), opts.extra_modules.end());
      for (const std::string& m : mods) {
        std::string clean = fs::path(m).lexically_normal().generic_string();
        while (!clean.empty() && clean.back() == '/') clean.pop_back();
        if (clean.empty() || clean == "." || clean.front() == '/' || clean.rfind("../", 0) == 0 || clean == "..")
          throw InputError("loaded_modules", "loaded module '" + m + "' must be a relative path inside source_root");
        add_listed(root_ptr, root_fd.get(), clean, prefix, "loaded module", &set.source, &set.warnings);
      }
    }
    if (stream) {  // merged, deduplicated and linked as they are read (SourceStream)
      auto merge = std::make_unique<EntryMerge>(root_ptr);
      std::size_t spilled = 0;
      for (const EntryRuns& r : runs) spilled += r.runs();
      for (EntryRuns& r : runs) {
        if (spilled) {  // a big tree: what each thread still holds goes to disk too, not to the merge
          const std::size_t before = r.runs();
          r.spill_rest();
          spilled += r.runs() - before;
        }
        merge->add(std::move(r));
      }
      merge->add(std::move(set.source));
      set.source = std::vector<FileEntry>();
      *stream = std::make_unique<SourceStream>(std::move(merge), spec.modelcar, spilled);
    } else {
      sort_entries(set.source, [](const FileEntry& e) { return e.rel(); });
      set.source.erase(std::unique(set.source.begin(), set.source.end(),
                                   [](const FileEntry& a, const FileEntry& b) { return a.rel() == b.rel(); }),
                       set.source.end());
      mark_hardlinks(set.source);
    }
  } else if (stream) {
    *stream = std::make_unique<SourceStream>(std::make_unique<EntryMerge>(nullptr), spec.modelcar, 0);
  }

  if (!spec.copy.empty()) {
    auto base = std::make_shared<const std::string>(real(spec.base_dir.string(), "spec directory"));
    UniqueFd base_fd = open_root(*base);
    for (const std::string& c : spec.copy)
      add_listed(base, base_fd.get(), c, prefix, "copy entry", &set.copy, &set.warnings, /*whole_dir=*/true);
    sort_entries(set.copy, [](const FileEntry& e) { return std::string_view(e.dest); });
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

}  // namespace

FileSet collect_files(const spec::ImageSpec& spec, const CollectOptions& opts) { return collect(spec, opts, nullptr); }

FileSet collect_files_streamed(const spec::ImageSpec& spec, const CollectOptions& opts,
                               std::unique_ptr<SourceStream>* source) {
  return collect(spec, opts, source);
}

SourceStream::SourceStream(std::unique_ptr<EntryMerge> merge, bool modelcar, std::size_t runs)
    : merge_(std::move(merge)), modelcar_(modelcar), runs_(runs) {}
SourceStream::~SourceStream() = default;

bool SourceStream::next(FileEntry& e) {
  for (;;) {
    if (!merge_->next(e)) return false;
    if (started_ && e.rel() == prev_) continue;  // given twice (a module listed alone and in its directory)
    started_ = true;
    prev_.assign(e.rel());
    break;
  }
  if (e.type == FileEntry::Type::File && e.nlink > 1) {  // as mark_hardlinks: the first link in order
    auto [it, inserted] = first_link_.emplace(std::make_pair(e.key.dev, e.key.ino), e.dest);
    if (!inserted) e.set_link(it->second);
  }
  if (modelcar_) {
    if (e.type == FileEntry::Type::File) e.mode = spec::kModelcarFileMode;
    if (e.type == FileEntry::Type::Dir) e.mode = spec::kModelcarDirMode;
  }
  return true;
}

std::string FileEntry::abs() const {
  const std::string_view r = rel();
  if (!root) return std::string(r);
  std::string p;
  p.reserve(root->size() + 1 + r.size());
  p += *root;
  p += '/';
  p += r;
  return p;
}

void FileEntry::set_paths(std::string rel, std::string dest_path) {
  dest = std::move(dest_path);
  const bool tail = rel.size() <= dest.size() && dest.compare(dest.size() - rel.size(), rel.size(), rel) == 0;
  if (tail && rel.size() <= UINT16_MAX) {
    rel_tail_ = static_cast<std::uint16_t>(rel.size());
    if (extra_) extra_->rel.clear();
  } else {
    extra().rel = std::move(rel);
    rel_tail_ = 0;
  }
  if (extra_ && extra_->rel.empty() && extra_->link.empty()) extra_.reset();
}

void FileEntry::set_link(std::string l) {
  if (!l.empty()) {
    extra().link = std::move(l);
  } else if (extra_) {
    extra_->link.clear();
    if (extra_->rel.empty()) extra_.reset();
  }
}

FileEntry::FileEntry(const FileEntry& o)
    : dest(o.dest), root(o.root), key(o.key), size(o.size), mode(o.mode), nlink(o.nlink), rel_tail_(o.rel_tail_),
      sha256(o.sha256), type(o.type), extra_(o.extra_ ? std::make_unique<Extra>(*o.extra_) : nullptr) {}

FileEntry& FileEntry::operator=(const FileEntry& o) {
  if (this != &o) {
    FileEntry copy(o);
    *this = std::move(copy);
  }
  return *this;
}

void ContentDigest::hex_to(char* out) const {
  // Two characters per byte from one table (the tag formats every file's digest on a rebuild).
  static const auto pairs = [] {
    std::array<char, 512> t{};
    const char* k = "0123456789abcdef";
    for (int b = 0; b < 256; ++b) t[2 * b] = k[b >> 4], t[2 * b + 1] = k[b & 15];
    return t;
  }();
  for (std::size_t i = 0; i < bytes.size(); ++i) std::memcpy(out + 2 * i, &pairs[2 * bytes[i]], 2);
}

std::string ContentDigest::hex() const {
  if (!set) return {};
  std::string s(64, '0');
  hex_to(s.data());
  return s;
}

ContentDigest ContentDigest::from_hex(std::string_view hex) {
  ContentDigest d;
  auto nib = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  for (std::size_t i = 0; i < d.bytes.size() && 2 * i + 1 < hex.size(); ++i)
    d.bytes[i] = static_cast<unsigned char>(nib(hex[2 * i]) << 4 | nib(hex[2 * i + 1]));
  d.set = true;
  return d;
}

int open_walked_file(const FileEntry& e) {
  const std::string abs = e.abs();
  UniqueFd fd(::open(abs.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY));
  if (!fd) {
    if (errno == ELOOP) changed_during_walk(abs, "a file became a symlink");
    if (errno == ENOENT) changed_during_walk(abs, "a file disappeared");
    throw InputError("cannot open '" + printable(abs) + "': " + std::strerror(errno));
  }
  struct stat st{};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_dev != e.key.dev || st.st_ino != e.key.ino)
    changed_during_walk(abs, "a file, or a directory above it, was replaced");
  int fl = ::fcntl(fd.get(), F_GETFL);
  if (fl >= 0) ::fcntl(fd.get(), F_SETFL, fl & ~O_NONBLOCK);
  return fd.release();
}

namespace {
/// The stat index's key for an entry: source files by their path below source_root (the index's
/// root), copy entries by their absolute path (they may live elsewhere), so the two never collide.
std::string_view index_path(const FileEntry& e, bool source, std::string* buf) {
  if (source) return e.rel();
  *buf = e.abs();
  return *buf;
}
}  // namespace

std::vector<FileEntry*> lookup_hashes(FileSet& set, const StatIndex* index) {
  std::vector<FileEntry*> todo;
  std::string buf;
  for (auto* list : {&set.source, &set.copy}) {
    const bool source = list == &set.source;
    for (FileEntry& e : *list) {
      if (e.type != FileEntry::Type::File || e.sha256.set) continue;
      if (index && index->lookup(index_path(e, source, &buf), e.key, &e.sha256.bytes)) {
        e.sha256.set = true;
        continue;
      }
      todo.push_back(&e);
    }
  }
  return todo;
}

void hash_file(FileEntry& e, const HashProgress& progress) {
  // Read from a descriptor checked to be the walked file: a path swapped for a symlink (or a
  // parent directory swapped for one) since the walk is refused, never followed.
  UniqueFd fd(open_walked_file(e));
  Sha256 h;
  // One buffer per thread, reused: a fresh zeroed buffer per file dominated many-small-file trees.
  // 256 KiB reads hash as fast as bigger ones, and each layer thread keeps less.
  thread_local std::vector<char> buf;
  if (buf.size() < (256u << 10)) buf.resize(256u << 10);
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw InputError("cannot read '" + printable(e.abs()) + "': " + std::strerror(errno));
    if (n == 0) break;
    h.update(buf.data(), static_cast<std::size_t>(n));
    if (progress.read) progress.read(0, static_cast<std::uint64_t>(n));
  }
  e.sha256 = ContentDigest::from_hex(h.hex());
  if (progress.read) progress.read(1, 0);
}

void record_hashes(const FileSet& set, std::vector<FileEntry*> hashed, StatIndex* index) {
  if (!index || hashed.empty()) return;
  // In address order, that is list order: the source list's updates arrive sorted by path.
  std::sort(hashed.begin(), hashed.end(), std::less<>());
  std::string buf;
  const FileEntry* src_begin = set.source.data();
  const FileEntry* src_end = src_begin + set.source.size();
  index->reserve_updates(hashed.size());
  for (FileEntry* e : hashed) {
    if (!e->sha256.set) continue;
    if (e >= src_begin && e < src_end) {  // keyed on e->rel: borrowed, the entries outlive the save
      index->update_borrowed(e->rel(), e->key, e->sha256.bytes);
    } else {
      index->update(index_path(*e, false, &buf), e->key, e->sha256.bytes);
    }
  }
}

void hash_files(FileSet& set, StatIndex* index, int jobs, const HashProgress& progress) {
  std::vector<FileEntry*> todo = lookup_hashes(set, index);
  if (progress.start) {
    std::uint64_t bytes = 0;
    for (const FileEntry* e : todo) bytes += e->size;
    progress.start(todo.size(), bytes);
  }
  if (todo.empty()) return;
  // Largest first, so one big file does not end up last on one thread.
  std::vector<FileEntry*> order = todo;
  std::sort(order.begin(), order.end(), [](FileEntry* a, FileEntry* b) { return a->size > b->size; });
  parallel_for(order.size(), jobs, [&](std::size_t i) { hash_file(*order[i], progress); });
  record_hashes(set, std::move(todo), index);
}

}  // namespace kiln::layers
