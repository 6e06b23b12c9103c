// kiln files: the files a spec bakes in (source_root under its copy mode, and `copy` entries),
// exactly as a build selects them; reads no file content. For SDKs and for the fidelity tests
// that compare kiln's selection with flytekit's own.
#include <iostream>

#include "builder/cli/common.h"
#include "layers/fileset.h"
#include "spec/image_spec.h"

namespace kiln::cli {
namespace {

const char* type_name(layers::FileEntry::Type t) {
  switch (t) {
    case layers::FileEntry::Type::File: return "file";
    case layers::FileEntry::Type::Dir: return "dir";
    case layers::FileEntry::Type::Symlink: return "symlink";
  }
  return "?";
}

json entries_json(const std::vector<layers::FileEntry>& list) {
  json out = json::array();
  for (const layers::FileEntry& e : list) {
    json j = {{"path", std::string(e.rel())}, {"dest", "/" + e.dest}, {"type", type_name(e.type)}, {"mode", e.mode}};
    if (e.type == layers::FileEntry::Type::File) j["size"] = e.size;
    if (e.type == layers::FileEntry::Type::Symlink) j["target"] = e.link_target();
    out.push_back(std::move(j));
  }
  return out;
}

}  // namespace

void add_files_command(CLI::App& app, Common& c, std::vector<Command>& out) {
  struct Args {
    std::string spec_path;
    std::vector<std::string> modules;
    std::string modules_from;
    bool flyteignore = false;
  };
  auto a = std::make_shared<Args>();
  auto* files = app.add_subcommand("files", "List the files a spec bakes in (source_root and copy entries)");
  files->add_option("spec", a->spec_path, "ImageSpec JSON file, or '-' for stdin")->required();
  files->add_option("--module", a->modules, "Loaded module file (relative to source_root); repeatable")
      ->allow_extra_args(false);
  files->add_option("--modules-from", a->modules_from, "File listing loaded modules, one per line ('-': stdin)");
  files->add_flag("--flyteignore", a->flyteignore,
                  "Select as pyflyte's fast-register bundle does (mode all): also apply .flyteignore, and read it and .dockerignore with docker-py's matcher");
  add_common_options(files, c, /*cache_used=*/false, /*jobs_used=*/false);
  out.push_back({files, [a](Context& ctx) {
                   spec::ImageSpec s = spec::load_spec(a->spec_path);
                   layers::CollectOptions opts;
                   opts.extra_modules = a->modules;
                   if (!a->modules_from.empty())
                     for (auto& m : read_module_list(a->modules_from)) opts.extra_modules.push_back(m);
                   opts.pyflyte_bundle = a->flyteignore;
                   layers::FileSet set = layers::collect_files(s, opts);
                   if (ctx.common.json_out) {
                     json j = {{"source_root", s.source_root ? json(s.source_root->string()) : json(nullptr)},
                               {"copy_mode", set.has_source ? spec::to_string(set.mode) : "no_copy"},
                               {"git_workdir", set.git_workdir.empty() ? json(nullptr) : json(set.git_workdir)},
                               {"source", entries_json(set.source)},
                               {"copy", entries_json(set.copy)},
                               {"warnings", set.warnings}};
                     std::cout << j.dump(2) << std::endl;
                   } else {
                     for (const auto* list : {&set.source, &set.copy})
                       for (const layers::FileEntry& e : *list)
                         if (e.type != layers::FileEntry::Type::Dir) std::cout << "/" << e.dest << "\n";
                     for (const std::string& w : set.warnings) ctx.view.warn(w);
                   }
                   return kOk;
                 }});
}

}  // namespace kiln::cli
