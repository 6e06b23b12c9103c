// Image assembly: base + source layers (large files and already-compressed files split out) +
// config, through the content-addressed store.
#include "builder/build.h"

#include <fcntl.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <system_error>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include <xxhash.h>

#include "builder/errors.h"
#include "builder/oci_layout.h"
#include "builder/registry_io.h"
#include "builder/run_steps.h"
#include "layers/digest.h"
#include "layers/entry_spill.h"
#include "layers/parallel.h"
#include "layers/tar_writer.h"
#include "run/exec_check.h"
#include "run/rootfs.h"
#include "run/steps.h"
#include "spec/tag.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace kiln::builder {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

/// Files of these formats are compressed already (or are model weights that do not compress):
/// above kPackedMin they go to an uncompressed layer of their own kind.
bool precompressed_name(std::string_view path) {
  static const char* exts[] = {".safetensors", ".bin", ".gguf", ".ggml", ".pt", ".pth", ".ckpt", ".onnx",
                               ".h5", ".keras", ".pb", ".tflite", ".npz", ".zip", ".gz", ".tgz", ".bz2",
                               ".xz", ".zst", ".zstd", ".lz4", ".7z", ".rar", ".whl", ".jar", ".parquet",
                               ".jpg", ".jpeg", ".png", ".gif", ".webp", ".mp3", ".mp4", ".webm", ".avif"};
  std::size_t dot = path.rfind('.');
  if (dot == std::string::npos || path.find('/', dot) != std::string::npos) return false;
  std::string ext(path.substr(dot));
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const char* e : exts)
    if (ext == e) return true;
  return false;
}
constexpr std::uint64_t kPackedMin = 1 << 20;

/// One layer to produce: the files it holds (sorted by dest), and how to compress them.
struct LayerPlan {
  std::string label;       // for people
  std::string created_by;  // history entry
  std::vector<const layers::FileEntry*> files;
  spec::Compression compression = spec::Compression::Gzip;
  int level = -1;          // codec default
  bool sample = false;     // choose compression by sampling the content (large files)
  std::uint64_t bytes = 0, nfiles = 0;
  std::string key;
  std::string modelcar_root;  // "models" for a modelcar: every directory at or below it is 0775
  /// A streamed build hands a layer over before the chunk count is known: `label` is what its
  /// progress shows, `final_label` ("part i/N") what the result says, set once planning ends.
  std::string final_label;
  bool handed = false;
  /// A streamed build: the plan owns its entries (freed once its layer is written), with each
  /// one's position in the walk's order and whether its digest was unknown when planned.
  std::vector<std::unique_ptr<layers::FileEntry>> owned;
  std::vector<std::uint64_t> ordinals;
  std::vector<char> unknown;
  bool streamed = false;
  LayerReport report;           // a streamed plan's outcome (the list path keeps them in arrays)
  layers::LayerRecord record;
};

/// Source layers are cut into content-defined chunks of at least kChunkMin bytes: a cut falls
/// after a path whose hash has its low 3 bits clear (or at kChunkMax). Cut points depend on paths,
/// not on offsets, so editing or adding one file rebuilds one chunk, not the whole tree.
constexpr std::uint64_t kChunkMin = 16ull << 20;
constexpr std::uint64_t kChunkMax = 32ull << 20;
/// ... or of at least kChunkEntriesMin entries, and never more than kChunkEntriesMax: a tree of
/// tiny files would otherwise make chunks of hundreds of thousands of entries (16 MiB of 40-byte
/// files is 400,000 tar headers), which a streamed build could not hold while writing them. A tree
/// of files averaging over 1 KiB never reaches the cap: its layers are unchanged by it.
constexpr std::size_t kChunkEntriesMin = 16384;
constexpr std::size_t kChunkEntriesMax = 32768;

/// Who owns the source and copy files: a numeric `user` (uid[:gid], as the spec validates it,
/// spec::numeric_owner), else root (a name: kiln does not read the base's /etc/passwd).
std::pair<std::uint32_t, std::uint32_t> owner_of(const spec::ImageSpec& s) {
  if (!s.user) return {0, 0};
  return spec::numeric_owner(*s.user).value_or(std::pair<std::uint32_t, std::uint32_t>{0, 0});
}

/// For each file of a layer, the index of the first file in the layer sharing its inode (itself
/// when it has no earlier link): later links are stored as tar hardlinks to the first.
std::vector<std::size_t> hardlink_groups(const std::vector<const layers::FileEntry*>& files) {
  std::vector<std::size_t> group(files.size());
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::size_t> first;
  for (std::size_t i = 0; i < files.size(); ++i) {
    group[i] = i;
    const layers::FileEntry* f = files[i];
    if (f->type != layers::FileEntry::Type::File || f->nlink < 2) continue;
    group[i] = first.emplace(std::make_pair(f->key.dev, f->key.ino), i).first->second;
  }
  return group;
}

/// The cache key: every input that shapes the layer's bytes. Parent directories are a function of
/// the paths, so they need not be listed; hardlinks enter as positions within the layer.
std::string layer_key(const LayerPlan& p, std::int64_t mtime, std::uint32_t uid, std::uint32_t gid) {
  layers::KeyHasher h;
  h.field("kiln-layer-v3");  // v3: gzip level 1 by kiln's fast_deflate (v2: libdeflate), 1 MiB pieces
  h.field(p.sample ? "auto" : spec::to_string(p.compression));
  h.field(static_cast<std::uint64_t>(p.level + 1));
  h.field(static_cast<std::uint64_t>(mtime));
  h.field(static_cast<std::uint64_t>(uid) << 32 | gid);
  if (!p.modelcar_root.empty()) h.field("modelcar-dirs " + p.modelcar_root);  // implicit parents' mode
  std::vector<std::size_t> groups = hardlink_groups(p.files);
  char hex[64];
  for (std::size_t i = 0; i < p.files.size(); ++i) {
    const layers::FileEntry& f = *p.files[i];
    h.field(f.dest);
    h.field(static_cast<std::uint64_t>(f.type) << 32 | f.mode);
    h.field(f.size);
    if (f.type == layers::FileEntry::Type::Symlink) {
      h.field(f.link_target());
    } else {  // the hex digest ("" for a directory), without a string per file
      if (!f.sha256.empty()) f.sha256.hex_to(hex);
      h.field(std::string_view(hex, f.sha256.empty() ? 0 : sizeof hex));
    }
    h.field(static_cast<std::uint64_t>(groups[i]));
  }
  return h.hex();
}

/// The tar entries of a planned layer (parents added, sorted, hardlinks linked), made one at a
/// time as the layer is written: a layer of n files holds the order (4 bytes a file) and the
/// hardlink groups (8), not n TarEntry.
class LayerEntries {
 public:
  LayerEntries(const LayerPlan& p, std::uint32_t uid, std::uint32_t gid)
      : p_(p), uid_(uid), gid_(gid), groups_(hardlink_groups(p.files)),
        order_(p.files.size(), [&p](std::size_t i) { return std::string_view(p.files[i]->dest); }) {}

  bool next(layers::TarEntry& t) {
    const std::string* parent = nullptr;
    if (!order_.next(&current_, &parent)) return false;
    t.uid = uid_;
    t.gid = gid_;
    t.size = 0;
    t.link_target.clear();
    t.source.clear();
    t.capability.clear();
    t.mtime_ns = t.ctime_ns = 0;
    t.dev = t.ino = 0;
    if (parent) {
      current_ = kNone;
      t.path = *parent;
      t.type = layers::TarEntry::Type::Dir;
      t.mode = 0755;
    } else {
      const layers::FileEntry& f = *p_.files[current_];
      t.path = f.dest;
      t.mode = f.mode;
      switch (f.type) {
        case layers::FileEntry::Type::Dir: t.type = layers::TarEntry::Type::Dir; break;
        case layers::FileEntry::Type::Symlink:
          t.type = layers::TarEntry::Type::Symlink;
          t.link_target = f.link_target();
          break;
        case layers::FileEntry::Type::File:
          if (groups_[current_] != current_) {  // a later link of a file in this layer
            t.type = layers::TarEntry::Type::Hardlink;
            t.link_target = p_.files[groups_[current_]]->dest;
            break;
          }
          t.type = layers::TarEntry::Type::File;
          t.size = f.size;
          t.source = f.abs();
          t.mtime_ns = f.key.mtime_ns;
          t.ctime_ns = f.key.ctime_ns;
          t.dev = f.key.dev;
          t.ino = f.key.ino;
          break;
      }
    }
    // The parents a layer adds implicitly must match the walked directories, or a later layer would
    // reset /models to 0755.
    const std::string& root = p_.modelcar_root;
    if (!root.empty() && t.type == layers::TarEntry::Type::Dir &&
        (t.path == root || (t.path.size() > root.size() && t.path.compare(0, root.size(), root) == 0 &&
                            t.path[root.size()] == '/')))
      t.mode = spec::kModelcarDirMode;
    return true;
  }
  /// The plan's file next() gave last (null for a parent directory it added).
  const layers::FileEntry* current() const { return current_ == kNone ? nullptr : p_.files[current_]; }

 private:
  static constexpr std::size_t kNone = static_cast<std::size_t>(-1);
  const LayerPlan& p_;
  std::uint32_t uid_, gid_;
  std::vector<std::size_t> groups_;
  layers::LayerOrder order_;
  std::size_t current_ = kNone;
};

