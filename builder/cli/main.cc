// kiln's command line: argument parsing, files, progress and exit codes over the library. SDKs
// read the result from stdout (or --json); people read logs and progress on stderr.
#include <CLI/CLI.hpp>
#include <clocale>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <system_error>
#include <thread>

#include "builder/build.h"
#include "builder/cli/exit_codes.h"
#include "builder/cli/progress_view.h"
#include "builder/oci_layout.h"
#include "builder/output.h"
#include "layers/fileset.h"
#include "layers/store.h"
#include "plan/plan.h"
#include "spec/image_spec.h"

using nlohmann::json;
namespace fs = std::filesystem;

namespace kiln::cli {
namespace {

struct Common {
  std::string cache_dir;
  std::string progress = "auto";
  bool json_out = false;
  int jobs = 0;
};

/// A failure with its exit code and class, for the human line and the --json object.
struct Failure {
  int code;
  std::string error_class;  // "permanent" | "transient"
  std::string kind;         // "usage", "spec", "input", "internal", ...
  std::string message;
  std::string field;
};

Failure classify(const std::exception& e) {
  if (auto* s = dynamic_cast<const spec::SpecError*>(&e)) return {kUsage, "permanent", "spec", s->what(), s->field()};
  if (auto* i = dynamic_cast<const layers::InputError*>(&e)) return {kUsage, "permanent", "input", i->what(), ""};
  if (auto* a = dynamic_cast<const std::invalid_argument*>(&e)) return {kUsage, "permanent", "usage", a->what(), ""};
  if (auto* se = dynamic_cast<const std::system_error*>(&e)) {
    if (se->code() == std::errc::no_such_file_or_directory) return {kNotFound, "permanent", "not_found", se->what(), ""};
    return {kInternal, "permanent", "system", se->what(), ""};
  }
  if (auto* fe = dynamic_cast<const fs::filesystem_error*>(&e)) return {kInternal, "permanent", "system", fe->what(), ""};
  return {kInternal, "permanent", "internal", e.what(), ""};
}

int report_failure(const Failure& f, const Common& c) {
  std::fprintf(stderr, "kiln: error: %s\n", f.message.c_str());
  if (c.json_out) {
    json j = {{"status", "failed"},   {"exit_code", f.code}, {"error_class", f.error_class},
              {"error_kind", f.kind}, {"message", f.message}};
    if (!f.field.empty()) j["field"] = f.field;
    std::cout << j.dump(2) << std::endl;
  }
  return f.code;
}

int jobs_of(const Common& c) {
  if (c.jobs > 0) return c.jobs;
  unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 2;
}

std::int64_t source_date_epoch_from_env() {
  const char* v = std::getenv("SOURCE_DATE_EPOCH");
  if (!v || !*v) return 0;
  char* end = nullptr;
  long long x = std::strtoll(v, &end, 10);
  if (*end || x < 0) throw std::invalid_argument(std::string("SOURCE_DATE_EPOCH='") + v + "' is not a non-negative integer");
  return x;
}

std::vector<std::string> read_module_list(const std::string& file) {
  std::istream* in = &std::cin;
  std::ifstream f;
  if (file != "-") {
    f.open(file);
    if (!f) throw std::invalid_argument("cannot read the module list '" + file + "'");
    in = &f;
  }
  std::vector<std::string> out;
  for (std::string line; std::getline(*in, line);) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty() && line[0] != '#') out.push_back(line);
  }
  return out;
}

json layers_json(const std::vector<builder::LayerReport>& ls) {
  json arr = json::array();
  for (const auto& l : ls) {
    json j = {{"label", l.label},       {"digest", l.digest}, {"diff_id", l.diff_id},
              {"media_type", l.media_type}, {"size", l.size}, {"cache", l.cache_hit ? "hit" : "miss"},
              {"from_base", l.from_base}};
    if (!l.from_base) {
      j["uncompressed_size"] = l.tar_size;
      j["files"] = l.files;
      j["seconds"] = l.seconds;
    }
    arr.push_back(j);
  }
  return arr;
}

