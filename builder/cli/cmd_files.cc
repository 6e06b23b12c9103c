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

json entry_json(const layers::FileEntry& e) {
  json j = {{"path", std::string(e.rel())}, {"dest", "/" + e.dest}, {"type", type_name(e.type)}, {"mode", e.mode}};
  if (e.type == layers::FileEntry::Type::File) j["size"] = e.size;
  if (e.type == layers::FileEntry::Type::Symlink) j["target"] = e.link_target();
  return j;
}

json entries_json(const std::vector<layers::FileEntry>& list) {
  json out = json::array();
  for (const layers::FileEntry& e : list) out.push_back(entry_json(e));
  return out;
}

/// Prints `doc` as doc.dump(2) would with its "source" array holding the entries of `source`,
/// written one at a time as they are read (a tree of a million files is never held as JSON).
void print_streamed(json doc, layers::SourceStream& source) {
  static const std::string kMark = "\"source\": []";
  doc["source"] = json::array();
  const std::string text = doc.dump(2);
  const std::size_t at = text.find(kMark);  // the only array named so: keys are unique
  std::cout << text.substr(0, at) << "\"source\": [";
  layers::FileEntry e;
  bool any = false;
  while (source.next(e)) {
    std::string item = entry_json(e).dump(2);
    std::string indented = "\n    ";
    for (char ch : item) {
      indented += ch;
      if (ch == '\n') indented += "    ";
    }
    std::cout << (any ? "," : "") << indented;
    any = true;
  }
  std::cout << (any ? "\n  ]" : "]") << text.substr(at + kMark.size()) << std::endl;
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
                   // The source entries are streamed: a big tree waits on disk in sorted runs, not in memory.
                   std::unique_ptr<layers::SourceStream> source;
                   layers::FileSet set = layers::collect_files_streamed(s, opts, &source);
                   if (ctx.common.json_out) {
                     json j = {{"source_root", s.source_root ? json(s.source_root->string()) : json(nullptr)},
                               {"copy_mode", set.has_source ? spec::to_string(set.mode) : "no_copy"},
                               {"git_workdir", set.git_workdir.empty() ? json(nullptr) : json(set.git_workdir)},
                               {"copy", entries_json(set.copy)},
                               {"warnings", set.warnings}};
                     print_streamed(std::move(j), *source);
                   } else {
                     layers::FileEntry e;
                     while (source->next(e))
                       if (e.type != layers::FileEntry::Type::Dir) std::cout << "/" << e.dest << "\n";
                     for (const layers::FileEntry& c : set.copy)
                       if (c.type != layers::FileEntry::Type::Dir) std::cout << "/" << c.dest << "\n";
                     for (const std::string& w : set.warnings) ctx.view.warn(w);
                   }
                   return kOk;
                 }});
}

}  // namespace kiln::cli
