// Ignore rules for source_copy_mode "all": a small glob engine ('/'-aware, "**" spanning
// directories) plus .gitignore (git), .dockerignore (moby patternmatcher) and built-in rules.
//
// Patterns are compiled once into segments; matching a path is a greedy segment match with a
// single backtrack point per "*"/"**" level, so it is O(pattern x path) and never exponential.
#include "layers/ignore.h"

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <map>

namespace kiln::layers {
namespace {

constexpr size_t kNone = static_cast<size_t>(-1);

// ---------------------------------------------------------------------------------------------
// Single-segment globs ("*", "?", "[...]", "\x"); the text never contains '/'.

// POSIX class name ("alpha" from "[:alpha:]") applied to c.
bool posix_class(std::string_view name, unsigned char c) {
  if (name == "alpha") return std::isalpha(c);
  if (name == "digit") return std::isdigit(c);
  if (name == "alnum") return std::isalnum(c);
  if (name == "upper") return std::isupper(c);
  if (name == "lower") return std::islower(c);
  if (name == "space") return std::isspace(c);
  if (name == "punct") return std::ispunct(c);
  if (name == "xdigit") return std::isxdigit(c);
  if (name == "blank") return c == ' ' || c == '\t';
  if (name == "cntrl") return std::iscntrl(c);
  if (name == "print") return std::isprint(c);
  if (name == "graph") return std::isgraph(c);
  return false;
}

// Matches the bracket expression starting at p[i] == '[' against c. Sets `next` past the ']'.
// Returns false with next == kNone when the bracket is unterminated (then '[' is a literal).
bool match_class(std::string_view p, size_t i, char c, size_t& next) {
  size_t j = i + 1;
  bool negate = j < p.size() && (p[j] == '!' || p[j] == '^');
  if (negate) ++j;
  bool hit = false;
  for (bool first = true; j < p.size() && (first || p[j] != ']'); first = false) {
    if (p[j] == '[' && j + 1 < p.size() && p[j + 1] == ':') {  // [:name:]
      size_t end = p.find(":]", j + 2);
      if (end != std::string_view::npos) {
        hit |= posix_class(p.substr(j + 2, end - j - 2), static_cast<unsigned char>(c));
        j = end + 2;
        continue;
      }
    }
    char lo = p[j];
    if (lo == '\\' && j + 1 < p.size()) lo = p[++j];
    ++j;
    char hi = lo;
    if (j + 1 < p.size() && p[j] == '-' && p[j + 1] != ']') {  // range lo-hi
      j += 1;
      hi = p[j];
      if (hi == '\\' && j + 1 < p.size()) hi = p[++j];
      ++j;
    }
    auto uc = static_cast<unsigned char>(c);
    if (static_cast<unsigned char>(lo) <= uc && uc <= static_cast<unsigned char>(hi)) hit = true;
  }
  if (j >= p.size()) {
    next = kNone;
    return false;
  }
  next = j + 1;
  return hit != negate;
}

// Matches one non-star element of glob p at p[i] against c; sets `next` to the element's end.
bool match_elem(std::string_view p, size_t i, char c, size_t& next) {
  switch (p[i]) {
    case '?':
      next = i + 1;
      return true;
    case '\\':
      if (i + 1 < p.size()) {
        next = i + 2;
        return p[i + 1] == c;
      }
      break;  // trailing backslash: literal
    case '[': {
      bool hit = match_class(p, i, c, next);
      if (next != kNone) return hit;
      break;  // unterminated: literal '['
    }
    default:
      break;
  }
  next = i + 1;
  return p[i] == c;
}

// Classic wildcard match with one backtrack point: O(|p| x |s|).
bool segment_glob(std::string_view p, std::string_view s) {
  size_t pi = 0, si = 0, star_p = kNone, star_s = 0;
  while (si < s.size()) {
    if (pi < p.size() && p[pi] == '*') {
      while (pi < p.size() && p[pi] == '*') ++pi;
      star_p = pi;
      star_s = si;
      continue;
    }
    size_t next = 0;
    if (pi < p.size() && match_elem(p, pi, s[si], next)) {
      pi = next;
      ++si;
      continue;
    }
    if (star_p == kNone) return false;
    pi = star_p;  // let the last star absorb one more character
    si = ++star_s;
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

// ---------------------------------------------------------------------------------------------
// Compiled multi-segment patterns.

struct Seg {
  enum Kind : uint8_t { kLiteral, kGlob, kAny, kDoubleStar } kind;
  std::string text;  // kLiteral: unescaped text; kGlob: glob text

  bool matches(std::string_view s) const {
    switch (kind) {
      case kLiteral: return s == text;
      case kGlob: return segment_glob(text, s);
      default: return true;  // kAny; kDoubleStar is handled by match_segs
    }
  }
};

struct Pattern {
  std::vector<Seg> segs;
  bool has_dstar = false;
  size_t min_segs = 0;  // path segments needed at least (exactly, without "**")
};

Seg compile_segment(std::string_view s) {
  if (s == "**") return {Seg::kDoubleStar, {}};
  if (s == "*") return {Seg::kAny, {}};
  if (s.find_first_of("*?[") != std::string_view::npos) return {Seg::kGlob, std::string(s)};
  std::string lit;  // only backslash escapes left: unescape
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) ++i;
    lit += s[i];
  }
  return {Seg::kLiteral, std::move(lit)};
}

// Splits on '/'. Consecutive "**" collapse; a trailing "**" becomes "one segment, then zero or
// more" so that "a/**" matches everything below a but not a itself (as in git and moby).
Pattern compile(std::string_view pat) {
  Pattern p;
  for (size_t start = 0;;) {
    size_t slash = pat.find('/', start);
    std::string_view s = pat.substr(start, slash == std::string_view::npos ? pat.npos : slash - start);
    Seg seg = compile_segment(s);
    if (!(seg.kind == Seg::kDoubleStar && !p.segs.empty() && p.segs.back().kind == Seg::kDoubleStar))
      p.segs.push_back(std::move(seg));
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  if (p.segs.back().kind == Seg::kDoubleStar) p.segs.insert(p.segs.end() - 1, Seg{Seg::kAny, {}});
  for (const Seg& s : p.segs) {
    if (s.kind == Seg::kDoubleStar) p.has_dstar = true;
    else ++p.min_segs;
  }
  return p;
}

// Greedy segment match; "**" plays the role of "*" with path segments as characters.
bool match_segs(const Seg* p, size_t m, const std::string_view* s, size_t n) {
  size_t pi = 0, si = 0, star_p = kNone, star_s = 0;
  while (si < n) {
    if (pi < m && p[pi].kind == Seg::kDoubleStar) {
      star_p = ++pi;
      star_s = si;
      continue;
    }
    if (pi < m && p[pi].matches(s[si])) {
      ++pi;
      ++si;
      continue;
    }
    if (star_p == kNone) return false;
    pi = star_p;
    si = ++star_s;
  }
  while (pi < m && p[pi].kind == Seg::kDoubleStar) ++pi;
  return pi == m;
}

bool match(const Pattern& p, const std::string_view* s, size_t n) {
  if (p.has_dstar ? n < p.min_segs : n != p.min_segs) return false;
  return match_segs(p.segs.data(), p.segs.size(), s, n);
}

// Could p match some path strictly below the directory `dir` (n segments)? True when a prefix
// of p matches dir exactly and pattern segments remain (or the prefix ends in "**"). Assumes
// every remaining segment can match something, which errs on the safe side.
bool could_match_below(const Pattern& p, const std::string_view* dir, size_t n) {
  const size_t m = p.segs.size();
  for (size_t len = 0; len <= m; ++len) {
    bool open = len < m || p.segs[len - 1].kind == Seg::kDoubleStar;
    if (open && match_segs(p.segs.data(), len, dir, n)) return true;
  }
  return false;
}

// Splits a relative path into its non-empty segments (views into `path`).
void split(std::string_view path, std::vector<std::string_view>& out) {
  out.clear();
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string_view::npos) slash = path.size();
    if (slash > start) out.push_back(path.substr(start, slash - start));
    start = slash + 1;
  }
}

// Calls f(line) for each line of a file, dropping a UTF-8 BOM and a trailing '\r'.
template <class F>
void for_each_line(std::string_view content, F f) {
  if (content.substr(0, 3) == "\xEF\xBB\xBF") content.remove_prefix(3);
  while (!content.empty()) {
    size_t nl = content.find('\n');
    std::string_view line = content.substr(0, nl);
    content.remove_prefix(nl == std::string_view::npos ? content.size() : nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    f(line);
  }
}

std::string_view trim_space(std::string_view s) {
  const char* ws = " \t\r\n\v\f";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// Go's filepath.Clean for '/'-separated paths.
std::string clean_path(std::string_view p) {
  bool rooted = !p.empty() && p[0] == '/';
  std::vector<std::string_view> out;
  std::vector<std::string_view> parts;
  split(p, parts);
  for (std::string_view s : parts) {
    if (s == ".") continue;
    if (s == "..") {
      if (!out.empty() && out.back() != "..") out.pop_back();
      else if (!rooted) out.push_back(s);
      continue;
    }
    out.push_back(s);
  }
  std::string r = rooted ? "/" : "";
  for (size_t i = 0; i < out.size(); ++i) {
    if (i) r += '/';
    r += out[i];
  }
  return r.empty() ? "." : r;
}

// Git's trailing-space trim: spaces go unless escaped with a backslash.
std::string_view trim_trailing_spaces(std::string_view s) {
  size_t last_space = kNone;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == ' ') {
      if (last_space == kNone) last_space = i;
      continue;
    }
    if (s[i] == '\\' && ++i == s.size()) return s;
    last_space = kNone;
  }
  return last_space == kNone ? s : s.substr(0, last_space);
}

struct GitRule {
  Pattern pat;
  bool negate = false;
  bool dir_only = false;
  bool basename = false;  // no '/' in the pattern: match the last segment at any depth
};

struct GitFile {
  size_t depth = 0;  // segments in the directory holding the .gitignore
  std::vector<GitRule> rules;
};

struct DockerRule {
  Pattern pat;
  bool exception = false;
};

}  // namespace

