// One build session, end to end (see session.h for the order of things).
#include "session/session.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <system_error>
#include <thread>

#include "builder/oci_layout.h"
#include "layers/digest.h"
#include "layers/fileset.h"
#include "layers/unique_fd.h"
#include "spec/tag.h"
#include "spec/userinfo.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace kiln::session {

// ---------------------------------------------------------------------------------------------
// CancelToken, BuildProgress

void CancelToken::cancel(const Failure& cause, const std::string& origin) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!has_cause_) {
    has_cause_ = true;
    cause_ = cause;
    origin_ = origin;
  }
  flag_ = true;
}

Failure CancelToken::cause() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cause_;
}

std::string CancelToken::origin() const {
  std::lock_guard<std::mutex> lock(mu_);
  return origin_;
}

BuildProgress::BuildProgress(builder::Progress* inner, history::LogSink& sink, std::string prefix,
                             const std::atomic<bool>* cancel, const std::atomic<int>* interrupt)
    : inner_(inner ? inner : &null_), sink_(sink), prefix_(std::move(prefix)), cancel_(cancel), interrupt_(interrupt) {}

void BuildProgress::check_cancel(const std::string& id) {
  // Layers stop at a cancel or a signal; an upload at a signal only (a fail-fast cancel lets a
  // push under way finish). The manifest goes last, so a stopped push names nothing half sent.
  const bool layer = id.rfind("layer", 0) == 0;
  const bool upload = id.rfind("push ", 0) == 0 && interrupt_ && interrupt_->load() != 0;
  if ((layer && stop_requested()) || upload) {
    threw_cancel_ = true;
    throw Cancelled("cancelled");
  }
}

void BuildProgress::checkpoint() {
  if (stop_requested()) {
    threw_cancel_ = true;
    throw Cancelled("cancelled");
  }
}

void BuildProgress::log(const std::string& line) {
  sink_.line(line);
  inner_->log(prefix_ + line);
}

void BuildProgress::warn(const std::string& line) {
  sink_.line("warning: " + line);
  inner_->warn(prefix_ + line);
}

void BuildProgress::begin(const std::string& id, const std::string& label, std::uint64_t total) {
  check_cancel(id);
  sink_.line(label + " ...");
  inner_->begin(prefix_ + id, prefix_ + label, total);
}

void BuildProgress::advance(const std::string& id, std::uint64_t delta) {
  check_cancel(id);
  inner_->advance(prefix_ + id, delta);
}

void BuildProgress::end(const std::string& id, const std::string& summary) {
  sink_.line(summary);
  inner_->end(prefix_ + id, prefix_ + summary);
}

void BuildProgress::note(const std::string& line) { sink_.line(line); }

// ---------------------------------------------------------------------------------------------
// Helpers

std::vector<fs::path> layer_blobs(const builder::Image& img) {
  std::vector<fs::path> blobs;
  for (const auto& l : img.layers) {
    if (l.blob.empty() || !fs::exists(l.blob))
      throw std::runtime_error("layer " + l.desc.digest + " is not on disk (fetch it first)");
    blobs.push_back(l.blob);
  }
  return blobs;
}

std::vector<modelcar::Finding> lint_modelcar(const builder::Image& img, const modelcar::LintOptions& opts) {
  return modelcar::lint(layer_blobs(img), img.config, opts);
}

json spec_record(const spec::ImageSpec& s) {
  json j = s.canonical();
  j["name"] = s.name;
  if (s.registry) j["registry"] = *s.registry;
  if (s.tag_format) j["tag_format"] = *s.tag_format;
  return j;
}

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

/// The name and [registry/]name of a spec that failed to load, when its JSON says them at least,
/// so that `kiln history NAME` lists the failure too.
void name_from_broken_spec(const std::string& path, history::Record* rec) {
  if (path == "-") return;
  try {
    std::ifstream in(path);
    json j = json::parse(in);
    if (!j.is_object() || !j.contains("name") || !j["name"].is_string()) return;
    rec->name = lower(j["name"].get<std::string>());
    rec->repository = rec->name;
    if (j.contains("registry") && j["registry"].is_string() && !j["registry"].get<std::string>().empty()) {
      const std::string reg = j["registry"].get<std::string>();
      // Credentials in it (the spec was refused for them) are never recorded.
      rec->repository = lower(spec::redact_userinfo(reg).value_or(reg)) + "/" + rec->name;
    }
  } catch (const std::exception&) {
  }
}