/// Splits files into layers, one file at a time (in dest order): one layer per large file, one for
/// already-compressed files, and the rest (directories included) in content-defined chunks. A
/// layer goes to `ready` (when given) as soon as no later file can join it: a chunk once cut, a
/// large file's layer, unless they hold a file with several links (a later link joins its first
/// link's layer: the tag records the link, so the tar must store it as one). finish() returns
/// every plan in the image's order: stable, heavy layers first. The entries must outlive the plans.
class LayerPlanner {
 public:
  LayerPlanner(std::string what, const spec::ImageSpec& s, std::function<void(LayerPlan*)> ready = nullptr)
      : what_(std::move(what)), s_(s), ready_(std::move(ready)) {
    if (s_.modelcar) modelcar_root_ = std::string(spec::kModelcarDest).substr(1);
    packed_.modelcar_root = modelcar_root_;
  }

  /// Adds `f` (a streamed build: `own` holds it, and the plan it lands in takes it, with its
  /// position `ordinal` in the walk and `unknown`, whether its digest was unknown).
  void add(const layers::FileEntry& f, std::unique_ptr<layers::FileEntry> own = nullptr, std::uint64_t ordinal = 0,
           bool unknown = false) {
    own_ = std::move(own);
    ordinal_ = ordinal;
    unknown_ = unknown;
    const bool file = f.type == layers::FileEntry::Type::File;
    const bool linked = file && f.nlink > 1;
    if (file && !f.link_to().empty()) {
      auto it = home_.find(f.link_to());
      if (it != home_.end()) {
        auto [kind, i] = it->second;
        LayerPlan& p = kind == 'L' ? large_[i] : kind == 'P' ? packed_ : chunks_[i];
        attach(p, f);
        ++p.nfiles;
        home_[f.dest] = {kind, i};
        return;
      }
    }
    if (file && f.size >= s_.large_file_threshold) {
      if (linked) home_[f.dest] = {'L', large_.size()};
      LayerPlan& p = large_.emplace_back();
      p.label = what_ + " large file " + std::string(f.rel());
      p.created_by = "kiln: COPY " + std::string(f.rel()) + " /" + f.dest;
      p.sample = true;
      p.bytes = f.size;
      p.nfiles = 1;
      attach(p, f);
      p.modelcar_root = modelcar_root_;
      held_large_.push_back(linked);
      if (!linked) hand_over(p);
    } else if (file && f.size >= kPackedMin && precompressed_name(f.rel())) {
      if (linked) home_[f.dest] = {'P', 0};
      packed_.bytes += f.size;
      ++packed_.nfiles;
      attach(packed_, f);
    } else {
      // The caps are checked before adding, so no chunk overshoots them by its last file.
      if (!chunks_.empty() && !chunks_.back().files.empty() &&
          (chunks_.back().bytes + f.size > kChunkMax || chunks_.back().files.size() >= kChunkEntriesMax))
        cut();
      if (chunks_.empty()) new_chunk();
      LayerPlan& c = chunks_.back();
      if (linked) {
        home_[f.dest] = {'C', chunks_.size() - 1};
        held_chunks_.back() = true;
      }
      c.bytes += f.size;
      c.nfiles += file;
      attach(c, f);
      if ((c.bytes >= kChunkMin || c.files.size() >= kChunkEntriesMin) && (XXH3_64bits(f.dest.data(), f.dest.size()) & 7) == 0)
        cut();
    }
  }

  /// Every plan, in the image's order; the held ones (and the last chunk, and the packed layer) go
  /// to `ready` now. Each plan's final label and created_by are set ("part i/N" needs N): a plan
  /// handed over keeps the label it was handed with until its layer is written.
  std::vector<LayerPlan*> finish() {
    if (!chunks_.empty() && chunks_.back().files.empty()) {
      chunks_.pop_back();
      held_chunks_.pop_back();
    }
    std::vector<LayerPlan*> out;
    for (std::size_t i = 0; i < large_.size(); ++i) {
      out.push_back(&large_[i]);
      if (held_large_[i]) hand_over(large_[i]);
    }
    if (!packed_.files.empty()) {
      packed_.label = what_ + " compressed files (" + std::to_string(packed_.nfiles) + ")";
      packed_.created_by = "kiln: COPY " + what_ + " (already-compressed files) " + s_.source_dest;
      packed_.compression = spec::Compression::None;
      packed_.final_label = packed_.label;
      out.push_back(&packed_);
      hand_over(packed_);
    }
    for (std::size_t i = 0; i < chunks_.size(); ++i) {
      LayerPlan& c = chunks_[i];
      std::string part = chunks_.size() > 1 ? " part " + std::to_string(i + 1) + "/" + std::to_string(chunks_.size()) : "";
      c.final_label = what_ + part + " (" + std::to_string(c.nfiles) + " files)";
      c.created_by = "kiln: COPY " + what_ + part + " " + s_.source_dest;
      if (!c.handed) c.label = c.final_label;
      out.push_back(&c);
      if (held_chunks_[i] || i + 1 == chunks_.size()) hand_over(c);
    }
    for (LayerPlan& l : large_) l.final_label = l.label;
    return out;
  }

 private:
  void attach(LayerPlan& p, const layers::FileEntry& f) {
    p.files.push_back(&f);
    if (!own_) return;
    p.streamed = true;
    p.owned.push_back(std::move(own_));
    p.ordinals.push_back(ordinal_);
    p.unknown.push_back(unknown_);
  }
  void new_chunk() {
    LayerPlan& c = chunks_.emplace_back();
    c.compression = s_.compression;
    c.modelcar_root = modelcar_root_;
    held_chunks_.push_back(false);
  }
  /// The current chunk is complete: handed over unless a later link may join it.
  void cut() {
    const std::size_t i = chunks_.size() - 1;
    if (!held_chunks_[i]) {
      LayerPlan& c = chunks_[i];
      c.label = what_ + " part " + std::to_string(i + 1) + " (" + std::to_string(c.nfiles) + " files)";
      hand_over(c);
    }
    new_chunk();
  }
  void hand_over(LayerPlan& p) {
    if (!ready_ || p.handed) return;
    p.handed = true;
    ready_(&p);
  }

  std::string what_;
  std::string modelcar_root_;  // "models" for a modelcar, else ""
  const spec::ImageSpec& s_;
  std::function<void(LayerPlan*)> ready_;
  std::deque<LayerPlan> large_, chunks_;  // deques: a plan handed over never moves
  LayerPlan packed_;
  std::vector<char> held_large_, held_chunks_;  // holds a file another may link to
  std::map<std::string, std::pair<char, std::size_t>> home_;  // multiply-linked files' layers
  std::unique_ptr<layers::FileEntry> own_;  // what add() was given, until attached
  std::uint64_t ordinal_ = 0;
  bool unknown_ = false;
};

/// The plans of a whole list (the list path): in the image's order, each with its final label.
void plan_layers(const std::vector<layers::FileEntry>& files, const std::string& what, const spec::ImageSpec& s,
                 std::vector<LayerPlan>* out) {
  if (files.empty()) return;
  LayerPlanner planner(what, s);
  for (const auto& f : files) planner.add(f);
  for (LayerPlan* p : planner.finish()) out->push_back(std::move(*p));
}

/// Reads the first MiB of a file to decide whether compressing it pays.
spec::Compression sample_compression(const layers::FileEntry& f, spec::Compression preferred) {
  if (precompressed_name(f.rel())) return spec::Compression::None;
  int fd = -1;
  try {
    fd = layers::open_walked_file(f);  // the walked file itself, never a path swapped since
  } catch (const layers::InputError&) {
    return preferred;  // the layer writer reports it
  }
  std::vector<char> buf(1 << 20);
  ssize_t n = ::read(fd, buf.data(), buf.size());
  ::close(fd);
  if (n <= 0) return preferred;
  return layers::worth_compressing(buf.data(), static_cast<std::size_t>(n)) ? preferred : spec::Compression::None;
}

/// Fills `t` with the tag's view of an entry (assigned, so a reused TagFile allocates nothing).
void to_tag_file(const layers::FileEntry& f, spec::TagFile& t) {
  t.dest = f.dest;
  t.mode = f.mode;
  switch (f.type) {
    case layers::FileEntry::Type::File:
      t.type = f.link_to().empty() ? 'f' : 'h';
      if (!f.link_to().empty()) {
        t.content = f.link_to();
      } else if (f.sha256.empty()) {
        t.content.clear();
      } else {
        t.content.resize(64);
        f.sha256.hex_to(t.content.data());
      }
      break;
    case layers::FileEntry::Type::Dir:
      t.type = 'd';
      t.content.clear();
      break;
    case layers::FileEntry::Type::Symlink:
      t.type = 'l';
      t.content = f.link_target();
      break;
  }
}

std::vector<spec::TagFile> tag_files(const std::vector<layers::FileEntry>& files) {
  std::vector<spec::TagFile> out(files.size());
  for (std::size_t i = 0; i < files.size(); ++i) to_tag_file(files[i], out[i]);
  return out;
}

bool sorted_by_dest(const std::vector<layers::FileEntry>& files) {
  return std::is_sorted(files.begin(), files.end(),
                        [](const layers::FileEntry& a, const layers::FileEntry& b) { return a.dest < b.dest; });
}

