// Applying OCI layers to a directory: the base rootfs that RUN steps start from.
//
// Two on-disk forms:
//   Flat     the layer is applied on top of what `root` holds: `.wh.NAME` removes NAME, and
//            `DIR/.wh..wh..opq` empties DIR of everything lower layers put there (entries of the
//            same layer survive). Applying a base's layers in order gives its root file system.
//   Overlay  `root` is an empty directory that becomes one overlayfs layer: `.wh.NAME` becomes a
//            0/0 character device NAME and an opaque marker sets trusted.overlay.opaque=y on its
//            directory. Needs root (mknod, trusted.* xattrs).
//
// Never writes outside `root`: absolute names, ".." segments and names that resolve through a
// symlink are refused (UnpackError), as are hardlinks whose target lies outside the root.
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace kiln::run {

class UnpackError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class UnpackFormat { Flat, Overlay };

struct UnpackOptions {
  UnpackFormat format = UnpackFormat::Flat;
  /// Restore the uid/gid recorded in the tar (needs root). When false, files belong to the caller.
  bool preserve_owner = true;
};

struct UnpackStats {
  std::uint64_t entries = 0, bytes = 0, whiteouts = 0;
  std::vector<std::string> warnings;  // e.g. device nodes skipped without root
};

/// Applies one layer blob (media type tar, tar+gzip or tar+zstd, OCI or Docker names) to `root`,
/// which must exist. Throws UnpackError on a hostile or corrupt layer, std::system_error on I/O.
UnpackStats apply_layer(const std::filesystem::path& blob, const std::string& media_type,
                        const std::filesystem::path& root, const UnpackOptions& opts = {});

}  // namespace kiln::run
