// Ignore rules for source_copy_mode "all": .gitignore files (git semantics, nested), the root
// .dockerignore (Docker semantics), and kiln's built-in rules (.git, *.pyc, __pycache__).
//
// Paths given to the matcher are relative to the source root, '/'-separated, with no leading or
// trailing slash ("pkg/mod.py").
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::layers {

class IgnoreRules {
 public:
  IgnoreRules();
  ~IgnoreRules();
  IgnoreRules(IgnoreRules&&) noexcept;
  IgnoreRules& operator=(IgnoreRules&&) noexcept;

  /// kiln's built-in rules: the directory ".git" anywhere, "__pycache__" anywhere, "*.pyc".
  void add_builtin();

  /// The patterns of a .gitignore found in directory `dir_rel` ("" for the root). Git semantics:
  /// comments, blank lines, trailing-space trimming, "\" escapes, "!" negation, a leading or middle
  /// "/" anchors the pattern to `dir_rel`, a trailing "/" matches directories only, "*", "?",
  /// "[...]" never cross "/", "**" as a whole segment spans directories. A file under an excluded
  /// directory cannot be re-included. Later rules and deeper .gitignore files win.
  void add_gitignore(std::string_view dir_rel, std::string_view content);

  /// The root .dockerignore. Docker semantics: patterns are relative to the root (a leading "/" is
  /// dropped, paths are cleaned), "**" spans directories, "!" re-includes — even a file under an
  /// excluded directory — and the last matching rule wins. A pattern matching a directory also
  /// excludes everything below it.
  void add_dockerignore(std::string_view content);

  /// Is this path excluded? `is_dir` tells whether it is a directory.
  bool ignored(std::string_view rel_path, bool is_dir) const;

  /// May the walk skip this ignored directory without looking inside? False when a Docker "!"
  /// rule could re-include something below it.
  bool can_prune(std::string_view dir_rel) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Glob match of one pattern against a path, both '/'-separated. "*", "?" and "[...]" (with "!" or
/// "^" negation and ranges) never match "/"; "**" as a whole segment matches zero or more segments.
bool glob_match(std::string_view pattern, std::string_view path);

}  // namespace kiln::layers