std::mutex g_image_refs_mu;  // --image-refs appends, from any build of this process

/// A failed preflight as the error a build fails with: a reference kiln cannot use is bad input
/// (exit 2, kind "reference"), any other check the registry's error (its own exit code).
std::exception_ptr preflight_error(const builder::PreflightReport& pre) {
  const auto& last = pre.steps.back();
  const std::string msg = "preflight failed at '" + last.name + "': " + last.message;
  if (last.name == "reference") return std::make_exception_ptr(registry::ReferenceError(msg));
  return std::make_exception_ptr(
      registry::RegistryError(pre.failure.value_or(registry::RegistryError::Kind::Protocol), msg));
}

/// One session: its record, log, progress, step and outcome. `run()` wraps a body in the failure
/// handling, the record and the name lock's release.
class Job {
 public:
  Job(const Environment& env, const Options& o, const std::string& kind, const std::string& spec_path)
      : env_(env),
        o_(o),
        rec_(history::Record::start()),
        log_(env.history ? env.history->log_path(rec_.id) : fs::path()),
        progress_(env.progress, log_, o.log_prefix, o.cancel ? &o.cancel->flag() : nullptr, env.interrupt) {
    rec_.kind = kind;
    rec_.spec_path = spec_path;
    rec_.log_path = log_.path();
    out_.kind = kind;
    out_.spec_path = spec_path;
    out_.build_id = rec_.id;
    out_.log_path = log_.path();
  }

  Outcome run(const std::function<void()>& body, const std::string& announce) {
    auto t0 = Clock::now();
    progress_.note("kiln " KILN_VERSION ": " + announce);
    try {
      progress_.checkpoint();  // cancelled before it started
      body();
    } catch (...) {
      fail(std::current_exception());
    }
    out_.seconds = since(t0);
    rec_.finished_ms = now_ms();
    if (!rec_.timings.contains("total")) rec_.timings["total"] = out_.seconds;
    save();
    name_lock_.reset();  // after the record: a reader never sees this build "running" without its lock
    return std::move(out_);
  }

  // ---- the steps ----

  /// The image's name is known: take the name lock, then record the build as running.
  void named(const std::string& name, const std::string& repository) {
    rec_.name = name;
    rec_.repository = repository;
    out_.image = repository;
    out_.repository = repository;
    step_ = "wait";
    if (env_.history) lock_name(repository);
    progress_.checkpoint();
    if (env_.history) {
      try {
        env_.history->append(rec_);
        appended_ = true;
      } catch (const std::exception& e) {
        progress_.warn(std::string("could not record build ") + rec_.id + ": " + e.what());
      }
    }
    step_ = "cache";
    if (env_.store_error) std::rethrow_exception(env_.store_error);
    if (!env_.store) throw std::invalid_argument("no store given to the build session");
  }

  void registries(const std::string& spec_config) {
    builder::RegistrySettings rs = env_.registry;
    if (rs.docker_config.empty() && !spec_config.empty()) rs.docker_config = spec_config;
    rs_ = std::make_unique<builder::RegistrySession>(rs, &progress_);
  }

  builder::BuildOptions build_options() {
    builder::BuildOptions b = o_.build;
    b.store = env_.store;
    b.registries = rs_.get();
    b.progress = &progress_;
    return b;
  }

  /// Does this build push? (Before prepare: for the preflight.)
  bool wants_push(const spec::ImageSpec& s) const {
    if (o_.push == Options::Push::Never) return false;
    const bool has_registry = s.registry && !s.registry->empty();
    if (o_.push == Options::Push::Auto && !has_registry) return false;
    if (!o_.push_to && !has_registry) throw std::invalid_argument("--push needs a registry: set \"registry\" in the spec, or KILN_DEFAULT_REPO");
    return true;
  }

