// Ignore rules for source_copy_mode "all": flytekit's standard ignores, .gitignore files (git
// semantics, nested; used outside a git repository — inside one, layers/git_repo asks libgit2),
// .dockerignore with the semantics of Docker's own matcher (moby/patternmatcher), and .flyteignore
// (the fast-register bundle) with docker-py's, as pyflyte reads it (layers/dockerpy_ignore.h).
//
// Paths given to the matcher are relative to the source root, '/'-separated, with no leading or
// trailing slash ("pkg/mod.py").
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "layers/input_error.h"

namespace kiln::layers {

class IgnoreRules {
 public:
  IgnoreRules();
  ~IgnoreRules();
  IgnoreRules(IgnoreRules&&) noexcept;
  IgnoreRules& operator=(IgnoreRules&&) noexcept;

  /// kiln's built-in rules for listed directories (loaded modules, copy entries): the directory
  /// ".git" anywhere, "__pycache__" anywhere, "*.pyc".
  void add_builtin();

  /// flytekit's standard ignores (STANDARD_IGNORE_PATTERNS, matched as Python's fnmatch matches
  /// them against the path relative to the root) plus its walk's ".git" exclusion: a directory
  /// named ".git" anywhere, any file whose path ends in ".pyc", any file below a "__pycache__"
  /// directory, and ".cache" at the root (the file, or everything below the directory). A nested
  /// "pkg/.cache/" is kept, as flytekit keeps it.
  void add_flytekit_standard();

  /// The patterns of a .gitignore found in directory `dir_rel` ("" for the root). Git semantics:
  /// comments, blank lines, trailing-space trimming, "\" escapes, "!" negation, a leading or middle
  /// "/" anchors the pattern to `dir_rel`, a trailing "/" matches directories only, "*", "?",
  /// "[...]" never cross "/", "**" as a whole segment spans directories. A file under an excluded
  /// directory cannot be re-included. Later rules and deeper .gitignore files win.
  void add_gitignore(std::string_view dir_rel, std::string_view content);

  /// git's core.ignorecase: the .gitignore and exclude patterns fold ASCII case as git's wildmatch
  /// does with WM_CASEFOLD ("*.log" ignores "A.LOG"; an escaped letter and a single letter in
  /// "[...]" are compared as written, as git compares them). Default: case-sensitive.
  void set_git_ignore_case(bool ignore_case);

  /// Exclude patterns of lower precedence than every .gitignore, relative to the root (git's
  /// .git/info/exclude, then core.excludesFile: call in that order).
  void add_git_excludes(std::string_view content);

  /// A Docker-style ignore file at the root (`file_name`, ".dockerignore", names it in errors). Read as Docker reads .dockerignore (moby's ignorefile + patternmatcher):
  /// a UTF-8 BOM is dropped, lines starting with "#" are comments, whitespace is trimmed, "!"
  /// makes an exception, paths are cleaned (Go's filepath.Clean) and a leading "/" dropped. A
  /// pattern matches a path or any of its parent directories; the last matching pattern decides.
  /// "*" and "?" never match "/", "**" matches any number of characters including "/" (also
  /// inside a segment: "**.pem" matches "certs/server.pem"), "[...]" is a class of UTF-8 runes.
  /// Throws InputError naming `file_name:LINE` for a pattern Docker refuses ("[", a trailing "\",
  /// "[a-b-c]", a lone "!", a line over 64 KiB) or one kiln cannot read as Docker does (see
  /// docs/files.md). Each call adds an independent rule set: a path is ignored when any set ignores it.
  void add_dockerignore(std::string_view content, std::string_view file_name = ".dockerignore");

  /// An ignore file read and matched as flytekit's FlyteIgnore does, with docker-py's
  /// PatternMatcher (layers/dockerpy_ignore.h): pyflyte's fast-register bundle applies .flyteignore
  /// this way, and no Docker ever reads it. flytekit asks only about files, so it never excludes a
  /// directory itself (a directory is pruned only when every path below it is excluded). Throws
  /// InputError naming `file_name:LINE` for what pyflyte fails on. Independent of the other sets.
  void add_dockerpy_ignore(std::string_view content, std::string_view file_name = ".flyteignore");

  /// Is this path excluded? `is_dir` tells whether it is a directory.
  bool ignored(std::string_view rel_path, bool is_dir) const;

  /// Is everything at and below this directory excluded, so the walk need not look inside?
  /// False when a Docker "!" exception could re-include something below it.
  bool can_prune(std::string_view dir_rel) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Glob match of one git pattern against a path, both '/'-separated. "*", "?" and "[...]" (with "!"
/// or "^" negation and ranges) never match "/"; "**" as a whole segment matches zero or more segments.
/// `ignore_case`: as under git's core.ignorecase (IgnoreRules::set_git_ignore_case).
bool glob_match(std::string_view pattern, std::string_view path, bool ignore_case = false);

/// Docker's verdict for one path: the rules of a .dockerignore `content` applied to `path` (a
/// relative, '/'-separated path), as IgnoreRules::add_dockerignore reads them. Throws InputError.
bool docker_ignored(std::string_view content, std::string_view path);

}  // namespace kiln::layers
