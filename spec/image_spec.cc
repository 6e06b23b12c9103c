// Parsing, validation and canonical form of the ImageSpec (see image_spec.h).
//
// Parsing runs in two phases so errors come in a useful order: first every key is checked
// against the known fields and every value against its type (recursively for a nested
// base_image); then the supported-features table rejects fields kiln cannot build yet.
#include "spec/image_spec.h"
#include "spec/userinfo.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <set>
#include <sstream>
#include <string_view>

namespace kiln::spec {
namespace fs = std::filesystem;
using json = nlohmann::json;

const char* to_string(CopyMode mode) {
  switch (mode) {
    case CopyMode::LoadedModules: return "loaded_modules";
    case CopyMode::All: return "all";
    case CopyMode::NoCopy: return "no_copy";
  }
  return "?";
}

const char* to_string(Compression c) {
  switch (c) {
    case Compression::Gzip: return "gzip";
    case Compression::Zstd: return "zstd";
    case Compression::None: return "none";
  }
  return "?";
}

namespace {

// ---------------------------------------------------------------------------------------------
// Small helpers

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

/// "a list", "a number", ... for error messages.
std::string describe(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::object: return "an object";
    case json::value_t::array: return "a list";
    case json::value_t::string: return "a string";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::binary: return "binary data";
    case json::value_t::discarded: return "discarded";
    default: return "a number";
  }
}

/// Lexically normal, without a trailing separator (except for the root itself).
fs::path normal(const fs::path& p) {
  std::string s = p.lexically_normal().generic_string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return fs::path(s);
}

/// Optimal-string-alignment (Damerau) edit distance.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

/// `s` cut to a length an error message can show.
std::string shorten(const std::string& s) {
  constexpr std::size_t kMax = 80;
  return s.size() <= kMax ? s : s.substr(0, kMax) + "…(" + std::to_string(s.size()) + " characters)";
}

/// A registry or base_image that carries credentials ("user:pw@host"): what a Field says, with
/// them shown as "***" (the value is never echoed).
std::string credentials_refused(const std::string& redacted) {
  return "must not hold credentials ('" + redacted +
         "'): kiln reads them from docker's config.json (docker login, $DOCKER_CONFIG, --registry-config, "
         "or the spec's registry_config)";
}

/// `s` with control characters (NUL first of all) written as \uXXXX, for error messages: a raw
/// NUL would cut the message, and other control characters would garble the terminal.
std::string escaped(const std::string& s) {
  std::string out;
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

/// Docker's (distribution/reference) NameTotalLengthMax: [registry/]name, without the tag.
constexpr std::size_t kMaxRepositoryName = 255;

/// An apt package entry's length limit: far above any Debian name, far below a stack problem.
constexpr std::size_t kMaxAptPackage = 256;

/// "3", "3.11", "3.11.4": one to three dot-separated runs of digits.
bool valid_python_version(std::string_view s) {
  if (s.size() > 32) return false;
  int parts = 0;
  for (std::size_t i = 0; i <= s.size(); ++i) {
    std::size_t start = i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    if (i == start || ++parts > 3) return false;
    if (i < s.size() && s[i] != '.') return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// One field being parsed: its (dotted) name, value, and where relative paths resolve.

struct Field {
  const std::string& origin;
  const fs::path& base_dir;
  std::string name;  // "env", or "base_image.env" inside a nested spec
  const json& v;
  int depth = 0;     // how deep in nested base_image specs (0: the top spec)

  [[noreturn]] void fail(const std::string& what) const {
    throw SpecError(name, origin + ": field '" + name + "' " + what);
  }
  [[noreturn]] void wrong_type(const std::string& expected) const {
    fail("must be " + expected + ", not " + describe(v));
  }

  /// A string; "" counts as absent for optional fields.
  std::string str() const {
    if (!v.is_string()) wrong_type("a string");
    return v.get<std::string>();
  }
  std::optional<std::string> opt_str() const {
    std::string s = str();
    return s.empty() ? std::nullopt : std::optional(s);
  }

  std::vector<std::string> str_list() const {
    if (!v.is_array()) wrong_type("a list of strings");
    std::vector<std::string> out;
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_string())
        fail("must be a list of strings (item " + std::to_string(i) + " is " + describe(v[i]) +
             ")");
      out.push_back(v[i].get<std::string>());
    }
    return out;
  }

  /// A single string (one item; "" = none) or a list of strings.
  std::vector<std::string> str_or_list() const {
    if (v.is_string()) {
      std::string s = v.get<std::string>();
      return s.empty() ? std::vector<std::string>{} : std::vector<std::string>{s};
    }
    if (!v.is_array()) wrong_type("a string or a list of strings");
    return str_list();
  }

  /// A JSON object of string values with non-empty keys (no '=' for env).
  std::map<std::string, std::string> str_map(bool env_names) const {
    const std::string expected = "an object mapping strings to strings";
    if (!v.is_object()) wrong_type(expected);
    std::map<std::string, std::string> out;
    for (const auto& [key, val] : v.items()) {
      if (!val.is_string())
        fail("must be " + expected + " (the value of '" + key + "' is " + describe(val) + ")");
      if (key.empty()) fail("has an empty key");
      if (env_names && key.find('=') != std::string::npos)
        fail("has a variable name containing '=': '" + key + "'");
      out[key] = val.get<std::string>();
    }
    return out;
  }

  /// A host path, resolved against base_dir; "" = absent.
  std::optional<fs::path> host_path() const {
    auto s = opt_str();
    if (!s) return std::nullopt;
    fs::path p(*s);
    return normal(p.is_absolute() ? p : base_dir / p);
  }

  /// An absolute path inside the image ("/root"), normalized.
  std::string image_path() const {
    std::string s = str();
    if (s.empty() || s[0] != '/') fail("must be an absolute path in the image, not '" + s + "'");
    return normal(fs::path(s)).generic_string();
  }

  /// Relative host paths that must stay below their root: no "..", not absolute, normalized.
  /// `allow_root`: "." (the directory itself) is accepted, kept as ".".
  std::vector<std::string> relative_paths(const std::string& below, bool allow_root = false) const {
    std::vector<std::string> out;
    for (const std::string& entry : str_or_list()) {
      if (entry.empty()) fail("has an empty entry");
      if (entry[0] == '/') fail("entry '" + entry + "' must be a relative path, not absolute");
      std::string joined;
      std::istringstream parts(entry);
      for (std::string part; std::getline(parts, part, '/');) {
        if (part == "..") fail("entry '" + entry + "' must not contain '..'");
        if (part.empty() || part == ".") continue;
        joined += (joined.empty() ? "" : "/") + part;
      }
      if (joined.empty() && allow_root) joined = ".";
      if (joined.empty()) fail("entry '" + entry + "' must name a path below " + below);
      out.push_back(joined);
    }
    return out;
  }

  std::int64_t integer(std::int64_t min) const {
    if (!v.is_number_integer()) wrong_type("an integer");
    if (v.is_number_unsigned() && v.get<std::uint64_t>() > INT64_MAX) fail("is too large");
    auto n = v.get<std::int64_t>();
    if (n < min) fail("must be at least " + std::to_string(min) + ", not " + std::to_string(n));
    return n;
  }
};

// ---------------------------------------------------------------------------------------------
// Value parsers that need more than a type check

/// Splits on '/', keeping empty parts ("a//b" → "a", "", "b").
std::vector<std::string_view> split_slash(std::string_view s) {
  std::vector<std::string_view> parts;
  for (std::size_t start = 0;;) {
    std::size_t slash = s.find('/', start);
    parts.push_back(s.substr(start, slash - start));
    if (slash == std::string_view::npos) return parts;
    start = slash + 1;
  }
}

bool is_lower_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

/// Non-empty and every character passes `ok`.
template <typename Pred>
bool all_chars(std::string_view s, Pred ok) {
  return !s.empty() && std::all_of(s.begin(), s.end(), ok);
}

/// Docker distribution's repository path: '/'-separated components matching
/// [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*.
bool valid_repo_name(std::string_view name) {
  for (std::string_view part : split_slash(name)) {
    if (part.empty() || !is_lower_alnum(part.front()) || !is_lower_alnum(part.back())) return false;
    for (std::size_t i = 0; i < part.size();) {
      std::size_t j = i;
      while (j < part.size() && !is_lower_alnum(part[j])) ++j;
      std::string_view sep = part.substr(i, j - i);
      bool dashes = all_chars(sep, [](char c) { return c == '-'; });
      if (!sep.empty() && sep != "." && sep != "_" && sep != "__" && !dashes) return false;
      while (j < part.size() && is_lower_alnum(part[j])) ++j;
      i = j;
    }
  }
  return true;
}

/// flytekit's registry check, `^(localhost:\d{1,5}|([a-z\d\._-]+)(:\d{1,5})?)(/[\w\.-]+)*$`.
bool valid_registry(std::string_view registry) {
  std::vector<std::string_view> parts = split_slash(registry);
  std::string_view host = parts[0], port;
  if (auto colon = host.find(':'); colon != std::string_view::npos) {
    port = host.substr(colon + 1);
    host = host.substr(0, colon);
    if (port.size() > 5 || !all_chars(port, is_digit)) return false;
  }
  if (!all_chars(host,
                 [](char c) { return is_lower_alnum(c) || c == '.' || c == '_' || c == '-'; }))
    return false;
  return std::all_of(parts.begin() + 1, parts.end(), [](std::string_view p) {
    return all_chars(p, [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
    });
  });
}

/// os/arch[/variant], each part [a-z0-9_.-]+.
bool valid_platform(std::string_view platform) {
  std::vector<std::string_view> parts = split_slash(platform);
  return (parts.size() == 2 || parts.size() == 3) &&
         std::all_of(parts.begin(), parts.end(), [](std::string_view p) {
           return all_chars(
               p, [](char c) { return is_lower_alnum(c) || c == '_' || c == '.' || c == '-'; });
         });
}

}  // namespace

std::string normalize_platform(std::string_view text, std::string* error) {
  std::vector<std::string> items;
  std::size_t start = 0;
  for (;;) {
    std::size_t comma = text.find(',', start);
    std::string_view item = text.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    std::string p = lower(std::string(item));
    if (!valid_platform(p)) {
      if (error) *error = p.empty() && text.find(',') != std::string_view::npos
                   ? "lists an empty platform ('" + std::string(text) + "'): separate os/arch[/variant] items with one comma"
                   : "must be os/arch[/variant] like 'linux/amd64' (or several, comma-separated: "
                     "'linux/amd64,linux/arm64'), not '" + std::string(item) + "'";
      return {};
    }
    if (std::find(items.begin(), items.end(), p) != items.end()) {
      if (error) *error = "lists " + p + " twice ('" + std::string(text) + "')";
      return {};
    }
    items.push_back(std::move(p));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  if (items.size() > kMaxPlatforms) {
    if (error) *error = "lists " + std::to_string(items.size()) + " platforms; at most " + std::to_string(kMaxPlatforms);
    return {};
  }
  std::string out;
  for (const auto& p : items) out += (out.empty() ? "" : ",") + p;
  return out;
}

std::vector<std::string> ImageSpec::platforms() const {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    std::size_t comma = platform.find(',', start);
    out.push_back(platform.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

ImageSpec with_platform(const ImageSpec& s, const std::string& platform) {
  ImageSpec out = s;
  out.platform = platform;
  if (out.base_image.kind == BaseImage::Kind::Spec && out.base_image.spec)
    out.base_image.spec = std::make_shared<ImageSpec>(with_platform(*out.base_image.spec, platform));
  return out;
}

namespace {

ImageSpec parse_fields(const json& obj, const fs::path& base_dir, const std::string& origin,
                       const std::string& prefix, int depth);

/// "scratch", "oci:DIR[:TAG]", a nested spec object, or (anything else) a registry reference.
BaseImage parse_base(const Field& f) {
  BaseImage base;
  if (f.v.is_object()) {
    base.kind = BaseImage::Kind::Spec;
    if (f.depth + 1 > kMaxBaseImageDepth)
      f.fail("nests base_image specs more than " + std::to_string(kMaxBaseImageDepth) +
             " deep; build the inner ones separately and name them by reference");
    base.spec = std::make_shared<const ImageSpec>(
        parse_fields(f.v, f.base_dir, f.origin, f.name + ".", f.depth + 1));
    return base;
  }
  if (!f.v.is_string()) f.wrong_type("a string or an object (a nested spec)");
  base.ref = f.str();
  if (base.ref.empty() || base.ref == "scratch") {
    base.ref = "scratch";
    return base;
  }
  if (base.ref.rfind("oci:", 0) != 0) {
    base.kind = BaseImage::Kind::Registry;
    if (auto redacted = redact_userinfo(base.ref)) f.fail(credentials_refused(*redacted));
    return base;
  }
  base.kind = BaseImage::Kind::OciLayout;
  std::string dir = base.ref.substr(4);
  // The tag follows the last ':' unless that ':' is part of the directory ("oci:a:b/c").
  if (auto colon = dir.rfind(':');
      colon != std::string::npos && dir.find('/', colon) == std::string::npos) {
    base.layout_tag = dir.substr(colon + 1);
    dir.resize(colon);
    if (base.layout_tag.empty()) f.fail("has an empty tag after ':' in '" + base.ref + "'");
  }
  if (dir.empty()) f.fail("has no directory in '" + base.ref + "' (expected oci:DIR[:TAG])");
  fs::path p(dir);
  base.layout_dir = normal(p.is_absolute() ? p : f.base_dir / p);
  return base;
}

CopyMode parse_copy_mode(const Field& f) {
  std::string s = lower(f.str());
  if (s.rfind("copyfiledetection.", 0) == 0) s = s.substr(std::strlen("copyfiledetection."));
  if (s == "loaded_modules") return CopyMode::LoadedModules;
  if (s == "all") return CopyMode::All;
  if (s == "no_copy") return CopyMode::NoCopy;
  f.fail("must be one of \"loaded_modules\", \"all\", \"no_copy\", not \"" + f.str() + "\"");
}

Compression parse_compression(const Field& f) {
  std::string s = lower(f.str());
  if (s == "gzip") return Compression::Gzip;
  if (s == "zstd") return Compression::Zstd;
  if (s == "none") return Compression::None;
  f.fail("must be one of \"gzip\", \"zstd\", \"none\", not \"" + f.str() + "\"");
}

/// [[src, target], ...]
std::vector<std::pair<std::string, std::string>> parse_secret_mounts(const Field& f) {
  const std::string expected = "a list of [source, target] pairs of strings";
  if (!f.v.is_array()) f.wrong_type(expected);
  std::vector<std::pair<std::string, std::string>> out;
  for (const json& item : f.v) {
    if (!item.is_array() || item.size() != 2 || !item[0].is_string() || !item[1].is_string())
      f.fail("must be " + expected + " (found " + item.dump() + ")");
    out.emplace_back(item[0].get<std::string>(), item[1].get<std::string>());
  }
  return out;
}

/// What is wrong with a config User `user` ("" when nothing): NAME|ID[:NAME|ID]. An ID is decimal
/// digits up to kMaxUserId (2^32-2; 2^32-1 is (uid_t)-1, "no id"); a NAME is not empty, has no
/// whitespace, control character or ':', and does not start with '-' or '+' (so "-1" is not taken
/// for a name). `ids` gets each part's id (nullopt for a name); a user alone gives the group its id.
std::string user_problem(const std::string& user, std::optional<std::uint32_t> ids[2]) {
  std::size_t colon = user.find(':');
  if (colon != std::string::npos && user.find(':', colon + 1) != std::string::npos) return "more than one ':'";
  const std::string parts[2] = {user.substr(0, colon), colon == std::string::npos ? "" : user.substr(colon + 1)};
  for (int i = 0; i < (colon == std::string::npos ? 1 : 2); ++i) {
    const std::string& p = parts[i];
    const char* what = i == 0 ? "user" : "group";
    ids[i].reset();
    if (p.empty()) return std::string("the ") + what + " is empty";
    if (all_chars(p, is_digit)) {  // any number of digits ("00001000" is 1000), so no overflow
      std::uint64_t n = 0;
      for (char c : p) {
        n = n * 10 + static_cast<std::uint64_t>(c - '0');
        if (n > kMaxUserId) return std::string("the ") + what + " id is out of range";
      }
      ids[i] = static_cast<std::uint32_t>(n);
      continue;
    }
    if (p[0] == '-' || p[0] == '+') return std::string("the ") + what + " starts with '" + p[0] + "'";
    for (char c : p)
      if (std::isspace(static_cast<unsigned char>(c)) || std::iscntrl(static_cast<unsigned char>(c)))
        return std::string("the ") + what + " has a space or a control character";
  }
  if (colon == std::string::npos) ids[1] = ids[0];
  return "";
}

std::string user_message(const std::string& user, const std::string& why) {
  return "must be user[:group], each a name or a numeric id from 0 to " + std::to_string(kMaxUserId) + ", not '" +
         escaped(shorten(user)) + "': " + why;
}

/// The config's User: "" (absent), NAME|ID[:NAME|ID] (user_problem).
std::optional<std::string> parse_user(const Field& f) {
  std::optional<std::string> user = f.opt_str();
  if (!user) return user;
  std::optional<std::uint32_t> ids[2];
  if (std::string why = user_problem(*user, ids); !why.empty()) f.fail(user_message(*user, why));
  return user;
}

// ---------------------------------------------------------------------------------------------
// The field table: every accepted key and how its value lands in the ImageSpec. A null value
// never reaches a handler (null = absent).

using Handler = void (*)(const Field&, ImageSpec&);

const std::map<std::string, Handler>& handlers() {
  static const std::map<std::string, Handler> table = {
      // flytekit fields
      {"name",
       [](const Field& f, ImageSpec& s) {
         s.name = lower(f.str());
         if (!valid_repo_name(s.name))
           f.fail(
               "must be a valid repository name (lowercase letters and digits, joined by '.', "
               "'_' or '-', components separated by '/'), not '" +
               f.str() + "'");
       }},
      {"python_version", [](const Field& f, ImageSpec& s) { s.python_version = f.opt_str(); }},
      {"builder", [](const Field& f, ImageSpec& s) { s.builder = f.opt_str(); }},
      {"source_root", [](const Field& f, ImageSpec& s) { s.source_root = f.host_path(); }},
      {"env", [](const Field& f, ImageSpec& s) { s.env = f.str_map(true); }},
      {"registry",
       [](const Field& f, ImageSpec& s) {
         s.registry = f.opt_str();
         if (!s.registry) return;
         if (auto redacted = redact_userinfo(*s.registry)) f.fail(credentials_refused(*redacted));
         s.registry = lower(*s.registry);
         if (!valid_registry(*s.registry))
           f.fail("must be a registry like 'localhost:30000' or 'ghcr.io/org', not '" + f.str() +
                  "'");
       }},
      {"packages", [](const Field& f, ImageSpec& s) { s.packages = f.str_list(); }},
      {"conda_packages", [](const Field& f, ImageSpec& s) { s.conda_packages = f.str_list(); }},
      {"conda_channels", [](const Field& f, ImageSpec& s) { s.conda_channels = f.str_list(); }},
      {"requirements", [](const Field& f, ImageSpec& s) { s.requirements = f.opt_str(); }},
      {"apt_packages", [](const Field& f, ImageSpec& s) { s.apt_packages = f.str_list(); }},
      {"cuda", [](const Field& f, ImageSpec& s) { s.cuda = f.opt_str(); }},
      {"cudnn", [](const Field& f, ImageSpec& s) { s.cudnn = f.opt_str(); }},
      {"base_image", [](const Field& f, ImageSpec& s) { s.base_image = parse_base(f); }},
      {"platform",
       [](const Field& f, ImageSpec& s) {
         std::string error;
         s.platform = normalize_platform(f.str(), &error);
         if (s.platform.empty()) f.fail(error);
       }},
      {"pip_index", [](const Field& f, ImageSpec& s) { s.pip_index = f.opt_str(); }},
      // A list, as in flytekit ("pip_extra_index_url must be a list of strings or None").
      {"pip_extra_index_url",
       [](const Field& f, ImageSpec& s) { s.pip_extra_index_url = f.str_list(); }},
      {"pip_secret_mounts",
       [](const Field& f, ImageSpec& s) { s.pip_secret_mounts = parse_secret_mounts(f); }},
      {"pip_extra_args",
       [](const Field& f, ImageSpec& s) {
         if (!f.v.is_string()) {
           if (!f.v.is_array()) f.wrong_type("a string or a list of strings");
           s.pip_extra_args = f.str_list();
           return;
         }
         std::istringstream words(f.str());  // flytekit passes a string to the shell as-is
         s.pip_extra_args.assign(std::istream_iterator<std::string>(words), {});
       }},
      {"registry_config", [](const Field& f, ImageSpec& s) { s.registry_config = f.host_path(); }},
      {"entrypoint",
       [](const Field& f, ImageSpec& s) {
         // A list, as in flytekit ("entrypoint must be a list of strings or None"); [] clears the
         // base's entrypoint, null keeps it.
         s.entrypoint = f.str_list();
       }},
      {"commands", [](const Field& f, ImageSpec& s) { s.commands = f.str_list(); }},
      {"tag_format", [](const Field& f, ImageSpec& s) { s.tag_format = f.opt_str(); }},
      {"source_copy_mode",
       [](const Field& f, ImageSpec& s) { s.source_copy_mode = parse_copy_mode(f); }},
      {"copy",
       [](const Field& f, ImageSpec& s) { s.copy = f.relative_paths("the spec's directory", /*allow_root=*/true); }},
      {"python_exec", [](const Field& f, ImageSpec& s) { s.python_exec = f.opt_str(); }},
      {"builder_options",
       [](const Field& f, ImageSpec& s) {
         // flytekit: "builder_options must be a dictionary or None".
         if (!f.v.is_object()) f.wrong_type("an object");
         s.builder_options = f.v;
       }},
      // flytekit's builder images; its own field (not builder_options), of any type, unchecked.
      {"builder_config", [](const Field& f, ImageSpec& s) { s.builder_config = f.v; }},
      {"runtime_packages", [](const Field& f, ImageSpec& s) { s.runtime_packages = f.str_list(); }},
      // kiln's own fields
      {"workdir", [](const Field& f, ImageSpec& s) { s.workdir = f.image_path(); }},
      {"user", [](const Field& f, ImageSpec& s) { s.user = parse_user(f); }},
      {"labels", [](const Field& f, ImageSpec& s) { s.labels = f.str_map(false); }},
      {"annotations", [](const Field& f, ImageSpec& s) { s.annotations = f.str_map(false); }},
      {"source_dest", [](const Field& f, ImageSpec& s) { s.source_dest = f.image_path(); }},
      {"loaded_modules",
       [](const Field& f, ImageSpec& s) { s.loaded_modules = f.relative_paths("source_root"); }},
      {"compression", [](const Field& f, ImageSpec& s) { s.compression = parse_compression(f); }},
      {"compression_level",
       [](const Field& f, ImageSpec& s) {
         // The codec's own range (gzip 1-9) is checked once `compression` is known (parse_fields).
         std::int64_t v = f.integer(1);
         if (v > 19) f.fail("must be 1-9 for gzip, 1-19 for zstd, not " + std::to_string(v));
         s.compression_level = static_cast<int>(v);
       }},
      {"large_file_threshold",
       [](const Field& f, ImageSpec& s) {
         s.large_file_threshold = static_cast<std::uint64_t>(f.integer(1));
       }},
      {"source_date_epoch",
       [](const Field& f, ImageSpec& s) {
         std::int64_t v = f.integer(0);
         if (v > kMaxSourceDateEpoch)
           f.fail("must be at most " + std::to_string(kMaxSourceDateEpoch) +
                  " (9999-12-31T23:59:59Z), not " + std::to_string(v));
         s.source_date_epoch = v;
       }},
      {"_F_IMG_ID", [](const Field& f, ImageSpec& s) { s.f_img_id = f.opt_str(); }},
      // Applied before every other field (parse_fields); listed here so it is a known field.
      {"context_dir", [](const Field&, ImageSpec&) {}},
      {"modelcar",
       [](const Field& f, ImageSpec& s) {
         if (!f.v.is_boolean()) f.wrong_type("a boolean");
         s.modelcar = f.v.get<bool>();
       }},
  };
  return table;
}

[[noreturn]] void unknown_field(const std::string& origin, const std::string& name,
                                const std::string& key) {
  std::string best;
  std::size_t best_distance = std::max<std::size_t>(2, key.size() / 3) + 1;
  for (const std::string& known : known_fields()) {
    std::size_t d = edit_distance(lower(key), known);
    if (d < best_distance) best = known, best_distance = d;  // ties: the first in sorted order
  }
  std::string msg = origin + ": unknown field '" + escaped(name) + "'";
  if (!best.empty()) msg += "; did you mean '" + best + "'?";
  throw SpecError(name, msg);
}

/// The fields that become RUN steps: values that would reach a shell or a tool's command line are
/// checked here, so a typo is a spec error rather than a failed step (or an injected option).
void check_step_fields(const ImageSpec& spec, const std::string& origin, const std::string& prefix) {
  auto fail = [&](const std::string& field, const std::string& what) {
    throw SpecError(prefix + field, origin + ": field '" + prefix + field + "' " + what);
  };
  for (const std::string& p : spec.apt_packages)
    if (!valid_apt_package(p))
      fail("apt_packages", "has '" + shorten(p) +
                               "', which is not a Debian package name (name[:arch][=version|/release], at most " +
                               std::to_string(kMaxAptPackage) + " characters)");
  for (const std::string& p : spec.packages) {
    if (p.empty() || p.find_first_not_of(" \t") == std::string::npos) fail("packages", "has an empty item");
    if (p[p.find_first_not_of(" \t")] == '-')
      fail("packages", "has '" + p + "', which looks like a pip option: put options in pip_extra_args");
    if (p.find('\n') != std::string::npos) fail("packages", "has an item with a line break");
  }
  if (spec.python_version && !valid_python_version(*spec.python_version))
    fail("python_version", "must be a version like \"3.11\", not '" + shorten(*spec.python_version) + "'");
  if (spec.python_exec && spec.python_exec->find_first_of(" \t\n'\"$`\\") != std::string::npos)
    fail("python_exec", "must be a program name or path without spaces or quotes");
  if (spec.requirements) {
    std::string name = fs::path(*spec.requirements).filename().string();
    if (name == "uv.lock" || name == "poetry.lock" || name == "pyproject.toml")
      fail("requirements", "is '" + name + "': kiln installs pip requirements files (pip install -r); " + name +
                               " is not supported yet — export it (uv export / poetry export) to requirements.txt");
  }
  for (const auto& [src, target] : spec.pip_secret_mounts) {
    if (src.empty()) fail("pip_secret_mounts", "has an empty source");
    if (target.empty() || target[0] != '/' || target == "/")
      fail("pip_secret_mounts", "target '" + target + "' must be an absolute path inside the image (not /)");
  }
  for (const std::string& c : spec.commands)
    if (c.find_first_not_of(" \t\n") == std::string::npos) fail("commands", "has an empty command");
}

/// Phase 1: known keys and value types (recursively). `prefix` is "" or "base_image.".
ImageSpec parse_fields(const json& obj, const fs::path& base_dir, const std::string& origin,
                       const std::string& prefix, int depth) {
  ImageSpec spec;
  spec.base_dir = base_dir;
  // context_dir moves where every other relative path resolves, so it comes first.
  if (auto it = obj.find("context_dir"); it != obj.end() && !it->is_null()) {
    Field f{origin, base_dir, prefix + "context_dir", *it, depth};
    if (auto dir = f.host_path()) spec.base_dir = *dir;
  }
  spec.origin = origin;
  spec.base_image.ref = "scratch";
  for (const auto& [key, value] : obj.items())
    if (!handlers().count(key)) unknown_field(origin, prefix + key, key);
  for (const auto& [key, value] : obj.items())
    if (!value.is_null())
      handlers().at(key)(Field{origin, spec.base_dir, prefix + key, value, depth}, spec);

  // Cross-field rules.
  if (spec.modelcar) {
    // A modelcar implies where and how the model lands; a conflicting explicit value is an error.
    auto given = [&](const char* key) { return obj.contains(key) && !obj[key].is_null(); };
    auto fail = [&](const std::string& field, const std::string& what) {
      throw SpecError(prefix + field, origin + ": field '" + prefix + field + "' " + what);
    };
    if (!spec.source_root) fail("modelcar", "needs source_root (the model directory)");
    if (given("source_copy_mode") && spec.source_copy_mode != CopyMode::All)
      fail("source_copy_mode", "must be \"all\" or absent with modelcar (the whole model directory is copied)");
    if (given("source_dest") && spec.source_dest != kModelcarDest)
      fail("source_dest", std::string("must be \"") + kModelcarDest + "\" or absent with modelcar");
    if (spec.entrypoint && !spec.entrypoint->empty())
      fail("entrypoint", "must be empty with modelcar: KServe sets the modelcar container's args");
    spec.source_copy_mode = CopyMode::All;
    spec.source_dest = kModelcarDest;
  }
  // flytekit's ImageSpec.tag (and its default builder): "Field source_root for image spec NAME
  // must be set when copy is set", for any mode but no_copy.
  if (obj.contains("source_copy_mode") && !obj["source_copy_mode"].is_null() && !spec.source_root &&
      spec.source_copy_mode != CopyMode::NoCopy)
    throw SpecError(prefix + "source_copy_mode",
                    origin + ": field '" + prefix + "source_copy_mode' is \"" +
                        to_string(spec.source_copy_mode) +
                        "\" but source_root is not set (flytekit: source_root must be set when copy "
                        "is set); set source_root, or use \"no_copy\"");
  // Docker's reference grammar: a repository name ([registry/]name, the part before ':tag') has at
  // most 255 characters; a longer one cannot be pushed, pulled or even parsed by docker.
  if (std::size_t n = (spec.registry ? spec.registry->size() + 1 : 0) + spec.name.size(); n > kMaxRepositoryName)
    throw SpecError(prefix + "name",
                    origin + ": field '" + prefix + "name' makes a repository name" +
                        (spec.registry ? " (registry/name)" : "") + " of " + std::to_string(n) +
                        " characters: an image reference allows at most " +
                        std::to_string(kMaxRepositoryName));
  // The level's range is the codec's: refused here, so `kiln tag` and `kiln validate` refuse it
  // too, not late in the build.
  if (spec.compression_level && spec.compression == Compression::Gzip && *spec.compression_level > 9)
    throw SpecError(prefix + "compression_level",
                    origin + ": field '" + prefix + "compression_level' must be 1-9 for gzip" +
                        (obj.contains("compression") && !obj["compression"].is_null()
                             ? ""
                             : " (the default compression)") +
                        ", not " + std::to_string(*spec.compression_level));
  check_step_fields(spec, origin, prefix);
  if (!spec.loaded_modules.empty() &&
      (!spec.source_root || spec.source_copy_mode != CopyMode::LoadedModules))
    throw SpecError(prefix + "loaded_modules",
                    origin + ": field '" + prefix +
                        "loaded_modules' needs source_root with source_copy_mode "
                        "\"loaded_modules\"");
  // flytekit's image always ends with WORKDIR /root; kiln sets it whenever it bakes files there.
  if (!spec.workdir && (spec.source_root || !spec.copy.empty())) spec.workdir = spec.source_dest;
  return spec;
}

// ---------------------------------------------------------------------------------------------
// Phase 2: features kiln cannot build yet. Supporting one = deleting its line.

constexpr const char* kNeedsConda =
    "it needs conda (flytekit installs it with micromamba), which kiln does not install; use apt_packages "
    "or packages, or a base image that has it";

struct Unsupported {
  const char* field;
  const char* reason;
  bool (*present)(const ImageSpec&);
};

const Unsupported kUnsupported[] = {
    {"conda_packages", kNeedsConda, [](const ImageSpec& s) { return !s.conda_packages.empty(); }},
    {"conda_channels", kNeedsConda, [](const ImageSpec& s) { return !s.conda_channels.empty(); }},
    {"cuda", "kiln does not install CUDA itself: start from a CUDA base image (e.g. nvidia/cuda)",
     [](const ImageSpec& s) { return s.cuda.has_value(); }},
    {"cudnn", "kiln does not install cuDNN itself: start from a CUDA base image that has it",
     [](const ImageSpec& s) { return s.cudnn.has_value(); }},
    {"runtime_packages", "kiln installs packages at build time: list them in 'packages'",
     [](const ImageSpec& s) { return !s.runtime_packages.empty(); }},
};

void check_supported(const ImageSpec& spec, const std::string& prefix) {
  for (const Unsupported& u : kUnsupported)
    if (u.present(spec))
      throw SpecError(prefix + u.field, spec.origin + ": field '" + prefix + u.field +
                                            "' is not supported yet: " + u.reason);
  const BaseImage& base = spec.base_image;
  if (base.kind == BaseImage::Kind::Spec) check_supported(*base.spec, prefix + "base_image.");
}

/// "origin:LINE:COL: " for the byte at offset `at` (0-based) of `text`.
std::string where(std::string_view text, const std::string& origin, std::size_t at) {
  at = std::min(at, text.size());
  std::string_view before = text.substr(0, at);
  std::size_t line = 1 + std::count(before.begin(), before.end(), '\n');
  std::size_t last_newline = before.rfind('\n');
  std::size_t column = at - (last_newline == std::string_view::npos ? 0 : last_newline + 1) + 1;
  return origin + ":" + std::to_string(line) + ":" + std::to_string(column) + ": ";
}

/// "origin:LINE:COL: JSON syntax error ..." from nlohmann's byte position (1-based, the last
/// character read) and its exception text.
[[noreturn]] void syntax_error(std::string_view text, const std::string& origin, std::size_t byte,
                               std::string detail) {
  // nlohmann: "[json.exception.parse_error.101] parse error at line 1, column 2: DETAIL".
  if (auto p = detail.find("parse error"); p != std::string::npos) {
    if (auto colon = detail.find(": ", p); colon != std::string::npos)
      detail = detail.substr(colon + 2);
  }
  std::string msg = where(text, origin, byte == 0 ? 0 : byte - 1);
  // "syntax error while parsing value - invalid literal" → "JSON syntax error while parsing
  // value: invalid literal".
  if (auto dash = detail.find(" - ");
      detail.rfind("syntax error", 0) == 0 && dash != std::string::npos)
    msg += "JSON " + detail.substr(0, dash) + ": " + detail.substr(dash + 3);
  else
    msg += "JSON syntax error: " + detail;
  throw SpecError("", msg);
}

/// Refuses JSON nested deeper than kMaxJsonDepth, before anything recursive sees it.
void check_depth(std::string_view text, const std::string& origin) {
  int depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > kMaxJsonDepth)
        throw SpecError("", where(text, origin, i) + "JSON nested more than " + std::to_string(kMaxJsonDepth) +
                                " levels deep");
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
}

/// nlohmann's DOM builder, keeping where a syntax error or an out-of-range number was found
/// instead of throwing (an out-of-range exception carries no position).
class PositionedParser : public nlohmann::detail::json_sax_dom_parser<json> {
 public:
  explicit PositionedParser(json& doc) : json_sax_dom_parser(doc, false) {}

  // Duplicate keys: nlohmann keeps the last silently; a spec refuses them. Each open object or
  // array has a frame: a spec object's (top level or a base_image spec) names its keys as fields
  // ("base_image.name"); any other value belongs to the field it is under ("env").
  bool start_object(std::size_t len) {
    open(true);
    return json_sax_dom_parser::start_object(len);
  }
  bool start_array(std::size_t len) {
    open(false);
    return json_sax_dom_parser::start_array(len);
  }
  bool end_object() {
    frames.pop_back();
    return json_sax_dom_parser::end_object();
  }
  bool end_array() {
    frames.pop_back();
    return json_sax_dom_parser::end_array();
  }
  bool key(std::string& k) {
    Frame& f = frames.back();
    if (!f.keys.insert(k).second) {
      duplicate = true;
      duplicate_field = f.spec ? f.field + escaped(k) : f.field;
      duplicate_key = escaped(k);
      duplicate_in_spec = f.spec;
      return false;
    }
    last_key = k;
    return json_sax_dom_parser::key(k);
  }
  template <class Exception>
  bool parse_error(std::size_t position, const std::string& token, const Exception& ex) {
    failed = true;
    this->position = position;
    this->token = token;
    message = ex.what();
    out_of_range = std::is_same_v<Exception, json::out_of_range>;
    return false;
  }
  bool failed = false, out_of_range = false;
  std::size_t position = 0;
  std::string token, message;
  bool duplicate = false, duplicate_in_spec = false;
  std::string duplicate_field, duplicate_key;

 private:
  struct Frame {
    bool spec;          // a spec object: its keys are fields
    std::string field;  // spec: the prefix of its fields ("", "base_image."); else: the field
    std::set<std::string> keys;
  };
  void open(bool object) {
    if (frames.empty()) {
      frames.push_back({object, "", {}});
      return;
    }
    const Frame& parent = frames.back();
    if (!parent.spec)
      frames.push_back({false, parent.field, {}});
    else if (object && last_key == "base_image")
      frames.push_back({true, parent.field + "base_image.", {}});
    else
      frames.push_back({false, parent.field + escaped(last_key), {}});
  }
  std::vector<Frame> frames;
  std::string last_key;
};

json parse_json(std::string_view text, const std::string& origin) {
  check_depth(text, origin);
  json doc;
  PositionedParser sax(doc);
  json::sax_parse(text.begin(), text.end(), &sax);
  if (sax.duplicate)
    throw SpecError(sax.duplicate_field,
                    origin + ": field '" + sax.duplicate_field + "' " +
                        (sax.duplicate_in_spec ? "is given twice"
                                               : "has the key '" + sax.duplicate_key + "' twice"));
  if (!sax.failed) return doc;
  if (sax.out_of_range) {
    // The position is just past the number: point at its first character.
    std::size_t start = sax.position >= sax.token.size() ? sax.position - sax.token.size() : 0;
    std::string shown = sax.token.size() > 40 ? sax.token.substr(0, 40) + "…" : sax.token;
    throw SpecError("", where(text, origin, start) + "JSON number " + shown +
                            " is out of range (it does not fit a 64-bit float)");
  }
  syntax_error(text, origin, sax.position, sax.message);
}

/// Refuses a NUL character in any string of the spec, keys included, at any depth: a path would be
/// cut at it by the OS (".\0x" is "."), a value cut by every C API it reaches. `obj` is a spec
/// object; `prefix` is "" or "base_image." (a nested spec's fields are named with it).
void check_no_nul(const json& obj, const std::string& origin, const std::string& prefix) {
  auto has_nul = [](const std::string& s) { return s.find('\0') != std::string::npos; };
  auto fail = [&](const std::string& field, const std::string& s) {
    throw SpecError(field, origin + ": field '" + field + "' has a NUL character (\\u0000) in '" +
                               escaped(shorten(s)) + "'");
  };
  // Any JSON value below a field: every string and every key.
  auto scan = [&](const json& v, const std::string& field, auto& self) -> void {
    if (v.is_string()) {
      if (has_nul(v.get_ref<const std::string&>())) fail(field, v.get_ref<const std::string&>());
    } else if (v.is_object()) {
      for (const auto& [key, item] : v.items()) {
        if (has_nul(key)) fail(field, key);
        self(item, field, self);
      }
    } else if (v.is_array()) {
      for (const json& item : v) self(item, field, self);
    }
  };
  for (const auto& [key, value] : obj.items()) {
    const std::string field = prefix + escaped(key);
    if (has_nul(key)) fail(field, key);
    if (key == "base_image" && value.is_object())
      check_no_nul(value, origin, field + ".");
    else
      scan(value, field, scan);
  }
}

}  // namespace

// -----------------------------------------------------------------------------------------------

const std::vector<std::string>& known_fields() {
  static const std::vector<std::string> fields = [] {
    std::vector<std::string> out;
    for (const auto& entry : handlers()) out.push_back(entry.first);
    return out;  // sorted: the table is a std::map
  }();
  return fields;
}

ImageSpec parse_spec(std::string_view text, const std::filesystem::path& base_dir,
                     const std::string& origin) {
  json doc = parse_json(text, origin);
  if (!doc.is_object())
    throw SpecError("", origin + ": the spec must be a JSON object, not " + describe(doc));
  check_no_nul(doc, origin, "");
  fs::path base = normal(base_dir.empty() ? fs::current_path() : fs::absolute(base_dir));
  ImageSpec spec = parse_fields(doc, base, origin, "", 0);
  check_supported(spec, "");
  return spec;
}

ImageSpec load_spec(const std::string& path) {
  if (path == "-") {
    std::string text(std::istreambuf_iterator<char>(std::cin), {});
    return parse_spec(text, fs::current_path(), "<stdin>");
  }
  std::error_code ec;
  if (fs::is_directory(path, ec))
    throw SpecError("", "cannot read spec file '" + path + "': it is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw SpecError("", "cannot read spec file '" + path + "': " + std::strerror(errno));
  std::string text(std::istreambuf_iterator<char>(in), {});
  if (in.bad()) throw SpecError("", "cannot read spec file '" + path + "': read error");
  return parse_spec(text, fs::absolute(path).parent_path(), path);
}

bool valid_apt_package(std::string_view s) {
  // name: [a-z0-9][a-z0-9+.-]*, then :arch ([a-z0-9-]+), then =version ([A-Za-z0-9.+~:-]+) or
  // /release ([a-z0-9.-]+). Hand-written: a regex engine recurses per character.
  if (s.empty() || s.size() > kMaxAptPackage) return false;
  auto lower_digit = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  auto run = [&](std::size_t& i, auto ok) {
    std::size_t start = i;
    while (i < s.size() && ok(s[i])) ++i;
    return i > start;
  };
  std::size_t i = 0;
  if (!lower_digit(s[0])) return false;
  run(i, [&](char c) { return lower_digit(c) || c == '+' || c == '.' || c == '-'; });
  if (i < s.size() && s[i] == ':') {
    ++i;
    if (!run(i, [&](char c) { return lower_digit(c) || c == '-'; })) return false;
  }
  if (i < s.size() && s[i] == '=') {
    ++i;
    if (!run(i, [&](char c) {
          return lower_digit(c) || (c >= 'A' && c <= 'Z') || c == '.' || c == '+' || c == '~' || c == ':' ||
                 c == '-';
        }))
      return false;
  } else if (i < s.size() && s[i] == '/') {
    ++i;
    if (!run(i, [&](char c) { return lower_digit(c) || c == '.' || c == '-'; })) return false;
  }
  return i == s.size();
}

std::optional<std::pair<std::uint32_t, std::uint32_t>> numeric_owner(const std::string& user) {
  std::optional<std::uint32_t> ids[2];
  if (std::string why = user_problem(user, ids); !why.empty())
    throw SpecError("user", "field 'user' " + user_message(user, why));
  if (!ids[0] || !ids[1]) return std::nullopt;
  return std::pair{*ids[0], *ids[1]};
}

std::string without_userinfo(const std::string& url) {
  // Every "scheme://" in the text, not only the first: one pip argument may hold more than one URL
  // ("--find-links=https://a/x,https://user:token@b/y").
  std::string out;
  std::size_t copied = 0, from = 0, scheme;
  while ((scheme = url.find("://", from)) != std::string::npos) {
    const std::size_t host = scheme + 3;
    const std::size_t end = url.find_first_of("/?#", host);
    const std::size_t at = url.rfind('@', end);  // the authority's last '@' (npos: to the end)
    if (at == std::string::npos || at < host) {
      from = host;
      continue;
    }
    out.append(url, copied, host - copied);
    copied = from = at + 1;
  }
  return out.append(url, copied, std::string::npos);
}

nlohmann::json ImageSpec::canonical() const {
  json c = json::object();  // std::map-backed: keys come out sorted
  auto put_str = [&](const char* key, const std::optional<std::string>& v) {
    if (v) c[key] = *v;
  };
  auto put_list = [&](const char* key, const std::vector<std::string>& v) {
    if (!v.empty()) c[key] = v;
  };
  auto put_map = [&](const char* key, const std::map<std::string, std::string>& v) {
    if (!v.empty()) c[key] = v;
  };

  put_str("python_version", python_version);
  // No host path enters the canonical spec: an image does not depend on where its files are, and
  // the files themselves are hashed (docs/tag.md). Only the copy mode says how they were chosen.
  if (modelcar) c["modelcar"] = true;
  if (source_root && !modelcar) c["source_copy_mode"] = to_string(source_copy_mode);
  put_map("env", env);
  {  // a direct URL ("pkg @ https://user:token@host/pkg.whl", "git+https://token@…") without its credentials
    std::vector<std::string> clean;
    for (const auto& p : packages) clean.push_back(without_userinfo(p));
    put_list("packages", clean);
  }
  put_list("conda_packages", conda_packages);
  put_list("conda_channels", conda_channels);
  // The requirements file's path is left out; its content enters as an input (docs/tag.md).
  if (requirements) c["requirements"] = true;
  put_list("apt_packages", apt_packages);
  put_str("cuda", cuda);
  put_str("cudnn", cudnn);
  switch (base_image.kind) {
    case BaseImage::Kind::Scratch: c["base_image"] = "scratch"; break;
    case BaseImage::Kind::Registry: c["base_image"] = base_image.ref; break;
    // The layout's path differs between checkouts; the builder adds the base manifest digest.
    case BaseImage::Kind::OciLayout:
      c["base_image"] = {{"oci_layout_tag", base_image.layout_tag}};
      break;
    case BaseImage::Kind::Spec: c["base_image"] = base_image.spec->canonical(); break;
  }
  c["platform"] = platform;
  if (pip_index) c["pip_index"] = without_userinfo(*pip_index);
  if (!pip_extra_index_url.empty()) {
    json urls = json::array();
    for (const auto& u : pip_extra_index_url) urls.push_back(without_userinfo(u));
    c["pip_extra_index_url"] = urls;
  }
  if (!pip_secret_mounts.empty()) {
    json mounts = json::array();
    for (const auto& [src, target] : pip_secret_mounts) mounts.push_back(target);  // the source is a host path
    c["pip_secret_mounts"] = mounts;
  }
  if (!pip_extra_args.empty()) {
    // An index URL given here ("--index-url https://user:token@host/simple", or "--x=URL") may carry
    // a token too: the canonical spec keeps it without, as for pip_index. Tokens without userinfo
    // are kept as they are. The pip step itself gets the real arguments (run/steps.cc).
    json args = json::array();
    for (const auto& a : pip_extra_args) args.push_back(without_userinfo(a));
    c["pip_extra_args"] = args;
  }
  if (entrypoint) c["entrypoint"] = *entrypoint;  // [] (clear the base's) is kept: it shapes the config
  put_list("commands", commands);
  {  // `copy` is a set of paths: its order shapes nothing
    std::vector<std::string> sorted = copy;
    std::sort(sorted.begin(), sorted.end());
    sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
    put_list("copy", sorted);
  }
  put_str("python_exec", python_exec);
  put_list("runtime_packages", runtime_packages);
  put_str("workdir", workdir);
  put_str("user", user);
  put_map("labels", labels);
  put_map("annotations", annotations);
  c["source_dest"] = source_dest;
  put_list("loaded_modules", loaded_modules);
  c["compression"] = to_string(compression);
  if (compression_level) c["compression_level"] = *compression_level;
  c["large_file_threshold"] = large_file_threshold;
  if (source_date_epoch) c["source_date_epoch"] = *source_date_epoch;
  return c;
}

}  // namespace kiln::spec
