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
//
// Device nodes are never created from a layer: the standard character devices (null, zero, full,
// random, urandom, tty, console, ptmx) are skipped with a warning (a RUN step gets its own /dev),
// any other device node is refused. The layer is decompressed here, and its uncompressed stream
// hashed as it is read: with `expect_diff_id` set, a layer whose diff_id differs is refused once
// the stream ends (the caller builds the tree in a temporary directory and throws it away).
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "layers/fileset.h"  // InputError

namespace kiln::run {

/// A hostile, corrupt or mislabelled layer: bad input (exit 2), not a failure of kiln or a step.
class UnpackError : public layers::InputError {
 public:
  using layers::InputError::InputError;
};

enum class UnpackFormat { Flat, Overlay };

struct UnpackOptions {
  UnpackFormat format = UnpackFormat::Flat;
  /// Restore the uid/gid recorded in the tar (needs root). When false, files belong to the caller.
  bool preserve_owner = true;
  /// "sha256:…": the diff_id the layer must have (checked over the whole uncompressed stream).
  std::string expect_diff_id;
};

struct UnpackStats {
  std::uint64_t entries = 0, bytes = 0, whiteouts = 0;
  std::string diff_id;                // sha256 of the uncompressed stream, as read
  std::vector<std::string> warnings;  // e.g. device nodes skipped without root
};

/// Applies one layer blob (media type tar, tar+gzip or tar+zstd, OCI or Docker names) to `root`,
/// which must exist. Throws UnpackError on a hostile or corrupt layer, std::system_error on I/O.
UnpackStats apply_layer(const std::filesystem::path& blob, const std::string& media_type,
                        const std::filesystem::path& root, const UnpackOptions& opts = {});

}  // namespace kiln::run