json inspect_json(const builder::Image& img, const std::string& digest, const std::string& ref) {
  json ls = json::array();
  const json& hist = img.config.value("history", json::array());
  std::vector<json> layer_hist;
  for (const auto& h : hist)
    if (!h.value("empty_layer", false)) layer_hist.push_back(h);
  for (std::size_t i = 0; i < img.layers.size(); ++i) {
    const auto& l = img.layers[i];
    json j = {{"digest", l.desc.digest}, {"diff_id", l.diff_id}, {"media_type", l.desc.media_type}, {"size", l.desc.size}};
    if (i < layer_hist.size()) j["created_by"] = layer_hist[i].value("created_by", "");
    ls.push_back(j);
  }
  json labels = img.config.contains("config") ? img.config["config"].value("Labels", json::object()) : json::object();
  if (labels.is_null()) labels = json::object();
  json source = nullptr;
  if (labels.contains(builder::kLabelSourceDigest))
    source = {{"digest", labels[builder::kLabelSourceDigest]},
              {"dest", labels.value(builder::kLabelSourceDest, "")},
              {"copy_mode", labels.value(builder::kLabelSourceMode, "")},
              {"files", std::stoul(labels.value(builder::kLabelSourceFiles, "0"))}};
  return {{"reference", ref}, {"digest", digest}, {"config", img.config}, {"labels", labels},
          {"layers", ls},     {"source", source}, {"annotations", img.annotations}};
}

/// Builds one prepared spec, writes it to every target, and returns its JSON result.
json build_one(const builder::Prepared& prep, const std::vector<builder::OutputTarget>& targets,
               const builder::BuildOptions& opts, const std::string& image_refs, ProgressView& view) {
  builder::BuildResult r = builder::build(prep, opts);
  json outs = json::array();
  for (const auto& t : targets) {
    std::string d = builder::write_output(r.image, t, prep.repository, prep.tag);
    view.log("wrote " + t.text + " (" + d.substr(0, 19) + ")");
    outs.push_back({{"target", t.text}, {"digest", d}});
  }
  std::string full = prep.image_ref() + "@" + r.manifest_digest;
  if (!image_refs.empty()) {
    std::ofstream f(image_refs, std::ios::app);
    f << full << "\n";
    if (!f) throw std::system_error(errno, std::generic_category(), "cannot write " + image_refs);
  }
  std::size_t hits = 0, built = 0;
  for (auto& l : r.layers)
    if (!l.from_base) (l.cache_hit ? hits : built)++;
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.2f", r.timings["total"]);
  view.log("built " + prep.image_ref() + " in " + secs + " s: " + std::to_string(built) + " layer(s) written, " +
           std::to_string(hits) + " from cache");
  json j = {{"status", "success"},
            {"image", prep.image_ref()},
            {"repository", prep.repository},
            {"tag", prep.tag},
            {"digest", r.manifest_digest},
            {"reference", prep.repository + "@" + r.manifest_digest},
            {"config_digest", r.config_digest},
            {"spec_hash", prep.spec_hash},
            {"outputs", outs},
            {"layers", layers_json(r.layers)},
            {"timings", r.timings},
            {"warnings", r.warnings}};
  if (prep.files.has_source)
    j["source"] = {{"digest", prep.source_digest}, {"dest", prep.spec->source_dest},
                   {"copy_mode", spec::to_string(prep.files.mode)}};
  return j;
}

}  // namespace