struct IgnoreRules::Impl {
  bool builtin = false;
  std::map<std::string, GitFile, std::less<>> git;  // keyed by directory ("" = root)
  std::vector<DockerRule> docker;
  bool docker_exceptions = false;

  // Git verdict for the first k segments of s, ignoring ancestors: +1 ignore, -1 keep, 0 none.
  // `files` holds the .gitignore files on the path, deepest first.
  static int git_verdict(const std::vector<const GitFile*>& files, const std::string_view* s,
                         size_t k, bool is_dir) {
    for (const GitFile* f : files) {
      if (f->depth >= k) continue;  // applies only strictly below its directory
      for (auto r = f->rules.rbegin(); r != f->rules.rend(); ++r) {
        if (r->dir_only && !is_dir) continue;
        bool hit = r->basename ? match(r->pat, s + k - 1, 1)
                               : match(r->pat, s + f->depth, k - f->depth);
        if (hit) return r->negate ? -1 : 1;
      }
    }
    return 0;
  }

  // Git: is the path, or any directory above it, excluded?
  bool git_ignored(std::string_view path, const std::vector<std::string_view>& s,
                   bool is_dir) const {
    if (git.empty() || s.empty()) return false;
    std::vector<const GitFile*> files;  // .gitignore files in "", s0, s0/s1, ... deepest first
    for (size_t q = 0; q < s.size(); ++q) {
      size_t len = q == 0 ? 0 : static_cast<size_t>(s[q - 1].data() + s[q - 1].size() - path.data());
      auto it = git.find(path.substr(0, len));
      if (it != git.end()) files.insert(files.begin(), &it->second);
    }
    if (files.empty()) return false;
    for (size_t k = 1; k <= s.size(); ++k)
      if (git_verdict(files, s.data(), k, k < s.size() || is_dir) > 0) return true;
    return false;
  }

