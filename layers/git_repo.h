// The git context of a source root, through libgit2: what `git ls-files -io --exclude-standard`
// (flytekit's GitIgnore) needs, without spawning git — the work tree, the index, and the exclude
// sources.
//
// A path is ignored for git when it is untracked (not in the index) and the exclude rules match it
// or one of its parent directories: .gitignore files from the work tree's root down (including
// those above the source root), .git/info/exclude and core.excludesFile. Tracked files are kept
// even when a pattern matches them, as git keeps them. The rules themselves are matched by kiln's
// git matcher (layers/ignore.h), which follows git: libgit2's own matcher drops a "!" rule that
// negates nothing earlier in the same file, and lets a "!" rule re-include a file below an
// excluded directory, where git does neither.
#pragma once

#include <sys/stat.h>

#include <exception>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "layers/ignore.h"
#include "layers/input_error.h"

typedef struct git_index git_index;  // libgit2's

namespace kiln::layers {

class GitRepo {
 public:
  /// The repository whose work tree holds `dir` (an absolute, real path), or null when `dir` is
  /// in no work tree (no repository, a bare one, or inside a .git directory). Throws InputError
  /// when the repository cannot be read.
  static std::unique_ptr<GitRepo> open(const std::string& dir);

  /// As open(), with the answer remembered in `memo` (a file in kiln's store): when nothing it
  /// rests on has changed since (the directories from `dir` up to the work tree, the .git entry,
  /// every config file git reads, $HOME, $XDG_CONFIG_HOME and the GIT_* variables), the answer
  /// comes from the memo and
  /// libgit2 is not even loaded — it costs a process ~20 ms (its shared objects, and its TLS
  /// backend reading the system's CA certificates at init), most of a no-change rebuild's wait.
  /// libgit2 is then opened only when the index is needed (tracked()), in the background from
  /// the start when the last walk needed it. No memo is written when a config file has an
  /// include, or when a watched file changed within the last second (it could change again
  /// within the same timestamp). `memo` empty: open().
  static std::unique_ptr<GitRepo> open_remembered(const std::string& dir, const std::filesystem::path& memo);
  /// Records in the memo whether this walk read the index (so the next one starts reading it
  /// early, or not at all). Best effort: errors are ignored.
  void remember_index_use() const;
  /// Did the answer come from the memo (libgit2 not loaded for discovery)? For tests.
  bool from_memo() const { return from_memo_; }

  ~GitRepo();
  GitRepo(const GitRepo&) = delete;
  GitRepo& operator=(const GitRepo&) = delete;

  /// The work tree's root (a real path), and `dir` relative to it ("" or "sub/app/").
  const std::string& workdir() const { return workdir_; }
  const std::string& prefix() const { return prefix_; }

  /// core.ignorecase, as git reads it: the exclude patterns then fold ASCII case (add_rules), and
  /// the index entries below prefix() (compared exactly, as `git ls-files` cuts the index to its
  /// prefix) are looked up without regard to ASCII case (tracked(), tracks_below()), as git does.
  bool ignore_case() const { return ignore_case_; }

  /// Sets git's core.ignorecase on `rules` and adds git's exclude sources to them, whose paths are
  /// relative to the work tree's root:
  /// .git/info/exclude, core.excludesFile (default $XDG_CONFIG_HOME/git/ignore), and the
  /// .gitignore files of the directories from the root down to `dir`'s parent. The walk adds
  /// those at and below `dir` as it meets them.
  void add_rules(IgnoreRules& rules) const;

  /// Is this path (relative to `dir`) in the index, or below a submodule the index records (git
  /// does not look inside one, whatever its .git holds)? The index is read on the first question
  /// (an InputError when it is corrupt); a walk that meets no excluded path never reads it. Not
  /// thread-safe: the parallel walk asks under a lock.
  bool tracked(std::string_view rel) const;
  /// Does the index hold a path below this directory (relative to `dir`), or is the directory in
  /// a submodule the index records?
  bool tracks_below(std::string_view rel_dir) const;
  /// Does the index hold a path below this directory (relative to `dir`)? git's
  /// directory_exists_in_index answering index_directory: `git ls-files` then walks it as the
  /// repository's own directory, whatever .git it holds. Not thread-safe, as tracked().
  bool indexes_below(std::string_view rel_dir) const;

  /// Is `st` (a stat that followed symlinks) this repository's own git directory (for a linked
  /// work tree, its own, not the common one)? git (dir.c's treat_directory, since 2022) compares
  /// real paths: a directory whose .git leads back to the repository's git directory is not
  /// another repository. Compared by device and inode.
  bool is_own_gitdir(const struct stat& st) const {
    return gitdir_known_ && st.st_dev == gitdir_dev_ && st.st_ino == gitdir_ino_;
  }

 private:
  GitRepo() = default;
  struct NotARepo;
  static std::unique_ptr<GitRepo> open_libgit2(const std::string& dir);  // throws NotARepo
  ::git_index* index() const;
  void load_tables() const;                     // folded_ and gitlinks_, from the index
  bool in_gitlink(std::string_view rel) const;  // rel, or a directory above it, is a submodule
  void load_index() const;  // opens h_ when needed, then reads the index (index() and the prefetch)
  void open_handles() const;
  struct Handles;
  mutable std::unique_ptr<Handles> h_;  // libgit2's repository and index (null until needed)
  mutable std::thread prefetch_;        // opens h_ and reads the index in the background
  mutable std::exception_ptr prefetch_error_;
  mutable bool index_used_ = false;
  mutable bool tables_ready_ = false;
  mutable std::vector<std::string> folded_;    // core.ignorecase: the paths below prefix_, lowercased, sorted
  mutable std::vector<std::string> gitlinks_;  // the submodules below prefix_ (lowercased likewise), sorted
  bool from_memo_ = false, memo_index_used_ = false, ignore_case_ = false;
  std::filesystem::path memo_;
  std::string dir_, workdir_, prefix_, commondir_, gitdir_, excludes_file_;
  void stat_gitdir();  // gitdir_dev_ and gitdir_ino_, from gitdir_
  bool gitdir_known_ = false;
  dev_t gitdir_dev_ = 0;
  ino_t gitdir_ino_ = 0;
};

/// Is the directory open at `dfd` the top of another repository's work tree, as git's
/// is_nonbare_repository_dir() decides it: a ".git" directory that is a git directory (a valid
/// HEAD, objects/ and refs/ in its common directory), or a ".git" file "gitdir: PATH" naming one
/// (relative to the directory). A stale .git file, a .git directory of junk or an empty one is
/// not: git applies the outer repository's rules inside. `git ls-files` does not look inside one.
bool nonbare_repository_at(int dfd);

}  // namespace kiln::layers
