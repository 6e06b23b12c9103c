// The fast-register task plan (docs/plan.md).
#include "plan/plan.h"

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <stdexcept>

#include "layers/fileset.h"
#include "spec/userinfo.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace kiln::plan {

const char* to_string(CopyMode m) {
  switch (m) {
    case CopyMode::Auto: return "auto";
    case CopyMode::All: return "all";
    case CopyMode::None: return "none";
  }
  return "auto";
}

namespace {

[[noreturn]] void bad(const std::string& field, const std::string& msg) { throw spec::SpecError(field, msg); }

std::string clean_rel(const std::string& p, const std::string& field) {
  if (p.empty() || p.front() == '/') bad(field, field + ": '" + p + "' must be a relative path inside project_root");
  std::string c = fs::path(p).lexically_normal().generic_string();
  while (!c.empty() && c.back() == '/') c.pop_back();
  if (c == "." || c == ".." || c.rfind("../", 0) == 0) bad(field, field + ": '" + p + "' leaves project_root");
  return c;
}

std::vector<std::string> string_list(const json& j, const std::string& field) {
  if (j.is_null()) return {};
  if (j.is_string()) return {j.get<std::string>()};
  if (!j.is_array()) bad(field, "field '" + field + "' must be a list of strings");
  std::vector<std::string> out;
  for (const auto& x : j) {
    if (!x.is_string()) bad(field, "field '" + field + "' must be a list of strings");
    out.push_back(x.get<std::string>());
  }
  return out;
}

/// A string field, or `def` when absent (nlohmann's value() would throw a bare type_error).
std::string string_field(const json& obj, const std::string& key, const std::string& def, const std::string& field) {
  auto it = obj.find(key);
  if (it == obj.end()) return def;
  if (!it->is_string()) bad(field, "field '" + field + "' must be a string");
  return it->get<std::string>();
}

void check_keys(const json& obj, const std::set<std::string>& known, const std::string& where) {
  for (const auto& [k, _] : obj.items())
    if (!known.count(k)) {
      std::string list;
      for (const auto& x : known) list += (list.empty() ? "" : ", ") + x;
      bad(where + "." + k, "unknown field '" + k + "' in " + where + " (known: " + list + ")");
    }
}

}  // namespace

