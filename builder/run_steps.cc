// The RUN step engine (see run_steps.h).
#include "builder/run_steps.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>

#include "layers/tar_writer.h"
#include "run/capture.h"
#include "run/rootfs.h"
#include "run/sandbox.h"
#include "run/unpack.h"

namespace fs = std::filesystem;

namespace kiln::builder {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string capture_mode(const StepRunOptions& ro, const layers::Store& store) {
  std::string mode = ro.capture;
  if (mode == "auto")
    if (const char* env = std::getenv("KILN_RUN_CAPTURE"); env && *env) mode = env;
  if (mode == "auto") return run::overlay_supported(store.tmp_dir()) ? "overlay" : "snapshot";
  if (mode == "overlay" && !run::overlay_supported(store.tmp_dir()))
    throw std::runtime_error("overlay capture was asked for, but overlayfs cannot be mounted here (it needs root)");
  if (mode != "overlay" && mode != "snapshot")
    throw std::invalid_argument("unknown capture mode '" + mode + "' (auto, overlay or snapshot)");
  return mode;
}

/// 5 → "5s", 90 → "90s", 600 → "10m", 7200 → "2h", 1.5 → "1.5s".
std::string format_seconds(double s) {
  char buf[64];
  const auto whole = static_cast<long long>(s);
  if (static_cast<double>(whole) == s && whole > 0 && whole % 3600 == 0)
    std::snprintf(buf, sizeof buf, "%lldh", whole / 3600);
  else if (static_cast<double>(whole) == s && whole > 0 && whole % 60 == 0 && whole >= 600)
    std::snprintf(buf, sizeof buf, "%lldm", whole / 60);
  else
    std::snprintf(buf, sizeof buf, "%gs", s);
  return buf;
}

std::string failure_message(const run::SandboxResult& r) {
  std::string msg = "exited with code " + std::to_string(r.exit_code);
  // The shell's way of reporting a signal, or a command's own choice of code: both read the same.
  if (r.exit_code > 128 && r.exit_code < 128 + 65) msg += " (killed by signal " + std::to_string(r.exit_code - 128) + "?)";
  for (const auto& l : r.tail)
    if (l.find("bwrap: execvp /bin/sh") != std::string::npos)
      return msg + (l.find("Exec format error") != std::string::npos
                        ? ": the image's /bin/sh is not a program this machine can execute (built for another "
                          "architecture than its config says?), and RUN steps run under it"
                        : ": the image has no /bin/sh, and RUN steps run under it (use a base image with a shell)");
  if (!r.tail.empty()) {
    msg += "; its last lines:";
    std::size_t from = r.tail.size() > 10 ? r.tail.size() - 10 : 0;
    for (std::size_t i = from; i < r.tail.size(); ++i) msg += "\n    " + r.tail[i];
  }
  return msg;
}

/// The tree steps run on, made only when a step has to run: the cached flat base, then the
/// cached step layers above it (overlay: as lower dirs; snapshot: applied to a private copy).
struct Workspace {
  bool ready = false, overlay = false;
  std::vector<fs::path> lowers;                      // overlay, topmost first
  std::optional<run::RootfsCache::Scratch> scratch;  // snapshot: holds the tree
  fs::path tree;
  std::vector<std::pair<std::string, run::LayerBlob>> pending;  // (chain id it ends, layer)
};

}  // namespace

