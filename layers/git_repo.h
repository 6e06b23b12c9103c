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

#include <memory>
#include <string>
#include <string_view>

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
  ~GitRepo();
  GitRepo(const GitRepo&) = delete;
  GitRepo& operator=(const GitRepo&) = delete;

  /// The work tree's root (a real path), and `dir` relative to it ("" or "sub/app/").
  const std::string& workdir() const { return workdir_; }
  const std::string& prefix() const { return prefix_; }

  /// Adds git's exclude sources to `rules`, whose paths are relative to the work tree's root:
  /// .git/info/exclude, core.excludesFile (default $XDG_CONFIG_HOME/git/ignore), and the
  /// .gitignore files of the directories from the root down to `dir`'s parent. The walk adds
  /// those at and below `dir` as it meets them.
  void add_rules(IgnoreRules& rules) const;

  /// Is this path (relative to `dir`) in the index? The index is read on the first question (an
  /// InputError when it is corrupt); a walk that meets no excluded path never reads it. Not
  /// thread-safe: the parallel walk asks under a lock.
  bool tracked(std::string_view rel) const;
  /// Does the index hold a path below this directory (relative to `dir`)?
  bool tracks_below(std::string_view rel_dir) const;

 private:
  GitRepo() = default;
  ::git_index* index() const;
  struct Handles;
  std::unique_ptr<Handles> h_;
  std::string workdir_, prefix_;
};

}  // namespace kiln::layers
