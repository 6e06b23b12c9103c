// docker-py's PatternMatcher (see dockerpy_ignore.h). Each pattern is lowercased and translated
// as docker.utils.fnmatch.translate translates it, but into a list of elements instead of regular
// expression text; the elements are matched by a Thompson NFA over code points.
#include "layers/dockerpy_ignore.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "layers/input_error.h"

namespace kiln::layers {

namespace {

struct LowerRun {
  char32_t first, last;
  int step, delta;
};
struct CodeRange {
  char32_t lo, hi;
};

#include "layers/dockerpy_unicode.inc"

template <std::size_t N>
bool in_ranges(const CodeRange (&table)[N], char32_t c) {
  auto it = std::upper_bound(std::begin(table), std::end(table), c,
                             [](char32_t v, const CodeRange& r) { return v < r.lo; });
  return it != std::begin(table) && c <= (it - 1)->hi;
}

char32_t lower_one(char32_t c) {
  if (c < 0x80) return c >= 'A' && c <= 'Z' ? c + 32 : c;
  auto it = std::upper_bound(std::begin(kLowerRuns), std::end(kLowerRuns), c,
                             [](char32_t v, const LowerRun& r) { return v < r.first; });
  if (it == std::begin(kLowerRuns)) return c;
  --it;
  if (c > it->last || (c - it->first) % static_cast<char32_t>(it->step) != 0) return c;
  return static_cast<char32_t>(static_cast<int64_t>(c) + it->delta);
}

// Python's str.lower(): the simple mappings, U+0130 to "i" + U+0307, and U+03A3 to the final
// sigma U+03C2 when preceded by a cased letter and not followed by one (case-ignorable code points
// skipped both ways: unicodeobject.c handle_capital_sigma). Each scan stops at the first
// code point that is not case-ignorable, so the whole is linear.
std::u32string py_lower(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n; ++i) {
    const char32_t c = s[i];
    if (c < 0x80) {
      out.push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
    } else if (c == 0x130) {
      out.push_back(U'i');
      out.push_back(0x307);
    } else if (c == 0x3A3) {
      std::size_t j = i;
      while (j > 0 && in_ranges(kCaseIgnorable, s[j - 1])) --j;
      bool final_sigma = j > 0 && in_ranges(kCased, s[j - 1]);
      if (final_sigma && i + 1 < n) {
        std::size_t k = i + 1;
        while (k < n && in_ranges(kCaseIgnorable, s[k])) ++k;
        final_sigma = k == n || !in_ranges(kCased, s[k]);
      }
      out.push_back(final_sigma ? 0x3C2 : 0x3C3);
    } else {
      out.push_back(lower_one(c));
    }
  }
  return out;
}

// UTF-8 to code points. Strict as Python's decoder is (no overlong forms, surrogates or code
// points above U+10FFFF). An invalid byte becomes U+DC00 + byte when `escape` (os.walk's
// surrogateescape), or makes the call return false.
bool decode_utf8(std::string_view s, std::u32string& out, bool escape) {
  out.clear();
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  auto cont = [&](std::size_t k, unsigned lo = 0x80, unsigned hi = 0xBF) { return k < n && p[k] >= lo && p[k] <= hi; };
  for (std::size_t i = 0; i < n;) {
    const unsigned b = p[i];
    std::size_t len = 0;
    if (b < 0x80) len = 1;
    else if (b >= 0xC2 && b <= 0xDF) len = cont(i + 1) ? 2 : 0;
    else if (b == 0xE0) len = cont(i + 1, 0xA0) && cont(i + 2) ? 3 : 0;
    else if (b == 0xED) len = cont(i + 1, 0x80, 0x9F) && cont(i + 2) ? 3 : 0;
    else if (b >= 0xE1 && b <= 0xEF) len = cont(i + 1) && cont(i + 2) ? 3 : 0;
    else if (b == 0xF0) len = cont(i + 1, 0x90) && cont(i + 2) && cont(i + 3) ? 4 : 0;
    else if (b >= 0xF1 && b <= 0xF3) len = cont(i + 1) && cont(i + 2) && cont(i + 3) ? 4 : 0;
    else if (b == 0xF4) len = cont(i + 1, 0x80, 0x8F) && cont(i + 2) && cont(i + 3) ? 4 : 0;
    char32_t c = 0;
    switch (len) {
      case 0:
        if (!escape) return false;
        out.push_back(0xDC00 + b);
        ++i;
        continue;
      case 1: c = b; break;
      case 2: c = ((b & 0x1F) << 6) | (p[i + 1] & 0x3F); break;
      case 3: c = ((b & 0x0F) << 12) | ((p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F); break;
      default: c = ((b & 0x07) << 18) | ((p[i + 1] & 0x3F) << 12) | ((p[i + 2] & 0x3F) << 6) | (p[i + 3] & 0x3F);
    }
    out.push_back(c);
    i += len;
  }
  return true;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

std::string to_utf8(const std::u32string& s) {
  std::string out;
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

// Python's str.isspace(), what str.strip() removes.
bool py_space(char32_t c) {
  return (c >= 0x9 && c <= 0xD) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// One element of a translated pattern (the regular expression docker-py builds, piece by piece).
enum class Op : std::uint8_t {
  kLit,           // re.escape(c)
  kClass,         // [...]
  kNotSlash,      // "?"  -> [^/]
  kStarNotSlash,  // "*"  -> [^/]*
  kStarAny,       // "**" at the end -> .*   ("." is anything but "\n")
  kOptDirs,       // "**" elsewhere  -> (.*/)?
};

struct Elem {
  Op op;
  char32_t c = 0;      // kLit
  std::uint32_t cls = 0;  // kClass: index into classes
};

struct CharClass {
  bool negate = false;
  std::vector<std::pair<char32_t, char32_t>> ranges;  // single characters are ranges of one
  bool contains(char32_t c) const {
    bool in = false;
    for (const auto& [lo, hi] : ranges)
      if (c >= lo && c <= hi) {
        in = true;
        break;
      }
    return in != negate;
  }
};

// The class docker-py writes for "[" + stuff + "]" (stuff never empty), read as Python's re reads
// it (re/_parser.py): backslashes were doubled, so every character is literal; "!" first negates
// ("^"), "^" first is escaped (literal); "]" first is literal; "a-b" is a range, a "-" first or
// last is literal; a range whose end is below its start is an error.
CharClass make_class(const std::u32string& stuff) {
  CharClass cls;
  std::u32string items = stuff;
  if (items[0] == U'!') {
    cls.negate = true;
    items.erase(0, 1);
  }
  items.push_back(U']');  // the class's closing bracket
  std::size_t k = 0;
  for (;;) {
    const char32_t a = items[k++];
    if (a == U']' && !cls.ranges.empty()) break;
    if (k < items.size() && items[k] == U'-') {
      ++k;
      const char32_t b = items[k++];
      if (b == U']' && k == items.size()) {
        cls.ranges.emplace_back(a, a);
        cls.ranges.emplace_back(U'-', U'-');
        break;
      }
      if (b < a) {
        std::u32string both{a, U'-', b};
        throw std::invalid_argument("bad character range " + to_utf8(both));
      }
      cls.ranges.emplace_back(a, b);
    } else {
      cls.ranges.emplace_back(a, a);
    }
  }
  return cls;
}

}  // namespace

struct DockerPyIgnore::Pattern {
  bool exclusion = false;
  std::size_t ndirs = 0;
  std::string cleaned;  // '/'.join(dirs), UTF-8, before lowercasing
  std::vector<Elem> elems;
  std::vector<CharClass> classes;
};

namespace {

using Pattern = DockerPyIgnore::Pattern;

// docker.utils.fnmatch.translate of an already lowercased pattern.
void translate(const std::u32string& pat, Pattern& p) {
  const std::size_t n = pat.size();
  std::size_t i = 0;
  while (i < n) {
    const char32_t c = pat[i++];
    if (c == U'*') {
      if (i < n && pat[i] == U'*') {
        ++i;
        if (i < n && pat[i] == U'/') ++i;
        p.elems.push_back({i >= n ? Op::kStarAny : Op::kOptDirs});
      } else {
        p.elems.push_back({Op::kStarNotSlash});
      }
    } else if (c == U'?') {
      p.elems.push_back({Op::kNotSlash});
    } else if (c == U'[') {
      std::size_t j = i;
      if (j < n && pat[j] == U'!') ++j;
      if (j < n && pat[j] == U']') ++j;
      while (j < n && pat[j] != U']') ++j;
      if (j >= n) {
        p.elems.push_back({Op::kLit, U'['});
      } else {
        p.classes.push_back(make_class(pat.substr(i, j - i)));
        p.elems.push_back({Op::kClass, 0, static_cast<std::uint32_t>(p.classes.size() - 1)});
        i = j + 1;
      }
    } else {
      p.elems.push_back({Op::kLit, c});
    }
  }
}

// Pattern.__init__: "!" makes an exclusion (docker-py's name for an exception); split_path drops
// empty and "." parts; ".." removes itself and the part before it. Returns false for a pattern left
// with no part (PatternMatcher drops it).
bool make_pattern(const std::u32string& text, Pattern& p) {
  std::u32string s = text;
  if (!s.empty() && s[0] == U'!') {
    p.exclusion = true;
    s.erase(0, 1);
  }
  std::vector<std::u32string> dirs;
  std::size_t start = 0;
  while (start <= s.size()) {
    std::size_t slash = s.find(U'/', start);
    if (slash == std::u32string::npos) slash = s.size();
    std::u32string part = s.substr(start, slash - start);
    start = slash + 1;
    if (part.empty() || part == U".") continue;
    if (part == U"..") {
      if (!dirs.empty()) dirs.pop_back();
      continue;
    }
    dirs.push_back(std::move(part));
  }
  if (dirs.empty()) return false;
  std::u32string cleaned;
  for (const auto& d : dirs) {
    if (!cleaned.empty()) cleaned += U'/';
    cleaned += d;
  }
  p.ndirs = dirs.size();
  p.cleaned = to_utf8(cleaned);
  translate(py_lower(cleaned), p);
  return true;
}

// The NFA over a pattern's elements. State 2k: before element k (2m: the end); state 2k+1: inside
// the ".*" of element k (kOptDirs). Star and optional elements may be skipped without input.
class Nfa {
 public:
  explicit Nfa(const Pattern& p) : p_(p), m_(p.elems.size()) {}

  // Feeds s[0..n); returns whether the whole matches, as re.match(regex + "$") does: the end, or
  // just before a final "\n". With `alive`, returns instead whether some continuation of s could
  // still match (the prefix keeps a state alive).
  bool run(const char32_t* s, std::size_t n, bool alive) {
    thread_local std::vector<std::uint32_t> mark;
    thread_local std::uint32_t gen = 0;
    thread_local std::vector<std::uint32_t> cur, next;
    const std::size_t states = 2 * (m_ + 1);
    if (mark.size() < states) mark.assign(states, 0);
    cur.clear();
    next.clear();
    auto bump = [&] {
      if (++gen == 0) {
        std::fill(mark.begin(), mark.end(), 0);
        gen = 1;
      }
    };
    auto add = [&](std::vector<std::uint32_t>& list, std::uint32_t st) {
      for (;;) {
        if (mark[st] == gen) return;
        mark[st] = gen;
        list.push_back(st);
        if (st % 2 != 0) return;
        const std::size_t k = st / 2;
        if (k >= m_) return;
        const Op op = p_.elems[k].op;
        if (op != Op::kStarNotSlash && op != Op::kStarAny && op != Op::kOptDirs) return;
        st += 2;
      }
    };
    auto accepting = [&](const std::vector<std::uint32_t>& list) {
      return std::find(list.begin(), list.end(), static_cast<std::uint32_t>(2 * m_)) != list.end();
    };
    bump();
    add(cur, 0);
    bool accept_before_newline = false;
    for (std::size_t i = 0; i < n && !cur.empty(); ++i) {
      if (i + 1 == n && s[i] == U'\n' && accepting(cur)) accept_before_newline = true;
      const char32_t c = s[i];
      bump();
      next.clear();
      for (std::uint32_t st : cur) {
        const std::size_t k = st / 2;
        if (st % 2 != 0) {  // inside (.*/)?
          if (c != U'\n') add(next, st);
          if (c == U'/') add(next, st + 1);
          continue;
        }
        if (k >= m_) continue;
        const Elem& e = p_.elems[k];
        switch (e.op) {
          case Op::kLit:
            if (c == e.c) add(next, st + 2);
            break;
          case Op::kClass:
            if (p_.classes[e.cls].contains(c)) add(next, st + 2);
            break;
          case Op::kNotSlash:
            if (c != U'/') add(next, st + 2);
            break;
          case Op::kStarNotSlash:
            if (c != U'/') add(next, st);
            break;
          case Op::kStarAny:
            if (c != U'\n') add(next, st);
            break;
          case Op::kOptDirs:
            if (c != U'\n') add(next, st + 1);
            if (c == U'/') add(next, st + 2);
            break;
        }
      }
      std::swap(cur, next);
    }
    if (alive) return !cur.empty();
    return accepting(cur) || accept_before_newline;
  }

 private:
  const Pattern& p_;
  std::size_t m_;
};

bool match_lowered(const Pattern& p, const char32_t* s, std::size_t n) { return Nfa(p).run(s, n, false); }

}  // namespace

DockerPyIgnore::DockerPyIgnore(const std::vector<std::string>& patterns, std::string_view file_name,
                               const std::vector<std::size_t>& line_numbers) {
  std::u32string text;
  for (std::size_t i = 0; i < patterns.size(); ++i) {
    auto where = [&] {
      std::string w(file_name);
      if (i < line_numbers.size()) w += ":" + std::to_string(line_numbers[i]);
      return w.empty() ? std::string() : w + ": ";
    };
    if (!decode_utf8(patterns[i], text, false))
      throw InputError(where() + "pattern is not valid UTF-8 (pyflyte cannot read it)");
    Pattern p;
    try {
      if (!make_pattern(text, p)) continue;
    } catch (const std::invalid_argument& e) {
      throw InputError(where() + "bad pattern '" + patterns[i] + "': pyflyte fails on it (Python's re: " + e.what() +
                       ")");
    }
    patterns_.push_back(std::move(p));
  }
  Pattern keep;
  make_pattern(U"!.dockerignore", keep);
  patterns_.push_back(std::move(keep));
}

DockerPyIgnore::~DockerPyIgnore() = default;
DockerPyIgnore::DockerPyIgnore(DockerPyIgnore&&) noexcept = default;
DockerPyIgnore& DockerPyIgnore::operator=(DockerPyIgnore&&) noexcept = default;

DockerPyIgnore DockerPyIgnore::parse(std::string_view content, std::string_view file_name) {
  // f.readlines() in text mode (universal newlines: "\r\n", "\r" and "\n" end a line), then
  // [l.strip() for l in lines if l and not l.startswith("#")].
  std::vector<std::string> patterns;
  std::vector<std::size_t> lines;
  std::size_t line_no = 0;
  std::u32string text;
  while (!content.empty()) {
    const std::size_t end = content.find_first_of("\r\n");
    std::string_view line = content.substr(0, end);
    std::size_t skip = end == std::string_view::npos ? content.size() : end + 1;
    if (end != std::string_view::npos && content[end] == '\r' && end + 1 < content.size() && content[end + 1] == '\n')
      ++skip;
    content.remove_prefix(skip);
    ++line_no;
    if (!decode_utf8(line, text, false))
      throw InputError(std::string(file_name) + ":" + std::to_string(line_no) +
                       ": not valid UTF-8 (pyflyte cannot read the file)");
    if (!text.empty() && text[0] == U'#') continue;
    std::size_t b = 0, e = text.size();
    while (b < e && py_space(text[b])) ++b;
    while (e > b && py_space(text[e - 1])) --e;
    patterns.push_back(to_utf8(text.substr(b, e - b)));
    lines.push_back(line_no);
  }
  return DockerPyIgnore(patterns, file_name, lines);
}

bool DockerPyIgnore::matches(std::string_view rel_path) const {
  thread_local std::u32string raw, low;
  decode_utf8(rel_path, raw, true);
  low = py_lower(raw);
  // The parent directories' ends: the first N parts of os.path.dirname(path) joined by "/" are
  // the lowercased path up to its N-th "/" (lowercasing a prefix that ends before a "/" gives the
  // same code points: "/" stops Python's final-sigma scan as the end of the string does).
  thread_local std::vector<std::size_t> slashes;
  slashes.clear();
  for (std::size_t i = 0; i < low.size(); ++i)
    if (low[i] == U'/') slashes.push_back(i);
  bool matched = false;
  for (const Pattern& p : patterns_) {
    bool hit = match_lowered(p, low.data(), low.size());
    if (!hit && !slashes.empty() && p.ndirs <= slashes.size())
      hit = match_lowered(p, low.data(), slashes[p.ndirs - 1]);
    if (hit) matched = !p.exclusion;
  }
  return matched;
}

bool DockerPyIgnore::matches_everything_below(std::string_view dir_rel) const {
  thread_local std::u32string raw, low;
  decode_utf8(dir_rel, raw, true);
  raw.push_back(U'/');
  low = py_lower(raw);  // the lowercased "dir/" every path below starts with
  std::vector<std::size_t> slashes;
  for (std::size_t i = 0; i < low.size(); ++i)
    if (low[i] == U'/') slashes.push_back(i);
  const std::size_t k = slashes.size();  // the directory's number of parts
  // The verdicts the paths below may get, as the patterns go by.
  bool may_keep = true, may_ignore = false;
  for (const Pattern& p : patterns_) {
    // A pattern of at most k parts meets, in every path below, the same first parts of the parent.
    const bool always = p.ndirs <= k && match_lowered(p, low.data(), slashes[p.ndirs - 1]);
    const bool maybe = always || Nfa(p).run(low.data(), low.size(), true);
    if (always) {
      may_keep = p.exclusion;
      may_ignore = !p.exclusion;
    } else if (maybe) {
      (p.exclusion ? may_keep : may_ignore) = true;
    }
  }
  return may_ignore && !may_keep;
}

std::vector<std::string> DockerPyIgnore::patterns() const {
  std::vector<std::string> out;
  for (const Pattern& p : patterns_) out.push_back((p.exclusion ? "!" : "") + p.cleaned);
  return out;
}

bool dockerpy_fnmatch(std::string_view name, std::string_view pat) {
  std::u32string n32, p32;
  decode_utf8(name, n32, true);
  decode_utf8(pat, p32, true);
  Pattern p;
  try {
    translate(py_lower(p32), p);
  } catch (const std::invalid_argument& e) {
    throw InputError("bad pattern '" + std::string(pat) + "': " + e.what());
  }
  const std::u32string low = py_lower(n32);
  return match_lowered(p, low.data(), low.size());
}

}  // namespace kiln::layers