  // Docker: last matching rule wins; a rule matches the path or any of its parents.
  bool docker_ignored(const std::vector<std::string_view>& s) const {
    bool ignored = false;
    for (const DockerRule& r : docker) {
      if (r.exception != ignored) continue;  // cannot change the verdict
      for (size_t k = s.size(); k >= 1; --k) {
        if (match(r.pat, s.data(), k)) {
          ignored = !r.exception;
          break;
        }
      }
    }
    return ignored;
  }

  bool builtin_ignored(const std::vector<std::string_view>& s, bool is_dir) const {
    if (!builtin) return false;
    for (size_t i = 0; i < s.size(); ++i) {
      bool dir = i + 1 < s.size() || is_dir;
      if (dir && (s[i] == ".git" || s[i] == "__pycache__")) return true;
    }
    return !is_dir && !s.empty() && s.back().ends_with(".pyc");
  }
};

IgnoreRules::IgnoreRules() : impl_(std::make_unique<Impl>()) {}
IgnoreRules::~IgnoreRules() = default;
IgnoreRules::IgnoreRules(IgnoreRules&&) noexcept = default;
IgnoreRules& IgnoreRules::operator=(IgnoreRules&&) noexcept = default;

void IgnoreRules::add_builtin() { impl_->builtin = true; }