  /// The dry push: a forbidden or misspelled target fails in seconds, before any file is hashed.
  /// `tag`: the tag the push will use, when known ("" before the spec's files are hashed); the
  /// check itself needs only the repository.
  void preflight(const std::string& name, const std::string& tag = "") {
    step_ = "preflight";
    builder::PreflightReport pre = builder::preflight(*rs_, name, /*describe_repository=*/false);
    for (const auto& st : pre.steps) {
      // Not the ":latest" a bare name parses to: the tag this build pushes.
      std::string msg = st.name == "reference" && st.ok
                            ? name + (tag.empty() ? std::string(" (tag from the spec, once its files are hashed)") : ":" + tag)
                            : st.message;
      progress_.log(std::string("preflight ") + (st.ok ? "ok   " : "FAIL ") + st.name + ": " + msg);
    }
    if (!pre.ok) std::rethrow_exception(preflight_error(pre));
  }

  void from_spec(const spec::ImageSpec& s) {
    open_image_refs();
    rec_.spec = spec_record(s);
    rec_.spec_digest = layers::sha256_digest(rec_.spec.dump());
    named(s.name, spec::repository(s));
    registries(s.registry_config ? s.registry_config->string() : "");
    const bool push = wants_push(s);
    check_outputs(s);
    if (push && o_.preflight)
      preflight(o_.push_to ? o_.push_to->name() : spec::repository(s), o_.push_to ? o_.push_to->tag : "");
    step_ = "prepare";
    // Without a push nothing asks for the tag before the layers (no registry holds it to skip the
    // build): hashing is deferred into the layer writing, where it overlaps the compression. A
    // push that skips a tag the registry holds asks for the tag first, in one streamed pass
    // (prepare_tag: flat memory, whatever the tree); only a build walks again (from_prepared).
    const bool tag_first = push && o_.skip_existing && !o_.push_to;
    builder::Prepared prep = tag_first ? builder::prepare_tag(s, build_options())
                             : push    ? builder::prepare(s, build_options())
                                       : builder::prepare_deferred(s, build_options());
    for (const auto& w : prep.files.warnings) progress_.warn(w);
    from_prepared(prep, &prep, push);
  }

  void from_plan(const builder::Prepared& prep) {
    open_image_refs();
    rec_.spec = spec_record(*prep.spec);
    rec_.spec_digest = layers::sha256_digest(rec_.spec.dump());
    named(prep.spec->name, prep.repository);
    registries(prep.spec->registry_config ? prep.spec->registry_config->string() : "");
    const bool push = wants_push(*prep.spec);
    check_outputs(*prep.spec);
    if (push && o_.preflight)
      preflight(o_.push_to ? o_.push_to->name() : prep.repository, o_.push_to ? o_.push_to->tag : prep.tag);
    from_prepared(prep, nullptr, push);
  }

  /// A spec for several platforms cannot go to a docker-archive (one image): refused before
  /// anything is walked.
  void check_outputs(const spec::ImageSpec& s) {
    if (!s.multi_platform()) return;
    step_ = "output";
    for (const auto& t : o_.outputs) builder::check_output_for_index(t, s.platform);
  }

  /// The tag and what goes with it (for a deferred Prepared: known once built).
  void identity(const builder::Prepared& prep) {
    rec_.tag = prep.tag;
    rec_.inputs_digest = "sha256:" + prep.spec_hash;
    rec_.base = prep.base_id;
    out_.image = prep.image_ref();
    out_.repository = prep.repository;
    out_.tag = prep.tag;
    out_.spec_hash = prep.spec_hash;
  }