PlanInput parse_plan(std::string_view text, const fs::path& base_dir, const std::string& origin) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    // Line and column from the byte offset.
    std::size_t line = 1, col = 1;
    for (std::size_t i = 0; i + 1 < e.byte && i < text.size(); ++i) {
      if (text[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    bad("", origin + ":" + std::to_string(line) + ":" + std::to_string(col) + ": JSON syntax error in the plan");
  }
  if (!j.is_object()) bad("", origin + ": the plan must be a JSON object");
  check_keys(j, {"copy", "project_root", "dest_dir", "loaded_modules", "images", "tasks"}, "plan");
  PlanInput in;
  in.origin = origin;
  std::string copy = string_field(j, "copy", "auto", "copy");
  std::transform(copy.begin(), copy.end(), copy.begin(), [](unsigned char c) { return std::tolower(c); });
  if (copy == "auto") in.copy = CopyMode::Auto;
  else if (copy == "all") in.copy = CopyMode::All;
  else if (copy == "none") in.copy = CopyMode::None;
  else bad("copy", "field 'copy' must be auto, all or none (pyflyte's --copy), not '" + copy + "'");
  in.project_root = (base_dir / string_field(j, "project_root", ".", "project_root")).lexically_normal();
  if (in.project_root.generic_string().size() > 1 && in.project_root.generic_string().back() == '/')
    in.project_root = in.project_root.parent_path();
  if (j.contains("dest_dir") && !j["dest_dir"].is_null()) {
    std::string d = string_field(j, "dest_dir", "", "dest_dir");
    if (d.empty() || d.front() != '/')
      bad("dest_dir", "field 'dest_dir' must be an absolute path in the container (pyflyte's --destination-dir), not '" +
                          d + "'");
    d = fs::path(d).lexically_normal().generic_string();
    while (d.size() > 1 && d.back() == '/') d.pop_back();
    in.dest_dir = d;
  }
  for (const auto& m : string_list(j.value("loaded_modules", json()), "loaded_modules"))
    in.loaded_modules.push_back(clean_rel(m, "loaded_modules"));

  const json images = j.value("images", json::object());
  if (!images.is_object()) bad("images", "field 'images' must be an object mapping an id to an image");
  for (const auto& [id, v] : images.items()) {
    ImageInput im;
    im.id = id;
    std::string where = "images." + id;
    if (v.is_string()) {
      im.ref = v.get<std::string>();
    } else if (v.is_object()) {
      check_keys(v, {"spec", "inline", "ref"}, where);
      if (v.size() != 1) bad(where, where + " must have exactly one of: spec (a file), inline (a spec), ref (an image)");
      if (v.contains("ref")) {
        if (!v["ref"].is_string()) bad(where + ".ref", where + ".ref must be a string");
        im.ref = v["ref"].get<std::string>();
      } else if (v.contains("spec")) {
        if (!v["spec"].is_string()) bad(where + ".spec", where + ".spec must be a file path");
        fs::path p = base_dir / v["spec"].get<std::string>();
        std::ifstream f(p);
        if (!f) bad(where + ".spec", where + ": cannot read spec file " + p.string());
        std::stringstream ss;
        ss << f.rdbuf();
        im.spec = std::make_shared<spec::ImageSpec>(
            spec::parse_spec(ss.str(), fs::absolute(p).parent_path().lexically_normal(), p.string()));
      } else {
        im.spec = std::make_shared<spec::ImageSpec>(spec::parse_spec(v["inline"].dump(), base_dir, origin + " " + where));
      }
    } else {
      bad(where, where + " must be an image reference string or an object");
    }
    if (!im.spec && im.ref.empty()) bad(where, where + ": empty image reference");
    // A reference with credentials written into it is refused as everywhere else, never echoed
    // (the plan's output lists each image's reference).
    if (auto shown = spec::redact_userinfo(im.ref))
      bad(where, where + ": " + spec::userinfo_message(*shown));
    in.images.push_back(std::move(im));
  }

  const json tasks = j.value("tasks", json::array());
  if (!tasks.is_array()) bad("tasks", "field 'tasks' must be a list");
  std::set<std::string> names;
  for (std::size_t i = 0; i < tasks.size(); ++i) {
    const json& t = tasks[i];
    std::string where = "tasks[" + std::to_string(i) + "]";
    if (!t.is_object()) bad(where, where + " must be an object");
    check_keys(t, {"name", "kind", "image", "modules"}, where);
    TaskInput ti;
    if (!t.contains("name") || !t["name"].is_string()) bad(where + ".name", where + " needs a name (string)");
    ti.name = t["name"].get<std::string>();
    if (!names.insert(ti.name).second) bad(where + ".name", "task '" + ti.name + "' is listed twice");
    ti.kind = string_field(t, "kind", "python", where + ".kind");
    if (!t.contains("image") || !t["image"].is_string()) bad(where + ".image", "task '" + ti.name + "' needs an image id");
    ti.image = t["image"].get<std::string>();
    bool known = std::any_of(in.images.begin(), in.images.end(), [&](const ImageInput& im) { return im.id == ti.image; });
    if (!known) bad(where + ".image", "task '" + ti.name + "' uses image '" + ti.image + "', which 'images' does not define");
    for (const auto& m : string_list(t.value("modules", json()), where + ".modules"))
      ti.modules.push_back(clean_rel(m, where + ".modules"));
    in.tasks.push_back(std::move(ti));
  }
  return in;
}

PlanInput load_plan(const std::string& path) {
  std::stringstream ss;
  fs::path base;
  if (path == "-") {
    ss << std::cin.rdbuf();
    base = fs::current_path();
  } else {
    std::ifstream f(path);
    if (!f) throw spec::SpecError("", "cannot read plan file '" + path + "'");
    ss << f.rdbuf();
    base = fs::absolute(path).parent_path().lexically_normal();
  }
  return parse_plan(ss.str(), base, path == "-" ? "<stdin>" : path);
}

namespace {

/// What decide() knows of one image.
struct Facts {
  std::string image_ref;
  bool is_spec = false, bakes = false;
  const PreparedImage* prepared = nullptr;  // spec images
  fs::path source_root;                     // canonical, when bakes
};

/// The module, relative to source_root, when it lies below it.
std::optional<std::string> under(const fs::path& project_root, const std::string& module, const fs::path& source_root) {
  fs::path rel = (project_root / module).lexically_normal().lexically_relative(source_root);
  std::string r = rel.generic_string();
  if (r.empty() || r == "." || r.rfind("..", 0) == 0) return std::nullopt;
  return r;
}

/// `dir` + `rel` as an absolute container path.
std::string join(const std::string& dir, const std::string& rel) {
  return (fs::path(dir) / rel).lexically_normal().generic_string();
}

/// The dotted name pyflyte gives a module file relative to the project root ("wf/a.py" → "wf.a",
/// "wf/__init__.py" → "wf").
std::string dotted(const std::string& module) {
  std::string m = module;
  if (m.size() > 3 && m.compare(m.size() - 3, 3, ".py") == 0) m.resize(m.size() - 3);
  const std::string init = "/__init__";
  if (m.size() > init.size() && m.compare(m.size() - init.size(), init.size(), init) == 0) m.resize(m.size() - init.size());
  std::replace(m.begin(), m.end(), '/', '.');
  return m;
}

std::string join_list(const std::vector<std::string>& xs) {
  std::string out;
  for (const auto& x : xs) out += (out.empty() ? "" : ", ") + x;
  return out;
}

/// What the SDK would upload: auto = the loaded modules (or the tasks' modules), all = the
/// project walked with the build's own "all" rules.
json bundle_files(const PlanInput& in) {
  std::vector<std::string> files;
  if (in.copy == CopyMode::All) {
    spec::ImageSpec s;
    s.source_root = in.project_root;
    s.source_copy_mode = spec::CopyMode::All;
    s.base_dir = in.project_root;
    s.origin = in.origin;
    // The bundle is selected as pyflyte selects it: .flyteignore applies (the image's file set
    // ignores it, as flytekit's image builder does), and both it and .dockerignore are read with
    // docker-py's matcher. This is the only place the bundle's file list is computed.
    layers::CollectOptions opts;
    opts.pyflyte_bundle = true;
    std::unique_ptr<layers::SourceStream> source;  // read once, in order: not held as a list
    layers::collect_files_streamed(s, opts, &source);
    layers::FileEntry f;
    while (source->next(f))
      if (f.type != layers::FileEntry::Type::Dir) files.push_back(std::string(f.rel()));
  } else {
    std::set<std::string> mods(in.loaded_modules.begin(), in.loaded_modules.end());
    if (mods.empty())
      for (const auto& t : in.tasks)
        if (!t.raw_container()) mods.insert(t.modules.begin(), t.modules.end());
    for (const auto& m : mods) {
      struct stat st{};
      if (::lstat((in.project_root / m).c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) files.push_back(m);
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

/// Where a Python task's modules are, in an image that bakes source.
struct ModuleCheck {
  std::vector<std::string> missing;  // not in the baked set (or a symlink whose target is not)
  std::vector<std::string> notes;    // why, for the symlinks among them
  json locations = json::array();    // baked, but not where the task imports them from
  std::vector<std::string> misplaced;
};

ModuleCheck check_modules(const TaskInput& t, const Facts& f, const fs::path& project, const std::string& import_root) {
  ModuleCheck c;
  for (const auto& m : t.modules) {
    auto rel = under(project, m, f.source_root);
    std::string why;
    if (!rel || !f.prepared->files->source_file_resolves(*rel, &why)) {
      c.missing.push_back(m);
      if (!why.empty()) c.notes.push_back(m + ": " + why);
      continue;
    }
    std::string baked_at = join(f.prepared->source_dest, *rel);
    std::string expected_at = join(import_root, m);
    if (baked_at != expected_at) {
      c.misplaced.push_back(m);
      c.locations.push_back({{"module", m}, {"baked_at", baked_at}, {"expected_at", expected_at}});
    }
  }
  return c;
}

/// " (shared.py: 'shared.py' is a symlink to '../common/shared.py', which leads outside
/// source_root: the image holds a dangling link)", or "" when no missing module is a symlink.
std::string link_notes(const ModuleCheck& c) {
  if (c.notes.empty()) return "";
  std::string out;
  for (const auto& n : c.notes) out += (out.empty() ? "" : "; ") + n;
  return " (" + out + ")";
}

/// "src/wf/a.py is baked at /root/wf/a.py but must be at /root/src/wf/a.py (the task imports
/// src.wf.a)", for each misplaced module.
std::string describe_locations(const json& locations) {
  std::string out;
  for (const auto& l : locations) {
    const std::string m = l.at("module");
    out += (out.empty() ? "" : "; ") + m + " is baked at " + l.at("baked_at").get<std::string>() +
           " but must be at " + l.at("expected_at").get<std::string>() + " (the task imports " + dotted(m) + ")";
  }
  return out;
}

}  // namespace

std::vector<std::string> loaded_modules_under(const PlanInput& in, const fs::path& source_root) {
  const fs::path project = fs::weakly_canonical(in.project_root);
  const fs::path root = fs::weakly_canonical(source_root);
  std::vector<std::string> out;
  for (const auto& m : in.loaded_modules)
    if (auto rel = under(project, m, root)) out.push_back(*rel);
  return out;
}

json decide(const PlanInput& in, const std::map<std::string, PreparedImage>& prepared) {
  std::map<std::string, Facts> facts;
  json images = json::object();
  for (const auto& im : in.images) {
    Facts f;
    json summary;
    if (im.spec) {
      auto it = prepared.find(im.id);
      if (it == prepared.end() || !it->second.files)
        throw std::logic_error("plan::decide: image '" + im.id + "' was not prepared");
      const PreparedImage& p = it->second;
      f.is_spec = true;
      f.prepared = &p;
      f.image_ref = p.image_ref;
      f.bakes = p.files->has_source;
      if (f.bakes) f.source_root = fs::weakly_canonical(p.source_root);
      summary = {{"image", f.image_ref}, {"kind", "imagespec"}, {"source_baked", f.bakes}};
      if (f.bakes) {
        summary["source_digest"] = p.source_digest;
        summary["source_dest"] = p.source_dest;
        summary["copy_mode"] = spec::to_string(p.files->mode);
        summary["workdir"] = p.workdir;
      }
    } else {
      f.image_ref = im.ref;
      summary = {{"image", im.ref}, {"kind", "reference"}, {"source_baked", false}};
    }
    images[im.id] = summary;
    facts.emplace(im.id, std::move(f));
  }
  const fs::path project = fs::weakly_canonical(in.project_root);

  json tasks = json::array(), warnings = json::array(), errors = json::array();
  bool need_bundle = false;
  for (const auto& t : in.tasks) {
    const Facts& f = facts.at(t.image);
    json out = {{"name", t.name}, {"kind", t.kind}, {"image", t.image}, {"image_ref", f.image_ref}};
    bool fast = false;
    std::string reason;
    auto warn = [&](const std::string& code, const std::string& message, json extra = json::object()) {
      json w = {{"code", code}, {"task", t.name}, {"message", message}};
      w.update(extra);
      warnings.push_back(w);
    };
    if (t.raw_container()) {
      reason = "raw_container";
      if (f.is_spec && !f.bakes && in.copy != CopyMode::None)
        warn("raw_container_without_source",
             "raw container task '" + t.name + "' runs on ImageSpec image '" + t.image +
                 "', which bakes no source_root; the fast-register bundle never reaches a raw container, so its "
                 "code is missing at run time unless the image holds it");
    } else if (f.bakes && t.modules.empty()) {
      // Nothing to check: the task may import anything. Never counted as baked.
      reason = "modules_unknown";
      fast = in.copy != CopyMode::None;
      warn("modules_unknown",
           "task '" + t.name + "' lists no modules, so kiln cannot check that image '" + t.image +
               "' bakes its code where the task imports it from; " +
               (fast ? std::string("the task keeps fast register")
                     : std::string("copy is none, so nothing else would bring the code")) +
               " (list the task's module files in 'modules')");
    } else {
      const std::string import_root = f.is_spec ? in.dest_dir.value_or(f.prepared->workdir) : std::string();
      ModuleCheck c;
      if (f.bakes) c = check_modules(t, f, project, import_root);
      const bool baked = f.bakes && c.missing.empty() && c.misplaced.empty();
      if (baked) {
        reason = "source_baked";
      } else if (in.copy == CopyMode::None) {
        reason = "copy_none";
        std::string why = "which does not bake its code";
        if (!c.missing.empty()) why = "which does not bake " + join_list(c.missing) + link_notes(c);
        else if (!c.misplaced.empty()) why = "where " + describe_locations(c.locations);
        json e = {{"code", "code_unavailable"},
                  {"task", t.name},
                  {"message", "task '" + t.name + "' runs on '" + f.image_ref + "', " + why +
                                  ", and copy is none: nothing would bring the code; bake it (source_root at the "
                                  "project root) or register with --copy auto|all"}};
        if (!c.locations.empty()) e["locations"] = c.locations;
        errors.push_back(e);
      } else if (!f.is_spec) {
        reason = "plain_image";
        fast = true;
      } else if (!f.bakes) {
        reason = "no_source_root";
        fast = true;
      } else if (!c.missing.empty()) {
        reason = "module_not_baked";
        fast = true;
        warn("module_not_baked",
             "task '" + t.name + "': image '" + t.image + "' bakes source_root but not " + join_list(c.missing) +
                 (c.notes.empty() ? std::string(" (outside source_root, ignored, or not a loaded module)") : link_notes(c)) +
                 "; the task falls back to fast register",
             {{"modules", c.missing}});
      } else {
        reason = "module_path_mismatch";
        fast = true;
        warn("module_path_mismatch",
             "task '" + t.name + "': image '" + t.image + "' bakes its code at the wrong place: " +
                 describe_locations(c.locations) +
                 " (source_root must be the project root, or source_dest/workdir must match); the task falls back "
                 "to fast register",
             {{"modules", c.misplaced}, {"locations", c.locations}});
      }
      if (reason == "module_not_baked" && !c.locations.empty()) {
        warn("module_path_mismatch",
             "task '" + t.name + "': image '" + t.image + "' bakes its code at the wrong place: " +
                 describe_locations(c.locations),
             {{"modules", c.misplaced}, {"locations", c.locations}});
      }
    }
    need_bundle |= fast;
    out["fast_register"] = fast;
    out["reason"] = reason;
    out["modules"] = t.modules;
    tasks.push_back(out);
  }
  json bundle = {{"needed", need_bundle}};
  if (need_bundle) {
    json files = bundle_files(in);
    bundle["file_count"] = files.size();
    bundle["files"] = files;
  }
  return {{"copy", to_string(in.copy)}, {"images", images},     {"tasks", tasks},
          {"bundle", bundle},           {"warnings", warnings}, {"errors", errors}};
}

bool has_errors(const json& plan) { return !plan.value("errors", json::array()).empty(); }

std::string summary(const json& plan) {
  std::ostringstream o;
  o << "plan (copy " << plan.value("copy", "") << "):\n";
  for (const auto& t : plan["tasks"]) {
    // Only source_baked tasks are "baked": a raw container runs its image as is, a copy_none task
    // has no code at all (an error below), and a modules_unknown task under copy none may or may not
    // find its code (a warning below).
    const std::string r = t["reason"].get<std::string>();
    o << "  "
      << (t["fast_register"].get<bool>() ? "fast-register "
          : r == "source_baked"          ? "baked         "
          : r == "raw_container"         ? "raw container "
          : r == "modules_unknown"       ? "unverified    "
                                         : "no code       ")
      << t["name"].get<std::string>()
      << " on " << t["image_ref"].get<std::string>() << " (" << r << ")\n";
  }
  const json& b = plan["bundle"];
  if (b["needed"].get<bool>())
    o << "  bundle: needed, " << b["file_count"].get<std::size_t>() << " file(s)\n";
  else
    o << "  bundle: not needed (no task fast-registers)\n";
  for (const auto& w : plan["warnings"]) o << "warning: [" << w["code"].get<std::string>() << "] " << w["message"].get<std::string>() << "\n";
  for (const auto& e : plan["errors"]) o << "error: [" << e["code"].get<std::string>() << "] " << e["message"].get<std::string>() << "\n";
  return o.str();
}

}  // namespace kiln::plan