std::string index_key(const fs::path& dir) {
  layers::KeyHasher h;
  h.field("stat-index");
  h.field(fs::weakly_canonical(dir).string());
  return h.hex();
}

/// The layer blobs of a base read from an OCI layout hold the bytes their digests name: hashed
/// like registry pulls, once per blob identity (the store remembers what it verified).
void verify_layout_base(const Image& img, const std::string& base_name, const layers::Store& store) {
  for (const Layer& l : img.layers) {
    bool ok = false;
    try {
      ok = store.verify_external(l.blob, l.desc.digest);
    } catch (const std::system_error& e) {
      throw BaseError("base_image " + base_name + ": cannot read layer blob " + l.desc.digest + ": " + e.what());
    }
    if (!ok)
      throw BaseError("base_image " + base_name + ": layer blob " + l.desc.digest +
                      " does not match its digest (its bytes were changed: the layout is corrupt or was tampered with)");
  }
}

/// A base whose config names another platform than the spec's is refused: kiln never labels an
/// amd64 image arm64 (an index was already resolved to the spec's platform).
void check_platform(const Image& img, const spec::ImageSpec& s) {
  Platform want = parse_platform(s.platform);
  auto field = [&](const char* k) {
    auto it = img.config.find(k);
    return it != img.config.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  std::string os = field("os"), arch = field("architecture"), variant = field("variant");
  bool differs = (!os.empty() && os != want.os) || (!arch.empty() && arch != want.architecture) ||
                 (!variant.empty() && !want.variant.empty() && variant != want.variant);
  if (!differs) return;
  std::string have = os + "/" + arch + (variant.empty() ? "" : "/" + variant);
  throw spec::SpecError("platform", s.origin + ": field 'platform' is " + s.platform + ", but the base image " +
                                        s.base_image.ref + " is " + have +
                                        "; kiln does not cross-build: use a base for " + s.platform +
                                        " (or an index that has one), or set platform to " + have);
}

/// RUN steps execute the base's own programs: refused (before anything is unpacked or run) for a
/// platform this machine cannot execute, with the way out (run/exec_check.h).
void check_steps_can_run(const spec::ImageSpec& s) {
  const std::string why = run::why_cannot_execute(s.platform, run::host_architecture(), "/proc/sys/fs/binfmt_misc");
  if (!why.empty()) throw spec::SpecError("platform", s.origin + ": field 'platform' is " + s.platform + ": " + why);
}

/// The same for a spec and its nested base specs, before any of them is built.
void check_steps_can_run_all(const spec::ImageSpec& s) {
  if (!run::plan_steps(s, {}, "", 0).empty()) check_steps_can_run(s);
  if (s.base_image.kind == spec::BaseImage::Kind::Spec && s.base_image.spec) check_steps_can_run_all(*s.base_image.spec);
}

registry::Reference parse_base_reference(const spec::ImageSpec& s) {
  try {
    return registry::parse_reference(s.base_image.ref);
  } catch (const registry::ReferenceError& e) {
    throw spec::SpecError("base_image", s.origin + ": field 'base_image': " + e.what());
  }
}

}  // namespace

namespace {

/// The base resolved (its id known), nothing walked.
Prepared prepare_base(const spec::ImageSpec& s, const BuildOptions& opts) {
  Prepared p;
  p.spec = &s;
  p.repository = spec::repository(s);
  // Whatever goes wrong with the base is about the field base_image: the failure names it (and a
  // GitHub annotation points at its line). A bad reference is a SpecError on it already.
  registry::Reference base_ref;
  if (s.base_image.kind == spec::BaseImage::Kind::Registry) base_ref = parse_base_reference(s);
  try {
    switch (s.base_image.kind) {
      case spec::BaseImage::Kind::Scratch: p.base_id = "scratch"; break;
      case spec::BaseImage::Kind::OciLayout:
        p.base_id = resolve_oci_layout(s.base_image.layout_dir, s.base_image.layout_tag, s.platform);
        break;
      case spec::BaseImage::Kind::Spec: {
        const spec::ImageSpec& inner = *s.base_image.spec;
        if (inner.multi_platform()) {
          // A base for several platforms: this spec's platform of it.
          const auto list = inner.platforms();
          if (std::find(list.begin(), list.end(), s.platform) == list.end())
            throw spec::SpecError("base_image", s.origin + ": the nested base spec is for " + inner.platform +
                                                    ", not for this spec's platform " + s.platform);
          auto own = std::make_shared<const spec::ImageSpec>(spec::with_platform(inner, s.platform));
          p.nested = std::make_shared<Prepared>(prepare(*own, opts));
          p.nested->own_spec = std::move(own);
        } else {
          p.nested = std::make_shared<Prepared>(prepare(inner, opts));
        }
        p.base_id = "spec:" + p.nested->spec_hash;
        break;
      }
      case spec::BaseImage::Kind::Registry: {
        if (!opts.registries) throw std::logic_error("a registry base needs a registry session");
        const registry::Reference& ref = base_ref;
        try {
          p.base_id = resolve_remote(*opts.registries, ref, s.platform, *opts.store);
        } catch (const registry::RegistryError& e) {
          // Say which field led kiln to the registry, and the way around an unreachable one.
          using K = registry::RegistryError::Kind;
          const bool reach = e.kind() == K::Unreachable || e.kind() == K::UnknownHost || e.kind() == K::Transient;
          throw registry::RegistryError(
              e.kind(),
              "field 'base_image': cannot pull '" + s.base_image.ref + "': " + e.what() +
                  (reach ? "; to build without this registry, copy the base to a local layout (skopeo copy docker://" +
                               ref.str() + " oci:DIR:TAG) and set base_image to \"oci:DIR:TAG\""
                         : std::string()),
              e.status(), e.code());
        }
        break;
      }
    }
  } catch (...) {
    rethrow_with_field("base_image");
  }
  return p;
}

/// Loads the stat index of the tree `s` walks (into `index`, from `*index_file`) and returns the
/// walk's options: progress, the git memo beside the index, the spill directory and budget.
layers::CollectOptions walk_options(const spec::ImageSpec& s, const BuildOptions& opts, Progress& progress,
                                    layers::StatIndex& index, fs::path* index_file) {
  layers::CollectOptions co;
  co.extra_modules = opts.extra_modules;
  co.walked = [&progress](std::uint64_t files, std::uint64_t bytes) { progress.phase_advance(Phase::Walk, files, bytes); };
  // Keyed on what the walk read: source_root when set, else the directory copy entries resolve in.
  // Specs sharing a root share the index (it keeps entries another walk saw). Loaded first: its
  // size is the walk's size hint (no doubling of the entry list on a rebuild).
  *index_file = opts.store->stat_index_path(index_key(s.source_root ? *s.source_root : s.base_dir));
  index.load(*index_file);
  co.expected_entries = index.loaded_size() + index.loaded_size() / 16;
  co.git_memo = fs::path(*index_file).replace_extension(".git");  // beside the stat index
  co.spill_dir = opts.store->tmp_dir();  // (a streamed walk's sorted runs, unnamed)
  if (opts.walk_spill_budget) co.spill_budget = opts.walk_spill_budget;
  if (opts.jobs == 1) co.jobs = 1;  // --jobs 1: one thread for everything; else as the load allows
  return co;
}

/// The base resolved, the files walked and their digests looked up in the stat index (p.index).
/// `stream`: walked as a stream (collect_files_streamed); when the walk spilled (a tree past its
/// budget), the stream is kept for the build (Prepared::stream), else its entries become the list.
Prepared prepare_walk(const spec::ImageSpec& s, const BuildOptions& opts, bool stream = false) {
  Prepared p = prepare_base(s, opts);
  NullProgress silent;
  Progress& progress = opts.progress ? *opts.progress : silent;
  auto t0 = Clock::now();
  p.index = std::make_shared<layers::StatIndex>();
  const layers::CollectOptions co = walk_options(s, opts, progress, *p.index, &p.index_file);
  progress.phase_begin(Phase::Walk, 0, 0);
  if (!stream) {
    p.files = layers::collect_files(s, co);
  } else {
    std::unique_ptr<layers::SourceStream> source;
    p.files = layers::collect_files_streamed(s, co, &source);
    if (source->spilled_runs() > 0) {
      p.stream = std::move(source);
      ::malloc_trim(0);  // the walk threads' buffers, freed: not kept through the build
    } else {
      layers::FileEntry e;
      while (source->next(e)) p.files.source.push_back(std::move(e));
      p.files.source.shrink_to_fit();
    }
  }
  progress.phase_end(Phase::Walk);
  p.timings["walk"] = since(t0);
  return p;
}

/// Files from which a second thread pays for the work after the walk (the source digest beside the
/// spec hash, the layer keys): ~1 ms per 10k files each, against ~0.1 ms to start a thread.
constexpr std::size_t kThreadedFiles = 4096;

/// The digests of the whole file set are known: the source digest, the spec hash and the tag.
void compute_tag(Prepared& p, const BuildOptions& opts) {
  const spec::ImageSpec& s = *p.spec;
  // The tag's file lines, streamed in dest order from the two sorted lists: no second list as long
  // as the tree.
  const auto& src = p.files.source;
  const auto& cp = p.files.copy;
  const auto inputs = run::step_inputs(s);
  if (sorted_by_dest(src) && sorted_by_dest(cp)) {
    // A big source tree: its digest on a thread of its own, beside the spec hash (two SHA-256
    // streams over the same lines, each ~1 ms per 10k files).
    std::string source_hex;
    std::exception_ptr source_error;
    std::thread source_digest;
    if (p.files.has_source && src.size() >= kThreadedFiles && opts.jobs != 1) {
      try {
        source_digest = std::thread([&] {
          try {
            std::size_t k = 0;
            source_hex = spec::files_digest_streamed([&](spec::TagFile& t) {
              if (k == src.size()) return false;
              to_tag_file(src[k++], t);
              return true;
            });
          } catch (...) {
            source_error = std::current_exception();
          }
        });
      } catch (const std::system_error&) {
        // no thread: the one pass below computes it
      }
    }
    struct Join {
      std::thread& t;
      ~Join() {
        if (t.joinable()) t.join();
      }
    } join{source_digest};
    const bool source_here = p.files.has_source && !source_digest.joinable();
    // One pass: each line formatted once, for the spec hash and (source files, unless the thread
    // has them) the source digest.
    spec::TagHasher h(s, p.base_id, opts.source_date_epoch, inputs);
    spec::TagFile t;  // reused: assigning into it allocates nothing after the first lines
    auto add = [&](const layers::FileEntry& f, bool in_source) {
      to_tag_file(f, t);
      h.add(t, in_source);
    };
    std::size_t i = 0, j = 0;
    while (i < src.size() || j < cp.size()) {
      const bool from_src = j == cp.size() || (i < src.size() && !(cp[j].dest < src[i].dest));
      if (from_src) {
        add(src[i++], source_here);
      } else {
        add(cp[j++], false);
      }
    }
    p.spec_hash = h.spec_hash();
    if (source_digest.joinable()) {
      source_digest.join();
      if (source_error) std::rethrow_exception(source_error);
      p.source_digest = "sha256:" + source_hex;
    } else if (p.files.has_source) {
      p.source_digest = "sha256:" + h.files_digest();
    }
  } else {
    std::vector<spec::TagFile> all = tag_files(src);
    if (p.files.has_source) p.source_digest = "sha256:" + spec::files_digest(all);
    std::vector<spec::TagFile> copies = tag_files(cp);
    all.insert(all.end(), copies.begin(), copies.end());
    p.spec_hash = spec::spec_hash(s, p.base_id, std::move(all), opts.source_date_epoch, inputs);
  }
  p.tag = spec::make_tag(s, p.spec_hash);
}

}  // namespace

