// Modelcar lint: flatten the layers (libarchive, headers only), then check the rules on the result.
#include "modelcar/lint.h"

#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <deque>
#include <stdexcept>

namespace kiln::modelcar {

namespace {

using json = nlohmann::json;

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    std::size_t at = s.find(sep, start);
    out.push_back(s.substr(start, at == std::string::npos ? std::string::npos : at - start));
    if (at == std::string::npos) return out;
    start = at + 1;
  }
}

/// "./a//b/" → "a/b"; "" for the root.
std::string clean(const std::string& path) {
  std::vector<std::string> parts;
  for (std::string& p : split(path, '/')) {
    if (p.empty() || p == ".") continue;
    if (p == "..") {
      if (!parts.empty()) parts.pop_back();
      continue;
    }
    parts.push_back(std::move(p));
  }
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : "/") + p;
  return out;
}

/// Removes everything below `dir` (and `dir` itself when `self`).
void erase_tree(Filesystem& fs, const std::string& dir, bool self) {
  if (self) fs.erase(dir);
  std::string prefix = dir + "/";
  auto it = fs.lower_bound(prefix);
  while (it != fs.end() && it->first.compare(0, prefix.size(), prefix) == 0) it = fs.erase(it);
}

/// Parents a layer names only implicitly ("a/b" without "a") are directories.
void add_parents(Filesystem& fs, const std::string& path) {
  for (std::size_t pos = path.find('/'); pos != std::string::npos; pos = path.find('/', pos + 1)) {
    std::string parent = path.substr(0, pos);
    if (!fs.count(parent)) fs[parent] = Node{Node::Type::Dir, 0755, 0, 0, 0, ""};
  }
}

struct LayerEntries {
  std::vector<std::pair<std::string, Node>> entries;  // in tar order
  std::vector<std::string> whiteouts;                 // paths hidden from lower layers
  std::vector<std::string> opaque;                    // directories emptied of lower layers' entries
};

constexpr const char* kWhiteoutPrefix = ".wh.";
constexpr const char* kOpaqueMarker = ".wh..wh..opq";

LayerEntries read_layer(const std::filesystem::path& blob, const Filesystem& lower) {
  LayerEntries out;
  struct archive* a = archive_read_new();
  if (!a) throw std::runtime_error("libarchive: out of memory");
  struct Guard {
    struct archive* a;
    ~Guard() { archive_read_free(a); }
  } guard{a};
  archive_read_support_filter_all(a);
  archive_read_support_format_tar(a);
  auto fail = [&](const std::string& what) {
    const char* msg = archive_error_string(a);
    throw std::runtime_error("cannot read layer " + blob.string() + ": " + what + (msg ? std::string(": ") + msg : ""));
  };
  if (archive_read_open_filename(a, blob.c_str(), 1 << 16) != ARCHIVE_OK) fail("open");
  std::map<std::string, Node> seen;  // this layer's entries so far, for hardlinks
  for (;;) {
    struct archive_entry* e = nullptr;
    int rc = archive_read_next_header(a, &e);
    if (rc == ARCHIVE_EOF) break;
    if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) fail("header");
    const char* name = archive_entry_pathname_utf8(e);
    if (!name) name = archive_entry_pathname(e);
    std::string path = clean(name ? name : "");
    if (path.empty()) continue;
    std::size_t slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "" : path.substr(0, slash);
    std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    if (base == kOpaqueMarker) {
      out.opaque.push_back(dir);
    } else if (base.rfind(kWhiteoutPrefix, 0) == 0) {
      std::string hidden = base.substr(std::string(kWhiteoutPrefix).size());
      out.whiteouts.push_back(dir.empty() ? hidden : dir + "/" + hidden);
    } else {
      Node n;
      n.mode = archive_entry_perm(e) & 07777;
      n.uid = static_cast<std::uint32_t>(archive_entry_uid(e));
      n.gid = static_cast<std::uint32_t>(archive_entry_gid(e));
      n.size = static_cast<std::uint64_t>(archive_entry_size(e));
      const char* hard = archive_entry_hardlink_utf8(e);
      if (!hard) hard = archive_entry_hardlink(e);
      if (hard) {
        std::string target = clean(hard);
        auto it = seen.find(target);
        if (it != seen.end()) {
          n = it->second;
        } else if (auto lt = lower.find(target); lt != lower.end()) {
          n = lt->second;
        } else {
          n.type = Node::Type::File;
        }
      } else {
        switch (archive_entry_filetype(e)) {
          case AE_IFREG:
            n.type = Node::Type::File;
            break;
          case AE_IFDIR:
            n.type = Node::Type::Dir;
            break;
          case AE_IFLNK: {
            n.type = Node::Type::Symlink;
            const char* t = archive_entry_symlink_utf8(e);
            if (!t) t = archive_entry_symlink(e);
            n.link_target = t ? t : "";
            break;
          }
          default:
            n.type = Node::Type::Other;
            break;
        }
      }
      seen[path] = n;
      out.entries.emplace_back(path, std::move(n));
    }
    if (archive_read_data_skip(a) != ARCHIVE_OK) fail("data of " + path);
  }
  return out;
}