  /// `own`: the same Prepared when this session may complete it (a deferred one must be).
  void from_prepared(const builder::Prepared& prep, builder::Prepared* own, bool push) {
    const spec::ImageSpec& s = *prep.spec;
    rec_.base = prep.base_id;
    out_.repository = prep.repository;
    if (!prep.deferred) identity(prep);
    if (!prep.tag_only) check_model_files(prep);
    std::optional<registry::Reference> target;
    std::string existing;  // an index already at the target's tag (written to the outputs, not pushed)
    if (push) {
      step_ = "check registry";
      target = o_.push_to ? *o_.push_to : registry::parse_reference(prep.image_ref());
      if (target->tag.empty()) target->tag = prep.tag;
      out_.push_target = target;
      // Skip if it exists: the tag is a content hash, so a present tag is this very image.
      if (o_.skip_existing && !o_.push_to) {
        bool repo_missing = false;
        if (auto d = builder::remote_exists(*rs_, *target, &repo_missing)) {
          if (!prep.multi() || o_.outputs.empty()) {
            exists(prep, *target, *d);
            return;
          }
          // An index and outputs to write: built from the cache (where its layers most likely
          // are), then written, not pushed, when it is the registry's index byte for byte.
          progress_.log(target->name() + ":" + target->tag + " already exists (" + d->substr(0, 19) +
                        "); building it for the outputs, from the cache where it can (--force pushes it again)");
          existing = *d;
        } else {
          progress_.log(repo_missing ? "repository " + target->name() + " does not exist yet: building"
                                     : "tag " + target->tag + " not in " + target->name() + " yet: building");
        }
      }
    }
    step_ = "build";
    std::optional<builder::Prepared> walked;  // prep knows the tag only: the build walks again
    if (prep.tag_only) {
      walked.emplace(builder::prepare_deferred(s, build_options()));
      check_model_files(*walked);
      own = &*walked;
    }
    builder::BuildResult r = own ? builder::build(*own, build_options()) : builder::build(prep, build_options());
    if (walked && walked->tag != prep.tag)  // the tree changed between the two walks: push nothing
      throw layers::InputError("the files changed while kiln built them (the tag went from " + prep.tag + " to " +
                               walked->tag + "); nothing was pushed: re-run the build once the tree is stable");
    identity(prep);
    out_.digest = rec_.image_digest = r.manifest_digest;
    out_.config_digest = rec_.config_digest = r.config_digest;
    out_.timings = r.timings;
    rec_.timings = r.timings;
    out_.warnings = rec_.warnings = r.warnings;
    out_.layers = r.layers;
    out_.annotations = r.image.annotations;
    if (r.index)
      for (const auto& [platform, img] : r.index->images)
        out_.platforms.push_back({platform, img.manifest_digest(), layers::sha256_digest(img.config_bytes())});
    rec_.layers.clear();
    for (const auto& l : r.layers)
      rec_.layers.push_back({l.label, l.digest, l.diff_id, l.media_type, l.size, l.cache_hit, l.from_base});
    if (prep.files.has_source) {
      out_.has_source = true;
      out_.source_digest = prep.source_digest;
      out_.source_dest = s.source_dest;
      out_.copy_mode = spec::to_string(prep.files.mode);
    }
    if (!o_.outputs.empty() || s.modelcar) {  // a registry base's layers: the outputs and the lint read them
      step_ = "fetch base layers";
      if (r.index) {
        for (const auto& [platform, img] : r.index->images) builder::fetch_layers(*rs_, img, *env_.store);
      } else {
        builder::fetch_layers(*rs_, r.image, *env_.store);
      }
    }
    if (s.modelcar) lint(r, prep, target);
    progress_.checkpoint();  // cancelled (--fail-fast): nothing is committed

    if (r.index) {
      if (!existing.empty() && existing != r.manifest_digest)
        throw std::invalid_argument(target->name() + ":" + target->tag + " exists as " + existing +
                                    ", which kiln cannot write byte for byte (it builds " + r.manifest_digest +
                                    "); nothing was written: --force rebuilds it for the outputs");
      commit(*r.index, prep.repository, prep.tag, existing.empty() ? target : std::nullopt);
      if (!existing.empty()) rec_.status = out_.status = "exists";
    } else {
      commit(r.image, prep.repository, prep.tag, target);
    }
    image_refs(prep.image_ref() + "@" + r.manifest_digest);
    std::size_t hits = 0, built = 0;
    for (const auto& l : r.layers)
      if (!l.from_base) (l.cache_hit ? hits : built)++;
    char secs[32];
    std::snprintf(secs, sizeof secs, "%.2f", r.timings.count("total") ? r.timings.at("total") : 0.0);
    progress_.log("built " + prep.image_ref() + " in " + secs + " s: " + std::to_string(built) +
                  " layer(s) written, " + std::to_string(hits) + " from cache");
    if (o_.outputs.empty() && !target) progress_.log("no --output given: the image is in the cache only");
    if (existing.empty()) rec_.status = out_.status = "success";
  }