namespace {

/// A file set without its lists.
layers::FileSet without_lists(const layers::FileSet& f) {
  layers::FileSet out;
  out.has_source = f.has_source;
  out.mode = f.mode;
  out.dest = f.dest;
  out.warnings = f.warnings;
  out.git_workdir = f.git_workdir;
  return out;
}

/// The index's identity, once every platform's is known: its spec hash and tag, and the files
/// (one walk's, shared by every platform).
void finish_index(Prepared& p) {
  std::vector<std::pair<std::string, std::string>> hashes;
  const Prepared& first = *p.platforms.front();
  std::string bases;
  for (const auto& c : p.platforms) {
    hashes.emplace_back(c->spec->platform, c->spec_hash);
    bases += (bases.empty() ? "" : ",") + c->spec->platform + "=" + c->base_id;
  }
  p.spec_hash = spec::index_hash(hashes);
  p.tag = spec::make_tag(*p.spec, p.spec_hash);
  p.source_digest = first.source_digest;
  p.base_id = bases;
  p.timings = first.timings;
  p.files = without_lists(first.files);  // (the lists stay with the first platform: Prepared::file_set)
  p.deferred = false;
}

/// The platforms of an index share one file list, held by the first platform: another one borrows
/// it (swapped in, and back) while its tag is computed and while it is built, one at a time. So
/// an index holds the list once, as a one-platform build does.
class BorrowLists {
 public:
  BorrowLists(layers::FileSet& holder, layers::FileSet& borrower) : holder_(holder), borrower_(borrower) {
    std::swap(holder_, borrower_);
  }
  ~BorrowLists() { std::swap(holder_, borrower_); }
  BorrowLists(const BorrowLists&) = delete;
  BorrowLists& operator=(const BorrowLists&) = delete;

 private:
  layers::FileSet& holder_;
  layers::FileSet& borrower_;
};

/// One platform of a spec for several, prepared on a spec of its own: the first walks (`lists`
/// null); the others borrow its lists, hashed already, so every platform bakes the very same files
/// and the tree is walked once.
std::shared_ptr<Prepared> prepare_platform(const spec::ImageSpec& s, const std::string& platform,
                                           const BuildOptions& opts, bool deferred, layers::FileSet* lists) {
  auto own = std::make_shared<const spec::ImageSpec>(spec::with_platform(s, platform));
  std::shared_ptr<Prepared> child;
  if (lists) {
    child = std::make_shared<Prepared>(prepare_base(*own, opts));
    child->files = without_lists(*lists);
    child->timings = {{"walk", 0.0}, {"hash", 0.0}};  // (the first platform's)
    BorrowLists borrow(*lists, child->files);
    compute_tag(*child, opts);
  } else {
    // (Not streamed: the other platforms borrow the first one's list.)
    child = std::make_shared<Prepared>(deferred ? prepare_deferred_impl(*own, opts, false) : prepare(*own, opts));
  }
  child->own_spec = std::move(own);
  return child;
}

/// A spec for several platforms: each platform prepared on its own spec, in the spec's order.
Prepared prepare_index(const spec::ImageSpec& s, const BuildOptions& opts, bool deferred) {
  Prepared p;
  p.spec = &s;
  p.repository = spec::repository(s);
  for (const std::string& platform : s.platforms()) {
    p.platforms.push_back(
        prepare_platform(s, platform, opts, deferred, p.platforms.empty() ? nullptr : &p.platforms.front()->files));
    // Deferred: the first platform's build hashes the files; the others are prepared after it
    // (build_index), with them.
    if (deferred) break;
  }
  if (deferred) {
    p.deferred = true;
    p.files = without_lists(p.platforms.front()->files);  // (the lists come with the build)
  } else {
    finish_index(p);
  }
  return p;
}

}  // namespace

Prepared prepare(const spec::ImageSpec& s, const BuildOptions& opts) {
  if (s.multi_platform()) return prepare_index(s, opts, false);
  Prepared p = prepare_walk(s, opts);
  NullProgress silent;
  Progress& progress = opts.progress ? *opts.progress : silent;
  auto t0 = Clock::now();
  layers::HashProgress hp{[&](std::uint64_t f, std::uint64_t b) { progress.phase_begin(Phase::Hash, f, b); },
                          [&](std::uint64_t f, std::uint64_t b) { progress.phase_advance(Phase::Hash, f, b); }};
  layers::hash_files(p.files, p.index.get(), opts.jobs, hp);
  progress.phase_end(Phase::Hash);
  p.index->save(p.index_file);
  p.index.reset();
  p.timings["hash"] = since(t0);
  compute_tag(p, opts);
  return p;
}

