// A build: spec → (base image) → deterministic layers through the store → image value.
//
//   prepare()  resolves the base, walks and hashes the files, computes the tag: no layer built.
//   build()    builds (or finds in the cache) each layer and assembles config and manifest.
//
// When nothing needs the tag before the layers (no registry to ask whether the tag exists),
// prepare_deferred() walks only: build() then hashes each layer's unhashed files as it comes to
// that layer, so hashing overlaps layer writing instead of being a phase of its own, and fills in
// the digests, the tag and the stat index at the end. The image is the same either way.
// Writing the result somewhere is the sinks' job (builder/output.h).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "builder/image.h"
#include "builder/progress.h"
#include "layers/fileset.h"
#include "layers/store.h"
#include "spec/image_spec.h"

namespace kiln::builder {

class RegistrySession;

struct BuildOptions {
  layers::Store* store = nullptr;         // required
  RegistrySession* registries = nullptr;  // required for registry bases
  Progress* progress = nullptr;           // null: silent
  std::vector<std::string> extra_modules; // loaded modules passed by an SDK
  int jobs = 2;                           // threads for hashing and layer writing
  std::int64_t source_date_epoch = 0;     // unless the spec sets one
  bool network = true;                    // RUN steps reach the network (--network none: no)
  std::string run_capture = "auto";       // RUN step capture: auto, overlay or snapshot
  double step_timeout = 0;                // seconds a RUN step may run (0: no limit)
  /// prepare_tag and prepare_deferred: entries a walk thread holds before it spills a sorted run
  /// (0: the default, layers::CollectOptions::spill_budget). Tests set it small to make every walk
  /// spill (and a deferred build stream).
  std::size_t walk_spill_budget = 0;
};

/// Everything known before any layer is built.
struct Prepared {
  const spec::ImageSpec* spec = nullptr;
  std::string base_id;          // "scratch", a base manifest digest, or a nested spec hash
  std::shared_ptr<Prepared> nested;  // the nested base spec, prepared
  layers::FileSet files;
  std::string spec_hash;        // 64 hex
  std::string tag;              // from tag_format
  std::string repository;       // [registry/]name
  std::string source_digest;    // digest of the baked source file set ("" without source)
  std::string image_ref() const { return repository + ":" + tag; }
  std::map<std::string, double> timings;  // seconds: "walk", "hash"

  /// prepare_deferred(): file digests, spec_hash, tag and source_digest are not known yet; build()
  /// fills them in (and records the digests in `index`, saved to `index_file`).
  bool deferred = false;
  std::shared_ptr<layers::StatIndex> index;
  std::filesystem::path index_file;
  /// prepare_deferred() of a tree past the walk's memory budget: `files` holds no source list;
  /// build() reads the source entries from this stream once, planning and writing layers as they
  /// pass (docs/flat-memory.md).
  std::shared_ptr<layers::SourceStream> stream;
  /// prepare_tag(): the tag and what it names, but no file list: not to be built (walk again).
  bool tag_only = false;

