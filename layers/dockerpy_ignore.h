// docker-py's PatternMatcher, as flytekit's FlyteIgnore uses it to select pyflyte's fast-register
// bundle (flytekit/tools/ignore.py; docker/utils/build.py and docker/utils/fnmatch.py).
//
// No Docker ever reads .flyteignore: only pyflyte does, through docker-py. So kiln matches it the
// way docker-py does, not the way Docker matches .dockerignore (layers/ignore.h):
//
// - FlyteIgnore reads the file as text: universal newlines, a line starting with "#" (before any
//   trimming) is a comment, each line is stripped of Python's whitespace; a UTF-8 BOM stays in the
//   first pattern.
// - Pattern: a leading "!" makes an exception; the rest is split on "/", empty and "." parts are
//   dropped, and ".." removes itself and the part before it (a leading ".." just goes). A pattern
//   left with no part is dropped. "!.dockerignore" is always appended.
// - fnmatch: pattern and path are lowercased (Python's str.lower(), Unicode and final sigma
//   included), the pattern is translated to a Python regular expression: "*" is [^/]*, "?" is
//   [^/], "**" followed by "/" or not is (.*/)? (.* at the end), "[...]" a class ("!" negates,
//   "^" is literal, "\" is literal, an unterminated "[" is a literal "["), every other character
//   literal. "." in those expressions does not match "\n", and "$" also matches before a final
//   "\n", as in Python.
// - PatternMatcher.matches: the last pattern that matches the path, or the path's first N parent
//   directories where N is the pattern's number of parts, decides.
//
// Matching runs a small automaton over code points (never std::regex, never recursion): time in
// proportion to path length times pattern length, no stack growth. Paths that are not valid UTF-8
// are decoded as Python's os.walk decodes them (surrogateescape).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kiln::layers {

class DockerPyIgnore {
 public:
  /// PatternMatcher(patterns): each string is one pattern, as FlyteIgnore passes it (already
  /// stripped). Throws InputError for a pattern Python's re refuses (a reversed range "[z-a]"),
  /// which makes pyflyte fail; `file_name` and the 1-based `line_numbers` (when given) name it.
  explicit DockerPyIgnore(const std::vector<std::string>& patterns, std::string_view file_name = "",
                          const std::vector<std::size_t>& line_numbers = {});
  ~DockerPyIgnore();
  DockerPyIgnore(DockerPyIgnore&&) noexcept;
  DockerPyIgnore& operator=(DockerPyIgnore&&) noexcept;

  /// An ignore file read as flytekit's FlyteIgnore reads it (see above). Throws InputError naming
  /// `file_name:LINE` for what pyflyte fails on: a line that is not UTF-8, a reversed range.
  static DockerPyIgnore parse(std::string_view content, std::string_view file_name = ".flyteignore");

  /// PatternMatcher.matches(path): `rel_path` relative to the root, '/'-separated, as flytekit
  /// passes a file's os.path.relpath. flytekit asks only about files, never directories.
  bool matches(std::string_view rel_path) const;

  /// True when matches() is true for every path below the directory `dir_rel`, whatever its name,
  /// so a walk need not enter it. May answer false when it cannot tell.
  bool matches_everything_below(std::string_view dir_rel) const;

  /// The patterns kept (exceptions with their "!"), each as its cleaned form, "!.dockerignore" last.
  std::vector<std::string> patterns() const;

  struct Pattern;  // one translated pattern (dockerpy_ignore.cc)

 private:
  std::vector<Pattern> patterns_;
};

/// docker-py's fnmatch(name, pat) (docker/utils/fnmatch.py): both lowercased, `pat` translated to
/// a Python regular expression and matched against the whole of `name`. Throws InputError when
/// Python's re refuses the translation.
bool dockerpy_fnmatch(std::string_view name, std::string_view pat);

}  // namespace kiln::layers