std::vector<LayerReport> run_steps(Image& img, const std::vector<run::Step>& steps, std::size_t base_layers,
                                   const BuildOptions& opts,
                                   const StepRunOptions& ro, Progress& progress,
                                   const std::function<void()>& fetch_base) {
  std::vector<LayerReport> reports;
  if (steps.empty()) return reports;
  layers::Store& store = *opts.store;
  const bool root = ::geteuid() == 0;
  base_layers = std::min(base_layers, img.layers.size());
  std::vector<run::LayerBlob> base;
  for (std::size_t i = 0; i < base_layers; ++i)
    base.push_back({img.layers[i].diff_id, img.layers[i].desc.media_type, img.layers[i].blob, img.layers[i].desc.digest});
  // Keyed by the base's blob digests as well as its claimed diff_ids (run::base_chain_id): a base
  // lying about its diff_ids gets neither another image's cached tree nor its cached steps.
  std::string chain = run::base_chain_id(base);

  std::optional<run::RootfsCache> cache;
  Workspace ws;
  // Layers above the base (earlier steps, the source and copy layers) join the tree only if a
  // step has to run, as cached step layers do.
  for (std::size_t i = base_layers; i < img.layers.size(); ++i) {
    const Layer& l = img.layers[i];
    chain = run::next_chain_id(chain, l.diff_id);
    ws.pending.push_back({chain, {l.diff_id, l.desc.media_type, l.blob, l.desc.digest}});
  }
  std::string mode;  // decided on the first step that runs
  // What shapes a step layer's bytes besides the step itself. The capture mode does not: both
  // give the same entries. Running rootless does (owners other than root cannot be set).
  const std::string format = std::string(spec::to_string(ro.compression)) + " " + std::to_string(ro.level) + " " +
                             std::to_string(ro.epoch) + (root ? " root" : " rootless");

  auto materialize = [&] {
    if (!cache) cache.emplace(store);
    if (!ws.ready) {
      mode = capture_mode(ro, store);
      ws.overlay = mode == "overlay";
      fetch_base();
      for (std::size_t i = 0; i < base_layers; ++i) base[i].blob = img.layers[i].blob;  // fetched now
      fs::path flat = cache->flat(base, [&](const std::string& m) { progress.log(m); });
      if (ws.overlay) {
        ws.lowers = {flat};
      } else {
        ws.scratch.emplace(cache->scratch());
        ws.tree = ws.scratch->path() / "tree";
        run::copy_tree(flat, ws.tree);
      }
      ws.ready = true;
    }
    for (auto& [c, blob] : ws.pending) {
      if (ws.overlay) {
        ws.lowers.insert(ws.lowers.begin(), cache->diff(c, blob));
      } else {
        run::UnpackOptions o;
        o.preserve_owner = root;
        run::apply_layer(blob.blob, blob.media_type, ws.tree, o);
      }
    }
    ws.pending.clear();
  };

  for (std::size_t i = 0; i < steps.size(); ++i) {
    const run::Step& st = steps[i];
    const std::string label = "step " + st.name;
    const std::string counter = "[" + std::to_string(i + 1) + "/" + std::to_string(steps.size()) + "]";
    LayerReport lr;
    lr.label = label;
    auto t0 = Clock::now();
    const std::string key = run::step_key(chain, st, format);
    layers::LayerRecord rec;
    try {
      std::optional<layers::LayerRecord> found = store.find_layer(key);
      std::optional<layers::FileLock> lock;
      if (!found) {
        lock.emplace(store.lock_layer(key, [&] { progress.log(label + ": another build is running it; waiting"); }));
        found = store.find_layer(key);
      }
      if (found) {
        rec = *found;
        lr.cache_hit = true;
        progress.log(counter + " " + label + ": cached " + rec.digest.substr(0, 19));
      } else {
        materialize();
        progress.log(counter + " " + label + ": running (" + mode + " capture" + (ro.network ? "" : ", no network") + ")");
        std::vector<std::string> targets;
        for (const auto& m : st.mounts) targets.push_back(m.target);
        const std::vector<std::string> mps = run::sandbox_mountpoints(targets);

        run::SandboxSpec sb;
        sb.argv = st.argv;
        sb.env = st.env;
        sb.secret_env = st.secret_env;  // never on bwrap's command line
        sb.workdir = "/";  // the step's script creates and enters its workdir
        sb.network = ro.network;
        sb.mounts = st.mounts;
        std::optional<run::RootfsCache::Scratch> run_dir;
        run::Snapshot before;
        if (ws.overlay) {
          run_dir.emplace(cache->scratch());
          sb.lowers = ws.lowers;
          sb.upper = run_dir->path() / "upper";
          sb.work = run_dir->path() / "work";
          fs::create_directories(sb.upper);
          fs::create_directories(sb.work);
        } else {
          before = run::take_snapshot(ws.tree, mps);
          sb.rootfs = ws.tree;
        }
        run::SandboxIo io;
        io.on_line = [&](std::string_view line) { progress.log("[" + st.name + "] " + std::string(line)); };
        io.stop = [&] { return progress.stop_requested(); };
        io.timeout = ro.timeout;
        run::SandboxResult res = run::run_sandboxed(sb, io);
        if (res.timed_out)
          throw StepError(label, "timed out after " + format_seconds(ro.timeout) +
                                     " (--step-timeout): the step and everything it started were killed");
        if (res.stopped) {
          progress.advance("layer-" + label, 0);  // a layer event: the build log throws Cancelled
          throw std::runtime_error(label + ": stopped");
        }
        if (res.exit_code != 0) throw StepError(label, failure_message(res), res.exit_code);

        run::Capture cap = ws.overlay ? run::capture_overlay(sb.upper, ws.lowers, mps)
                                      : run::capture_snapshot(before, ws.tree, mps, !root);
        for (const auto& w : cap.warnings) progress.warn(label + ": " + w);
        const std::string id = "layer-step" + std::to_string(i);  // "layer…": --fail-fast can stop it
        progress.begin(id, "layer " + label, cap.bytes);
        auto blob = store.new_blob();
        layers::LayerWriteOptions wo;
        wo.compression = ro.compression;
        wo.level = ro.level;
        wo.mtime = ro.epoch;
        layers::WrittenLayer w =
            layers::write_layer(cap.entries, wo, blob->sink(), [&](std::uint64_t n) { progress.advance(id, n); });
        blob->commit(w.digest);
        rec = {w.digest, w.diff_id, w.media_type, w.size, w.tar_size};
        store.put_layer(key, rec);
        lr.files = cap.files;
        const std::string what = cap.entries.empty()
                                     ? "no change (an empty layer)"
                                     : std::to_string(cap.files) + " files, " + std::to_string(cap.whiteouts) +
                                           " removed, " + std::to_string(w.size) + " bytes";
        progress.end(id, counter + " " + label + ": " + w.digest.substr(0, 19) + ", " + what);
        // The next step runs on this one's upper dir: kept as its diff tree, not unpacked again.
        if (ws.overlay) {
          run::drop_mountpoints(sb.upper, ws.lowers, mps);
          ws.lowers.insert(ws.lowers.begin(), cache->adopt_diff(run::next_chain_id(chain, rec.diff_id), sb.upper));
        }
      }
    } catch (...) {
      std::rethrow_exception(StepError::wrap(std::current_exception(), label));
    }
    // A cached layer joins the tree only if a later step has to run.
    if (lr.cache_hit)
      ws.pending.push_back({run::next_chain_id(chain, rec.diff_id), {rec.diff_id, rec.media_type, store.blob_path(rec.digest), rec.digest}});
    chain = run::next_chain_id(chain, rec.diff_id);

    Layer l;
    l.desc.media_type = rec.media_type;
    l.desc.digest = rec.digest;
    l.desc.size = rec.size;
    l.diff_id = rec.diff_id;
    l.blob = store.blob_path(rec.digest);
    l.tar_size = rec.tar_size;
    append_layer(img, std::move(l), st.created_by, ro.created);
    lr.digest = rec.digest;
    lr.diff_id = rec.diff_id;
    lr.media_type = rec.media_type;
    lr.size = rec.size;
    lr.tar_size = rec.tar_size;
    lr.seconds = since(t0);
    reports.push_back(lr);
  }
  return reports;
}

}  // namespace kiln::builder