Prepared prepare_tag(const spec::ImageSpec& s, const BuildOptions& opts) {
  NullProgress silent;
  Progress& progress = opts.progress ? *opts.progress : silent;
  // The base of each platform (one Prepared per platform for an index, as prepare_index makes).
  Prepared p;
  if (s.multi_platform()) {
    p.spec = &s;
    p.repository = spec::repository(s);
    for (const std::string& platform : s.platforms()) {
      auto own = std::make_shared<const spec::ImageSpec>(spec::with_platform(s, platform));
      auto child = std::make_shared<Prepared>(prepare_base(*own, opts));
      child->own_spec = std::move(own);
      p.platforms.push_back(std::move(child));
    }
  } else {
    p = prepare_base(s, opts);
  }
  auto t0 = Clock::now();
  // The walk, streamed: its entries wait in sorted runs in the store's tmp/ past the budget.
  layers::StatIndex index;
  const layers::CollectOptions co = walk_options(s, opts, progress, index, &p.index_file);
  progress.phase_begin(Phase::Walk, 0, 0);
  std::unique_ptr<layers::SourceStream> source;
  p.files = layers::collect_files_streamed(s, co, &source);
  progress.phase_end(Phase::Walk);
  p.timings["walk"] = since(t0);
  t0 = Clock::now();

  // One tag hasher per platform, fed the same lines in dest order: the source entries as they
  // pass, the copy entries (a short list, hashed first) merged in.
  std::vector<const Prepared*> each;
  if (p.multi()) {
    for (const auto& c : p.platforms) each.push_back(c.get());
  } else {
    each.push_back(&p);
  }
  std::vector<std::unique_ptr<spec::TagHasher>> hashers;
  for (const Prepared* one : each)
    hashers.push_back(std::make_unique<spec::TagHasher>(*one->spec, one->base_id, opts.source_date_epoch,
                                                        run::step_inputs(*one->spec)));
  layers::HashProgress hp{nullptr, [&](std::uint64_t f, std::uint64_t b) { progress.phase_advance(Phase::Hash, f, b); }};
  progress.phase_begin(Phase::Hash, 0, 0);
  {
    layers::FileSet copies;  // the copy list alone: hash_files reads and records it as prepare() does
    copies.copy = std::move(p.files.copy);
    layers::hash_files(copies, &index, opts.jobs, hp);
    p.files.copy = std::move(copies.copy);
  }
  const auto& cp = p.files.copy;
  std::size_t j = 0;
  spec::TagFile t;
  std::string last_dest;
  auto feed = [&](const layers::FileEntry& f, bool in_source) {
    to_tag_file(f, t);
    for (std::size_t k = 0; k < hashers.size(); ++k) hashers[k]->add(t, in_source && k == 0);
  };
  auto feed_source = [&](const layers::FileEntry& f) {
    if (!last_dest.empty() && !(last_dest < f.dest))
      throw std::logic_error("prepare_tag: the source entries are not in dest order at " + f.dest);
    last_dest = f.dest;
    while (j < cp.size() && cp[j].dest < f.dest) feed(cp[j++], false);
    feed(f, p.files.has_source);
  };
  // The source entries a batch at a time: looked up as they come, the unknown ones of a batch
  // hashed together (on `jobs` threads), then fed and recorded in order.
  constexpr std::size_t kBatchFiles = 4096;
  constexpr std::uint64_t kBatchBytes = 64ull << 20;
  std::vector<layers::FileEntry> batch;
  std::vector<std::size_t> unknown;  // positions in batch, increasing
  std::uint64_t unknown_bytes = 0, read_files = 0, read_bytes = 0;
  const fs::path spill = opts.store->tmp_dir();
  auto flush = [&] {
    layers::parallel_for(unknown.size(), unknown.size() > 1 ? opts.jobs : 1,
                         [&](std::size_t k) { layers::hash_file(batch[unknown[k]], hp); });
    std::size_t u = 0;
    for (std::size_t k = 0; k < batch.size(); ++k) {
      const layers::FileEntry& f = batch[k];
      if (u < unknown.size() && unknown[u] == k) {
        index.update_ordered(f.rel(), f.key, f.sha256.bytes, spill);
        ++u;
      }
      feed_source(f);
    }
    read_files += unknown.size();
    read_bytes += unknown_bytes;
    batch.clear();
    unknown.clear();
    unknown_bytes = 0;
  };
  layers::FileEntry e;
  while (source->next(e)) {
    if (e.type == layers::FileEntry::Type::File && !e.sha256.set) {
      if (index.lookup(e.rel(), e.key, &e.sha256.bytes)) {
        e.sha256.set = true;
      } else {
        unknown.push_back(batch.size());
        unknown_bytes += e.size;
      }
    }
    batch.push_back(std::move(e));
    if (batch.size() >= kBatchFiles || unknown_bytes >= kBatchBytes) flush();
  }
  flush();
  while (j < cp.size()) feed(cp[j++], false);
  progress.phase_end(Phase::Hash);
  index.save(p.index_file);
  p.timings["hash"] = since(t0);
  if (read_files)  // (the totals were not known ahead: the files were met as the walk gave them)
    progress.log("hashed " + std::to_string(read_files) + " new or changed source files (" +
                 std::to_string(read_bytes >> 20) + " MiB) in " + std::to_string(static_cast<int>(p.timings["hash"] * 1000)) + " ms");

  p.tag_only = true;
  if (!p.multi()) {
    p.spec_hash = hashers[0]->spec_hash();
    if (p.files.has_source) p.source_digest = "sha256:" + hashers[0]->files_digest();
    p.tag = spec::make_tag(s, p.spec_hash);
    return p;
  }
  std::vector<std::pair<std::string, std::string>> hashes;
  std::string bases;
  for (std::size_t k = 0; k < p.platforms.size(); ++k) {
    Prepared& c = *p.platforms[k];
    c.spec_hash = hashers[k]->spec_hash();
    c.tag = spec::make_tag(*c.spec, c.spec_hash);
    hashes.emplace_back(c.spec->platform, c.spec_hash);
    bases += (bases.empty() ? "" : ",") + c.spec->platform + "=" + c.base_id;
  }
  if (p.files.has_source) p.source_digest = "sha256:" + hashers[0]->files_digest();
  for (auto& c : p.platforms) c->source_digest = p.source_digest;
  p.spec_hash = spec::index_hash(hashes);
  p.tag = spec::make_tag(s, p.spec_hash);
  p.base_id = bases;
  return p;
}

Prepared prepare_deferred(const spec::ImageSpec& s, const BuildOptions& opts) {
  return prepare_deferred_impl(s, opts, true);
}

Prepared prepare_deferred_impl(const spec::ImageSpec& s, const BuildOptions& opts, bool may_stream) {
  if (s.multi_platform()) return prepare_index(s, opts, true);
  Prepared p = prepare_walk(s, opts, may_stream);
  if (p.stream) {  // the build looks the source's digests up as it reads the stream
    p.timings["hash"] = 0;
    layers::lookup_hashes(p.files, p.index.get());  // (the copy entries)
    p.deferred = true;
    return p;
  }
  auto t0 = Clock::now();
  const bool all_known = layers::lookup_hashes(p.files, p.index.get()).empty();
  p.timings["hash"] = since(t0);
  if (all_known) {  // a rebuild of an unchanged tree: the tag costs nothing, as in prepare()
    p.index->save(p.index_file);
    p.index.reset();
    compute_tag(p, opts);
  } else {
    p.deferred = true;
  }
  return p;
}

namespace {
BuildResult build_impl(const Prepared& prep, Prepared* deferred, const BuildOptions& opts);
}  // namespace

namespace {

/// Each platform's image, in the spec's order (a layer cached for one, such as the source layers,
/// is a cache hit for the next), under one index.
BuildResult build_index(const Prepared& prep, Prepared* deferred, const BuildOptions& opts) {
  NullProgress silent;
  Progress& progress = opts.progress ? *opts.progress : silent;
  BuildResult r;
  ImageIndex index;
  const std::vector<std::string> platforms = prep.spec->platforms();
  // Every platform's RUN steps must be able to run here before the first platform is built.
  for (const std::string& platform : platforms) check_steps_can_run_all(spec::with_platform(*prep.spec, platform));
  for (std::size_t i = 0; i < platforms.size(); ++i) {
    if (i == prep.platforms.size()) {
      if (!deferred) throw std::logic_error("build: a platform of the index was not prepared");
      deferred->platforms.push_back(prepare_platform(*prep.spec, platforms[i], opts, false, &prep.platforms.front()->files));
    }
    const std::shared_ptr<Prepared>& child = prep.platforms[i];
    const std::string& platform = child->spec->platform;
    progress.log("platform " + platform + ": building");
    std::optional<BorrowLists> borrow;
    if (i > 0) borrow.emplace(prep.platforms.front()->files, child->files);
    BuildResult one = child->deferred ? build(*child, opts) : build(static_cast<const Prepared&>(*child), opts);
    borrow.reset();
    for (LayerReport lr : one.layers) {
      lr.label = platform + ": " + lr.label;
      r.layers.push_back(std::move(lr));
    }
    for (const std::string& w : one.warnings)
      if (std::find(r.warnings.begin(), r.warnings.end(), w) == r.warnings.end()) r.warnings.push_back(w);
    for (const auto& [k, v] : one.timings) r.timings[k] += v;
    index.images.emplace_back(platform, std::move(one.image));
  }
  if (deferred) finish_index(*deferred);
  r.manifest_digest = index.digest();
  r.index = std::move(index);
  return r;
}

}  // namespace

BuildResult build(const Prepared& prep, const BuildOptions& opts) {
  if (prep.deferred) throw std::logic_error("build: a deferred Prepared must be passed as non-const");
  if (prep.tag_only) throw std::logic_error("build: prepare_tag() keeps no file list; prepare again to build");
  if (prep.multi()) return build_index(prep, nullptr, opts);
  return build_impl(prep, nullptr, opts);
}

BuildResult build(Prepared& prep, const BuildOptions& opts) {
  if (prep.tag_only) throw std::logic_error("build: prepare_tag() keeps no file list; prepare again to build");
  if (prep.multi()) return build_index(prep, prep.deferred ? &prep : nullptr, opts);
  return build_impl(prep, prep.deferred ? &prep : nullptr, opts);
}

