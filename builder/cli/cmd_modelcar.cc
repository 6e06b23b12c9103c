// kiln modelcar / kiln k8s-patch: KServe modelcar images (docs/modelcar.md).
//
//   kiln modelcar MODEL_DIR --base BASE (-o TARGET… | --push REF)   build, lint, write, push
//   kiln modelcar verify REF|oci:DIR[:TAG]                           lint an existing image
//   kiln k8s-patch --modelcar REF --mode init|sidecar|imagevolume    the pod spec fragment
//
// The build is the spec path of `kiln build`: modelcar::make_spec, then the same build session
// (session/session.h), which lints the image before anything is written and records the build in
// the history (kind "modelcar").
#include <algorithm>
#include <functional>
#include <optional>
#include <iostream>

#include "builder/cli/common.h"
#include "builder/cli/interrupt.h"
#include "builder/oci_layout.h"
#include "builder/output.h"
#include "builder/registry_io.h"
#include "session/session.h"
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
  std::string ref, platform;
  bool volume_only = false;
};

struct PatchArgs {
  std::string ref, mode = "init", repository, container = modelcar::kServerContainer, platform;
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
  session::Options o;
  o.kind = "modelcar";
  o.skip_existing = false;  // the tag may be the user's own (v2, latest): always build
  o.preflight = !a.skip_preflight;
  o.lint_volume_only = a.volume_only;
  o.push = session::Options::Push::Never;
  if (!a.push.empty()) {
    registry::Reference target = registry::parse_reference(a.push);
    if (!target.digest.empty()) throw std::invalid_argument("--push takes a tag, not a digest: '" + a.push + "'");
    if (a.name.empty()) req.name = target.repository;
    req.registry = target.registry;
    if (!explicit_tag(a.push)) target.tag.clear();  // the spec's tag
    o.push = session::Options::Push::Always;
    o.push_to = target;
  }
  for (const auto& t : a.outputs) o.outputs.push_back(builder::parse_output(t));
  spec::ImageSpec s = modelcar::make_spec(req);
  o.build = build_options(ctx);

  // SIGINT/SIGTERM: the build (or its push) stops and the failure is printed (exit 130/143).
  InterruptGuard guard([&ctx](int sig) { print_interrupted(ctx.common, sig, "modelcar"); });
  Resources res;
  open_resources(ctx, res);
  res.env.interrupt = guard.flag();
  session::Session sess(res.env);
  session::Outcome r = sess.build(s, a.model_dir, o);
  auto claimed = guard.claim_output(r.ok() ? static_cast<int>(kOk) : r.failure.code);
  if (!r.ok()) return report_failure(r.failure, ctx.common);

  std::string reference =
      r.pushed ? r.push_target->name() + "@" + r.pushed->digest : r.repository + "@" + r.digest;
  if (ctx.common.json_out) {
    json j = outcome_json(r);
    auto base = r.annotations.find("org.opencontainers.image.base.digest");
    j["reference"] = reference;
    j["model_digest"] = r.source_digest;
    j["base_digest"] = base == r.annotations.end() ? json(nullptr) : json(base->second);
    j["spec"] = modelcar::spec_json(req);
    j["lint"] = modelcar::to_json(r.lint);
    j.erase("source");
    std::cout << j.dump(2) << std::endl;
  } else {
    std::cout << reference << std::endl;
  }
  return kOk;
}

// ---- kiln modelcar verify REF ----

/// The platforms to lint: `chosen`, or (none chosen) every platform an index names, or the one image.
std::vector<std::string> platforms_to_lint(const std::string& chosen, const std::optional<builder::IndexSummary>& index) {
  std::vector<std::string> out;
  if (chosen.empty() && index)
    for (const auto& [platform, d] : index->manifests)
      if (!platform.empty() && platform != "unknown/unknown") out.push_back(platform);  // (not attestations)
  if (out.empty()) out.push_back(chosen.empty() ? "linux/amd64" : chosen);
  return out;
}