  /// A spec listing several platforms (an image index): one Prepared per platform, in the spec's
  /// order, each for the spec with that platform alone (spec::with_platform). This one's spec_hash
  /// and tag are the index's (spec::index_hash, docs/tag.md); its source_digest is the platforms'
  /// (one walk, shared).
  std::vector<std::shared_ptr<Prepared>> platforms;
  bool multi() const { return !platforms.empty(); }
  /// The file set with its lists: `files`, or an index's first platform's (which holds the one
  /// list the platforms share; an index's own `files` says only what its files are).
  const layers::FileSet& file_set() const { return multi() ? platforms.front()->files : files; }
  /// The spec `spec` points to, when this Prepared owns it (a platform's, a narrowed nested base).
  std::shared_ptr<const spec::ImageSpec> own_spec;
};

Prepared prepare(const spec::ImageSpec& spec, const BuildOptions& opts);
/// Resolves the base and walks, looking digests up in the stat index only (see above).
Prepared prepare_deferred(const spec::ImageSpec& spec, const BuildOptions& opts);
/// prepare_deferred; `may_stream` false: always a list (the platforms of an index share one).
Prepared prepare_deferred_impl(const spec::ImageSpec& spec, const BuildOptions& opts, bool may_stream);
/// What prepare() says of the image (spec_hash, tag, source_digest, warnings; an index's platforms
/// too), from one streamed pass, in memory that does not grow with the tree: the walk's entries
/// are read once, in order (layers::collect_files_streamed), looked up in the stat index or hashed
/// a batch at a time, and fed to the tag's hashers as they pass; new digests reach the index in
/// order, through a file. No file list is kept (`files` holds none): for `kiln tag`, not a build.
Prepared prepare_tag(const spec::ImageSpec& spec, const BuildOptions& opts);

/// What happened to one layer.
struct LayerReport {
  std::string label;            // "source (1234 files)", "large file models/w.bin", "base"
  std::string digest, diff_id, media_type;
  std::uint64_t size = 0, tar_size = 0, files = 0;
  bool cache_hit = false, from_base = false;
  double seconds = 0;
};

struct BuildResult {
  Image image;
  std::string manifest_digest, config_digest;
  std::vector<LayerReport> layers;
  std::map<std::string, double> timings;  // seconds: "walk", "hash", "layers", "total"
  std::vector<std::string> warnings;

  /// A multi-platform build: `index` holds each platform's image (in the spec's order),
  /// `manifest_digest` is the index's digest; `image` and `config_digest` are empty, and `layers`
  /// lists every platform's layers.
  std::optional<ImageIndex> index;
};

/// Builds the prepared image. The store receives every new layer; nothing is written elsewhere.
/// A layer that cannot be written throws StepError.
BuildResult build(const Prepared& prep, const BuildOptions& opts);
/// The same for a deferred Prepared, which it completes (hashes, tag, stat index) as it builds.
BuildResult build(Prepared& prep, const BuildOptions& opts);

/// A build step failed: a RUN step's command ("step pip", exit_code its status, what() the cause
/// with its last output lines), or writing a layer ("layer source_root (12 files)": a source file
/// whose content changed while read; exit_code -1). A file kiln may not read is an InputError
/// (exit 2), not a StepError.
class StepError : public std::runtime_error {
 public:
  StepError(std::string step, const std::string& cause, int exit_code = -1)
      : std::runtime_error(cause), step_(std::move(step)), exit_code_(exit_code) {}
  const std::string& step() const { return step_; }
  int exit_code() const { return exit_code_; }
  /// `e` as a StepError of `step`; spec and input errors (and StepErrors) pass unchanged.
  static std::exception_ptr wrap(std::exception_ptr e, const std::string& step) {
    try {
      std::rethrow_exception(e);
    } catch (const StepError&) {
    } catch (const spec::SpecError&) {
    } catch (const layers::InputError&) {
    } catch (const std::exception& x) {
      return std::make_exception_ptr(StepError(step, x.what()));
    } catch (...) {
    }
    return e;
  }

 private:
  std::string step_;
  int exit_code_;
};

/// The labels kiln puts on an image with baked source (see docs/labels.md).
inline constexpr const char* kLabelSpecHash = "dev.kiln.spec-hash";
inline constexpr const char* kLabelSourceDigest = "dev.kiln.source.digest";
inline constexpr const char* kLabelSourceDest = "dev.kiln.source.dest";
inline constexpr const char* kLabelSourceMode = "dev.kiln.source.copy-mode";
inline constexpr const char* kLabelSourceFiles = "dev.kiln.source.files";
/// And on a modelcar (docs/modelcar.md): the model's file set digest, and the base it was built on.
inline constexpr const char* kLabelModelDigest = "dev.kiln.model.digest";
inline constexpr const char* kLabelBaseDigest = "dev.kiln.base.digest";

}  // namespace kiln::builder