namespace {

/// A streamed build's source layers, planned and written as the walk's entries passed, and what
/// its final pass reads: every entry in the walk's order, and the digests the layers found.
struct StreamedSource {
  std::unique_ptr<LayerPlanner> planner;  // owns the plans
  std::vector<LayerPlan*> plans;          // the image's order
  std::optional<layers::SpillFile> ordered, digests;  // entries; 32 bytes per entry's position
  std::uint64_t entries = 0;
  std::size_t files = 0;                  // entries that are not directories (a label says it)
  std::shared_ptr<const std::string> root;
};

using WriteOne = std::function<void(LayerPlan&, std::size_t, LayerReport&, layers::LayerRecord&,
                                    std::optional<layers::LayerRecord>, const std::function<int()>&)>;

/// Reads the walk's stream once: each entry looked up in the stat index, appended to the ordered
/// spill and planned (LayerPlanner); each layer handed over goes to `jobs` workers (write_one),
/// which write the digests they find to their slots and free the layer's entries. A layer is
/// handed over only to a free worker: memory is `jobs` + 1 chunks' entries, whatever the tree.
StreamedSource stream_source_layers(Prepared& d, const spec::ImageSpec& s, const BuildOptions& opts,
                                    Progress& progress, std::size_t jobs, std::atomic<std::size_t>& writing_now,
                                    const WriteOne& write_one) {
  StreamedSource out;
  const fs::path tmp = opts.store->tmp_dir();
  out.ordered.emplace(tmp);
  out.digests.emplace(tmp);
  std::mutex mu;
  std::condition_variable cv;
  std::deque<LayerPlan*> queue;
  bool done = false;
  std::size_t busy = 0;  // workers writing a layer
  std::exception_ptr failed;
  std::atomic<bool> stop{false};
  std::size_t next_id = std::size_t(1) << 20;  // progress ids apart from the list path's
  auto worker = [&] {
    for (;;) {
      LayerPlan* p = nullptr;
      std::size_t id = 0;
      {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] { return !queue.empty() || done || failed; });
        if (failed || queue.empty()) return;  // failed, or done and drained
        p = queue.front();
        queue.pop_front();
        id = next_id++;
        ++busy;
      }
      struct Idle {  // free again (and the producer told) however the layer ends
        std::mutex& mu;
        std::condition_variable& cv;
        std::size_t& busy;
        ~Idle() {
          {
            std::lock_guard<std::mutex> lk(mu);
            --busy;
          }
          cv.notify_all();
        }
      } idle{mu, cv, busy};
      try {
        p->level = s.compression_level.value_or(-1);
        write_one(*p, id, p->report, p->record, std::nullopt, [&] {
          const std::size_t others = writing_now.fetch_add(1);
          return static_cast<int>(jobs > others ? jobs - others : 1);
        });
        for (std::size_t k = 0; k < p->files.size(); ++k) {
          if (!p->unknown[k]) continue;
          const layers::FileEntry* f = p->files[k];
          if (!f->sha256.set) throw std::logic_error("build: no digest for " + f->dest + " after its layer");
          out.digests->write_at(p->ordinals[k] * 32, f->sha256.bytes.data(), 32);
        }
        // The layer is written: its entries go.
        std::vector<const layers::FileEntry*>().swap(p->files);
        std::vector<std::unique_ptr<layers::FileEntry>>().swap(p->owned);
        std::vector<std::uint64_t>().swap(p->ordinals);
        std::vector<char>().swap(p->unknown);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu);
        if (!failed) failed = std::current_exception();
        stop = true;
        cv.notify_all();
        return;
      }
    }
  };
  std::vector<std::thread> pool;
  auto join = [&] {
    {
      std::lock_guard<std::mutex> lk(mu);
      done = true;
    }
    cv.notify_all();
    for (auto& t : pool) t.join();
    pool.clear();
  };
  try {
    for (std::size_t t = 0; t < std::max<std::size_t>(1, jobs); ++t) pool.emplace_back(worker);
    out.planner = std::make_unique<LayerPlanner>("source_root", s, [&](LayerPlan* p) {
      progress.layers_planned(1, p->bytes);
      std::unique_lock<std::mutex> lk(mu);
      cv.wait(lk, [&] { return (queue.empty() && busy < jobs) || failed; });
      if (failed) return;
      queue.push_back(p);
      lk.unlock();
      cv.notify_all();
    });
    layers::StatIndex& index = *d.index;
    auto e = std::make_unique<layers::FileEntry>();
    while (!stop && d.stream->next(*e)) {
      if (!out.root) out.root = e->root;
      bool unknown = false;
      if (e->type == layers::FileEntry::Type::File && !e->sha256.set) {
        if (index.lookup(e->rel(), e->key, &e->sha256.bytes))
          e->sha256.set = true;
        else
          unknown = true;
      }
      out.files += e->type != layers::FileEntry::Type::Dir;
      layers::append_entry(*out.ordered, *e);
      const layers::FileEntry& entry = *e;
      out.planner->add(entry, std::move(e), out.entries++, unknown);
      e = std::make_unique<layers::FileEntry>();
    }
    if (!stop) out.plans = out.planner->finish();
  } catch (...) {
    {
      std::lock_guard<std::mutex> lk(mu);
      if (!failed) failed = std::current_exception();
    }
    join();
    std::rethrow_exception(failed);
  }
  join();
  if (failed) std::rethrow_exception(failed);
  d.stream.reset();
  return out;
}

/// The final pass of a streamed build: every entry again, in order, with the digests the layers
/// found; those go to the stat index (in order, through its file), and every line to the tag.
void finish_streamed(Prepared& d, StreamedSource& src, const BuildOptions& opts) {
  const spec::ImageSpec& s = *d.spec;
  src.ordered->flush();
  src.digests->extend(src.entries * 32);
  layers::EntryReader entries(*src.ordered, src.root);
  layers::SpillFile::Reader digests(*src.digests);
  spec::TagHasher h(s, d.base_id, opts.source_date_epoch, run::step_inputs(s));
  spec::TagFile t;
  const auto& cp = d.files.copy;
  std::size_t j = 0;
  const fs::path tmp = opts.store->tmp_dir();
  layers::FileEntry e;
  for (std::uint64_t k = 0; k < src.entries; ++k) {
    const char* digest = digests.take(32);
    if (!entries.next(e) || !digest) throw std::runtime_error("build: the walk's spill ended early");
    if (e.type == layers::FileEntry::Type::File && !e.sha256.set) {
      std::memcpy(e.sha256.bytes.data(), digest, 32);
      e.sha256.set = true;
      d.index->update_ordered(e.rel(), e.key, e.sha256.bytes, tmp);
    }
    while (j < cp.size() && cp[j].dest < e.dest) {
      to_tag_file(cp[j++], t);
      h.add(t, false);
    }
    to_tag_file(e, t);
    h.add(t, true);
  }
  while (j < cp.size()) {
    to_tag_file(cp[j++], t);
    h.add(t, false);
  }
  d.index->save(d.index_file);
  d.index.reset();
  d.spec_hash = h.spec_hash();
  d.source_digest = "sha256:" + h.files_digest();
  d.tag = spec::make_tag(s, d.spec_hash);
}

}  // namespace

