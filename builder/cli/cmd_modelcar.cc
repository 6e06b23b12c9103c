// kiln modelcar / kiln k8s-patch: KServe modelcar images (docs/modelcar.md).
//
//   kiln modelcar MODEL_DIR --base BASE (-o TARGET… | --push REF)   build, lint, write, push
//   kiln modelcar verify REF|oci:DIR[:TAG]                           lint an existing image
//   kiln k8s-patch --modelcar REF --mode init|sidecar|imagevolume    the pod spec fragment
//
// The build is the spec path of `kiln build` (modelcar::make_spec, then builder::prepare, build,
// write_output, push_remote); the lint runs on the built image before anything is written.
#include <algorithm>
#include <iostream>

#include "builder/build.h"
#include "builder/cli/common.h"
#include "builder/oci_layout.h"
#include "builder/output.h"
#include "builder/registry_io.h"
#include "modelcar/k8s.h"
#include "modelcar/lint.h"
#include "modelcar/spec.h"
#include "registry/reference.h"

namespace fs = std::filesystem;

namespace kiln::cli {
namespace {

struct ModelcarArgs {
  std::string model_dir, base, name, push, platform;
  std::vector<std::string> outputs;
  bool volume_only = false, skip_preflight = false;
};

struct VerifyArgs {
  std::string ref, platform = "linux/amd64";
  bool volume_only = false;
};

struct PatchArgs {
  std::string ref, mode = "init", repository, container = modelcar::kServerContainer, platform = "linux/amd64";
  std::string cpu = modelcar::kModelcarCpu, memory = modelcar::kModelcarMemory;
  long long uid = -1;
  bool template_wrap = false;
};

/// Does the reference text name a tag (a ':' after the last '/', before any '@')?
bool explicit_tag(const std::string& text) {
  std::string name = text.substr(0, text.find('@'));
  std::size_t slash = name.rfind('/');
  return name.find(':', slash == std::string::npos ? 0 : slash) != std::string::npos;
}

/// Findings on stderr (build) or stdout (verify), one per line.
void print_findings(const std::vector<modelcar::Finding>& findings, std::ostream& os) {
  for (const auto& f : findings) os << modelcar::to_string(f.severity) << " " << f.code << ": " << f.message << "\n";
}

json layers_json(const std::vector<builder::LayerReport>& ls) {
  json arr = json::array();
  for (const auto& l : ls)
    arr.push_back({{"label", l.label},
                   {"digest", l.digest},
                   {"media_type", l.media_type},
                   {"size", l.size},
                   {"cache", l.cache_hit ? "hit" : "miss"},
                   {"from_base", l.from_base}});
  return arr;
}

std::string count(std::size_t n, const std::string& what) {
  return std::to_string(n) + " " + what + (n == 1 ? "" : "s");
}

std::pair<std::size_t, std::size_t> tally(const std::vector<modelcar::Finding>& findings) {
  std::size_t errors = 0, warnings = 0;
  for (const auto& f : findings) (f.severity == modelcar::Finding::Severity::Error ? errors : warnings)++;
  return {errors, warnings};
}

// ---- kiln modelcar MODEL_DIR ----

int run_build(Context& ctx, const ModelcarArgs& a) {
  if (a.model_dir.empty()) throw std::invalid_argument("kiln modelcar needs a model directory (or `verify REF`)");
  if (a.base.empty())
    throw std::invalid_argument(
        "kiln modelcar needs --base (an image with sh, ln, sleep, ls and [, e.g. busybox; "
        "'scratch' with --volume-only)");
  if (a.outputs.empty() && a.push.empty()) throw std::invalid_argument("give -o/--output, --push, or both");

  modelcar::SpecRequest req{a.model_dir, a.base, a.name, "", a.platform};
  std::optional<registry::Reference> target;
  if (!a.push.empty()) {
    target = registry::parse_reference(a.push);
    if (!target->digest.empty()) throw std::invalid_argument("--push takes a tag, not a digest: '" + a.push + "'");
    if (a.name.empty()) req.name = target->repository;
    req.registry = target->registry;
  }
  std::vector<builder::OutputTarget> targets;
  for (const auto& o : a.outputs) targets.push_back(builder::parse_output(o));
  spec::ImageSpec s = modelcar::make_spec(req);

  layers::Store store = ctx.open_store();
  builder::RegistrySession session(ctx.registry_settings(), &ctx.view);
  builder::BuildOptions opts;
  opts.store = &store;
  opts.registries = &session;
  opts.progress = &ctx.view;
  opts.jobs = ctx.jobs();
  opts.source_date_epoch = source_date_epoch_from_env();

  if (target && !a.skip_preflight) {  // a forbidden target fails before the model is hashed
    builder::PreflightReport pre = builder::preflight(session, target->name(), /*describe_repository=*/false);
    for (const auto& st : pre.steps)
      ctx.view.log(std::string("preflight ") + (st.ok ? "ok   " : "FAIL ") + st.name + ": " + st.message);
    if (!pre.ok)
      throw registry::RegistryError(pre.failure.value_or(registry::RegistryError::Kind::Protocol),
                                    "preflight failed at '" + pre.steps.back().name + "': " + pre.steps.back().message);
  }

  builder::Prepared prep = builder::prepare(s, opts);
  for (const auto& w : prep.files.warnings) ctx.view.warn(w);
  if (std::none_of(prep.files.source.begin(), prep.files.source.end(),
                   [](const layers::FileEntry& f) { return f.type != layers::FileEntry::Type::Dir; }))
    throw layers::InputError("the model directory '" + s.source_root->string() +
                             "' holds no file (after .dockerignore): /models would be empty");
  builder::BuildResult r = builder::build(prep, opts);
  builder::fetch_layers(session, r.image, store);  // a registry base's layers: the lint reads them

  // The lint, before anything leaves the cache.
  if (target && !explicit_tag(a.push)) target->tag = prep.tag;
  modelcar::LintOptions lo;
  lo.volume_only = a.volume_only;
  std::vector<std::string> tags;
  for (const auto& t : targets) tags.push_back(t.tag.empty() ? prep.tag : t.tag);
  if (target) tags.push_back(target->tag);
  for (const auto& t : tags)
    if (lo.tag.empty() || t == "latest") lo.tag = t;
  std::vector<modelcar::Finding> findings = modelcar::lint(r.image, lo);
  for (const auto& f : findings)
    if (f.severity == modelcar::Finding::Severity::Warning) ctx.view.warn(f.code + ": " + f.message);
  if (modelcar::has_errors(findings)) {
    auto [errors, warnings] = tally(findings);
    std::string msg =
        "the modelcar image fails its lint (" + count(errors, "error") + "); nothing was written or pushed";
    for (const auto& f : findings)
      if (f.severity == modelcar::Finding::Severity::Error)
        std::cerr << "kiln: lint error " << f.code << ": " << f.message << "\n";
    std::cerr << "kiln: error: " << msg << std::endl;
    if (ctx.common.json_out)
      std::cout << json{{"status", "failed"},
                        {"exit_code", kUsage},
                        {"error_class", "permanent"},
                        {"error_kind", "lint"},
                        {"message", msg},
                        {"digest", r.manifest_digest},
                        {"lint", modelcar::to_json(findings)}}
                       .dump(2)
                << std::endl;
    return kUsage;
  }

  json outs = json::array();
  for (const auto& t : targets) {
    std::string d = builder::write_output(r.image, t, prep.repository, prep.tag);
    ctx.view.log("wrote " + t.text + " (" + d.substr(0, 19) + ")");
    outs.push_back({{"target", t.text}, {"digest", d}});
  }
  json pushed = nullptr;
  std::string reference = prep.repository + "@" + r.manifest_digest;
  if (target) {
    builder::PushResult pr = builder::push_remote(session, r.image, *target, store);
    ctx.view.log("pushed " + pr.reference + " (" + std::to_string(pr.uploaded) + " blob(s) uploaded, " +
                 std::to_string(pr.skipped) + " already there, " + std::to_string(pr.mounted) + " mounted)");
    if (!pr.previous_digest.empty())
      ctx.view.warn("tag " + target->name() + ":" + target->tag + " moved from " + pr.previous_digest + " to " +
                    pr.digest);
    pushed = {{"reference", pr.reference}, {"digest", pr.digest},   {"uploaded", pr.uploaded},
              {"skipped", pr.skipped},     {"mounted", pr.mounted}, {"bytes_uploaded", pr.bytes_uploaded}};
    reference = target->name() + "@" + pr.digest;
  }
  std::size_t hits = 0, built = 0;
  for (const auto& l : r.layers)
    if (!l.from_base) (l.cache_hit ? hits : built)++;
  ctx.view.log("built modelcar " + prep.image_ref() + ": " + std::to_string(built) + " layer(s) written, " +
               std::to_string(hits) + " from cache");

  if (ctx.common.json_out) {
    auto base = r.image.annotations.find("org.opencontainers.image.base.digest");
    std::cout << json{{"status", "success"},
                      {"image", prep.image_ref()},
                      {"repository", prep.repository},
                      {"tag", prep.tag},
                      {"digest", r.manifest_digest},
                      {"reference", reference},
                      {"config_digest", r.config_digest},
                      {"spec_hash", prep.spec_hash},
                      {"model_digest", prep.source_digest},
                      {"base_digest", base == r.image.annotations.end() ? json(nullptr) : json(base->second)},
                      {"spec", modelcar::spec_json(req)},
                      {"outputs", outs},
                      {"pushed", pushed},
                      {"layers", layers_json(r.layers)},
                      {"lint", modelcar::to_json(findings)},
                      {"timings", r.timings},
                      {"warnings", r.warnings}}
                     .dump(2)
              << std::endl;
  } else {
    std::cout << reference << std::endl;
  }
  return kOk;
}

// ---- kiln modelcar verify REF ----

int run_verify(Context& ctx, const VerifyArgs& a) {
  builder::Image img;
  std::string digest, shown = a.ref;
  modelcar::LintOptions lo;
  lo.volume_only = a.volume_only;
  if (a.ref.rfind("oci:", 0) == 0) {
    fs::path dir;
    std::string tag;
    builder::split_oci_ref(a.ref, &dir, &tag);
    builder::LayoutImage li = builder::read_oci_layout(dir, tag, a.platform);
    img = std::move(li.image);
    digest = li.manifest_digest;
    lo.tag = tag;
  } else {
    registry::Reference ref = registry::parse_reference(a.ref);
    layers::Store store = ctx.open_store();
    builder::RegistrySession session(ctx.registry_settings(), &ctx.view);
    builder::RemoteImage ri = builder::pull_remote(session, ref, a.platform, store);
    builder::fetch_layers(session, ri.image, store);
    img = std::move(ri.image);
    digest = ri.manifest_digest;
    lo.tag = ref.tag;  // "latest" when the reference names none
    shown = ref.name() + (ref.tag.empty() ? "" : ":" + ref.tag);
  }
  std::vector<modelcar::Finding> findings = modelcar::lint(img, lo);
  auto [errors, warnings] = tally(findings);
  if (ctx.common.json_out) {
    std::cout << json{{"status", errors ? "failed" : "ok"},
                      {"reference", shown},
                      {"digest", digest},
                      {"errors", errors},
                      {"warnings", warnings},
                      {"findings", modelcar::to_json(findings)}}
                     .dump(2)
              << std::endl;
  } else {
    print_findings(findings, std::cout);
    std::cout << shown << "@" << digest << ": "
              << (errors ? "not a valid modelcar: " + count(errors, "error") : std::string("modelcar lint passed"))
              << (warnings ? ", " + count(warnings, "warning") : std::string()) << std::endl;
  }
  return errors ? kUsage : kOk;
}

// ---- kiln k8s-patch --modelcar REF ----

int run_patch(Context& ctx, const PatchArgs& a) {
  modelcar::PatchOptions po;
  po.mode = modelcar::parse_patch_mode(a.mode);
  po.container = a.container;
  po.cpu = a.cpu;
  po.memory = a.memory;
  if (a.uid >= 0) po.run_as_user = a.uid;
  po.template_wrap = a.template_wrap;
  if (a.ref.rfind("oci:", 0) == 0) {
    // A layout knows the digest, not where the image is pushed: --repository says that.
    if (a.repository.empty())
      throw std::invalid_argument(
          "--modelcar oci:DIR[:TAG] needs --repository REGISTRY/REPO (where the image is pushed)");
    if (a.repository.find('@') != std::string::npos || explicit_tag(a.repository))
      throw std::invalid_argument("--repository takes a repository without tag or digest, not '" + a.repository + "'");
    fs::path dir;
    std::string tag;
    builder::split_oci_ref(a.ref, &dir, &tag);
    po.image = a.repository + "@" + builder::resolve_oci_layout(dir, tag, a.platform);
  } else {
    registry::Reference ref = registry::parse_reference(a.ref);
    std::string digest = ref.digest;
    if (digest.empty()) {  // pin the tag: pods must not follow a moving tag
      layers::Store store = ctx.open_store();
      builder::RegistrySession session(ctx.registry_settings(), &ctx.view);
      digest = builder::resolve_remote(session, ref, a.platform, store);
      ctx.view.log(ref.name() + ":" + ref.tag + " is " + digest);
    }
    po.image = ref.name() + "@" + digest;
  }
  nlohmann::ordered_json patch = modelcar::pod_patch(po);
  if (ctx.common.json_out) {
    std::cout << patch.dump(2) << std::endl;
  } else {
    std::cout << modelcar::to_yaml(patch, std::string("kiln k8s-patch: KServe modelcar (") +
                                              modelcar::to_string(po.mode) + " mode) for " + po.image +
                                              "\nA strategic-merge patch: containers and volumes merge by name.");
  }
  return kOk;
}

}  // namespace

void add_modelcar_commands(CLI::App& app, Common& c, std::vector<Command>& out) {
  auto a = std::make_shared<ModelcarArgs>();
  auto v = std::make_shared<VerifyArgs>();
  auto p = std::make_shared<PatchArgs>();

  auto* mc = app.add_subcommand("modelcar", "Build a KServe modelcar image from a model directory (or `verify` one)");
  mc->require_subcommand(0, 1);
  mc->add_option("model_dir", a->model_dir, "The model directory: its files go to /models");
  mc->add_option("--base", a->base,
                 "Base image: oci:DIR[:TAG], a registry reference, or scratch (with --volume-only); "
                 "it needs sh, ln, sleep, ls and [");
  mc->add_option("-o,--output", a->outputs, "oci:DIR[:TAG] or docker-archive:FILE (repeatable)");
  mc->add_option("--push", a->push, "Push to this registry reference (REGISTRY/REPO[:TAG])");
  mc->add_option("--name", a->name, "Image name (default: the --push repository, else the directory's name)");
  mc->add_option("--platform", a->platform, "Platform of the base (default linux/amd64)");
  mc->add_flag("--volume-only", a->volume_only, "Only for image volumes: do not require the shell tools");
  mc->add_flag("--skip-preflight", a->skip_preflight, "Do not check push permission before building");
  add_common_options(mc, c);
  add_registry_options(mc, c);

  auto* verify = mc->add_subcommand("verify", "Lint a modelcar image; exit 0 when it has no errors, 2 otherwise");
  verify->add_option("ref", v->ref, "oci:DIR[:TAG] or a registry reference")->required();
  verify->add_option("--platform", v->platform, "Platform to pick from an image index");
  verify->add_flag("--volume-only", v->volume_only, "Only for image volumes: do not require the shell tools");
  add_common_options(verify, c);
  add_registry_options(verify, c);
  out.push_back(
      {mc, [a, v, verify](Context& ctx) { return verify->parsed() ? run_verify(ctx, *v) : run_build(ctx, *a); }});

  auto* patch =
      app.add_subcommand("k8s-patch", "Print the pod spec patch that runs a modelcar image (YAML, or --json)");
  patch->add_option("--modelcar", p->ref, "The modelcar: a registry reference, or oci:DIR[:TAG] with --repository")
      ->required();
  patch->add_option("--mode", p->mode, "init (default), sidecar (native sidecar, k8s >= 1.29) or imagevolume")
      ->check(CLI::IsMember({"init", "sidecar", "imagevolume"}));
  patch->add_option("--repository", p->repository, "Where an oci: image is pushed (REGISTRY/REPO)");
  patch->add_option("--container", p->container, "The model server container (default kserve-container)");
  patch->add_option("--cpu", p->cpu, "CPU request and limit of the modelcar containers (default 10m)");
  patch->add_option("--memory", p->memory, "Memory request and limit of the modelcar containers (default 15Mi)");
  patch->add_option("--run-as-user", p->uid, "runAsUser for the modelcar and the server (they must match)");
  patch->add_flag("--template", p->template_wrap, "Wrap for a pod template (Deployment, StatefulSet, Job)");
  patch->add_option("--platform", p->platform, "Platform to pick from an image index");
  add_common_options(patch, c);
  add_registry_options(patch, c);
  out.push_back({patch, [p](Context& ctx) { return run_patch(ctx, *p); }});
}

}  // namespace kiln::cli
