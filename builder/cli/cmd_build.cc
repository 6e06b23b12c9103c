// kiln build, kiln tag, kiln plan: the spec → image path and the task plan over it.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <system_error>

#include "builder/build.h"
#include "builder/cli/common.h"
#include "builder/output.h"
#include "plan/plan.h"
#include "registry/reference.h"
#include "spec/image_spec.h"
#include "spec/tag.h"

namespace kiln::cli {
namespace {

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

/// Builds one prepared spec, writes it to every target, and returns its JSON result.
json build_one(const builder::Prepared& prep, const std::vector<builder::OutputTarget>& targets,
               const builder::BuildOptions& opts, const std::string& image_refs, ProgressView& view,
               const std::optional<registry::Reference>& push = std::nullopt) {
  builder::BuildResult r = builder::build(prep, opts);
  if (!targets.empty() && opts.registries) builder::fetch_layers(*opts.registries, r.image, *opts.store);
  json outs = json::array();
  for (const auto& t : targets) {
    std::string d = builder::write_output(r.image, t, prep.repository, prep.tag);
    view.log("wrote " + t.text + " (" + d.substr(0, 19) + ")");
    outs.push_back({{"target", t.text}, {"digest", d}});
  }
  json pushed = nullptr;
  if (push) {
    builder::PushResult pr = builder::push_remote(*opts.registries, r.image, *push, *opts.store);
    view.log("pushed " + pr.reference + " (" + std::to_string(pr.uploaded) + " blob(s) uploaded, " +
             std::to_string(pr.skipped) + " already there, " + std::to_string(pr.mounted) + " mounted)");
    if (!pr.previous_digest.empty())
      view.warn("tag " + push->name() + ":" + push->tag + " moved from " + pr.previous_digest + " to " + pr.digest +
                "; roll back with a push of the old digest");
    pushed = {{"reference", pr.reference}, {"digest", pr.digest},         {"uploaded", pr.uploaded},
              {"skipped", pr.skipped},     {"mounted", pr.mounted},       {"bytes_uploaded", pr.bytes_uploaded},
              {"previous_digest", pr.previous_digest.empty() ? json(nullptr) : json(pr.previous_digest)}};
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
            {"warnings", r.warnings},
            {"pushed", pushed}};
  if (prep.files.has_source)
    j["source"] = {{"digest", prep.source_digest}, {"dest", prep.spec->source_dest},
                   {"copy_mode", spec::to_string(prep.files.mode)}};
  return j;
}

struct BuildArgs {
  std::string spec_path, plan_path, modules_from, image_refs;
  std::vector<std::string> outputs, modules;
  bool push = false, no_push = false, force = false, skip_preflight = false;
};

builder::BuildOptions options(Context& ctx, layers::Store& store, builder::RegistrySession& session) {
  builder::BuildOptions opts;
  opts.store = &store;
  opts.registries = &session;
  opts.progress = &ctx.view;
  opts.jobs = ctx.jobs();
  opts.source_date_epoch = source_date_epoch_from_env();
  return opts;
}

std::vector<builder::OutputTarget> targets_of(const BuildArgs& a) {
  std::vector<builder::OutputTarget> targets;
  for (const auto& o : a.outputs) targets.push_back(builder::parse_output(o));
  return targets;
}

std::vector<std::string> modules_of(const BuildArgs& a) {
  std::vector<std::string> m = a.modules;
  if (!a.modules_from.empty()) {
    auto more = read_module_list(a.modules_from);
    m.insert(m.end(), more.begin(), more.end());
  }
  return m;
}

int run_plan(Context& ctx, const BuildArgs& a, bool build_too) {
  plan::PlanInput in = plan::load_plan(a.plan_path);
  auto targets = targets_of(a);
  layers::Store store = ctx.open_store();
  builder::RegistrySession session(ctx.registry_settings(), &ctx.view);
  builder::BuildOptions opts = options(ctx, store, session);
  auto prepared = plan::prepare_images(in, opts);
  for (auto& [id, p] : prepared)
    for (const auto& w : p.files.warnings) ctx.view.warn(id + ": " + w);
  json result = plan::decide(in, prepared);
  std::cerr << plan::summary(result);
  const bool errors = plan::has_errors(result);
  if (build_too) {
    json builds = json::object();
    for (auto& [id, p] : prepared) builds[id] = build_one(p, targets, opts, a.image_refs, ctx.view);
    result = {{"status", errors ? "failed" : "success"}, {"plan", result}, {"builds", builds}};
  }
  std::cout << result.dump(2) << std::endl;
  return errors ? kUsage : kOk;
}

int run_build(Context& ctx, const BuildArgs& a, bool tag_only) {
  if (!a.plan_path.empty()) {
    if (!a.spec_path.empty()) throw std::invalid_argument("give either a spec or --plan, not both");
    return run_plan(ctx, a, true);
  }
  if (a.spec_path.empty()) throw std::invalid_argument("kiln build needs a spec file (or - for stdin), or --plan");
  spec::ImageSpec s = spec::load_spec(a.spec_path);
  auto targets = targets_of(a);
  layers::Store store = ctx.open_store();
  builder::RegistrySession session(ctx.registry_settings(s.registry_config ? s.registry_config->string() : ""),
                                   &ctx.view);
  builder::BuildOptions opts = options(ctx, store, session);
  opts.extra_modules = modules_of(a);

  // Pushing: --push, or a registry in the spec (as flytekit does), unless --no-push.
  const bool push = !tag_only && !a.no_push && (a.push || (s.registry && !s.registry->empty()));
  if (push && (!s.registry || s.registry->empty()))
    throw std::invalid_argument("--push needs a registry: set \"registry\" in the spec");
  // The dry push comes first: a forbidden or misspelled target fails in seconds, before any
  // file is hashed or layer built.
  if (push && !a.skip_preflight) {
    builder::PreflightReport pre = builder::preflight(session, spec::repository(s));
    for (const auto& st : pre.steps) ctx.view.log(std::string("preflight ") + (st.ok ? "ok   " : "FAIL ") + st.name + ": " + st.message);
    if (!pre.ok) {
      const auto& last = pre.steps.back();
      throw registry::RegistryError(pre.failure.value_or(registry::RegistryError::Kind::Protocol),
                                    "preflight failed at '" + last.name + "': " + last.message);
    }
  }
  builder::Prepared prep = builder::prepare(s, opts);
  for (const auto& w : prep.files.warnings) ctx.view.warn(w);
  if (tag_only) {
    if (ctx.common.json_out) {
      std::cout << json{{"image", prep.image_ref()}, {"repository", prep.repository}, {"tag", prep.tag},
                        {"spec_hash", prep.spec_hash}}.dump(2) << std::endl;
    } else {
      std::cout << prep.image_ref() << std::endl;
    }
    return kOk;
  }
  std::optional<registry::Reference> target;
  if (push) {
    target = registry::parse_reference(prep.image_ref());
    // Skip if it exists: the tag is a content hash, so a present tag is this very image.
    bool repo_missing = false;
    if (!a.force) {
      if (auto d = builder::remote_exists(session, *target, &repo_missing)) {
        ctx.view.log(target->name() + ":" + target->tag + " already exists (" + d->substr(0, 19) +
                     "); nothing to build (--force rebuilds and pushes anyway)");
        registry::Reference done = *target;
        done.digest = *d;
        if (ctx.common.json_out) {
          std::cout << json{{"status", "exists"}, {"image", prep.image_ref()}, {"digest", *d},
                            {"reference", done.str()}, {"tag", prep.tag}, {"spec_hash", prep.spec_hash}}.dump(2)
                    << std::endl;
        } else {
          std::cout << prep.repository << "@" << *d << std::endl;
        }
        return kOk;
      }
      ctx.view.log(repo_missing ? "repository " + target->name() + " does not exist yet: building"
                                : "tag " + target->tag + " not in " + target->name() + " yet: building");
    }
  }
  json j = build_one(prep, targets, opts, a.image_refs, ctx.view, target);
  if (targets.empty()) ctx.view.log("no --output given: the image is in the cache only");
  if (ctx.common.json_out) {
    std::cout << j.dump(2) << std::endl;
  } else {
    std::cout << j["reference"].get<std::string>() << std::endl;
  }
  return kOk;
}

}  // namespace

void add_build_commands(CLI::App& app, Common& c, std::vector<Command>& out) {
  auto a = std::make_shared<BuildArgs>();

  auto* build = app.add_subcommand("build", "Build an image from an ImageSpec JSON file ('-' reads stdin)");
  build->add_option("spec", a->spec_path, "ImageSpec JSON file, or - for stdin");
  build->add_option("-o,--output", a->outputs, "oci:DIR[:TAG] or docker-archive:FILE (repeatable)");
  build->add_option("--module", a->modules, "A loaded module file, relative to source_root (repeatable)");
  build->add_option("--modules-from", a->modules_from, "File listing loaded modules, one per line ('-': stdin)");
  build->add_option("--image-refs", a->image_refs, "Append the built reference (name:tag@digest) to this file");
  build->add_option("--plan", a->plan_path, "A task plan (see `kiln plan`): build its specs, then print the plan");
  build->add_flag("--push", a->push, "Push to the spec's registry (the default when the spec sets \"registry\")");
  build->add_flag("--no-push", a->no_push, "Do not push, even when the spec sets a registry");
  build->add_flag("--force", a->force, "Build and push even when the tag already exists in the registry");
  build->add_flag("--skip-preflight", a->skip_preflight, "Do not check push permission before building");
  add_common_options(build, c);
  add_registry_options(build, c);
  out.push_back({build, [a](Context& ctx) { return run_build(ctx, *a, false); }});

  auto* tag = app.add_subcommand("tag", "Print the [registry/]name:tag a spec builds, without building");
  tag->add_option("spec", a->spec_path, "ImageSpec JSON file, or - for stdin")->required();
  tag->add_option("--module", a->modules, "A loaded module file, relative to source_root (repeatable)");
  tag->add_option("--modules-from", a->modules_from, "File listing loaded modules, one per line ('-': stdin)");
  add_common_options(tag, c);
  add_registry_options(tag, c);
  out.push_back({tag, [a](Context& ctx) { return run_build(ctx, *a, true); }});

  auto* plan_cmd = app.add_subcommand("plan", "Decide per task whether fast register is needed (JSON on stdout)");
  plan_cmd->add_option("plan", a->plan_path, "Plan JSON file, or - for stdin")->required();
  add_common_options(plan_cmd, c);
  add_registry_options(plan_cmd, c);
  out.push_back({plan_cmd, [a](Context& ctx) { return run_plan(ctx, *a, false); }});
}

}  // namespace kiln::cli