namespace {
BuildResult build_impl(const Prepared& prep, Prepared* deferred, const BuildOptions& opts) {
  const spec::ImageSpec& s = *prep.spec;
  NullProgress silent;
  Progress& progress = opts.progress ? *opts.progress : silent;
  auto t_start = Clock::now();
  BuildResult r;
  r.timings = prep.timings;
  r.warnings = prep.files.warnings;
  const std::int64_t epoch = s.source_date_epoch.value_or(opts.source_date_epoch);
  const std::string created = rfc3339(epoch);

  // The base.
  Image img;
  std::string base_name, base_digest;
  switch (s.base_image.kind) {
    case spec::BaseImage::Kind::Scratch: img = scratch_image(s.platform); break;
    case spec::BaseImage::Kind::OciLayout: {
      LayoutImage li = read_oci_layout(s.base_image.layout_dir, s.base_image.layout_tag, s.platform);
      img = std::move(li.image);
      // No base.name: an oci: base is a host path, relative or not, and the image must not depend
      // on where the layout sits. The base digest names it.
      verify_layout_base(img, s.base_image.ref, *opts.store);
      base_digest = li.manifest_digest;
      break;
    }
    case spec::BaseImage::Kind::Spec: {
      progress.log("building nested base spec " + prep.nested->image_ref());
      BuildResult nested = build(*prep.nested, opts);
      img = std::move(nested.image);
      base_name = prep.nested->image_ref();
      base_digest = nested.manifest_digest;
      break;
    }
    case spec::BaseImage::Kind::Registry: {
      registry::Reference ref = parse_base_reference(s);
      RemoteImage ri = pull_remote(*opts.registries, ref, s.platform, *opts.store);
      img = std::move(ri.image);
      base_name = ref.str();
      base_digest = ri.manifest_digest;
      break;
    }
  }
  check_platform(img, s);
  if (prep.files.has_source && prep.files.mode == spec::CopyMode::LoadedModules && prep.files.source.empty() &&
      !(deferred && deferred->stream)) {
    std::string w = "source_root is set with source_copy_mode loaded_modules, but no module was given "
                    "(loaded_modules, --module, --modules-from): no source file is baked";
    progress.warn(w);
    r.warnings.push_back(w);
  }
  const std::size_t base_layers = img.layers.size();
  for (const Layer& l : img.layers) {
    LayerReport lr;
    lr.label = "base";
    lr.digest = l.desc.digest;
    lr.diff_id = l.diff_id;
    lr.media_type = l.desc.media_type;
    lr.size = l.desc.size;
    lr.from_base = true;
    lr.cache_hit = true;
    r.layers.push_back(lr);
  }

  // RUN steps, in flytekit's order: apt and pip before the source and copy layers (a code edit
  // never re-runs them), commands after them (they see the baked files).
  std::vector<run::Step> pre_steps, post_steps;
  {
    const json& base_cfg = img.config.contains("config") ? img.config["config"] : json::object();
    std::vector<std::string> base_env;
    if (base_cfg.is_object() && base_cfg.contains("Env") && base_cfg["Env"].is_array())
      for (const auto& e : base_cfg["Env"])
        if (e.is_string()) base_env.push_back(e.get<std::string>());
    std::string base_workdir = base_cfg.is_object() ? base_cfg.value("WorkingDir", std::string()) : std::string();
    for (run::Step& st : run::plan_steps(s, base_env, base_workdir, epoch))
      (st.after_files ? post_steps : pre_steps).push_back(std::move(st));
  }
  if (!pre_steps.empty() || !post_steps.empty()) check_steps_can_run(s);
  auto run_phase = [&](const std::vector<run::Step>& steps) {
    if (!steps.empty()) {
      StepRunOptions ro;
      ro.compression = s.compression;
      ro.level = s.compression_level.value_or(-1);
      if (ro.compression == spec::Compression::Gzip && ro.level > 9)
        throw spec::SpecError("compression_level", s.origin + ": gzip levels go from 1 to 9");
      ro.epoch = epoch;
      ro.created = created;
      ro.network = opts.network;
      ro.capture = opts.run_capture;
      ro.timeout = opts.step_timeout;
      auto t_steps = Clock::now();
      auto fetch_base = [&] {
        if (s.base_image.kind == spec::BaseImage::Kind::Registry) fetch_layers(*opts.registries, img, *opts.store);
      };
      std::vector<LayerReport> step_reports;
      try {
        step_reports = run_steps(img, steps, base_layers, opts, ro, progress, fetch_base);
      } catch (const run::BaseLayerError& e) {  // a hostile or mislabelled base: name it
        throw BaseError("base_image " + (base_name.empty() ? s.base_image.ref : base_name) + ": " + e.what());
      }
      for (auto& lr : step_reports) r.layers.push_back(std::move(lr));
      r.timings["steps"] += since(t_steps);
    }
  };
  run_phase(pre_steps);

  // Plan and build the new layers.
  const auto [uid, gid] = owner_of(s);
  // A streamed build (prepare_deferred on a tree past the walk's budget) plans and writes its
  // source layers as the walk's entries pass (below); `plans` then holds the copy entries' only.
  const bool streamed = deferred && deferred->stream;
  std::vector<LayerPlan> plans;
  if (!streamed) plan_layers(prep.files.source, "source_root", s, &plans);
  plan_layers(prep.files.copy, "copy", s, &plans);
  std::uint64_t planned_bytes = 0;
  // Deferred hashing (prepare_deferred): a layer whose files are not all known hashes them when a
  // worker takes it, then computes its key; the hash phase's totals are these files'.
  std::uint64_t unhashed_files = 0, unhashed_bytes = 0;
  auto unhashed = [](const LayerPlan& p) {
    return std::any_of(p.files.begin(), p.files.end(), [](const layers::FileEntry* f) {
      return f->type == layers::FileEntry::Type::File && !f->sha256.set;
    });
  };
  std::vector<char> keyed(plans.size());
  for (std::size_t i = 0; i < plans.size(); ++i) {
    LayerPlan& p = plans[i];
    p.level = s.compression_level.value_or(-1);
    if (deferred && unhashed(p)) {
      for (const layers::FileEntry* f : p.files)
        if (f->type == layers::FileEntry::Type::File && !f->sha256.set) ++unhashed_files, unhashed_bytes += f->size;
    } else {
      keyed[i] = 1;
    }
    planned_bytes += p.bytes;
  }
  // The keys of the layers whose files are all known (a rebuild: every layer, ~0.1 µs per file).
  layers::parallel_for(plans.size(), plans.size() > 1 && prep.files.source.size() + prep.files.copy.size() >= kThreadedFiles ? opts.jobs : 1,
                       [&](std::size_t i) {
                         if (keyed[i]) plans[i].key = layer_key(plans[i], epoch, uid, gid);
                       });
  if (!deferred && std::any_of(plans.begin(), plans.end(), unhashed))
    throw std::logic_error("build: a file of the plan has no digest");
  progress.layers_planned(plans.size(), planned_bytes);
  if (unhashed_files && !streamed) progress.phase_begin(Phase::Hash, unhashed_files, unhashed_bytes);
  layers::HashProgress hash_progress{nullptr, [&](std::uint64_t f, std::uint64_t b) { progress.phase_advance(Phase::Hash, f, b); }};
  std::mutex hashed_mu;
  std::vector<layers::FileEntry*> hashed;  // to record in the stat index

  auto t_layers = Clock::now();
  std::vector<LayerReport> reports(plans.size());
  std::vector<layers::LayerRecord> records(plans.size());
  // The costliest layers start first, so two cores finish together: compressing costs about ten
  // times what hashing an uncompressed large file does.
  std::vector<std::size_t> order(plans.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  auto cost = [&](std::size_t i) {
    const LayerPlan& p = plans[i];
    bool plain = p.sample || p.compression == spec::Compression::None;
    return p.bytes * (plain ? 1 : 10);
  };
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return cost(a) > cost(b); });
  // Compression threads within a layer share the job budget with the layers written beside it (the
  // bytes never depend on the thread count, so this only bounds threads and memory near `jobs`
  // rather than jobs squared): a layer gets the cores the other layers being written leave free,
  // and no more than its share of the big layers still to write. Which layers are cached is
  // looked up once first (a hint; the loop looks again under the lock), so a changed big file among
  // cached chunks still gets every core.
  const std::size_t jobs = static_cast<std::size_t>(std::max(1, opts.jobs));
  std::vector<char> big_to_write(plans.size());
  std::atomic<std::size_t> big_left{0}, writing_now{0};
  // What the pre-pass found (verified by find_layer, as the loop's own lookup would): the loop
  // takes it as is rather than looking it up and verifying it a second time.
  std::vector<std::optional<layers::LayerRecord>> found(plans.size());
  for (std::size_t i = 0; i < plans.size(); ++i) {
    // (A deferred layer has no key yet: its files are hashed when a worker takes it.)
    if (plans[i].bytes >= layers::kGzipPiece && !plans[i].key.empty()) found[i] = opts.store->find_layer(plans[i].key);
    big_to_write[i] = plans[i].bytes >= layers::kGzipPiece && !found[i];
    big_left += big_to_write[i];
  }
  // Finished blobs are made durable and recorded on a thread of their own (fsync, rename, record,
  // unlock), so the layer writers never wait for the disk; drained before the image names them.
  layers::BlobCommitter committer;
  // One layer, on a worker: its files hashed when they are not known (deferred), its key, then the
  // cache or the writer. `i` names it in progress events; `layer_threads` gives its compression
  // threads (and counts it as being written: writing_now); `pre` is what the pre-pass found.
  auto write_one = [&](LayerPlan& p, std::size_t i, LayerReport& lr, layers::LayerRecord& record,
                       std::optional<layers::LayerRecord> pre, const std::function<int()>& layer_threads) {
      lr.label = p.label;
      lr.files = p.nfiles;
      auto t0 = Clock::now();
      try {
        std::optional<spec::Compression> sampled;  // a large file's compression, once decided
        auto compression = [&] {
          if (!sampled) sampled = p.sample ? sample_compression(*p.files.front(), s.compression) : p.compression;
          return *sampled;
        };
        const std::string id = "layer" + std::to_string(i);
        // Writes the layer into a new blob (not yet committed); `hash` also fills in the digests
        // of the files it reads (deferred), from the very bytes it writes.
        auto write = [&](bool hash) {
          const spec::Compression c = compression();
          progress.begin(id, "layer " + p.label, p.bytes);
          auto blob = opts.store->new_blob();
          layers::LayerWriteOptions wo;
          wo.compression = c;
          wo.level = s.compression_level.value_or(-1);
          if (c == spec::Compression::Gzip && wo.level > 9)
            throw spec::SpecError("compression_level", s.origin + ": gzip levels go from 1 to 9");
          wo.mtime = epoch;
          wo.threads = layer_threads();
          wo.hash_contents = hash;
          struct Done {
            std::atomic<std::size_t>& n;
            ~Done() { --n; }
          } done{writing_now};
          LayerEntries entries(p, uid, gid);
          if (hash)  // a file's digest from the bytes just written (a later hardlink: its first link's, below)
            wo.on_content = [&entries](const layers::TarEntry&, const std::string& hex) {
              auto* f = const_cast<layers::FileEntry*>(entries.current());
              if (f && !f->sha256.set) f->sha256 = layers::ContentDigest::from_hex(hex);
            };
          layers::WrittenLayer w = layers::write_layer([&entries](layers::TarEntry& t) { return entries.next(t); }, wo,
                                                       blob->sink(), [&](std::uint64_t n) { progress.advance(id, n); });
          return std::make_pair(std::move(w), std::move(blob));
        };
        // A layer whose files are not all hashed yet (deferred): its key needs their digests.
        std::vector<layers::FileEntry*> mine;  // `deferred` owns the entries this plan points to
        for (const layers::FileEntry* f : p.files)
          if (f->type == layers::FileEntry::Type::File && !f->sha256.set) mine.push_back(const_cast<layers::FileEntry*>(f));
        std::optional<std::pair<layers::WrittenLayer, std::unique_ptr<layers::BlobWriter>>> early;
        if (!mine.empty()) {
          if (compression() == spec::Compression::None) {
            // Uncompressed: written while its files are hashed (one read; the two digests on two
            // cores when there are). If the key then turns out to be cached (a warm cache, a
            // tree moved or touched), the blob is dropped: only a copy was wasted.
            early = write(true);
            std::vector<std::size_t> groups = hardlink_groups(p.files);
            for (std::size_t k = 0; k < p.files.size(); ++k) {
              const layers::FileEntry* f = p.files[k];
              if (f->type != layers::FileEntry::Type::File || f->sha256.set) continue;
              const layers::FileEntry* first = p.files[groups[k]];  // a later hardlink: its first link's bytes
              if (!first->sha256.set) throw std::logic_error("layer " + p.label + ": no digest for " + f->dest);
              const_cast<layers::FileEntry*>(f)->sha256 = first->sha256;
            }
            std::uint64_t bytes = 0;
            for (const layers::FileEntry* e : mine) bytes += e->size;
            progress.phase_advance(Phase::Hash, mine.size(), bytes);
          } else {
            for (layers::FileEntry* e : mine) layers::hash_file(*e, hash_progress);
          }
          p.key = layer_key(p, epoch, uid, gid);
          if (!p.streamed) {  // (a streamed plan's digests are recorded from its files, below)
            std::lock_guard<std::mutex> lk(hashed_mu);
            hashed.insert(hashed.end(), mine.begin(), mine.end());
          }
        }
        // A streamed plan whose digests were all known is keyed here (the list path keys such
        // plans before the loop, in parallel).
        if (p.key.empty()) p.key = layer_key(p, epoch, uid, gid);
        // Another kiln may be writing this very layer: wait for it, then take it from the cache.
        std::optional<layers::LayerRecord> rec = pre ? std::move(pre) : opts.store->find_layer(p.key);
        std::optional<layers::FileLock> writing;
        if (!rec) {
          writing.emplace(opts.store->lock_layer(p.key, [&] { progress.log("layer " + p.label + ": another build is writing it; waiting"); }));
          rec = opts.store->find_layer(p.key);
        }
        if (rec) {
          record = *rec;
          lr.cache_hit = true;
          if (early) progress.end(id, "layer " + p.label + ": cached " + rec->digest.substr(0, 19));
          progress.log("layer " + p.label + ": cached " + rec->digest.substr(0, 19));
          progress.layer_cached("layer " + p.label, p.bytes);
        } else {
          if (!early) early = write(false);
          const layers::WrittenLayer& w = early->first;
          record = {w.digest, w.diff_id, w.media_type, w.size, w.tar_size};
          committer.submit(std::move(early->second), w.digest,
                           [store = opts.store, key = p.key, rec = record] { store->put_layer(key, rec); },
                           std::move(writing));
          progress.end(id, "layer " + p.label + ": " + w.digest.substr(0, 19));
        }
      } catch (...) {
        std::rethrow_exception(StepError::wrap(std::current_exception(), "layer " + p.label));
      }
      lr.seconds = since(t0);
  };
  auto list_driver = [&] {
    layers::parallel_for(order.size(), opts.jobs, [&](std::size_t n) {
      const std::size_t i = order[n];
      write_one(plans[i], i, reports[i], records[i], std::move(found[i]), [&] {
        const std::size_t left = big_to_write[i] ? big_left.fetch_sub(1) : big_left.load() + 1;  // this one included
        const std::size_t others = writing_now.fetch_add(1);
        const std::size_t free_cores = jobs > others ? jobs - others : 1;
        return static_cast<int>(std::max<std::size_t>(1, std::min(free_cores, jobs / std::min(jobs, std::max<std::size_t>(1, left)))));
      });
    });
  };
  StreamedSource src;  // a streamed build's source layers and what the final pass needs
  if (streamed) {
    src = stream_source_layers(*deferred, s, opts, progress, jobs, writing_now, write_one);
    if (s.modelcar && src.files == 0)
      throw layers::InputError("the model directory '" + (s.source_root ? s.source_root->string() : std::string()) +
                               "' holds no file (after .dockerignore): /models would be empty");
  }
  list_driver();
  auto t_sync = Clock::now();
  committer.drain();
  r.timings["sync"] = since(t_sync);  // the wait for the disk after the last layer was written
  r.timings["layers"] = since(t_layers);
  // The layer writers' buffers and tar entry lists are freed: hand the pages back before the
  // stat index and the config (the build's peak RSS otherwise keeps them).
  ::malloc_trim(0);
  if (deferred) {
    // Every file is hashed now: record the digests, then the tag (the config's labels name it).
    if (unhashed_files && !streamed) progress.phase_end(Phase::Hash);
    layers::record_hashes(deferred->files, std::move(hashed), deferred->index.get());
    if (streamed) {
      finish_streamed(*deferred, src, opts);  // the source's digests to the index, and the tag
    } else {
      deferred->index->save(deferred->index_file);
      deferred->index.reset();
      compute_tag(*deferred, opts);
    }
    deferred->deferred = false;
  }

