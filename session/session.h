// One build session: everything that happens to one image, end to end, in the library.
//
//   spec (file, value, or already prepared)
//     → name lock (another build of the same [registry/]name waits, or fails with --no-wait)
//     → a "running" record in the history, and the build's own log
//     → preflight (the dry push) → prepare (walk, hash, tag)
//     → exists check (the tag is a content hash: a tag already in the registry is this image)
//     → build (or, when it exists, the registry's image for the requested outputs)
//     → modelcar lint → commit, in the documented order:
//          1. the blobs into every OCI layout (no tag moves)
//          2. the push: blobs, then the manifest
//          3. docker-archives (each renamed into place)
//          4. the layout tags, then --image-refs
//     → the record, finished (success, exists, failed, cancelled) → an Outcome
//
// A failure at any point moves no tag that a later step would move, and becomes a typed Failure
// (exit code, class, kind, failed step, the log's tail) in the Outcome and in the record. `kiln
// push` (an image from a layout to a registry) is a session too, recorded the same way.
//
// The session prints nothing: events go to the caller's builder::Progress (and to the build's
// log); the caller renders the Outcome. Dependency order: session/ sits above builder/,
// history/ and modelcar/, and below the CLI.
#pragma once

#include <atomic>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "builder/build.h"
#include "builder/output.h"
#include "builder/progress.h"
#include "builder/registry_io.h"
#include "history/build_log.h"
#include "history/history.h"
#include "layers/store.h"
#include "modelcar/lint.h"
#include "registry/reference.h"
#include "session/failure.h"
#include "spec/image_spec.h"

namespace kiln::session {

/// Cancels the builds of a run that are not done yet. The first cancel() names the cause.
class CancelToken {
 public:
  /// Cancels; the first call's `origin` (a spec path) and `cause` are kept. Thread-safe.
  void cancel(const Failure& cause, const std::string& origin);
  bool cancelled() const { return flag_.load(); }
  const std::atomic<bool>& flag() const { return flag_; }
  /// The first cause (a default Failure, and "", when cancelled without one).
  Failure cause() const;
  std::string origin() const;

 private:
  std::atomic<bool> flag_{false};
  mutable std::mutex mu_;
  bool has_cause_ = false;
  Failure cause_;
  std::string origin_;
};

/// A Progress for one build: passes every event on (with a prefix, e.g. "[a.json] "), writes the
/// log lines to the build's log (history's LogSink), and stops the build once `cancel` is set: the
/// next layer event (begin/advance of a "layer…" task) throws Cancelled. Registry transfers are
/// never interrupted mid-callback.
class BuildProgress : public builder::Progress {
 public:
  /// `interrupt`: a signal number once the process must stop (SIGINT, SIGTERM); it stops the build
  /// as `cancel` does.
  BuildProgress(builder::Progress* inner, history::LogSink& sink, std::string prefix = "",
                const std::atomic<bool>* cancel = nullptr, const std::atomic<int>* interrupt = nullptr);
  void log(const std::string& line) override;
  void warn(const std::string& line) override;
  void begin(const std::string& id, const std::string& label, std::uint64_t total) override;
  void advance(const std::string& id, std::uint64_t delta) override;
  void end(const std::string& id, const std::string& summary) override;
  void phase_begin(builder::Phase ph, std::uint64_t files, std::uint64_t bytes) override { inner_->phase_begin(ph, files, bytes); }
  void phase_advance(builder::Phase ph, std::uint64_t files, std::uint64_t bytes) override { inner_->phase_advance(ph, files, bytes); }
  void phase_end(builder::Phase ph) override { inner_->phase_end(ph); }
  void layers_planned(std::size_t count, std::uint64_t bytes) override { inner_->layers_planned(count, bytes); }
  void layer_cached(const std::string& label, std::uint64_t bytes) override { inner_->layer_cached(prefix_ + label, bytes); }
  bool stop_requested() const override {
    return (cancel_ && cancel_->load()) || (interrupt_ && interrupt_->load() != 0);
  }
  /// A line for the log only (not passed on).
  void note(const std::string& line);
  /// Throws Cancelled if the build is cancelled (for callers between steps).
  void checkpoint();
  /// Did this throw Cancelled into its build?
  bool cancelled() const { return threw_cancel_.load(); }

