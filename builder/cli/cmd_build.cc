// kiln build, kiln tag, kiln plan: the spec → image path and the task plan over it.
//
// `kiln build A.json [B.json …]` builds each spec into one shared store, records every build in
// the history (success or failure, with its log), and commits outputs only once the image is
// complete: blobs into every layout first, then the push (blobs, then the manifest), then
// docker-archives, then the layout tags. A build that fails or is killed before that never moves
// a tag. With one spec, stdout is `repo@sha256:…` (or one JSON object with --json); with several,
// one line per image (or {"status", "builds": […]}), and a summary table on stderr.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <mutex>
#include <system_error>
#include <thread>

#include "builder/build.h"
#include "builder/cli/common.h"
#include "builder/oci_layout.h"
#include "builder/output.h"
#include "history/build_log.h"
#include "history/history.h"
#include "layers/digest.h"
#include "modelcar/lint.h"
#include "plan/plan.h"
#include "registry/reference.h"
#include "spec/image_spec.h"
#include "spec/tag.h"

namespace fs = std::filesystem;

namespace kiln::cli {
namespace {

/// Columns on a terminal: UTF-8 continuation bytes take none.
std::size_t width(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
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

/// The spec as recorded in the history: its canonical form, plus the fields that name the image.
json spec_record(const spec::ImageSpec& s) {
  json j = s.canonical();
  j["name"] = s.name;
  if (s.registry) j["registry"] = *s.registry;
  if (s.tag_format) j["tag_format"] = *s.tag_format;
  return j;
}

/// The name and [registry/]name of a spec that failed to load, when its JSON says them at least,
/// so that `kiln history NAME` lists the failure too.
void name_from_broken_spec(const std::string& path, history::Record* rec) {
  if (path == "-") return;
  try {
    std::ifstream in(path);
    json j = json::parse(in);
    if (!j.is_object() || !j.contains("name") || !j["name"].is_string()) return;
    std::string name = j["name"].get<std::string>();
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    rec->name = name;
    rec->repository = name;
    if (j.contains("registry") && j["registry"].is_string() && !j["registry"].get<std::string>().empty()) {
      std::string reg = j["registry"].get<std::string>();
      std::transform(reg.begin(), reg.end(), reg.begin(), [](unsigned char c) { return std::tolower(c); });
      rec->repository = reg + "/" + name;
    }
  } catch (const std::exception&) {
  }
}

/// Saves a record (appends it, or replaces the running one); history trouble only warns.
void save_record(history::HistoryDb* db, const history::Record& rec, bool appended, builder::Progress& log) {
  if (!db) return;
  try {
    if (appended) {
      db->update(rec);
    } else {
      db->append(rec);
    }
  } catch (const std::exception& e) {
    log.warn(std::string("could not record build ") + rec.id + ": " + e.what());
  }
}

/// Builds a prepared spec, then commits it (see the file comment). `step` tracks where it is, for
/// the failure report; `rec` receives the layers, digests, outputs and pushed references.
json build_prepared(const builder::Prepared& prep, const std::vector<builder::OutputTarget>& targets,
                    const builder::BuildOptions& opts, const std::string& image_refs, std::mutex& refs_mu,
                    history::BuildLog& log, const std::optional<registry::Reference>& push, history::Record& rec,
                    std::string& step) {
  step = "build";
  builder::BuildResult r = builder::build(prep, opts);
  rec.image_digest = r.manifest_digest;
  rec.config_digest = r.config_digest;
  rec.timings = r.timings;
  rec.warnings = r.warnings;
  rec.layers.clear();
  for (const auto& l : r.layers)
    rec.layers.push_back({l.label, l.digest, l.diff_id, l.media_type, l.size, l.cache_hit, l.from_base});
  if (!targets.empty() && opts.registries) {
    step = "fetch base layers";
    builder::fetch_layers(*opts.registries, r.image, *opts.store);
  }
  if (prep.spec->modelcar) {  // the same lint as `kiln modelcar`, before anything leaves the cache
    step = "lint";
    if (opts.registries) builder::fetch_layers(*opts.registries, r.image, *opts.store);
    modelcar::LintOptions lo;
    lo.tag = prep.tag;
    std::vector<modelcar::Finding> findings = modelcar::lint(r.image, lo);
    std::string errors;
    for (const auto& f : findings) {
      if (f.severity == modelcar::Finding::Severity::Warning) log.warn(f.code + ": " + f.message);
      else errors += (errors.empty() ? "" : "; ") + f.code + ": " + f.message;
    }
    if (!errors.empty())
      throw std::invalid_argument("the modelcar image fails its lint (" + errors + "); nothing was written or pushed");
  }
  log.checkpoint();  // cancelled (--fail-fast): nothing is committed

  // 1. Blobs into every layout (no tag moves).
  for (const auto& t : targets)
    if (t.kind == builder::OutputTarget::Kind::OciLayout) {
      step = "output " + t.text;
      builder::stage_oci_layout(r.image, t.path);
    }
  // 2. The push: blobs, then the manifest.
  json pushed = nullptr;
  if (push) {
    step = "push";
    builder::PushResult pr = builder::push_remote(*opts.registries, r.image, *push, *opts.store);
    log.log("pushed " + pr.reference + " (" + std::to_string(pr.uploaded) + " blob(s) uploaded, " +
            std::to_string(pr.skipped) + " already there, " + std::to_string(pr.mounted) + " mounted)");
    rec.pushed.push_back(pr.reference);
    if (!pr.previous_digest.empty()) {
      rec.tag_moved_from = pr.previous_digest;
      log.warn("tag " + push->name() + ":" + push->tag + " moved from " + pr.previous_digest + " to " + pr.digest +
               "; roll back with a push of the old digest (" + push->name() + "@" + pr.previous_digest + ")");
    }
    pushed = {{"reference", pr.reference}, {"digest", pr.digest},         {"uploaded", pr.uploaded},
              {"skipped", pr.skipped},     {"mounted", pr.mounted},       {"bytes_uploaded", pr.bytes_uploaded},
              {"previous_digest", pr.previous_digest.empty() ? json(nullptr) : json(pr.previous_digest)}};
  }
  // 3. docker-archives (each renamed into place), then 4. the layout tags.
  std::vector<json> outs(targets.size());
  for (int pass = 0; pass < 2; ++pass)
    for (std::size_t i = 0; i < targets.size(); ++i) {
      const auto& t = targets[i];
      if ((t.kind == builder::OutputTarget::Kind::DockerArchive) != (pass == 0)) continue;
      step = "output " + t.text;
      std::string d = builder::write_output(r.image, t, prep.repository, prep.tag);
      log.log("wrote " + t.text + " (" + d.substr(0, 19) + ")");
      outs[i] = {{"target", t.text}, {"digest", d}};
      rec.outputs.push_back(t.text);
    }
  std::string full = prep.image_ref() + "@" + r.manifest_digest;
  if (!image_refs.empty()) {
    step = "image refs";
    std::lock_guard<std::mutex> lock(refs_mu);
    std::ofstream f(image_refs, std::ios::app);
    f << full << "\n";
    if (!f) throw std::system_error(errno, std::generic_category(), "cannot write " + image_refs);
  }
  std::size_t hits = 0, built = 0;
  for (auto& l : r.layers)
    if (!l.from_base) (l.cache_hit ? hits : built)++;
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.2f", r.timings["total"]);
  log.log("built " + prep.image_ref() + " in " + secs + " s: " + std::to_string(built) + " layer(s) written, " +
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
  std::vector<std::string> specs;  // build: one or more
  std::string spec_path;           // tag: one
  std::string plan_path, modules_from, image_refs;
  std::vector<std::string> outputs, modules;
  bool push = false, no_push = false, force = false, skip_preflight = false;
  bool fail_fast = false, keep_going = false, no_wait = false;
  std::string network = "default", capture = "auto";
  std::string step_timeout;  // --step-timeout DURATION ("" = none)
};

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

builder::BuildOptions options(Context& ctx, layers::Store& store, builder::RegistrySession& session,
                              builder::Progress& progress, int jobs) {
  builder::BuildOptions opts;
  opts.store = &store;
  opts.registries = &session;
  opts.progress = &progress;
  opts.jobs = jobs > 0 ? jobs : ctx.jobs();
  opts.source_date_epoch = source_date_epoch_from_env();
  return opts;
}

/// The output targets, checked before anything is built: a path of the wrong kind is a usage
/// error now rather than a failure after the build.
std::vector<builder::OutputTarget> targets_of(const BuildArgs& a, std::size_t nspecs) {
  std::vector<builder::OutputTarget> targets;
  for (const auto& o : a.outputs) {
    builder::OutputTarget t = builder::parse_output(o);
    std::error_code ec;
    fs::file_status st = fs::status(t.path, ec);
    if (t.kind == builder::OutputTarget::Kind::OciLayout) {
      if (fs::exists(st) && !fs::is_directory(st))
        throw std::invalid_argument("-o " + o + ": '" + t.path.string() + "' exists and is not a directory");
      if (nspecs > 1 && !t.tag.empty())
        throw std::invalid_argument("-o " + o + ": with several specs, an OCI layout output takes no :TAG (each image keeps its own)");
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

/// Waits while another process builds the same image name (or fails, with --no-wait).
std::unique_ptr<history::NameLock> take_name_lock(const history::HistoryDb& db, const std::string& name, bool no_wait,
                                                  history::BuildLog& log) {
  try {
    int holder = 0;
    auto lock = history::NameLock::try_acquire(db.dir(), name, &holder);
    if (lock) return lock;
    const bool ours = holder == static_cast<int>(::getpid());
    const std::string who = holder > 0 && !ours ? "another kiln (pid " + std::to_string(holder) + ")" : "another kiln";
    if (no_wait && !ours) throw BusyError(who + " is building " + name + " right now (--no-wait: not waiting)");
    log.warn(ours ? "another spec of this run is building " + name + "; waiting for it to finish"
                  : who + " is building " + name + " right now; waiting for it to finish (--no-wait fails instead)");
    auto t0 = Clock::now();
    lock = history::NameLock::acquire(db.dir(), name);
    char secs[32];
    std::snprintf(secs, sizeof secs, "%.1f", since(t0));
    log.log("the other build of " + name + " is done (waited " + secs + " s); going on");
    return lock;
  } catch (const std::system_error& e) {
    log.warn(std::string("cannot lock the image name (building anyway): ") + e.what());
    return nullptr;
  }
}

/// What is shared by the builds of one `kiln build` call.
struct Run {
  Context& ctx;
  const BuildArgs& args;
  layers::Store* store;            // null when it could not be opened:
  std::exception_ptr store_error;  // then each build fails with this
  history::HistoryDb* db;
  std::vector<builder::OutputTarget> targets;
  std::vector<std::string> modules;  // --module and --modules-from (read once)
  int jobs_per_build = 0;
  bool multi = false;
  std::atomic<bool> cancel{false};
  std::mutex mu;       // guards the first failure
  std::mutex refs_mu;  // serializes --image-refs appends
  bool failed = false;
  Failure first_failure;
  std::string first_failed_spec;
};

/// One spec's build, done.
struct Outcome {
  std::string spec_path, image, status = "failed", line, build_id;
  json result;  // the success object, or the failure object
  Failure failure;
  bool ok = false;
  double seconds = 0;
};

Outcome run_one(Run& run, const std::string& spec_path) {
  Context& ctx = run.ctx;
  const BuildArgs& a = run.args;
  Outcome out;
  out.spec_path = spec_path;
  history::Record rec = history::Record::start();
  rec.spec_path = spec_path;
  out.build_id = rec.id;
  std::string prefix;
  if (run.multi) prefix = "[" + (spec_path == "-" ? std::string("stdin") : fs::path(spec_path).filename().string()) + "] ";
  history::BuildLog log(ctx.view, run.db ? run.db->log_path(rec.id) : fs::path(), prefix);
  rec.log_path = log.path();
  if (a.fail_fast) log.watch(&run.cancel);
  log.note("kiln " KILN_VERSION ": build " + rec.id + " of " + spec_path);
  std::unique_ptr<history::NameLock> name_lock;
  bool appended = false;
  std::string step = "spec";
  auto t0 = Clock::now();
  try {
    log.checkpoint();  // --fail-fast: another build failed before this one started
    spec::ImageSpec s = spec::load_spec(spec_path);
    rec.name = s.name;
    rec.repository = spec::repository(s);
    rec.spec = spec_record(s);
    rec.spec_digest = layers::sha256_digest(rec.spec.dump());
    out.image = rec.repository;
    // The only live conflict: the same image name being built elsewhere right now.
    step = "wait";
    if (run.db) name_lock = take_name_lock(*run.db, rec.repository, a.no_wait, log);
    log.checkpoint();
    if (run.db) {
      try {
        run.db->append(rec);
        appended = true;
      } catch (const std::exception& e) {
        log.warn(std::string("could not record build ") + rec.id + ": " + e.what());
      }
    }
    step = "cache";
    if (run.store_error) std::rethrow_exception(run.store_error);
    builder::RegistrySession session(ctx.registry_settings(s.registry_config ? s.registry_config->string() : ""),
                                     &log);
    builder::BuildOptions opts = options(ctx, *run.store, session, log, run.jobs_per_build);
    opts.extra_modules = run.modules;
    opts.network = a.network != "none";
    opts.run_capture = a.capture;
    if (!a.step_timeout.empty()) opts.step_timeout = parse_duration(a.step_timeout);

    // Pushing: --push, or a registry in the spec (as flytekit does), unless --no-push.
    const bool push = !a.no_push && (a.push || (s.registry && !s.registry->empty()));
    if (push && (!s.registry || s.registry->empty()))
      throw std::invalid_argument("--push needs a registry: set \"registry\" in the spec");
    // The dry push comes first: a forbidden or misspelled target fails in seconds, before any
    // file is hashed or layer built.
    if (push && !a.skip_preflight) {
      step = "preflight";
      builder::PreflightReport pre = builder::preflight(session, spec::repository(s), /*describe_repository=*/false);
      for (const auto& st : pre.steps) log.log(std::string("preflight ") + (st.ok ? "ok   " : "FAIL ") + st.name + ": " + st.message);
      if (!pre.ok) {
        const auto& last = pre.steps.back();
        throw registry::RegistryError(pre.failure.value_or(registry::RegistryError::Kind::Protocol),
                                      "preflight failed at '" + last.name + "': " + last.message);
      }
    }
    step = "prepare";
    builder::Prepared prep = builder::prepare(s, opts);
    for (const auto& w : prep.files.warnings) log.warn(w);
    rec.tag = prep.tag;
    rec.inputs_digest = "sha256:" + prep.spec_hash;
    rec.base = prep.base_id;
    out.image = prep.image_ref();
    std::optional<registry::Reference> target;
    bool exists = false;
    if (push) {
      step = "check registry";
      target = registry::parse_reference(prep.image_ref());
      // Skip if it exists: the tag is a content hash, so a present tag is this very image.
      bool repo_missing = false;
      if (!a.force) {
        if (auto d = builder::remote_exists(session, *target, &repo_missing)) {
          log.log(target->name() + ":" + target->tag + " already exists (" + d->substr(0, 19) +
                  "); nothing to build (--force rebuilds and pushes anyway)");
          registry::Reference done = *target;
          done.digest = *d;
          out.result = {{"status", "exists"}, {"image", prep.image_ref()}, {"digest", *d},
                        {"reference", done.str()}, {"tag", prep.tag}, {"spec_hash", prep.spec_hash}};
          out.line = prep.repository + "@" + *d;
          rec.image_digest = *d;
          rec.status = out.status = "exists";
          exists = true;
        } else {
          log.log(repo_missing ? "repository " + target->name() + " does not exist yet: building"
                               : "tag " + target->tag + " not in " + target->name() + " yet: building");
        }
      }
    }
    if (!exists) {
      out.result = build_prepared(prep, run.targets, opts, a.image_refs, run.refs_mu, log, target, rec, step);
      if (run.targets.empty() && !push) log.log("no --output given: the image is in the cache only");
      out.line = out.result["reference"].get<std::string>();
      rec.status = out.status = "success";
    }
    out.ok = true;
    out.result["build_id"] = rec.id;
    out.result["log_path"] = rec.log_path.empty() ? json(nullptr) : json(rec.log_path);
    if (run.multi) out.result["spec"] = spec_path;
  } catch (...) {
    std::exception_ptr e = std::current_exception();
    bool cancelled = log.cancelled();
    try {
      std::rethrow_exception(e);
    } catch (const history::Cancelled&) {
      cancelled = true;
    } catch (...) {
    }
    Failure f;
    if (cancelled) {
      std::lock_guard<std::mutex> lock(run.mu);
      f.code = run.first_failure.code;
      f.error_class = run.first_failure.error_class;
      f.kind = "cancelled";
      f.message = "cancelled: " + run.first_failed_spec + " failed first (--fail-fast)";
      f.cancelled = true;
      f.step = step;
    } else {
      f = classify(e);
      if (f.step.empty()) f.step = step;
    }
    f.spec_path = spec_path;
    f.build_id = rec.id;
    if (rec.name.empty()) name_from_broken_spec(spec_path, &rec);
    log.note(std::string("error: ") + (f.kind == "step" ? f.step + ": " : "") + f.message);
    f.log_path = log.path();
    f.log_tail = log.tail(20);
    rec.status = out.status = cancelled ? "cancelled" : "failed";
    rec.exit_code = f.code;
    rec.error_class = f.error_class;
    rec.error_kind = f.kind;
    rec.failed_step = f.step;
    rec.message = f.message;
    if (!cancelled) {
      std::lock_guard<std::mutex> lock(run.mu);
      if (!run.failed) {
        run.failed = true;
        run.first_failure = f;
        run.first_failed_spec = spec_path;
      }
      if (a.fail_fast) run.cancel = true;
    }
    out.failure = f;
    out.result = failure_json(f);
  }
  out.seconds = since(t0);
  rec.finished_ms = now_ms();
  if (!rec.timings.contains("total")) rec.timings["total"] = out.seconds;
  save_record(run.db, rec, appended, log);
  name_lock.reset();  // after the record: a reader never sees this build "running" without its lock
  return out;
}

std::string shorten(std::string s, std::size_t n) {
  for (auto& c : s)
    if (c == '\n') c = ' ';
  if (s.size() > n) s = s.substr(0, n - 1) + "…";
  return s;
}

/// The summary of several builds, for people (stderr).
void print_summary(const std::vector<Outcome>& outs) {
  std::size_t ok = 0, failed = 0, cancelled = 0;
  for (const auto& o : outs) (o.ok ? ok : o.failure.cancelled ? cancelled : failed)++;
  std::vector<std::array<std::string, 5>> rows;
  rows.push_back({"SPEC", "IMAGE", "STATUS", "TIME", "RESULT"});
  for (const auto& o : outs) {
    char secs[32];
    std::snprintf(secs, sizeof secs, "%.2fs", o.seconds);
    std::string status = o.ok ? (o.status == "exists" ? "exists" : "ok")
                              : o.failure.cancelled ? "CANCELLED" : "FAILED (" + std::to_string(o.failure.code) + ")";
    std::string result = o.ok ? o.line
                              : shorten((o.failure.kind == "step" ? o.failure.step + ": " : "") + o.failure.message, 90);
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

int run_builds(Context& ctx, const BuildArgs& a) {
  if (a.specs.empty()) throw std::invalid_argument("kiln build needs a spec file (or - for stdin), or --plan");
  if (std::count(a.specs.begin(), a.specs.end(), "-") > 1) throw std::invalid_argument("'-' (stdin) can be given once");
  const std::size_t n = a.specs.size();
  auto targets = targets_of(a, n);
  std::optional<layers::Store> store;
  std::exception_ptr store_error;
  try {
    store.emplace(ctx.open_store());
  } catch (...) {
    store_error = std::current_exception();  // reported (and recorded) by each build
  }
  std::unique_ptr<history::HistoryDb> db = open_history(ctx.view);
  Run run{ctx, a, store ? &*store : nullptr, store_error, db.get(), std::move(targets)};
  run.multi = n > 1;
  run.modules = modules_of(a);
  // --jobs N: with several specs, up to N build at once, sharing the N threads.
  const int total = ctx.jobs();
  const int parallel = std::max(1, std::min<int>(total, static_cast<int>(n)));
  run.jobs_per_build = std::max(1, total / parallel);

  std::vector<Outcome> outs(n);
  if (n == 1) {
    outs[0] = run_one(run, a.specs[0]);
  } else {
    std::atomic<std::size_t> next{0};
    auto worker = [&] {
      for (std::size_t i; (i = next++) < n;) outs[i] = run_one(run, a.specs[i]);
    };
    std::vector<std::thread> threads;
    for (int t = 1; t < parallel; ++t) threads.emplace_back(worker);
    worker();
    for (auto& t : threads) t.join();
  }

  if (!run.multi) {
    const Outcome& o = outs[0];
    if (!o.ok) return report_failure(o.failure, ctx.common);
    std::cout << (ctx.common.json_out ? o.result.dump(2) : o.line) << std::endl;
    return kOk;
  }
  if (ctx.common.progress != "quiet") {
    print_summary(outs);
  } else {
    for (const auto& o : outs)  // quiet: still the errors, one line each
      if (!o.ok && !o.failure.cancelled)
        std::fprintf(stderr, "kiln: error: %s: %s%s\n", o.spec_path.c_str(),
                     o.failure.kind == "step" ? (o.failure.step + ": ").c_str() : "", o.failure.message.c_str());
  }
  for (const auto& o : outs)
    if (!o.ok && !o.failure.cancelled) annotate_github(o.failure);
  if (ctx.common.json_out) {
    json builds = json::array();
    for (const auto& o : outs) {
      json j = o.result;
      j["spec"] = o.spec_path;
      builds.push_back(j);
    }
    json result = {{"status", run.failed ? "failed" : "success"},
                   {"exit_code", run.failed ? run.first_failure.code : kOk},
                   {"builds", builds}};
    std::cout << result.dump(2) << std::endl;
  } else {
    for (const auto& o : outs)
      if (o.ok) std::cout << o.line << "\n";
    std::cout.flush();
  }
  return run.failed ? run.first_failure.code : kOk;
}

int run_plan(Context& ctx, const BuildArgs& a, bool build_too) {
  plan::PlanInput in = plan::load_plan(a.plan_path);
  auto targets = targets_of(a, 1);
  layers::Store store = ctx.open_store();
  builder::RegistrySession session(ctx.registry_settings(), &ctx.view);
  builder::BuildOptions opts = options(ctx, store, session, ctx.view, 0);
  auto prepared = plan::prepare_images(in, opts);
  for (auto& [id, p] : prepared)
    for (const auto& w : p.files.warnings) ctx.view.warn(id + ": " + w);
  json result = plan::decide(in, prepared);
  std::cerr << plan::summary(result);
  const bool errors = plan::has_errors(result);
  if (build_too) {
    std::unique_ptr<history::HistoryDb> db = open_history(ctx.view);
    std::mutex refs_mu;
    json builds = json::object();
    for (auto& [id, p] : prepared) {
      history::Record rec = history::Record::start();
      rec.spec_path = p.spec->origin;
      rec.name = p.spec->name;
      rec.repository = p.repository;
      rec.spec = spec_record(*p.spec);
      rec.spec_digest = layers::sha256_digest(rec.spec.dump());
      rec.tag = p.tag;
      rec.inputs_digest = "sha256:" + p.spec_hash;
      rec.base = p.base_id;
      history::BuildLog log(ctx.view, db ? db->log_path(rec.id) : fs::path());
      rec.log_path = log.path();
      builder::BuildOptions o = opts;
      o.progress = &log;
      std::string step = "build";
      try {
        builds[id] = build_prepared(p, targets, o, a.image_refs, refs_mu, log, std::nullopt, rec, step);
        builds[id]["build_id"] = rec.id;
        rec.status = "success";
      } catch (const std::exception& e) {
        Failure f = classify(e);
        if (f.step.empty()) f.step = step;
        f.spec_path = rec.spec_path;
        f.build_id = rec.id;
        log.note("error: " + f.message);
        f.log_path = log.path();
        f.log_tail = log.tail(20);
        rec.status = "failed";
        rec.exit_code = f.code;
        rec.error_class = f.error_class;
        rec.error_kind = f.kind;
        rec.failed_step = f.step;
        rec.message = f.message;
        rec.finished_ms = now_ms();
        save_record(db.get(), rec, false, log);
        return report_failure(f, ctx.common);
      }
      rec.finished_ms = now_ms();
      save_record(db.get(), rec, false, log);
    }
    result = {{"status", errors ? "failed" : "success"}, {"plan", result}, {"builds", builds}};
  }
  std::cout << result.dump(2) << std::endl;
  return errors ? kUsage : kOk;
}

int run_tag(Context& ctx, const BuildArgs& a) {
  spec::ImageSpec s = spec::load_spec(a.spec_path);
  layers::Store store = ctx.open_store();
  builder::RegistrySession session(ctx.registry_settings(s.registry_config ? s.registry_config->string() : ""),
                                   &ctx.view);
  builder::BuildOptions opts = options(ctx, store, session, ctx.view, 0);
  opts.extra_modules = modules_of(a);
  builder::Prepared prep = builder::prepare(s, opts);
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
  if (!a.plan_path.empty()) {
    if (!a.specs.empty()) throw std::invalid_argument("give either specs or --plan, not both");
    return run_plan(ctx, a, true);
  }
  return run_builds(ctx, a);
}

}  // namespace

void add_build_commands(CLI::App& app, Common& c, std::vector<Command>& out) {
  auto a = std::make_shared<BuildArgs>();

  auto* build = app.add_subcommand("build", "Build images from ImageSpec JSON files ('-' reads stdin)");
  build->add_option("spec", a->specs, "ImageSpec JSON files (several build into one store), or - for stdin");
  build->add_option("-o,--output", a->outputs, "oci:DIR[:TAG] or docker-archive:FILE (repeatable)");
  build->add_option("--module", a->modules, "A loaded module file, relative to source_root (repeatable)");
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
  build->add_option("--network", a->network, "Network for RUN steps: default (the host's) or none")
      ->check(CLI::IsMember({"default", "host", "none"}));
  build->add_option("--capture", a->capture,
                    "How RUN steps' changes are captured: auto, overlay (needs root) or snapshot")
      ->check(CLI::IsMember({"auto", "overlay", "snapshot"}));
  build->add_option("--step-timeout", a->step_timeout,
                    "Kill a RUN step (and fail the build, exit 3) when it runs longer than DURATION: 90, 90s, 10m, 2h")
      ->check([](const std::string& v) {
        return parse_duration(v) > 0 ? std::string() : "--step-timeout takes a duration such as 90s, 10m or 2h";
      });
  build->add_flag("--no-wait", a->no_wait,
                  "Fail (exit 6) instead of waiting when another kiln is building the same image name");
  add_common_options(build, c);
  add_registry_options(build, c);
  out.push_back({build, [a](Context& ctx) { return run_build(ctx, *a); }});

  auto* tag = app.add_subcommand("tag", "Print the [registry/]name:tag a spec builds, without building");
  tag->add_option("spec", a->spec_path, "ImageSpec JSON file, or - for stdin")->required();
  tag->add_option("--module", a->modules, "A loaded module file, relative to source_root (repeatable)");
  tag->add_option("--modules-from", a->modules_from, "File listing loaded modules, one per line ('-': stdin)");
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