  /// A modelcar must hold a file. (A streamed build checks it as the walk's entries pass: its file
  /// set holds no list.)
  void check_model_files(const builder::Prepared& prep) {
    const spec::ImageSpec& s = *prep.spec;
    const layers::FileSet& files = prep.file_set();
    if (s.modelcar && !prep.stream && std::none_of(files.source.begin(), files.source.end(),
                                   [](const layers::FileEntry& f) { return f.type != layers::FileEntry::Type::Dir; }))
      throw layers::InputError("the model directory '" + (s.source_root ? s.source_root->string() : std::string()) +
                               "' holds no file (after .dockerignore): /models would be empty");
  }

  /// The tag is in the registry already: nothing to build; the requested outputs get the
  /// registry's image (its layers fetched only when not in the store).
  void exists(const builder::Prepared& prep, const registry::Reference& target, const std::string& d) {
    out_.digest = rec_.image_digest = d;
    if (o_.outputs.empty()) {
      progress_.log(target.name() + ":" + target.tag + " already exists (" + d.substr(0, 19) +
                    "); nothing to build (--force rebuilds and pushes anyway)");
    } else {
      progress_.log(target.name() + ":" + target.tag + " already exists (" + d.substr(0, 19) +
                    "); nothing to build: the outputs get the registry's image (--force rebuilds and pushes anyway)");
      step_ = "pull";
      registry::Reference at = target;
      at.digest = d;
      builder::RemoteImage ri = builder::pull_remote(*rs_, at, prep.spec->platform, *env_.store);
      const std::string again = ri.image.manifest_digest();
      if (again != d)
        throw std::invalid_argument(target.name() + ":" + target.tag + " exists as " + d +
                                    ", which kiln cannot write byte for byte (it would be " + again +
                                    "); nothing was written: --force rebuilds it for the outputs");
      step_ = "fetch layers";
      builder::fetch_layers(*rs_, ri.image, *env_.store);
      out_.config_digest = rec_.config_digest = layers::sha256_digest(ri.image.config_bytes());
      out_.annotations = ri.image.annotations;
      progress_.checkpoint();
      commit(ri.image, prep.repository, prep.tag, std::nullopt);
    }
    image_refs(prep.image_ref() + "@" + d);
    rec_.status = out_.status = "exists";
  }

  /// The modelcar lint, before anything leaves the cache.
  void lint(const builder::BuildResult& r, const builder::Prepared& prep,
            const std::optional<registry::Reference>& target) {
    step_ = "lint";
    modelcar::LintOptions lo;
    lo.volume_only = o_.lint_volume_only;
    std::vector<std::string> tags;  // the tags the image goes by: `latest` among them is warned about
    for (const auto& t : o_.outputs) tags.push_back(t.tag.empty() ? prep.tag : t.tag);
    if (target) tags.push_back(target->tag);
    if (tags.empty()) tags.push_back(prep.tag);
    for (const auto& t : tags)
      if (lo.tag.empty() || t == "latest") lo.tag = t;
    if (r.index) {  // each platform's image, its findings named after it
      for (const auto& [platform, img] : r.index->images)
        for (modelcar::Finding f : lint_modelcar(img, lo)) {
          f.message = platform + ": " + f.message;
          out_.lint.push_back(std::move(f));
        }
    } else {
      out_.lint = lint_modelcar(r.image, lo);
    }
    std::string errors;
    for (const auto& f : out_.lint) {
      if (f.severity == modelcar::Finding::Severity::Warning) progress_.warn(f.code + ": " + f.message);
      else errors += (errors.empty() ? "" : "; ") + f.code + ": " + f.message;
    }
    if (!errors.empty())
      throw LintError("the modelcar image fails its lint (" + errors + "); nothing was written or pushed", out_.lint,
                      r.manifest_digest);
  }

  static std::string digest_of(const builder::Image& img) { return img.manifest_digest(); }
  static std::string digest_of(const builder::ImageIndex& index) { return index.digest(); }