bool readable_by_anyone(const Node& n) {
  if (n.type == Node::Type::Dir) return (n.mode & 0005) == 0005;  // r and x for "other"
  if (n.type == Node::Type::File) return (n.mode & 0004) != 0;
  return true;
}

std::string join_list(const std::vector<std::string>& v, const std::string& sep) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

}  // namespace

const char* to_string(Finding::Severity s) { return s == Finding::Severity::Error ? "error" : "warning"; }

Filesystem flatten(const std::vector<std::filesystem::path>& blobs) {
  Filesystem fs;
  for (const auto& blob : blobs) {
    LayerEntries layer = read_layer(blob, fs);
    // Whiteouts hide what lower layers hold; this layer's own entries stay.
    for (const auto& d : layer.opaque) erase_tree(fs, d, false);
    for (const auto& w : layer.whiteouts) erase_tree(fs, w, true);
    for (auto& [path, node] : layer.entries) {
      auto it = fs.find(path);
      if (it != fs.end() && it->second.type == Node::Type::Dir && node.type != Node::Type::Dir)
        erase_tree(fs, path, false);  // a file over a directory hides the directory's content
      add_parents(fs, path);
      fs[path] = std::move(node);
    }
  }
  return fs;
}

std::optional<std::string> resolve(const Filesystem& fs, const std::string& path) {
  std::vector<std::string> done;
  std::deque<std::string> todo;
  for (auto& p : split(path, '/')) todo.push_back(std::move(p));
  int links = 0;
  auto joined = [&](const std::string& last) {
    std::string s;
    for (const auto& d : done) s += (s.empty() ? "" : "/") + d;
    return s.empty() || last.empty() ? s + last : s + "/" + last;
  };
  while (!todo.empty()) {
    std::string part = std::move(todo.front());
    todo.pop_front();
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      if (!done.empty()) done.pop_back();
      continue;
    }
    auto it = fs.find(joined(part));
    if (it == fs.end()) return std::nullopt;
    if (it->second.type == Node::Type::Symlink) {
      if (++links > 40) return std::nullopt;  // ELOOP
      const std::string& target = it->second.link_target;
      if (!target.empty() && target.front() == '/') done.clear();
      std::vector<std::string> parts = split(target, '/');
      todo.insert(todo.begin(), parts.begin(), parts.end());
      continue;
    }
    bool last = std::all_of(todo.begin(), todo.end(), [](const std::string& p) { return p.empty() || p == "."; });
    if (!last && it->second.type != Node::Type::Dir) return std::nullopt;  // ENOTDIR
    done.push_back(std::move(part));
  }
  return joined("");
}

std::optional<std::string> which(const Filesystem& fs, const std::string& tool, const std::string& path_env) {
  for (const std::string& dir : split(path_env, ':')) {
    if (dir.empty() || dir.front() != '/') continue;  // a relative PATH entry depends on the cwd
    std::string candidate = (dir == "/" ? "" : dir) + "/" + tool;
    auto r = resolve(fs, candidate);
    if (!r) continue;
    auto it = fs.find(*r);
    if (it != fs.end() && it->second.type == Node::Type::File && (it->second.mode & 0111)) return candidate;
  }
  return std::nullopt;
}