 private:
  void check_cancel(const std::string& id);
  builder::Progress* inner_;
  builder::NullProgress null_;
  history::LogSink& sink_;
  std::string prefix_;
  const std::atomic<bool>* cancel_;
  const std::atomic<int>* interrupt_;
  std::atomic<bool> threw_cancel_{false};
};

/// What the builds of one run share.
struct Environment {
  layers::Store* store = nullptr;        // null when it could not be opened: then
  std::exception_ptr store_error;        // each build fails (and is recorded) with this
  history::HistoryDb* history = nullptr; // null: no record, no name lock, no log file
  builder::Progress* progress = nullptr; // where events go (null: nowhere)
  builder::RegistrySettings registry;    // docker_config "" = the spec's registry_config, else the default
  /// Set to a signal number (SIGINT, SIGTERM) when the run must stop, e.g. by a signal handler:
  /// each build stops as --fail-fast stops one (at its next layer event, a running RUN step
  /// killed, never mid-commit), and fails as interrupted (exit 128 + signal, recorded
  /// "interrupted"); builds not started yet fail so at once. Null: never.
  const std::atomic<int>* interrupt = nullptr;
};

/// How one build runs.
struct Options {
  /// Threads, source_date_epoch, loaded modules, RUN step settings, …: the session sets store,
  /// registries and progress itself.
  builder::BuildOptions build;
  std::vector<builder::OutputTarget> outputs;
  enum class Push { Auto, Always, Never };
  Push push = Push::Auto;                      // Auto: when the spec sets a registry (as flytekit does)
  std::optional<registry::Reference> push_to;  // instead of the spec's [registry/]name:tag ("" tag: the spec's)
  bool skip_existing = true;                   // a pushed tag already there: nothing built (--force: false)
  bool preflight = true;                       // the dry push before anything is hashed
  bool wait_for_name = true;                   // false: another build of the name → BusyError (exit 6)
  std::string image_refs;                      // append name:tag@digest to this file
  bool lint_volume_only = false;               // modelcar lint: the image is only an image volume
  std::string kind = "build";                  // the record's kind: "build", "modelcar"
  std::string log_prefix;                      // before every line passed on (not in the log file)
  const CancelToken* cancel = nullptr;         // cancels this build (--fail-fast)
  /// Applied to a spec read from a file before it is built (the CLI's --platform and
  /// KILN_DEFAULT_REPO); may throw (a usage error fails the build like any other).
  std::function<void(spec::ImageSpec&)> adjust_spec;
};

struct WrittenOutput {
  std::string target;  // as given ("oci:DIR[:TAG]", "docker-archive:FILE")
  std::string digest;  // the manifest digest written
};

/// How a build (or push) ended.
struct Outcome {
  std::string kind = "build";
  std::string status = "failed";  // "success" | "exists" | "failed" | "cancelled" | "interrupted"
  bool ok() const { return status == "success" || status == "exists"; }
  std::string spec_path;          // as given ("-" = stdin); the source for a push
  std::string build_id, log_path; // the record and its log ("" without a history)
  std::string image;              // [registry/]name:tag (the repository alone before the tag is known)
  std::string repository, tag, spec_hash;
  std::string digest, config_digest;  // the manifest digest (exists: the registry's)
  std::optional<registry::Reference> push_target;
  std::optional<builder::PushResult> pushed;
  std::vector<WrittenOutput> outputs;  // in the order the targets were given
  std::vector<builder::LayerReport> layers;
  std::map<std::string, double> timings;
  std::vector<std::string> warnings;
  bool has_source = false;
  std::string source_digest, source_dest, copy_mode;
  std::map<std::string, std::string> annotations;  // the manifest's
  /// A spec for several platforms: `digest` is the image index's, and each platform's image is here
  /// (in the spec's order); `config_digest` and `annotations` are empty.
  struct PlatformImage {
    std::string platform, digest, config_digest;
  };
  std::vector<PlatformImage> platforms;
  std::vector<modelcar::Finding> lint;             // a modelcar's lint findings
  Failure failure;                                 // when !ok()
  double seconds = 0;
};

/// The builds of one run (several specs): each outcome in spec order, and the first failure in
/// time (its exit code is the run's).
struct Batch {
  std::vector<Outcome> outcomes;
  std::optional<Failure> first_failure;
  std::string first_failed_spec;
};

/// `kiln preflight REF`: the dry push, as data.
struct PreflightOutcome {
  builder::PreflightReport report;  // each check
  std::optional<Failure> failure;   // the failed check's, as a build reports it (failed_step "preflight")
};

class Session {
 public:
  explicit Session(Environment env) : env_(std::move(env)) {}

  /// A spec file ("-" = stdin), end to end.
  Outcome build(const std::string& spec_path, const Options& opts) const;
  /// A spec value (kiln modelcar's, an SDK's); `origin` names it in the record.
  Outcome build(const spec::ImageSpec& spec, const std::string& origin, const Options& opts) const;
  /// A spec already prepared (kiln build --plan prepares every image first).
  Outcome build(const builder::Prepared& prep, const Options& opts) const;
  /// Several spec files into one store: up to `parallel` at once, with `opts.build.jobs` threads
  /// each. With `fail_fast`, the first failure cancels the builds not done yet (reported as
  /// cancelled, with the first failure's exit code); otherwise they all finish.
  Batch build_all(const std::vector<std::string>& spec_paths, const Options& opts, int parallel, bool fail_fast) const;
  /// `kiln push`: the image of an OCI layout ("oci:DIR[:TAG]", resolved to `platform`) to
  /// `target`'s tag: blobs the registry has are skipped, the manifest goes last. With `platform`
  /// "", a tag naming an image index pushes the whole index (each platform's image by digest, the
  /// index last); one naming an image pushes it.
  Outcome push(const std::string& source, const std::string& platform, const registry::Reference& target,
               const Options& opts) const;
  /// The dry push to `target` (reference, reachability, credentials, repository, push
  /// permission), with the environment's registry settings; recorded nowhere.
  PreflightOutcome preflight(const std::string& target) const;

  const Environment& environment() const { return env_; }

 private:
  Environment env_;
};

/// The layer blobs of `img`, bottom first (a registry image's layers must be fetched first).
std::vector<std::filesystem::path> layer_blobs(const builder::Image& img);
/// The modelcar lint of an image value.
std::vector<modelcar::Finding> lint_modelcar(const builder::Image& img, const modelcar::LintOptions& opts);

/// The spec as recorded in the history: its canonical form, plus the fields that name the image.
nlohmann::json spec_record(const spec::ImageSpec& s);

}  // namespace kiln::session