  /// Commits a complete image (builder::Image, or builder::ImageIndex for several platforms), in
  /// the documented order: 1. the blobs into every layout (no tag moves), 2. the push (blobs, then
  /// the manifest), 3. docker-archives, 4. the layout tags.
  template <class Img>
  void commit(const Img& img, const std::string& repository, const std::string& tag,
              const std::optional<registry::Reference>& target) {
    using Kind = builder::OutputTarget::Kind;
    for (const auto& t : o_.outputs)
      if (t.kind == Kind::OciLayout) {
        step_ = "output " + t.text;
        builder::stage_oci_layout(img, t.path);
      }
    if (target) {
      step_ = "push";
      pushed(builder::push_remote(*rs_, img, *target, *env_.store), *target, digest_of(img));
    }
    std::vector<std::optional<WrittenOutput>> written(o_.outputs.size());
    for (int pass = 0; pass < 2; ++pass)
      for (std::size_t i = 0; i < o_.outputs.size(); ++i) {
        const auto& t = o_.outputs[i];
        if ((t.kind == Kind::DockerArchive) != (pass == 0)) continue;
        step_ = "output " + t.text;
        std::string d = builder::write_output(img, t, repository, tag);
        progress_.log("wrote " + t.text + " (" + d.substr(0, 19) + ")");
        written[i] = WrittenOutput{t.text, d};
        rec_.outputs.push_back(t.text);
      }
    for (auto& w : written)
      if (w) out_.outputs.push_back(*w);
  }

  void pushed(const builder::PushResult& pr, const registry::Reference& target, const std::string& expected) {
    progress_.log("pushed " + pr.reference + " (" + std::to_string(pr.uploaded) + " blob(s) uploaded, " +
                  std::to_string(pr.skipped) + " already there, " + std::to_string(pr.mounted) + " mounted)");
    if (pr.digest != expected)
      progress_.warn("the registry holds the manifest as " + pr.digest + ", the source as " + expected);
    rec_.pushed.push_back(pr.reference);
    if (!pr.previous_digest.empty()) {
      rec_.tag_moved_from = pr.previous_digest;
      progress_.warn("tag " + target.name() + ":" + target.tag + " moved from " + pr.previous_digest + " to " +
                     pr.digest + "; roll back with a push of the old digest (" + target.name() + "@" +
                     pr.previous_digest + ")");
    }
    out_.pushed = pr;
  }

  /// --image-refs is opened before anything is built: a path that cannot be appended to fails the
  /// build up front (exit 2), not after the outputs have moved their tags.
  void open_image_refs() {
    if (o_.image_refs.empty() || refs_fd_) return;
    step_ = "image refs";
    refs_fd_ = layers::UniqueFd(::open(o_.image_refs.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644));
    if (!refs_fd_)
      throw layers::InputError("--image-refs " + o_.image_refs + ": cannot open it for appending: " +
                               std::strerror(errno));
  }

  /// Appends the line in one write (O_APPEND: builds of one run, or of several kilns, never
  /// interleave within a line).
  void image_refs(const std::string& full) {
    if (o_.image_refs.empty()) return;
    step_ = "image refs";
    open_image_refs();
    std::lock_guard<std::mutex> lock(g_image_refs_mu);
    const std::string line = full + "\n";
    ssize_t n;
    do n = ::write(refs_fd_.get(), line.data(), line.size());
    while (n < 0 && errno == EINTR);
    if (n != static_cast<ssize_t>(line.size()))
      throw std::system_error(n < 0 ? errno : EIO, std::generic_category(), "cannot write " + o_.image_refs);
  }