const std::vector<std::string>& required_tools() {
  static const std::vector<std::string> tools = {"sh", "ln", "sleep", "ls", "["};
  return tools;
}

std::vector<Finding> lint(const Filesystem& fs, const json& config, const LintOptions& opts) {
  std::vector<Finding> out;
  auto error = [&](std::string code, std::string msg) {
    out.push_back({std::move(code), Finding::Severity::Error, std::move(msg)});
  };
  const json cfg = config.is_object() && config.contains("config") && config["config"].is_object() ? config["config"]
                                                                                                   : json::object();

  // /models: there, a directory, not empty, readable by any uid.
  auto models = resolve(fs, "/models");
  if (!models) {
    error("models_missing", "/models does not exist: the model must be under /models");
  } else if (models->empty() || fs.at(*models).type != Node::Type::Dir) {
    error("models_missing", "/models is not a directory");
  } else {
    const std::string prefix = *models + "/";
    std::vector<std::string> unreadable;
    std::size_t entries = 0, unreadable_count = 0;
    if (!readable_by_anyone(fs.at(*models))) unreadable.push_back("/" + *models), ++unreadable_count;
    for (auto it = fs.lower_bound(prefix); it != fs.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
      ++entries;
      if (!readable_by_anyone(it->second)) {
        ++unreadable_count;
        if (unreadable.size() < 5) unreadable.push_back("/" + it->first);
      }
    }
    if (entries == 0) error("models_empty", "/models is empty: modelcar-init would fail the pod");
    if (unreadable_count)
      error("unreadable", std::to_string(unreadable_count) +
                              " path(s) under /models cannot be read by a non-root uid (files need o+r, "
                              "directories o+rx): " +
                              join_list(unreadable, ", ") + (unreadable_count > unreadable.size() ? ", …" : ""));
  }

  // The tools KServe's injected commands run.
  if (!opts.volume_only) {
    std::string path = kDefaultPath;
    for (const auto& e : cfg.value("Env", json::array()))
      if (e.is_string() && e.get<std::string>().rfind("PATH=", 0) == 0) path = e.get<std::string>().substr(5);
    std::vector<std::string> missing;
    for (const auto& tool : required_tools())
      if (!which(fs, tool, path)) missing.push_back(tool);
    for (const auto& tool : missing)
      error("tool_missing",
            "no executable '" + tool + "' on PATH (" + path + "): KServe's modelcar containers need it");
  }

  // KServe sets args: an entrypoint would receive them instead of running them.
  const json ep = cfg.value("Entrypoint", json());
  if (ep.is_array() ? !ep.empty() : (ep.is_string() && !ep.get<std::string>().empty()))
    error("entrypoint", "the image has an entrypoint " + ep.dump() +
                            ": KServe sets the modelcar's args and needs none (kiln modelcar removes it)");

  if (opts.tag == "latest")
    out.push_back({"latest_tag", Finding::Severity::Warning,
                   "the tag is 'latest': a pod pulling it may get another model; refer to the image by digest "
                   "(kiln k8s-patch does)"});
  return out;
}

std::vector<Finding> lint(const std::vector<std::filesystem::path>& layer_blobs, const json& config,
                          const LintOptions& opts) {
  for (const auto& b : layer_blobs)
    if (b.empty() || !std::filesystem::exists(b))
      throw std::runtime_error("layer blob " + b.string() + " is not on disk (fetch it first)");
  return lint(flatten(layer_blobs), config, opts);
}

bool has_errors(const std::vector<Finding>& findings) {
  return std::any_of(findings.begin(), findings.end(),
                     [](const Finding& f) { return f.severity == Finding::Severity::Error; });
}

json to_json(const std::vector<Finding>& findings) {
  json arr = json::array();
  for (const auto& f : findings)
    arr.push_back({{"code", f.code}, {"severity", to_string(f.severity)}, {"message", f.message}});
  return arr;
}

}  // namespace kiln::modelcar