void IgnoreRules::add_gitignore(std::string_view dir_rel, std::string_view content) {
  std::vector<std::string_view> dir;
  split(dir_rel, dir);
  std::erase(dir, std::string_view("."));
  std::string key;
  for (std::string_view d : dir) key += (key.empty() ? "" : "/") + std::string(d);
  GitFile& file = impl_->git[key];
  file.depth = dir.size();

  for_each_line(content, [&](std::string_view line) {
    if (line.empty() || line[0] == '#') return;
    line = trim_trailing_spaces(line);
    GitRule rule;
    if (!line.empty() && line[0] == '!') {
      rule.negate = true;
      line.remove_prefix(1);
    }
    if (!line.empty() && line.back() == '/') {
      rule.dir_only = true;
      line.remove_suffix(1);
    }
    rule.basename = line.find('/') == std::string_view::npos;
    if (!line.empty() && line[0] == '/') line.remove_prefix(1);
    if (line.empty()) return;
    rule.pat = compile(line);
    file.rules.push_back(std::move(rule));
  });
}

void IgnoreRules::add_dockerignore(std::string_view content) {
  for_each_line(content, [&](std::string_view line) {
    if (!line.empty() && line[0] == '#') return;  // moby: '#' only in the first column
    line = trim_space(line);
    DockerRule rule;
    if (!line.empty() && line[0] == '!') {
      rule.exception = true;
      line = trim_space(line.substr(1));
    }
    std::string pat = clean_path(line);
    while (!pat.empty() && pat[0] == '/') pat.erase(0, 1);
    if (line.empty() || pat.empty() || pat == "." || pat == "..") return;
    rule.pat = compile(pat);
    impl_->docker_exceptions |= rule.exception;
    impl_->docker.push_back(std::move(rule));
  });
}

bool IgnoreRules::ignored(std::string_view rel_path, bool is_dir) const {
  if (!impl_) return false;
  std::vector<std::string_view> s;
  s.reserve(16);
  split(rel_path, s);
  if (s.empty()) return false;
  return impl_->builtin_ignored(s, is_dir) || impl_->git_ignored(rel_path, s, is_dir) ||
         impl_->docker_ignored(s);
}

// Builtin and git exclusions are final for the whole subtree. A Docker-only exclusion may be
// undone below by an exception whose pattern could match a path strictly below the directory
// (checked precisely on segment prefixes, conservatively on what remains).
bool IgnoreRules::can_prune(std::string_view dir_rel) const {
  if (!impl_) return false;
  std::vector<std::string_view> s;
  split(dir_rel, s);
  if (s.empty()) return false;
  if (impl_->builtin_ignored(s, true) || impl_->git_ignored(dir_rel, s, true)) return true;
  if (!impl_->docker_ignored(s)) return false;
  for (const DockerRule& r : impl_->docker)
    if (r.exception && could_match_below(r.pat, s.data(), s.size())) return false;
  return true;
}

bool glob_match(std::string_view pattern, std::string_view path) {
  Pattern p = compile(pattern);
  std::vector<std::string_view> s;
  split(path, s);
  return match(p, s.data(), s.size());
}

}  // namespace kiln::layers