  // The streamed source layers (in the image's order), then the plans of the list path.
  const std::size_t streamed_layers = src.plans.size();
  for (std::size_t n = 0; n < streamed_layers + plans.size(); ++n) {
    LayerPlan& plan = n < streamed_layers ? *src.plans[n] : plans[n - streamed_layers];
    const std::size_t i = n - streamed_layers;
    if (n < streamed_layers) {
      plan.report.label = plan.final_label;
    } else {
      reports[i].label = plan.final_label;
    }
    LayerReport& report = n < streamed_layers ? plan.report : reports[i];
    const layers::LayerRecord& rec = n < streamed_layers ? plan.record : records[i];
    Layer l;
    l.desc.media_type = rec.media_type;
    l.desc.digest = rec.digest;
    l.desc.size = rec.size;
    l.diff_id = rec.diff_id;
    l.blob = opts.store->blob_path(rec.digest);
    l.tar_size = rec.tar_size;
    append_layer(img, std::move(l), plan.created_by, created);
    report.digest = rec.digest;
    report.diff_id = rec.diff_id;
    report.media_type = rec.media_type;
    report.size = rec.size;
    report.tar_size = rec.tar_size;
    r.layers.push_back(report);
  }
  run_phase(post_steps);

  // Config.
  json& cfg = img.config["config"];
  if (!cfg.is_object()) cfg = json::object();
  std::vector<std::pair<std::string, std::string>> env;
  for (const auto& e : cfg.value("Env", json::array())) {
    std::string kv = e.get<std::string>();
    std::size_t eq = kv.find('=');
    env.emplace_back(kv.substr(0, eq), eq == std::string::npos ? "" : kv.substr(eq + 1));
  }
  auto set_env = [&](const std::string& k, const std::string& v) {
    for (auto& [ek, ev] : env)
      if (ek == k) {
        ev = v;
        return;
      }
    env.emplace_back(k, v);
  };
  // flytekit's Dockerfile sets ENV PYTHONPATH=/root (replacing the base's), then the spec's env.
  if (s.bakes_files() && !s.modelcar) set_env("PYTHONPATH", s.source_dest);
  for (const auto& [k, v] : s.env) set_env(k, v);
  // _F_IMG_ID last, as flytekit's Dockerfile does: only the config changes with it.
  if (s.f_img_id) {
    env.erase(std::remove_if(env.begin(), env.end(), [](const auto& kv) { return kv.first == spec::kFlyteImageIdEnv; }),
              env.end());
    env.emplace_back(spec::kFlyteImageIdEnv, *s.f_img_id);
  }
  if (!env.empty()) {
    json arr = json::array();
    for (auto& [k, v] : env) arr.push_back(k + "=" + v);
    cfg["Env"] = arr;
  }
  if (s.entrypoint) {  // as Dockerfile ENTRYPOINT: the base's Cmd goes too; [] clears both
    if (s.entrypoint->empty())
      cfg.erase("Entrypoint");
    else
      cfg["Entrypoint"] = *s.entrypoint;
    cfg.erase("Cmd");
  }
  if (s.modelcar) {  // KServe gives the modelcar container its args
    cfg.erase("Entrypoint");
    cfg.erase("Cmd");
  }
  if (s.workdir) {
    cfg["WorkingDir"] = *s.workdir;
  } else if (prep.files.has_source) {
    cfg["WorkingDir"] = s.source_dest;
  }
  if (s.user) cfg["User"] = *s.user;
  json labels = cfg.value("Labels", json::object());
  if (labels.is_null()) labels = json::object();
  for (const auto& [k, v] : s.labels) labels[k] = v;
  labels[kLabelSpecHash] = prep.spec_hash;
  if (prep.files.has_source) {
    labels[kLabelSourceDigest] = prep.source_digest;
    labels[kLabelSourceDest] = s.source_dest;
    labels[kLabelSourceMode] = spec::to_string(prep.files.mode);
    std::size_t nfiles = src.files;  // (a streamed build counted them as they passed)
    for (const auto& f : prep.files.source) nfiles += f.type != layers::FileEntry::Type::Dir;
    labels[kLabelSourceFiles] = std::to_string(nfiles);
  }
  if (s.modelcar) {
    labels[kLabelModelDigest] = prep.source_digest;
    if (!base_digest.empty()) labels[kLabelBaseDigest] = base_digest;
  }
  cfg["Labels"] = labels;
  img.config["created"] = created;

  img.annotations.clear();
  for (const auto& [k, v] : s.annotations) img.annotations[k] = v;
  img.annotations["org.opencontainers.image.created"] = created;
  if (!base_digest.empty()) {
    if (!base_name.empty()) img.annotations["org.opencontainers.image.base.name"] = base_name;
    img.annotations["org.opencontainers.image.base.digest"] = base_digest;
  }

  // Small blobs go to the store too, so every sink reads from one place.
  r.config_digest = opts.store->put_bytes(img.config_bytes());
  std::string man = img.manifest_bytes();
  r.manifest_digest = opts.store->put_bytes(man);
  r.image = std::move(img);
  r.timings["total"] = since(t_start) + prep.timings.at("walk") + prep.timings.at("hash");
  return r;
}

}  // namespace

}  // namespace kiln::builder