int run_verify(Context& ctx, const VerifyArgs& a) {
  std::string digest, shown = a.ref;
  modelcar::LintOptions lo;
  lo.volume_only = a.volume_only;
  std::optional<builder::IndexSummary> index;
  // A platform's image and its manifest digest (the registry's layers fetched).
  std::function<std::pair<builder::Image, std::string>(const std::string&)> read;
  std::optional<layers::Store> store;
  std::optional<builder::RegistrySession> registries;
  if (a.ref.rfind("oci:", 0) == 0) {
    fs::path dir;
    std::string tag;
    builder::split_oci_ref(a.ref, &dir, &tag);
    lo.tag = tag;
    index = builder::oci_layout_index_summary(dir, tag);
    read = [dir, tag](const std::string& p) {
      builder::LayoutImage li = builder::read_oci_layout(dir, tag, p);
      return std::make_pair(std::move(li.image), li.manifest_digest);
    };
  } else {
    registry::Reference ref = registry::parse_reference(a.ref);
    store.emplace(ctx.open_store());
    registries.emplace(ctx.registry_settings(), &ctx.view);
    lo.tag = ref.tag;  // "latest" when the reference names none
    shown = ref.name() + (ref.tag.empty() ? "" : ":" + ref.tag);
    registry::Reference pinned = ref;  // what the tag names now, for every platform read below
    pinned.digest = builder::resolve_remote(*registries, ref, "", *store, &index);
    read = [&registries, &store, pinned](const std::string& p) {
      builder::RemoteImage ri = builder::pull_remote(*registries, pinned, p, *store);
      builder::fetch_layers(*registries, ri.image, *store);
      return std::make_pair(std::move(ri.image), ri.manifest_digest);
    };
  }
  // Each image linted; with several (an index), a finding names its platform.
  const std::vector<std::string> platforms = platforms_to_lint(a.platform, index);
  std::vector<modelcar::Finding> findings;
  for (const std::string& p : platforms) {
    auto [img, d] = read(p);
    digest = d;
    for (modelcar::Finding f : session::lint_modelcar(img, lo)) {
      if (platforms.size() > 1) f.message = p + ": " + f.message;
      findings.push_back(std::move(f));
    }
  }
  if (platforms.size() > 1) digest = index->digest;
  auto [errors, warnings] = tally(findings);
  if (ctx.common.json_out) {
    std::cout << json{{"status", errors ? "failed" : "ok"},
                      {"exit_code", errors ? static_cast<int>(kUsage) : static_cast<int>(kOk)},
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
  mc->add_option("-o,--output", a->outputs, "oci:DIR[:TAG] or docker-archive:FILE (repeatable)")
      ->allow_extra_args(false);
  mc->add_option("--push", a->push, "Push to this registry reference (REGISTRY/REPO[:TAG])");
  mc->add_option("--name", a->name, "Image name (default: the --push repository, else the directory's name)");
  mc->add_option("--platform", a->platform,
                 "Platform of the image (default linux/amd64), or several, comma-separated: one image index, the "
                 "model's layers shared by every platform");
  mc->add_flag("--volume-only", a->volume_only, "Only for image volumes: do not require the shell tools");
  mc->add_flag("--skip-preflight", a->skip_preflight, "Do not check push permission before building");
  add_common_options(mc, c);
  add_registry_options(mc, c);

  auto* verify = mc->add_subcommand("verify", "Lint a modelcar image; exit 0 when it has no errors, 2 otherwise");
  verify->add_option("ref", v->ref, "oci:DIR[:TAG] or a registry reference")->required();
  verify->add_option("--platform", v->platform,
                     "Lint only this platform's image of an image index (default: every platform's)");
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
  patch->add_option("--platform", p->platform,
                    "Pin this platform's image of an image index (default: the index itself, so each node pulls "
                    "its own platform's image)");
  add_common_options(patch, c);
  add_registry_options(patch, c);
  out.push_back({patch, [p](Context& ctx) { return run_patch(ctx, *p); }});
}

}  // namespace kiln::cli