  /// kiln push: a layout's image to a registry tag.
  void push_layout(const std::string& source, const std::string& platform, const registry::Reference& target) {
    named(target.repository, target.name());
    rec_.tag = target.tag;
    out_.tag = target.tag;
    out_.image = target.name() + ":" + target.tag;
    out_.push_target = target;
    step_ = "source";
    fs::path dir;
    std::string tag;
    builder::split_oci_ref(source, &dir, &tag);
    auto report_layers = [&](const builder::Image& img, const std::string& prefix) {
      for (const auto& l : img.layers) {
        rec_.layers.push_back({prefix + "layer " + std::to_string(out_.layers.size()), l.desc.digest, l.diff_id,
                               l.desc.media_type, l.desc.size, false, true});
        builder::LayerReport lr;
        lr.label = rec_.layers.back().label;
        lr.digest = l.desc.digest;
        lr.diff_id = l.diff_id;
        lr.media_type = l.desc.media_type;
        lr.size = l.desc.size;
        lr.from_base = true;
        out_.layers.push_back(lr);
      }
    };
    // No --platform and the tag names an index: the whole index goes (never one platform of it
    // silently).
    if (platform.empty())
      if (std::optional<builder::ImageIndex> index = builder::read_oci_layout_index(dir, tag)) {
        for (const auto& [p, img] : index->images) {
          out_.platforms.push_back({p, img.manifest_digest(), layers::sha256_digest(img.config_bytes())});
          report_layers(img, p + ": ");
        }
        registries("");
        step_ = "push";
        progress_.checkpoint();
        pushed(builder::push_remote(*rs_, *index, target, *env_.store), target, index->digest());
        out_.digest = rec_.image_digest = out_.pushed->digest;
        rec_.status = out_.status = "success";
        return;
      }
    builder::LayoutImage li = builder::read_oci_layout(dir, tag, platform.empty() ? "linux/amd64" : platform);
    out_.config_digest = rec_.config_digest = layers::sha256_digest(li.image.config_bytes());
    out_.annotations = li.image.annotations;
    report_layers(li.image, "");
    registries("");
    step_ = "push";
    progress_.checkpoint();
    pushed(builder::push_remote(*rs_, li.image, target, *env_.store), target, li.manifest_digest);
    out_.digest = rec_.image_digest = out_.pushed->digest;
    rec_.status = out_.status = "success";
  }

  history::Record& record() { return rec_; }

 private:
  void lock_name(const std::string& name) {
    try {
      int holder = 0;
      name_lock_ = history::NameLock::try_acquire(env_.history->dir(), name, &holder);
      if (name_lock_) return;
      const bool ours = holder == static_cast<int>(::getpid());
      const std::string who =
          holder > 0 && !ours ? "another kiln (pid " + std::to_string(holder) + ")" : "another kiln";
      if (!o_.wait_for_name && !ours)
        throw BusyError(who + " is building " + name + " right now (--no-wait: not waiting)");
      progress_.warn(ours ? "another spec of this run is building " + name + "; waiting for it to finish"
                          : who + " is building " + name +
                                " right now; waiting for it to finish (--no-wait fails instead)");
      auto t0 = Clock::now();
      name_lock_ = history::NameLock::acquire(env_.history->dir(), name);
      char secs[32];
      std::snprintf(secs, sizeof secs, "%.1f", since(t0));
      progress_.log("the other build of " + name + " is done (waited " + secs + " s); going on");
    } catch (const std::system_error& e) {
      progress_.warn(std::string("cannot lock the image name (building anyway): ") + e.what());
      name_lock_.reset();
    }
  }

  void fail(std::exception_ptr e) {
    bool cancelled = progress_.cancelled();
    try {
      std::rethrow_exception(e);
    } catch (const Cancelled&) {
      cancelled = true;
    } catch (...) {
    }
    Failure f;
    const int signal = env_.interrupt ? env_.interrupt->load() : 0;
    if (signal) {  // whatever the exception (a RUN step the same Ctrl-C killed, Cancelled): interrupted
      f = interrupted_failure(signal);
      const std::string where = classify(e).step;  // "step command 2", when a step says so
      f.step = where.empty() ? step_ : where;
    } else if (cancelled) {
      Failure cause = o_.cancel ? o_.cancel->cause() : Failure{};
      std::string origin = o_.cancel ? o_.cancel->origin() : std::string();
      f.code = cause.code;
      f.error_class = cause.error_class;
      f.kind = "cancelled";
      f.message = origin.empty() ? std::string("cancelled") : "cancelled: " + origin + " failed first (--fail-fast)";
      f.cancelled = true;
      f.step = step_;
    } else {
      f = classify(e);
      if (f.step.empty()) f.step = step_;
    }
    if (rec_.kind == "build") f.spec_path = rec_.spec_path;  // a file to point at
    f.build_id = rec_.id;
    if (rec_.name.empty() && rec_.kind == "build") name_from_broken_spec(rec_.spec_path, &rec_);
    progress_.note(std::string("error: ") + (f.kind == "step" ? f.step + ": " : "") + f.message);
    f.log_path = log_.path();
    f.log_tail = log_.tail(20);
    rec_.status = out_.status = signal ? "interrupted" : cancelled ? "cancelled" : "failed";
    rec_.exit_code = f.code;
    rec_.error_class = f.error_class;
    rec_.error_kind = f.kind;
    rec_.failed_step = f.step;
    rec_.message = f.message;
    out_.failure = f;
  }

