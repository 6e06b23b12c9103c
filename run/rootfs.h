// Unpacked trees that RUN steps start from, cached in the store by OCI chain id (see
// docs/run-steps.md):
//
//   <store>/rootfs/flat-<hex>/   a base image's layers applied in order (whiteouts applied):
//                                the lowest directory every step of a build on that base sees
//   <store>/rootfs/diff-<hex>/   one step layer in overlayfs form (overlay capture only)
//
// A tree is built in a temporary directory and renamed into place, under a lock, so a killed
// build leaves no half tree and two builds never build the same one twice. Trees are only read
// afterwards: steps write to an overlay upper dir, or to a private copy.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "layers/store.h"
#include "run/unpack.h"

namespace kiln::run {

/// A layer of a base image failed to unpack (refused entry, corrupt, diff_id mismatch): the
/// message says which layer ("base layer 2 of 3: layer sha256:…: …").
class BaseLayerError : public UnpackError {
 public:
  using UnpackError::UnpackError;
};

struct LayerBlob {
  std::string diff_id, media_type;
  std::filesystem::path blob;
  std::string digest;  // the blob's digest (a base layer's, as its manifest names it)
};

/// The OCI chain id of a list of diff_ids ("" for none): ChainID(L0) = DiffID(L0),
/// ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
std::string chain_id(const std::vector<std::string>& diff_ids);
std::string next_chain_id(const std::string& parent, const std::string& diff_id);

/// The chain kiln names a base's flat tree and the step keys above it by: a hash over every base
/// layer's blob digest *and* diff_id ("" for no base). A diff_id is only the image config's
/// claim, checked when the layer is unpacked; the blob digest is checked whenever the blob is
/// read, and the image names its layers by it. Keyed on both, a base that claims another
/// image's diff_ids never reaches that image's cached tree or step layers: it gets its own name,
/// so it is unpacked, and refused. Layers above the base (kiln's own) extend it with
/// next_chain_id.
std::string base_chain_id(const std::vector<LayerBlob>& layers);

class RootfsCache {
 public:
  explicit RootfsCache(const layers::Store& store);

  /// The flat tree of `layers` (a base image's), named by base_chain_id, built when missing. `log` hears about the
  /// unpacking ("unpacking base (3 layers)").
  std::filesystem::path flat(const std::vector<LayerBlob>& layers,
                             const std::function<void(const std::string&)>& log = {});
  /// One layer in overlay form, for the chain id it ends; built when missing.
  std::filesystem::path diff(const std::string& chain, const LayerBlob& layer);
  /// Takes a step's overlay upper dir (same file system) as the diff tree of `chain`, instead of
  /// unpacking the layer again. Returns the tree's path (an existing one wins a race).
  std::filesystem::path adopt_diff(const std::string& chain, const std::filesystem::path& upper);

  /// A fresh directory for one run's scratch space (upper, work, a tree copy), removed with
  /// everything in it by the returned guard.
  class Scratch {
   public:
    explicit Scratch(std::filesystem::path dir) : dir_(std::move(dir)) {}
    Scratch(Scratch&& o) noexcept : dir_(std::move(o.dir_)) { o.dir_.clear(); }
    Scratch& operator=(Scratch&&) = delete;
    ~Scratch();
    const std::filesystem::path& path() const { return dir_; }

   private:
    std::filesystem::path dir_;
  };
  Scratch scratch() const;

 private:
  std::filesystem::path build(const std::string& name, const std::function<void(const std::filesystem::path&)>& fill);
  const layers::Store& store_;
  std::filesystem::path dir_;
};

/// Copies a tree (owners, modes, links, times) — reflinks where the file system can.
void copy_tree(const std::filesystem::path& from, const std::filesystem::path& to);

}  // namespace kiln::run