int run(int argc, char** argv) {
  CLI::App app{"kiln: build OCI images from ImageSpec JSON, without a Docker daemon"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("kiln ") + KILN_VERSION);
  Common c;
  auto add_common = [&](CLI::App* sub) {
    sub->add_option("--cache", c.cache_dir, "Cache directory (default: $KILN_CACHE, else $XDG_CACHE_HOME/kiln)");
    sub->add_option("--progress", c.progress, "Progress on stderr: auto, plain or quiet")
        ->check(CLI::IsMember({"auto", "plain", "quiet"}));
    sub->add_flag("--json", c.json_out, "Print a machine-readable JSON result on stdout");
    sub->add_option("-j,--jobs", c.jobs, "Threads for hashing and layer writing (default: cores)");
  };

  // kiln build
  std::string spec_path;
  std::vector<std::string> outputs, modules;
  std::string modules_from, image_refs;
  auto* build = app.add_subcommand("build", "Build an image from an ImageSpec JSON file ('-' reads stdin)");
  std::string plan_path;
  build->add_option("spec", spec_path, "ImageSpec JSON file, or - for stdin");
  build->add_option("--plan", plan_path, "A task plan (see `kiln plan`): build its specs, then print the plan");
  build->add_option("-o,--output", outputs, "oci:DIR[:TAG] or docker-archive:FILE (repeatable)");
  build->add_option("--module", modules, "A loaded module file, relative to source_root (repeatable)");
  build->add_option("--modules-from", modules_from, "File listing loaded modules, one per line ('-': stdin)");
  build->add_option("--image-refs", image_refs, "Append the built reference (name:tag@digest) to this file");
  add_common(build);

  // kiln tag
  auto* tag = app.add_subcommand("tag", "Print the [registry/]name:tag a spec builds, without building");
  tag->add_option("spec", spec_path, "ImageSpec JSON file, or - for stdin")->required();
  tag->add_option("--module", modules, "A loaded module file, relative to source_root (repeatable)");
  tag->add_option("--modules-from", modules_from, "File listing loaded modules, one per line ('-': stdin)");
  add_common(tag);

  // kiln plan
  auto* plan_cmd = app.add_subcommand("plan", "Decide per task whether fast register is needed (JSON on stdout)");
  plan_cmd->add_option("plan", plan_path, "Plan JSON file, or - for stdin")->required();
  add_common(plan_cmd);

  // kiln inspect
  std::string ref;
  auto* inspect = app.add_subcommand("inspect", "Print an image's config, labels and layers as JSON");
  inspect->add_option("ref", ref, "oci:DIR[:TAG]")->required();
  std::string platform = "linux/amd64";
  inspect->add_option("--platform", platform, "Platform to pick from an image index");

  // kiln cache
  auto* cache = app.add_subcommand("cache", "Inspect or prune the content-addressed store");
  cache->require_subcommand(1);
  auto* du = cache->add_subcommand("du", "Show what the store holds");
  add_common(du);
  auto* prune = cache->add_subcommand("prune", "Remove cache entries unused for a while");
  double older_days = 7;
  bool prune_all = false;
  prune->add_option("--older-than", older_days, "Days unused (default 7)");
  prune->add_flag("--all", prune_all, "Remove everything not in use right now");
  add_common(prune);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? kOk : kUsage;
  }

  ProgressView view(ProgressView::resolve(c.progress));
  try {
    auto open_store = [&] { return layers::Store(c.cache_dir.empty() ? layers::Store::default_root() : fs::path(c.cache_dir)); };
    auto all_modules = [&] {
      std::vector<std::string> m = modules;
      if (!modules_from.empty()) {
        auto more = read_module_list(modules_from);
        m.insert(m.end(), more.begin(), more.end());
      }
      return m;
    };

    if (*plan_cmd || (*build && !plan_path.empty())) {
      if (*build && !spec_path.empty()) throw std::invalid_argument("give either a spec or --plan, not both");
      plan::PlanInput in = plan::load_plan(plan_path);
      std::vector<builder::OutputTarget> targets;
      for (const auto& o : outputs) targets.push_back(builder::parse_output(o));
      layers::Store store = open_store();
      builder::BuildOptions opts;
      opts.store = &store;
      opts.progress = &view;
      opts.jobs = jobs_of(c);
      opts.source_date_epoch = source_date_epoch_from_env();
      auto prepared = plan::prepare_images(in, opts);
      for (auto& [id, p] : prepared)
        for (const auto& w : p.files.warnings) view.warn(id + ": " + w);
      json result = plan::decide(in, prepared);
      std::cerr << plan::summary(result);
      if (*build) {
        json builds = json::object();
        for (auto& [id, p] : prepared) builds[id] = build_one(p, targets, opts, image_refs, view);
        result = {{"status", plan::has_errors(result) ? "failed" : "success"}, {"plan", result}, {"builds", builds}};
      }
      std::cout << result.dump(2) << std::endl;
      return plan::has_errors(*build ? result["plan"] : result) ? kUsage : kOk;
    }

    if (*build && spec_path.empty()) throw std::invalid_argument("kiln build needs a spec file (or - for stdin), or --plan");

    if (*build || *tag) {
      spec::ImageSpec s = spec::load_spec(spec_path);
      std::vector<builder::OutputTarget> targets;
      for (const auto& o : outputs) targets.push_back(builder::parse_output(o));
      layers::Store store = open_store();
      builder::BuildOptions opts;
      opts.store = &store;
      opts.progress = &view;
      opts.extra_modules = all_modules();
      opts.jobs = jobs_of(c);
      opts.source_date_epoch = source_date_epoch_from_env();
      builder::Prepared prep = builder::prepare(s, opts);
      for (const auto& w : prep.files.warnings) view.warn(w);
      if (*tag) {
        if (c.json_out) {
          std::cout << json{{"image", prep.image_ref()}, {"repository", prep.repository}, {"tag", prep.tag},
                            {"spec_hash", prep.spec_hash}}.dump(2) << std::endl;
        } else {
          std::cout << prep.image_ref() << std::endl;
        }
        return kOk;
      }
      json j = build_one(prep, targets, opts, image_refs, view);
      if (targets.empty()) view.log("no --output given: the image is in the cache only");
      if (c.json_out) {
        std::cout << j.dump(2) << std::endl;
      } else {
        std::cout << j["reference"].get<std::string>() << std::endl;
      }
      return kOk;
    }

    if (*inspect) {
      if (ref.rfind("oci:", 0) != 0)
        throw std::invalid_argument("'" + ref + "': only oci:DIR[:TAG] references can be inspected yet");
      fs::path dir;
      std::string t;
      builder::split_oci_ref(ref, &dir, &t);
      builder::LayoutImage li = builder::read_oci_layout(dir, t, platform);
      std::cout << inspect_json(li.image, li.manifest_digest, ref).dump(2) << std::endl;
      return kOk;
    }

    if (*du) {
      layers::Store store = open_store();
      auto u = store.usage();
      if (c.json_out) {
        std::cout << json{{"path", store.root().string()}, {"blobs", u.blobs}, {"blob_bytes", u.blob_bytes},
                          {"layer_records", u.layer_records}, {"stat_indexes", u.stat_indexes},
                          {"stat_bytes", u.stat_bytes}, {"tmp_files", u.tmp_files}, {"tmp_bytes", u.tmp_bytes}}
                         .dump(2)
                  << std::endl;
      } else {
        std::printf("%s\n  blobs          %llu (%s)\n  layer records  %llu\n  stat indexes   %llu (%s)\n  temp files     %llu (%s)\n",
                    store.root().c_str(), (unsigned long long)u.blobs, human_bytes(u.blob_bytes).c_str(),
                    (unsigned long long)u.layer_records, (unsigned long long)u.stat_indexes,
                    human_bytes(u.stat_bytes).c_str(), (unsigned long long)u.tmp_files, human_bytes(u.tmp_bytes).c_str());
      }
      return kOk;
    }

    if (*prune) {
      layers::Store store = open_store();
      auto r = store.prune(prune_all ? 0 : static_cast<std::int64_t>(older_days * 86400));
      if (c.json_out) {
        std::cout << json{{"removed_blobs", r.removed_blobs}, {"removed_bytes", r.removed_bytes},
                          {"removed_layer_records", r.removed_records}}.dump(2) << std::endl;
      } else {
        std::printf("removed %llu blob(s), %s, and %llu layer record(s)\n", (unsigned long long)r.removed_blobs,
                    human_bytes(r.removed_bytes).c_str(), (unsigned long long)r.removed_records);
      }
      return kOk;
    }
  } catch (const std::exception& e) {
    return report_failure(classify(e), c);
  }
  return kUsage;
}

}  // namespace kiln::cli

int main(int argc, char** argv) {
  // Names are UTF-8 whatever the user's locale: the tar writer converts nothing differently.
  std::setlocale(LC_ALL, "C.UTF-8");
  return kiln::cli::run(argc, argv);
}
