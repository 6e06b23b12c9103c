// The git context of a source root, through libgit2: which files `git ls-files -io
// --exclude-standard` would call ignored (flytekit's GitIgnore), without spawning git.
//
// A path is ignored for git when it is untracked (not in the index) and the exclude rules match it
// or one of its parent directories: .gitignore files from the work tree's root down (including
// those above the source root), .git/info/exclude and core.excludesFile. Tracked files are kept
// even when a pattern matches them, as git keeps them.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "layers/input_error.h"

namespace kiln::layers {

class GitRepo {
 public:
  /// The repository whose work tree holds `dir` (an absolute, real path), or null when `dir` is
  /// in no work tree (no repository, a bare one, or inside a .git directory). Loads the index
  /// once. Throws InputError when the repository cannot be read (a corrupt index).
  static std::unique_ptr<GitRepo> open(const std::string& dir);
  ~GitRepo();
  GitRepo(const GitRepo&) = delete;
  GitRepo& operator=(const GitRepo&) = delete;

  /// The work tree's root (a real path), and `dir` relative to it ("" or "sub/app/").
  const std::string& workdir() const { return workdir_; }
  const std::string& prefix() const { return prefix_; }

  /// Is `dir` itself, or a directory above it up to the work tree's root, excluded?
  bool dir_itself_ignored();

  /// Is this path (relative to `dir`) in the index?
  bool tracked(std::string_view rel) const;
  /// Does the index hold a path below this directory (relative to `dir`)?
  bool tracks_below(std::string_view rel_dir) const;
  /// Do the exclude rules match this path (relative to `dir`)? Parent directories are not
  /// consulted here: the walk asks for each directory on its way down.
  bool rules_match(std::string_view rel, bool is_dir) const;

 private:
  GitRepo() = default;
  struct Handles;
  std::unique_ptr<Handles> h_;
  std::string workdir_, prefix_;
};

}  // namespace kiln::layers