  /// Saves the record (appends it, or replaces the running one); history trouble only warns.
  void save() {
    if (!env_.history) return;
    try {
      if (appended_) {
        env_.history->update(rec_);
      } else {
        env_.history->append(rec_);
      }
    } catch (const std::exception& e) {
      progress_.warn(std::string("could not record build ") + rec_.id + ": " + e.what());
    }
  }

  const Environment& env_;
  const Options& o_;
  history::Record rec_;
  history::BuildLog log_;
  BuildProgress progress_;
  std::unique_ptr<builder::RegistrySession> rs_;
  std::unique_ptr<history::NameLock> name_lock_;
  layers::UniqueFd refs_fd_;  // --image-refs, opened before the build
  bool appended_ = false;
  std::string step_ = "spec";
  Outcome out_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Session

Outcome Session::build(const std::string& spec_path, const Options& opts) const {
  Job job(env_, opts, opts.kind, spec_path);
  return job.run(
      [&] {
        spec::ImageSpec s = spec::load_spec(spec_path);
        if (opts.adjust_spec) opts.adjust_spec(s);
        job.from_spec(s);
      },
      "build " + job.record().id + " of " + spec_path);
}

Outcome Session::build(const spec::ImageSpec& spec, const std::string& origin, const Options& opts) const {
  Job job(env_, opts, opts.kind, origin);
  return job.run([&] { job.from_spec(spec); }, opts.kind + " " + job.record().id + " of " + origin);
}

Outcome Session::build(const builder::Prepared& prep, const Options& opts) const {
  Job job(env_, opts, opts.kind, prep.spec->origin);
  return job.run([&] { job.from_plan(prep); }, opts.kind + " " + job.record().id + " of " + prep.spec->origin);
}

Outcome Session::push(const std::string& source, const std::string& platform, const registry::Reference& target,
                      const Options& opts) const {
  Job job(env_, opts, "push", source);
  return job.run([&] { job.push_layout(source, platform, target); },
                 "push " + job.record().id + " of " + source + " to " + target.str());
}

PreflightOutcome Session::preflight(const std::string& target) const {
  PreflightOutcome out;
  builder::RegistrySession rs(env_.registry, env_.progress);
  out.report = builder::preflight(rs, target);
  if (!out.report.ok) {
    Failure f = classify(preflight_error(out.report));
    f.step = "preflight";
    out.failure = f;
  }
  return out;
}

Batch Session::build_all(const std::vector<std::string>& spec_paths, const Options& opts, int parallel,
                         bool fail_fast) const {
  const std::size_t n = spec_paths.size();
  Batch batch;
  batch.outcomes.resize(n);
  CancelToken cancel;
  std::mutex mu;
  auto one = [&](std::size_t i) {
    Options o = opts;
    if (fail_fast) o.cancel = &cancel;
    const std::string& path = spec_paths[i];
    if (n > 1) o.log_prefix = "[" + (path == "-" ? std::string("stdin") : fs::path(path).filename().string()) + "] ";
    Outcome out = build(path, o);
    if (!out.ok() && !out.failure.cancelled) {
      std::lock_guard<std::mutex> lock(mu);
      if (!batch.first_failure) {
        batch.first_failure = out.failure;
        batch.first_failed_spec = path;
      }
      if (fail_fast) cancel.cancel(out.failure, path);
    }
    batch.outcomes[i] = std::move(out);
  };
  const int threads = std::max(1, std::min<int>(parallel, static_cast<int>(n)));
  if (threads == 1) {
    for (std::size_t i = 0; i < n; ++i) one(i);
    return batch;
  }
  std::atomic<std::size_t> next{0};
  auto worker = [&] {
    for (std::size_t i; (i = next++) < n;) one(i);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  return batch;
}

}  // namespace kiln::session
