// kiln build, kiln tag, kiln plan: flags → a build session (session/session.h) → rendering.
//
// `kiln build A.json [B.json …]` builds each spec into one shared store. The session does the rest
// (name lock, record, commit order, failure); this file maps the flags to its options and prints
// the outcome: with one spec, `repo@sha256:…` on stdout (or one JSON object with --json); with
// several, one line per image (or {"status", "builds": […]}), and a summary table on stderr.
#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstdio>
#include <iostream>
#include <system_error>

#include "builder/build.h"
#include "builder/cli/common.h"
#include "builder/cli/interrupt.h"
#include "builder/oci_layout.h"
#include "builder/output.h"
#include "plan/plan.h"
#include "plan/prepare.h"
#include "session/session.h"
#include "spec/image_spec.h"
#include "spec/userinfo.h"

namespace fs = std::filesystem;

namespace kiln::cli {
namespace {

struct BuildArgs {
  std::vector<std::string> specs;  // build: one or more
  std::string spec_path;           // tag: one
  std::string plan_path, modules_from, image_refs;
  std::vector<std::string> outputs, modules;
  bool push = false, no_push = false, force = false, skip_preflight = false;
  bool fail_fast = false, keep_going = false, no_wait = false;
  std::string network = "default", capture = "auto";
  std::string step_timeout;  // --step-timeout DURATION ("" = none)
  std::string platform;      // --platform: overrides the spec's (and its nested bases')
};

/// --platform's check: one os/arch[/variant], or several comma-separated (as the spec's field).
std::string check_platform_flag(const std::string& v) {
  std::string error;
  return spec::normalize_platform(v, &error).empty() ? "--platform " + error : std::string();
}

/// $KILN_DEFAULT_REPO (as ko's KO_DOCKER_REPO): where `--push` sends a spec that names no registry.
std::string default_repo() {
  const char* r = std::getenv("KILN_DEFAULT_REPO");
  std::string v = r ? r : "";
  if (auto redacted = spec::redact_userinfo(v))
    throw std::invalid_argument("KILN_DEFAULT_REPO " + spec::userinfo_message(*redacted));
  while (!v.empty() && v.back() == '/') v.pop_back();
  return v;
}

/// "90", "90s", "1.5m", "2h" → seconds; -1 when it is not a positive duration.
double parse_duration(const std::string& s) {
  if (s.empty()) return -1;
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    return -1;
  }
  const std::string unit = s.substr(used);
  double mult = unit.empty() || unit == "s" ? 1 : unit == "m" ? 60 : unit == "h" ? 3600 : -1;
  if (mult < 0 || !(v > 0) || v * mult > 1e9) return -1;
  return v * mult;
}

/// The output targets, checked before anything is built: a path of the wrong kind is a usage
/// error now rather than a failure after the build.
std::vector<builder::OutputTarget> targets_of(const BuildArgs& a, std::size_t nspecs) {
  std::vector<builder::OutputTarget> targets;
  for (const auto& o : a.outputs) {
    builder::OutputTarget t;
    try {
      t = builder::parse_output(o);
    } catch (const std::runtime_error& e) {  // "oci:" with no directory: the command line's fault
      throw std::invalid_argument(std::string("-o: ") + e.what());
    }
    std::error_code ec;
    fs::file_status st = fs::status(t.path, ec);
    if (t.kind == builder::OutputTarget::Kind::OciLayout) {
      if (fs::exists(st) && !fs::is_directory(st))
        throw std::invalid_argument("-o " + o + ": '" + t.path.string() + "' exists and is not a directory");
      if (nspecs > 1 && !t.tag.empty())
        throw std::invalid_argument("-o " + o + ": with several specs, an OCI layout output takes no :TAG (each image keeps its own)");
      builder::check_oci_output(t.path);
    } else {
      if (fs::is_directory(st)) throw std::invalid_argument("-o " + o + ": '" + t.path.string() + "' is a directory");
      fs::path parent = t.path.parent_path();
      if (!parent.empty() && !fs::is_directory(parent, ec))
        throw std::invalid_argument("-o " + o + ": directory '" + parent.string() + "' does not exist");
      if (nspecs > 1) throw std::invalid_argument("-o " + o + ": a docker-archive holds one image; give one spec");
    }
    targets.push_back(std::move(t));
  }
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

std::string shorten(std::string s, std::size_t n) {
  for (auto& c : s)
    if (c == '\n') c = ' ';
  if (s.size() > n) s = s.substr(0, n - 1) + "…";
  return s;
}

/// A failure's message without the "SPEC: " it starts with when it is shown beside the spec's
/// path already (the summary table, the quiet error lines): the path once, not twice.
std::string message_beside_spec(const session::Failure& f) {
  const std::string prefix = f.spec_path + ":";
  std::string m = f.message;
  if (!f.spec_path.empty() && m.rfind(prefix, 0) == 0) {
    m.erase(0, prefix.size());
    if (!m.empty() && m[0] == ' ') m.erase(0, 1);  // "SPEC: msg" → "msg"; "SPEC:2:1: msg" → "2:1: msg"
  }
  return (f.kind == "step" && !f.step.empty() ? f.step + ": " : "") + m;
}

/// The summary of several builds, for people (stderr).
void print_summary(const std::vector<session::Outcome>& outs) {
  std::size_t ok = 0, failed = 0, cancelled = 0;
  for (const auto& o : outs) (o.ok() ? ok : o.failure.cancelled ? cancelled : failed)++;
  std::vector<std::array<std::string, 5>> rows;
  rows.push_back({"SPEC", "IMAGE", "STATUS", "TIME", "RESULT"});
  for (const auto& o : outs) {
    char secs[32];
    std::snprintf(secs, sizeof secs, "%.2fs", o.seconds);
    std::string status = o.ok() ? (o.status == "exists" ? "exists" : "ok")
                                : o.failure.cancelled ? "CANCELLED"
                                : o.status == "interrupted" ? "INTERRUPTED (" + std::to_string(o.failure.code) + ")"
                                                            : "FAILED (" + std::to_string(o.failure.code) + ")";
    std::string result = o.ok() ? o.repository + "@" + o.digest
                                : shorten(message_beside_spec(o.failure), 90);
    rows.push_back({o.spec_path, o.image.empty() ? "-" : o.image, status, secs, result});
  }
  std::array<std::size_t, 5> w{};
  for (const auto& r : rows)
    for (std::size_t i = 0; i < 4; ++i) w[i] = std::max(w[i], width(r[i]));
  std::string text = "kiln: " + std::to_string(outs.size()) + " builds: " + std::to_string(ok) + " succeeded, " +
                     std::to_string(failed) + " failed" +
                     (cancelled ? ", " + std::to_string(cancelled) + " cancelled" : std::string()) + "\n";
  for (const auto& r : rows) {
    std::string line = "  ";
    for (std::size_t i = 0; i < 4; ++i) line += r[i] + std::string(w[i] - width(r[i]) + 2, ' ');
    line += r[4];
    text += line + "\n";
  }
  std::fputs(text.c_str(), stderr);
}

/// The session options from the build flags.
session::Options options_of(Context& ctx, const BuildArgs& a, std::vector<builder::OutputTarget> targets, int jobs) {
  session::Options o;
  o.build = build_options(ctx, jobs);
  o.build.extra_modules = modules_of(a);
  o.build.network = a.network != "none";
  o.build.run_capture = a.capture;
  if (!a.step_timeout.empty()) o.build.step_timeout = parse_duration(a.step_timeout);
  o.outputs = std::move(targets);
  o.push = a.no_push ? session::Options::Push::Never
                     : a.push ? session::Options::Push::Always : session::Options::Push::Auto;
  o.skip_existing = !a.force;
  o.preflight = !a.skip_preflight;
  o.wait_for_name = !a.no_wait;
  o.image_refs = a.image_refs;
  const std::string repo = a.push ? default_repo() : "";
  if (!a.platform.empty() || !repo.empty()) {
    o.adjust_spec = [platform = a.platform, repo](spec::ImageSpec& s) {
      if (!platform.empty()) s = spec::with_platform(s, spec::normalize_platform(platform, nullptr));
      if (!repo.empty() && (!s.registry || s.registry->empty())) {
        std::string lower = repo;
        for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        s.registry = lower;
      }
    };
  }
  return o;
}

/// Each built image's layers with their sizes and times (stderr, not when quiet); then the live
/// rows are gone, before anything reaches stdout.
void print_layer_summaries(ProgressView& view, const std::vector<session::Outcome>& outs) {
  const std::size_t width = view.mode() == ProgressView::Mode::Tty ? terminal_width(2) - 1 : 0;
  for (const auto& r : outs)
    if (r.status == "success" && !r.layers.empty()) view.print(layer_summary(r.image, r.layers, width));
  view.finish();
}

/// What an interrupted build prints when it did not stop in time (InterruptGuard's fallback): the
/// interrupted failure of each spec (no build id or log: the builds were abandoned mid-way).
void print_abandoned(const Common& c, const std::vector<std::string>& specs, int sig) {
  if (specs.size() <= 1) return print_interrupted(c, sig, "build", specs.empty() ? "" : specs[0]);
  session::Failure f = session::interrupted_failure(sig);
  f.message += ": the build did not stop in time and was abandoned (nothing half written is kept)";
  std::fprintf(stderr, "kiln: error: %s\n", f.message.c_str());
  if (!c.json_out) return;
  json builds = json::array();
  for (const auto& spec : specs) {
    json j = failure_json(f);
    j["spec"] = spec;
    builds.push_back(j);
  }
  std::cout << json{{"status", "failed"}, {"exit_code", f.code}, {"builds", builds}}.dump(2) << std::endl;
}

int run_builds(Context& ctx, const BuildArgs& a, InterruptGuard& guard) {
  if (a.specs.empty()) throw std::invalid_argument("kiln build needs a spec file (or - for stdin), or --plan");
  if (std::count(a.specs.begin(), a.specs.end(), "-") > 1) throw std::invalid_argument("'-' (stdin) can be given once");
  if (a.modules_from == "-" && std::count(a.specs.begin(), a.specs.end(), "-"))
    throw std::invalid_argument("--modules-from - and the spec '-' would both read stdin: give one of them as a file");
  const std::size_t n = a.specs.size();
  auto targets = targets_of(a, n);
  Resources res;
  open_resources(ctx, res);
  res.env.interrupt = guard.flag();
  session::Session sess(res.env);
  // --jobs N: with several specs, up to N build at once, sharing the N threads.
  const int total = ctx.jobs();
  const int parallel = std::max(1, std::min<int>(total, static_cast<int>(n)));
  session::Options o = options_of(ctx, a, std::move(targets), std::max(1, total / parallel));
  session::Batch batch = sess.build_all(a.specs, o, parallel, a.fail_fast);
  const auto& outs = batch.outcomes;
  print_layer_summaries(ctx.view, outs);

  if (n == 1) {
    const session::Outcome& r = outs[0];
    auto claimed = guard.claim_output(r.ok() ? static_cast<int>(kOk) : r.failure.code);
    if (!r.ok()) return report_failure(r.failure, ctx.common);
    std::cout << (ctx.common.json_out ? outcome_json(r).dump(2) : r.repository + "@" + r.digest) << std::endl;
    return kOk;
  }
  const int code = batch.first_failure ? batch.first_failure->code : static_cast<int>(kOk);
  auto claimed = guard.claim_output(code);
  if (ctx.common.progress != "quiet") {
    print_summary(outs);
  } else {
    for (const auto& r : outs)  // quiet: still the errors, one line each
      if (!r.ok() && !r.failure.cancelled)
        std::fprintf(stderr, "kiln: error: %s: %s\n", r.spec_path.c_str(), message_beside_spec(r.failure).c_str());
  }
  for (const auto& r : outs)
    if (!r.ok() && !r.failure.cancelled) annotate_github(r.failure);
  if (ctx.common.json_out) {
    json builds = json::array();
    for (const auto& r : outs) {
      json j = r.ok() ? outcome_json(r) : failure_json(r.failure);
      j["spec"] = r.spec_path;
      builds.push_back(j);
    }
    json result = {{"status", batch.first_failure ? "failed" : "success"}, {"exit_code", code}, {"builds", builds}};
    std::cout << result.dump(2) << std::endl;
  } else {
    for (const auto& r : outs)
      if (r.ok()) std::cout << r.repository << "@" << r.digest << "\n";
    std::cout.flush();
  }
  return code;
}

/// `guard`: kiln build --plan (the builds stop on SIGINT/SIGTERM); null for kiln plan.
int run_plan(Context& ctx, const BuildArgs& a, bool build_too, InterruptGuard* guard = nullptr) {
  plan::PlanInput in = plan::load_plan(a.plan_path);
  auto targets = targets_of(a, 1);
  layers::Store store = ctx.open_store();
  builder::RegistrySession registries(ctx.registry_settings(), &ctx.view);
  builder::BuildOptions opts = build_options(ctx);
  opts.store = &store;
  opts.registries = &registries;
  opts.progress = &ctx.view;
  auto prepared = plan::prepare_images(in, opts);
  ctx.view.finish();
  for (auto& [id, p] : prepared)
    for (const auto& w : p.files.warnings) ctx.view.warn(id + ": " + w);
  json result = plan::decide(in, prepared);
  std::cerr << plan::summary(result);
  const bool errors = plan::has_errors(result);
  if (build_too) {
    Resources res;
    open_resources(ctx, res);
    if (guard) res.env.interrupt = guard->flag();
    session::Session sess(res.env);
    session::Options o = options_of(ctx, a, targets, 0);
    o.push = session::Options::Push::Never;
    json builds = json::object();
    for (auto& [id, p] : prepared) {
      session::Outcome r = sess.build(p, o);
      if (!r.ok()) {
        std::unique_lock<std::mutex> claimed;
        if (guard) claimed = guard->claim_output(r.failure.code);
        return report_failure(r.failure, ctx.common);
      }
      builds[id] = outcome_json(r);
      builds[id].erase("log_path");
    }
    result = {{"status", errors ? "failed" : "success"},
              {"exit_code", errors ? static_cast<int>(kUsage) : static_cast<int>(kOk)},
              {"plan", result},
              {"builds", builds}};
  }
  std::unique_lock<std::mutex> claimed;
  if (guard) claimed = guard->claim_output(errors ? kUsage : kOk);
  std::cout << result.dump(2) << std::endl;
  return errors ? kUsage : kOk;
}

int run_tag(Context& ctx, const BuildArgs& a) {
  if (a.modules_from == "-" && a.spec_path == "-")
    throw std::invalid_argument("--modules-from - and the spec '-' would both read stdin: give one of them as a file");
  spec::ImageSpec s = spec::load_spec(a.spec_path);
  if (!a.platform.empty()) s = spec::with_platform(s, spec::normalize_platform(a.platform, nullptr));  // as kiln build --platform: the tag follows it
  layers::Store store = ctx.open_store();
  builder::RegistrySession registries(ctx.registry_settings(s.registry_config ? s.registry_config->string() : ""),
                                      &ctx.view);
  builder::BuildOptions opts = build_options(ctx);
  opts.store = &store;
  opts.registries = &registries;
  opts.progress = &ctx.view;
  opts.extra_modules = modules_of(a);
  builder::Prepared prep = builder::prepare_tag(s, opts);  // streamed: flat memory on a big tree
  ctx.view.finish();
  for (const auto& w : prep.files.warnings) ctx.view.warn(w);
  if (ctx.common.json_out) {
    std::cout << json{{"image", prep.image_ref()}, {"repository", prep.repository}, {"tag", prep.tag},
                      {"spec_hash", prep.spec_hash}}.dump(2) << std::endl;
  } else {
    std::cout << prep.image_ref() << std::endl;
  }
  return kOk;
}

int run_build(Context& ctx, const BuildArgs& a) {
  // SIGINT/SIGTERM: the builds stop and the command prints their failure (exit 130/143).
  InterruptGuard guard([&ctx, &a](int sig) { print_abandoned(ctx.common, a.specs, sig); });
  if (!a.plan_path.empty()) {
    if (!a.specs.empty()) throw std::invalid_argument("give either specs or --plan, not both");
    return run_plan(ctx, a, true, &guard);
  }
  return run_builds(ctx, a, guard);
}

}  // namespace

void add_build_commands(CLI::App& app, Common& c, std::vector<Command>& out) {
  auto a = std::make_shared<BuildArgs>();

  auto* build = app.add_subcommand("build", "Build images from ImageSpec JSON files ('-' reads stdin)");
  build->add_option("spec", a->specs, "ImageSpec JSON files (several build into one store), or - for stdin");
  build->add_option("-o,--output", a->outputs, "oci:DIR[:TAG] or docker-archive:FILE (repeatable)")
      ->allow_extra_args(false);
  build->add_option("--module", a->modules, "A loaded module file, relative to source_root (repeatable)")
      ->allow_extra_args(false);
  build->add_option("--modules-from", a->modules_from, "File listing loaded modules, one per line ('-': stdin)");
  build->add_option("--image-refs", a->image_refs, "Append the built reference (name:tag@digest) to this file");
  build->add_option("--plan", a->plan_path, "A task plan (see `kiln plan`): build its specs, then print the plan");
  build->add_flag("--push", a->push, "Push to the spec's registry (the default when the spec sets \"registry\")");
  build->add_flag("--no-push", a->no_push, "Do not push, even when the spec sets a registry");
  build->add_flag("--force", a->force, "Build and push even when the tag already exists in the registry");
  build->add_flag("--skip-preflight", a->skip_preflight, "Do not check push permission before building");
  auto* ff = build->add_flag("--fail-fast", a->fail_fast,
                             "With several specs: at the first failure, cancel the builds not done yet");
  auto* kg = build->add_flag("--keep-going", a->keep_going,
                             "With several specs: finish the other builds after a failure (the default)");
  ff->excludes(kg);
  build->add_option("--network", a->network, "Network for RUN steps: default or host (both: the host's network), or none")
      ->check(CLI::IsMember({"default", "host", "none"}));
  build->add_option("--capture", a->capture,
                    "How RUN steps' changes are captured: auto, overlay (needs root) or snapshot")
      ->check(CLI::IsMember({"auto", "overlay", "snapshot"}));
  build->add_option("--step-timeout", a->step_timeout,
                    "Kill a RUN step (and fail the build, exit 3) when it runs longer than DURATION: 90, 90s, 10m, 2h")
      ->check([](const std::string& v) {
        return parse_duration(v) > 0 ? std::string() : "takes a duration such as 90s, 10m or 2h, not '" + v + "'";
      });
  build->add_option("--platform", a->platform,
                    "Build for this os/arch[/variant] instead of the spec's platform (e.g. linux/arm64), or for "
                    "several, comma-separated, under one image index")
      ->check(check_platform_flag);
  build->add_flag("--no-wait", a->no_wait,
                  "Fail (exit 6) instead of waiting when another kiln is building the same image name");
  add_common_options(build, c);
  add_registry_options(build, c);
  out.push_back({build, [a](Context& ctx) { return run_build(ctx, *a); }});

  auto* tag = app.add_subcommand("tag", "Print the [registry/]name:tag a spec builds, without building");
  tag->add_option("spec", a->spec_path, "ImageSpec JSON file, or - for stdin")->required();
  tag->add_option("--module", a->modules, "A loaded module file, relative to source_root (repeatable)")
      ->allow_extra_args(false);
  tag->add_option("--modules-from", a->modules_from, "File listing loaded modules, one per line ('-': stdin)");
  tag->add_option("--platform", a->platform, "The tag of a build for this os/arch[/variant], or several (as kiln build --platform)")
      ->check(check_platform_flag);
  add_common_options(tag, c);
  add_registry_options(tag, c);
  out.push_back({tag, [a](Context& ctx) { return run_tag(ctx, *a); }});

  auto* plan_cmd = app.add_subcommand("plan", "Decide per task whether fast register is needed (JSON on stdout)");
  plan_cmd->add_option("plan", a->plan_path, "Plan JSON file, or - for stdin")->required();
  add_common_options(plan_cmd, c);
  add_registry_options(plan_cmd, c);
  out.push_back({plan_cmd, [a](Context& ctx) { return run_plan(ctx, *a, false); }});
}

}  // namespace kiln::cli
