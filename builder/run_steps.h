// Running a spec's RUN steps (run/steps.h) on top of its base image: each step's layer comes
// from the cache when its key — parent chain id, step definition, inputs — was built before;
// otherwise the step runs in the sandbox and what it changed becomes the layer. The base is
// unpacked (once per chain id, in the store) only when some step has to run.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "builder/build.h"
#include "builder/image.h"
#include "run/steps.h"

namespace kiln::builder {

struct StepRunOptions {
  spec::Compression compression = spec::Compression::Gzip;
  int level = -1;
  std::int64_t epoch = 0;       // layer mtimes; also SOURCE_DATE_EPOCH inside steps
  std::string created;          // history timestamp
  bool network = true;
  /// "auto" (overlay when it can be mounted, else snapshot), "overlay" or "snapshot";
  /// $KILN_RUN_CAPTURE overrides "auto".
  std::string capture = "auto";
  double timeout = 0;  // seconds a step may run; 0: no limit
};

/// Appends one layer (and history entry) per step to `img`, returning what happened to each.
/// The first `base_layers` layers of `img` are the base (unpacked once into a flat tree, cached
/// by chain id); the layers above them (earlier steps, source and copy layers) are applied on top
/// of it only when a step has to run.
/// `fetch_base` makes the base layers' blobs local (a registry base's are fetched lazily).
/// A step that fails throws StepError naming it, with its exit code and last output lines;
/// the store keeps only complete layers, nothing else is written.
std::vector<LayerReport> run_steps(Image& img, const std::vector<run::Step>& steps, std::size_t base_layers,
                                   const BuildOptions& opts,
                                   const StepRunOptions& ro, Progress& progress,
                                   const std::function<void()>& fetch_base);

}  // namespace kiln::builder
