// Ignore rules for source_copy_mode "all": a small glob engine for .gitignore ('/'-aware, "**"
// spanning directories), Docker's .dockerignore matcher (moby patternmatcher semantics), and
// flytekit's standard rules.
//
// Git patterns are compiled once into segments; matching a path is a greedy segment match with a
// single backtrack point per "*"/"**" level, so it is O(pattern x path) and never exponential.
// Docker patterns are compiled to a small Thompson NFA (Docker compiles them to Go regular
// expressions): matching simulates the state set, O(pattern x path), with no recursion.
#include "layers/ignore.h"

#include "layers/dockerpy_ignore.h"

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

// ASCII case folding, as git's wildmatch folds with WM_CASEFOLD (core.ignorecase): other bytes
// (UTF-8 included) are compared as they are.
char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }
char ascii_upper(char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c; }

// POSIX class name ("alpha" from "[:alpha:]") applied to c. `icase`: git's WM_CASEFOLD reading,
// where c is already lowercased and "[:upper:]" also takes lowercase letters.
bool posix_class(std::string_view name, unsigned char c, bool icase) {
  if (name == "alpha") return std::isalpha(c);
  if (name == "digit") return std::isdigit(c);
  if (name == "alnum") return std::isalnum(c);
  if (name == "upper") return std::isupper(c) || (icase && std::islower(c));
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
// `icase` folds as git's wildmatch does with WM_CASEFOLD: c is lowercased, a single member is
// compared as written (so "[A]" takes neither "a" nor "A"), a range takes c or its uppercase.
bool match_class(std::string_view p, size_t i, char c, size_t& next, bool icase) {
  if (icase) c = ascii_lower(c);
  size_t j = i + 1;
  bool negate = j < p.size() && (p[j] == '!' || p[j] == '^');
  if (negate) ++j;
  bool hit = false;
  for (bool first = true; j < p.size() && (first || p[j] != ']'); first = false) {
    if (p[j] == '[' && j + 1 < p.size() && p[j + 1] == ':') {  // [:name:]
      size_t end = p.find(":]", j + 2);
      if (end != std::string_view::npos) {
        hit |= posix_class(p.substr(j + 2, end - j - 2), static_cast<unsigned char>(c), icase);
        j = end + 2;
        continue;
      }
    }
    char lo = p[j];
    if (lo == '\\' && j + 1 < p.size()) lo = p[++j];
    ++j;
    char hi = lo;
    bool range = false;
    if (j + 1 < p.size() && p[j] == '-' && p[j + 1] != ']') {  // range lo-hi
      range = true;
      j += 1;
      hi = p[j];
      if (hi == '\\' && j + 1 < p.size()) hi = p[++j];
      ++j;
    }
    auto in_range = [&](char x) {
      auto ux = static_cast<unsigned char>(x);
      return static_cast<unsigned char>(lo) <= ux && ux <= static_cast<unsigned char>(hi);
    };
    if (in_range(c) || (icase && range && in_range(ascii_upper(c)))) hit = true;
  }
  if (j >= p.size()) {
    next = kNone;
    return false;
  }
  next = j + 1;
  return hit != negate;
}

// Matches one non-star element of glob p at p[i] against c; sets `next` to the element's end.
// `icase`: as git's wildmatch with WM_CASEFOLD, which lowercases the text's character and the
// pattern's, but not an escaped one ("\A" then matches nothing).
bool match_elem(std::string_view p, size_t i, char c, size_t& next, bool icase) {
  switch (p[i]) {
    case '?':
      next = i + 1;
      return true;
    case '\\':
      if (i + 1 < p.size()) {
        next = i + 2;
        return p[i + 1] == (icase ? ascii_lower(c) : c);
      }
      break;  // trailing backslash: literal
    case '[': {
      bool hit = match_class(p, i, c, next, icase);
      if (next != kNone) return hit;
      break;  // unterminated: literal '['
    }
    default:
      break;
  }
  next = i + 1;
  return icase ? ascii_lower(p[i]) == ascii_lower(c) : p[i] == c;
}

// Classic wildcard match with one backtrack point: O(|p| x |s|).
bool segment_glob(std::string_view p, std::string_view s, bool icase) {
  size_t pi = 0, si = 0, star_p = kNone, star_s = 0;
  while (si < s.size()) {
    if (pi < p.size() && p[pi] == '*') {
      while (pi < p.size() && p[pi] == '*') ++pi;
      star_p = pi;
      star_s = si;
      continue;
    }
    size_t next = 0;
    if (pi < p.size() && match_elem(p, pi, s[si], next, icase)) {
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
  std::string text;  // kLiteral: plain text (no escape); kGlob: glob text

  bool matches(std::string_view s, bool icase) const {
    switch (kind) {
      case kLiteral:
        return icase ? s.size() == text.size() &&
                           std::equal(s.begin(), s.end(), text.begin(),
                                      [](char a, char b) { return ascii_lower(a) == ascii_lower(b); })
                     : s == text;
      case kGlob: return segment_glob(text, s, icase);
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
  // An escape makes a glob: under core.ignorecase git folds an escaped character differently.
  if (s.find_first_of("*?[\\") != std::string_view::npos) return {Seg::kGlob, std::string(s)};
  return {Seg::kLiteral, std::string(s)};
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
bool match_segs(const Seg* p, size_t m, const std::string_view* s, size_t n, bool icase) {
  size_t pi = 0, si = 0, star_p = kNone, star_s = 0;
  while (si < n) {
    if (pi < m && p[pi].kind == Seg::kDoubleStar) {
      star_p = ++pi;
      star_s = si;
      continue;
    }
    if (pi < m && p[pi].matches(s[si], icase)) {
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

bool match(const Pattern& p, const std::string_view* s, size_t n, bool icase) {
  if (p.has_dstar ? n < p.min_segs : n != p.min_segs) return false;
  return match_segs(p.segs.data(), p.segs.size(), s, n, icase);
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

// ---------------------------------------------------------------------------------------------
// Docker (.dockerignore): moby's ignorefile.ReadAll, then patternmatcher.New, then
// MatchesOrParentMatches. Docker turns each pattern into a Go regular expression, or into a plain
// string comparison (exact, prefix or suffix) when it can; kiln classifies patterns the same way
// and runs the regular-expression ones on its own NFA.

// Decodes one UTF-8 rune at s[i] as Go does: an invalid byte is U+FFFD of width 1.
uint32_t decode_rune(std::string_view s, size_t i, size_t& width) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = b(i);
  width = 1;
  if (c < 0x80) return c;
  size_t n = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0xFFFD;
  uint32_t r = c & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) >> 6) != 2) return 0xFFFD;
    r = (r << 6) | (b(i + k) & 0x3F);
  }
  static const uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (r < kMin[n] || r > 0x10FFFF || (r >= 0xD800 && r <= 0xDFFF)) return 0xFFFD;
  width = n;
  return r;
}

// Go's unicode.IsSpace.
bool go_space(uint32_t r) {
  return r == ' ' || (r >= '\t' && r <= '\r') || r == 0x85 || r == 0xA0 || r == 0x1680 ||
         (r >= 0x2000 && r <= 0x200A) || r == 0x2028 || r == 0x2029 || r == 0x202F || r == 0x205F ||
         r == 0x3000;
}

// Go's strings.TrimSpace.
std::string_view go_trim_space(std::string_view s) {
  while (!s.empty()) {
    size_t w = 0;
    if (!go_space(decode_rune(s, 0, w))) break;
    s.remove_prefix(w);
  }
  while (!s.empty()) {
    size_t start = s.size() - 1;  // back up to the first byte of the last rune
    while (start > 0 && s.size() - start < 4 && (static_cast<unsigned char>(s[start]) >> 6) == 2) --start;
    size_t w = 0;
    uint32_t r = decode_rune(s, start, w);
    if (start + w != s.size()) {  // not one valid rune to the end: the last byte is U+FFFD
      break;
    }
    if (!go_space(r)) break;
    s.remove_suffix(w);
  }
  return s;
}

bool ascii_alnum(uint32_t c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// The characters Docker escapes when building its regular expression: literal in every pattern.
bool docker_escaped(uint32_t c) {
  return c == '.' || c == '+' || c == '(' || c == ')' || c == '|' || c == '{' || c == '}' || c == '$';
}

// The syntax check patternmatcher.New does with filepath.Match(pattern, "."): a trailing "\" and
// malformed bracket expressions are errors. Returns "" or the reason.
std::string check_filepath_syntax(std::string_view p) {
  size_t i = 0;
  auto get_esc = [&]() -> std::string {  // filepath's getEsc: one (escaped) rune of a class
    if (i >= p.size()) return "'[' without a closing ']'";
    if (p[i] == '-' || p[i] == ']') return "a '-' or ']' where a character is expected in '[...]'";
    if (p[i] == '\\' && ++i >= p.size()) return "'\\' at the end of a '[...]'";
    size_t w = 0;
    uint32_t r = decode_rune(p, i, w);
    if (r == 0xFFFD && w == 1) return "invalid UTF-8 in '[...]'";
    i += w;
    if (i >= p.size()) return "'[' without a closing ']'";
    return "";
  };
  while (i < p.size()) {
    char c = p[i];
    if (c == '\\') {
      if (i + 1 >= p.size()) return "'\\' at the end of the pattern";
      i += 2;
    } else if (c == '[') {
      ++i;
      if (i < p.size() && p[i] == '^') ++i;
      for (int nrange = 0;; ++nrange) {
        if (i < p.size() && p[i] == ']' && nrange > 0) {
          ++i;
          break;
        }
        if (std::string e = get_esc(); !e.empty()) return e;
        if (p[i] == '-') {
          ++i;
          if (std::string e = get_esc(); !e.empty()) return e;
        }
      }
    } else {
      ++i;
    }
  }
  return "";
}

struct DockerClass {
  bool negate = false;
  std::vector<std::pair<uint32_t, uint32_t>> ranges;
  bool has(uint32_t r) const {
    bool hit = false;
    for (auto [lo, hi] : ranges) hit |= lo <= r && r <= hi;
    return hit != negate;
  }
};

// One node of a Thompson NFA.
struct Node {
  enum Op : uint8_t { kRune, kNotSlash, kNotNewline, kClass, kSplit, kBegin, kMatch } op;
  uint32_t arg = 0;  // kRune: the rune; kClass: class index
  uint32_t out = 0, out1 = 0;
};

struct DockerPattern {
  enum Type : uint8_t { kExact, kPrefix, kSuffix, kRegexp } type = kExact;
  bool exception = false;
  std::string text;  // kExact: the pattern; kPrefix: the prefix; kSuffix: the suffix
  std::vector<Node> nfa;
  std::vector<DockerClass> classes;
};

struct NfaRun {
  std::vector<uint32_t> cur, next, stack, mark;
  uint32_t gen = 0;
};

bool node_accepts(const DockerPattern& p, const Node& n, uint32_t r) {
  switch (n.op) {
    case Node::kRune: return r == n.arg;
    case Node::kNotSlash: return r != '/';
    case Node::kNotNewline: return r != '\n';
    case Node::kClass: return p.classes[n.arg].has(r);
    default: return false;
  }
}

// Adds state s and its epsilon closure to `list` (iteratively: no recursion on user input).
void add_state(const DockerPattern& p, NfaRun& run, std::vector<uint32_t>& list, uint32_t s, size_t pos) {
  run.stack.push_back(s);
  while (!run.stack.empty()) {
    uint32_t x = run.stack.back();
    run.stack.pop_back();
    if (run.mark[x] == run.gen) continue;
    run.mark[x] = run.gen;
    const Node& n = p.nfa[x];
    if (n.op == Node::kSplit) {
      run.stack.push_back(n.out1);
      run.stack.push_back(n.out);
    } else if (n.op == Node::kBegin) {
      if (pos == 0) run.stack.push_back(n.out);
    } else {
      list.push_back(x);
    }
  }
}

// Runs the NFA over `s`. Returns whether it accepts s (whole), or, with `alive_only`, whether any
// state is still alive after s (some continuation of s might match).
bool run_nfa(const DockerPattern& p, std::string_view s, bool alive_only) {
  NfaRun run;
  run.mark.assign(p.nfa.size(), 0);
  run.gen = 1;
  add_state(p, run, run.cur, 0, 0);
  size_t i = 0;
  while (i < s.size() && !run.cur.empty()) {
    size_t w = 0;
    uint32_t r = decode_rune(s, i, w);
    i += w;
    ++run.gen;
    run.next.clear();
    for (uint32_t x : run.cur)
      if (node_accepts(p, p.nfa[x], r)) add_state(p, run, run.next, p.nfa[x].out, i);
    std::swap(run.cur, run.next);
  }
  if (alive_only) return !run.cur.empty();
  if (i < s.size()) return false;
  for (uint32_t x : run.cur)
    if (p.nfa[x].op == Node::kMatch) return true;
  return false;
}

bool docker_match_one(const DockerPattern& p, std::string_view path) {
  switch (p.type) {
    case DockerPattern::kExact: return path == p.text;
    case DockerPattern::kPrefix: return path.starts_with(p.text);
    case DockerPattern::kSuffix:
      return path.ends_with(p.text) || (!p.text.empty() && p.text[0] == '/' && path == std::string_view(p.text).substr(1));
    default: return run_nfa(p, path, false);
  }
}

// Could p match some string that starts with `prefix` (a directory path plus "/")?
bool docker_could_match_with_prefix(const DockerPattern& p, std::string_view prefix) {
  switch (p.type) {
    case DockerPattern::kExact: return std::string_view(p.text).starts_with(prefix);
    case DockerPattern::kPrefix:
      return std::string_view(p.text).starts_with(prefix) || prefix.starts_with(p.text);
    case DockerPattern::kSuffix: return true;
    default: return run_nfa(p, prefix, true);
  }
}

// Compiles one cleaned pattern (no "!") as patternmatcher's Pattern.compile does. Throws
// std::invalid_argument for what kiln cannot read the way Docker's Go regexp reads it.
DockerPattern compile_docker(std::string_view pat) {
  DockerPattern p;
  std::vector<Node>& nfa = p.nfa;
  auto emit = [&](Node::Op op, uint32_t arg = 0) {  // a node that moves on to the next one
    uint32_t at = static_cast<uint32_t>(nfa.size());
    nfa.push_back({op, arg, at + 1, 0});
  };
  auto star = [&](Node::Op op) {  // (op)* : L: split(M, after); M: op -> L
    uint32_t l = static_cast<uint32_t>(nfa.size());
    nfa.push_back({Node::kSplit, 0, l + 1, l + 2});
    nfa.push_back({op, 0, l, 0});
  };
  auto unsupported = [](const std::string& what) {
    throw std::invalid_argument(what + " is read by Docker as a Go regular expression; kiln does not support it");
  };
  auto type = DockerPattern::kExact;
  size_t pos = 0;
  auto peek = [&]() -> int { return pos < pat.size() ? static_cast<unsigned char>(pat[pos]) : -1; };
  auto next_rune = [&]() {
    size_t w = 0;
    uint32_t r = decode_rune(pat, pos, w);
    pos += w;
    return r;
  };
  for (size_t i = 0; pos < pat.size(); ++i) {
    uint32_t ch = next_rune();
    if (ch == '*') {
      if (peek() == '*') {
        ++pos;
        if (peek() == '/') ++pos;
        if (peek() == -1) {
          if (type == DockerPattern::kExact) {
            type = DockerPattern::kPrefix;
          } else {
            star(Node::kNotNewline);  // ".*"
            type = DockerPattern::kRegexp;
          }
        } else {  // "(.*/)?": S: split(L, after); L: split(M, N); M: any but \n -> L; N: '/' -> after
          uint32_t s = static_cast<uint32_t>(nfa.size());
          nfa.push_back({Node::kSplit, 0, s + 1, s + 4});
          nfa.push_back({Node::kSplit, 0, s + 2, s + 3});
          nfa.push_back({Node::kNotNewline, 0, s + 1, 0});
          nfa.push_back({Node::kRune, '/', s + 4, 0});
          type = DockerPattern::kRegexp;
        }
        if (i == 0) type = DockerPattern::kSuffix;
      } else {
        star(Node::kNotSlash);  // "[^/]*"
        type = DockerPattern::kRegexp;
      }
    } else if (ch == '?') {
      emit(Node::kNotSlash);
      type = DockerPattern::kRegexp;
    } else if (docker_escaped(ch)) {
      emit(Node::kRune, ch);
    } else if (ch == '\\') {
      if (pos < pat.size()) {
        uint32_t e = next_rune();
        if (ascii_alnum(e) || e >= 0x80)
          unsupported("the escape '\\" + std::string(pat.substr(pos - (e >= 0x80 ? 2 : 1), e >= 0x80 ? 2 : 1)) + "'");
        emit(Node::kRune, e);
        type = DockerPattern::kRegexp;
      } else {
        emit(Node::kRune, '\\');
      }
    } else if (ch == '[') {
      // Docker copies the bracket expression into its regular expression; kiln parses it here
      // (its syntax was checked by check_filepath_syntax) and refuses what Go would read otherwise.
      DockerClass cls;
      if (peek() == '^') {
        cls.negate = true;
        ++pos;
      }
      auto class_rune = [&]() -> uint32_t {
        uint32_t r = next_rune();
        if (r == '*' || r == '?') unsupported(std::string("'") + static_cast<char>(r) + "' inside '[...]'");
        if (r == '[' && peek() == ':') unsupported("'[:' inside '[...]'");
        if (r == '\\') {
          r = next_rune();
          if (ascii_alnum(r) || r >= 0x80) unsupported("an escape of a letter, digit or non-ASCII character inside '[...]'");
        }
        return r;
      };
      for (bool first = true; first || peek() != ']'; first = false) {
        uint32_t lo = class_rune(), hi = lo;
        if (peek() == '-') {
          ++pos;
          hi = class_rune();
          if (hi < lo) throw std::invalid_argument("the range in '[...]' is reversed");
        }
        cls.ranges.emplace_back(lo, hi);
      }
      ++pos;  // ']'
      emit(Node::kClass, static_cast<uint32_t>(p.classes.size()));
      p.classes.push_back(std::move(cls));
      type = DockerPattern::kRegexp;
    } else if (ch == ']') {
      emit(Node::kRune, ']');
      type = DockerPattern::kRegexp;
    } else if (ch == '^') {
      emit(Node::kBegin);  // outside brackets, Go reads '^' as "beginning of text"
    } else {
      emit(Node::kRune, ch);
    }
  }
  nfa.push_back({Node::kMatch, 0, 0, 0});
  p.type = type;
  if (type == DockerPattern::kExact) p.text = std::string(pat);
  if (type == DockerPattern::kPrefix) p.text = std::string(pat.substr(0, pat.size() - 2));
  if (type == DockerPattern::kSuffix) p.text = std::string(pat.substr(2));
  if (type != DockerPattern::kRegexp) {
    p.nfa.clear();
    p.classes.clear();
  }
  return p;
}

struct DockerFile {
  std::vector<DockerPattern> patterns;

  // patternmatcher's MatchesOrParentMatches: the last pattern that matches the path or one of its
  // parent directories decides.
  bool ignored(std::string_view path, const std::vector<std::string_view>& segs) const {
    bool matched = false;
    for (const DockerPattern& p : patterns) {
      if (p.exception != matched) continue;
      bool hit = docker_match_one(p, path);
      for (size_t k = 1; !hit && k < segs.size(); ++k)
        hit = docker_match_one(p, path.substr(0, static_cast<size_t>(segs[k - 1].data() + segs[k - 1].size() - path.data())));
      if (hit) matched = !p.exception;
    }
    return matched;
  }

  // Everything below `dir` is excluded when `dir` is, unless an exception could match a path
  // below it (the last matching pattern decides, and every pattern matching dir matches below).
  bool can_prune(std::string_view dir, const std::vector<std::string_view>& segs) const {
    if (!ignored(dir, segs)) return false;
    std::string prefix = std::string(dir) + "/";
    for (const DockerPattern& p : patterns)
      if (p.exception && docker_could_match_with_prefix(p, prefix)) return false;
    return true;
  }
};

DockerFile parse_docker_file(std::string_view content, std::string_view file_name) {
  DockerFile f;
  size_t line_no = 0;
  auto fail = [&](const std::string& why) {
    throw InputError(std::string(file_name) + ":" + std::to_string(line_no) + ": " + why);
  };
  while (!content.empty()) {  // bufio.ScanLines
    size_t nl = content.find('\n');
    std::string_view line = content.substr(0, nl);
    content.remove_prefix(nl == std::string_view::npos ? content.size() : nl + 1);
    ++line_no;
    if (line.size() >= 65536) fail("line longer than 64 KiB (Docker refuses it)");
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line_no == 1 && line.starts_with("\xEF\xBB\xBF")) line.remove_prefix(3);
    if (line.starts_with("#")) continue;
    // ignorefile.ReadAll
    std::string_view t = go_trim_space(line);
    if (t.empty()) continue;
    bool invert = t[0] == '!';
    if (invert) t = go_trim_space(t.substr(1));
    std::string pat(t);
    if (!pat.empty()) {
      pat = clean_path(pat);
      if (pat.size() > 1 && pat[0] == '/') pat.erase(0, 1);
    }
    if (invert) pat = "!" + pat;
    // patternmatcher.New
    pat = clean_path(go_trim_space(pat));
    bool exception = false;
    if (pat[0] == '!') {
      if (pat.size() == 1) fail("illegal exclusion pattern \"!\"");
      exception = true;
      pat.erase(0, 1);
    }
    if (std::string why = check_filepath_syntax(pat); !why.empty()) fail("bad pattern '" + pat + "': " + why);
    try {
      DockerPattern p = compile_docker(pat);
      p.exception = exception;
      f.patterns.push_back(std::move(p));
    } catch (const std::invalid_argument& e) {
      fail("pattern '" + pat + "': " + e.what());
    }
  }
  return f;
}

}  // namespace

struct IgnoreRules::Impl {
  bool builtin = false;
  bool flytekit = false;
  std::map<std::string, GitFile, std::less<>> git;  // keyed by directory ("" = root)
  std::vector<GitFile> git_excludes;                // below every .gitignore, in precedence order
  std::vector<DockerFile> docker;                   // .dockerignore
  std::vector<DockerPyIgnore> dockerpy;             // .flyteignore (files only)
  bool git_icase = false;                           // core.ignorecase: git patterns fold ASCII case

  // Git verdict for the first k segments of s, ignoring ancestors: +1 ignore, -1 keep, 0 none.
  // `files` holds the .gitignore files on the path, deepest first.
  static int git_verdict(const std::vector<const GitFile*>& files, const std::string_view* s,
                         size_t k, bool is_dir, bool icase) {
    for (const GitFile* f : files) {
      if (f->depth >= k) continue;  // applies only strictly below its directory
      for (auto r = f->rules.rbegin(); r != f->rules.rend(); ++r) {
        if (r->dir_only && !is_dir) continue;
        bool hit = r->basename ? match(r->pat, s + k - 1, 1, icase)
                               : match(r->pat, s + f->depth, k - f->depth, icase);
        if (hit) return r->negate ? -1 : 1;
      }
    }
    return 0;
  }

  // Git: is the path, or any directory above it, excluded?
  bool git_ignored(std::string_view path, const std::vector<std::string_view>& s,
                   bool is_dir) const {
    if ((git.empty() && git_excludes.empty()) || s.empty()) return false;
    thread_local std::vector<const GitFile*> files;  // .gitignore files in "", s0, s0/s1, ... deepest first
    files.clear();
    for (size_t q = 0; q < s.size(); ++q) {
      size_t len = q == 0 ? 0 : static_cast<size_t>(s[q - 1].data() + s[q - 1].size() - path.data());
      auto it = git.find(path.substr(0, len));
      if (it != git.end()) files.insert(files.begin(), &it->second);
    }
    for (const GitFile& f : git_excludes) files.push_back(&f);  // info/exclude, core.excludesFile
    if (files.empty()) return false;
    for (size_t k = 1; k <= s.size(); ++k)
      if (git_verdict(files, s.data(), k, k < s.size() || is_dir, git_icase) > 0) return true;
    return false;
  }

  bool docker_ignored(std::string_view path, const std::vector<std::string_view>& s) const {
    for (const DockerFile& f : docker)
      if (f.ignored(path, s)) return true;
    return false;
  }

  bool builtin_ignored(const std::vector<std::string_view>& s, bool is_dir) const {
    if (builtin) {
      for (size_t i = 0; i < s.size(); ++i) {
        bool dir = i + 1 < s.size() || is_dir;
        if (dir && (s[i] == ".git" || s[i] == "__pycache__")) return true;
      }
      if (!is_dir && !s.empty() && s.back().ends_with(".pyc")) return true;
    }
    if (flytekit) {
      // fnmatch "*.pyc", ".cache", ".cache/*", "__pycache__/*", "**/__pycache__/*" on the
      // relative path ("*" crosses "/" in fnmatch), and os.walk never entering ".git".
      for (size_t i = 0; i < s.size(); ++i) {
        bool dir = i + 1 < s.size() || is_dir;
        if (dir && (s[i] == ".git" || s[i] == "__pycache__")) return true;
      }
      if (!s.empty() && s[0] == ".cache") return true;
      if (!is_dir && !s.empty() && s.back().ends_with(".pyc")) return true;
    }
    return false;
  }
};

IgnoreRules::IgnoreRules() : impl_(std::make_unique<Impl>()) {}
IgnoreRules::~IgnoreRules() = default;
IgnoreRules::IgnoreRules(IgnoreRules&&) noexcept = default;
IgnoreRules& IgnoreRules::operator=(IgnoreRules&&) noexcept = default;

void IgnoreRules::add_builtin() { impl_->builtin = true; }

namespace {

void parse_gitignore(GitFile& file, std::string_view content);

}  // namespace

void IgnoreRules::add_gitignore(std::string_view dir_rel, std::string_view content) {
  std::vector<std::string_view> dir;
  split(dir_rel, dir);
  std::erase(dir, std::string_view("."));
  std::string key;
  for (std::string_view d : dir) {
    if (!key.empty()) key += '/';
    key += d;
  }
  GitFile& file = impl_->git[key];
  file.depth = dir.size();
  parse_gitignore(file, content);
}

void IgnoreRules::set_git_ignore_case(bool ignore_case) { impl_->git_icase = ignore_case; }

void IgnoreRules::add_git_excludes(std::string_view content) {
  impl_->git_excludes.emplace_back();
  parse_gitignore(impl_->git_excludes.back(), content);
}

namespace {

void parse_gitignore(GitFile& file, std::string_view content) {

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

}  // namespace

void IgnoreRules::add_flytekit_standard() { impl_->flytekit = true; }

void IgnoreRules::add_dockerignore(std::string_view content, std::string_view file_name) {
  impl_->docker.push_back(parse_docker_file(content, file_name));
}

void IgnoreRules::add_dockerpy_ignore(std::string_view content, std::string_view file_name) {
  impl_->dockerpy.push_back(DockerPyIgnore::parse(content, file_name));
}

bool IgnoreRules::ignored(std::string_view rel_path, bool is_dir) const {
  if (!impl_) return false;
  const Impl& i = *impl_;
  if (!i.builtin && !i.flytekit && i.git.empty() && i.git_excludes.empty() && i.docker.empty() &&
      i.dockerpy.empty())
    return false;
  // One segment list per thread, reused: the walk asks for every path of the tree.
  thread_local std::vector<std::string_view> s;
  split(rel_path, s);
  if (s.empty()) return false;
  if (impl_->builtin_ignored(s, is_dir) || impl_->git_ignored(rel_path, s, is_dir) ||
      impl_->docker_ignored(rel_path, s))
    return true;
  if (!is_dir)  // FlyteIgnore is asked about files only
    for (const DockerPyIgnore& d : i.dockerpy)
      if (d.matches(rel_path)) return true;
  return false;
}

// Builtin and git exclusions are final for the whole subtree. A Docker exclusion may be undone
// below by an exception that could match a path below the directory.
bool IgnoreRules::can_prune(std::string_view dir_rel) const {
  if (!impl_) return false;
  std::vector<std::string_view> s;
  split(dir_rel, s);
  if (s.empty()) return false;
  if (impl_->builtin_ignored(s, true) || impl_->git_ignored(dir_rel, s, true)) return true;
  for (const DockerFile& f : impl_->docker)
    if (f.can_prune(dir_rel, s)) return true;
  for (const DockerPyIgnore& d : impl_->dockerpy)
    if (d.matches_everything_below(dir_rel)) return true;
  return false;
}

bool glob_match(std::string_view pattern, std::string_view path, bool ignore_case) {
  Pattern p = compile(pattern);
  std::vector<std::string_view> s;
  split(path, s);
  return match(p, s.data(), s.size(), ignore_case);
}

}  // namespace kiln::layers

namespace kiln::layers {

bool docker_ignored(std::string_view content, std::string_view path) {
  DockerFile f = parse_docker_file(content, ".dockerignore");
  std::vector<std::string_view> s;
  split(path, s);
  return f.ignored(path, s);
}

}  // namespace kiln::layers
