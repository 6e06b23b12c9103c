// What a RUN step changed, as the entries of a layer (for layers::write_layer):
//
//   overlay   the step ran on overlayfs: its upper directory holds exactly what changed.
//             Whiteouts (0/0 character devices) become `.wh.NAME` files, opaque directories
//             (trusted.overlay.opaque=y) a `.wh..wh..opq` marker. Files copied up but left
//             byte-identical, and directories copied up only as parents, are dropped.
//   snapshot  the step ran on a private copy of the tree: a walk before (stat + content hash of
//             every regular file) and a walk after. A path whose stat changed is in the layer
//             only if its type, mode, owner, link target or content changed; a path that is gone
//             becomes a whiteout (only the topmost one of a removed subtree).
//
// Either way every entry carries its real mode, owner and file capabilities (security.capability), parent directories included (so the
// writer never invents a 0755 parent over, say, a 1777 /tmp), hardlinks within the layer stay
// hardlinks, and the sandbox's own mount points (/proc, /dev, /tmp, resolv.conf, secret mounts)
// are never captured. Device nodes, fifos and sockets a step creates are skipped with a warning.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "layers/tar_writer.h"

namespace kiln::run {

struct Capture {
  std::vector<layers::TarEntry> entries;  // normalized (sorted, parents present)
  std::vector<std::string> warnings;
  std::uint64_t bytes = 0, files = 0, whiteouts = 0;
};

/// Paths (relative, no leading '/') a sandbox mounts over: never part of a step's layer.
std::vector<std::string> sandbox_mountpoints(const std::vector<std::string>& extra_targets);

/// The upper directory of an overlay run, against its lower dirs (topmost first).
Capture capture_overlay(const std::filesystem::path& upper, const std::vector<std::filesystem::path>& lowers,
                        const std::vector<std::string>& mountpoints);

/// Removes from an overlay upper dir the mount points the sandbox created there (and directories
/// created only to hold them), so the upper can serve as a lower dir for the next step: what is
/// left differs from the step's layer only by byte-identical copies, invisible in the merged view.
void drop_mountpoints(const std::filesystem::path& upper, const std::vector<std::filesystem::path>& lowers,
                      const std::vector<std::string>& mountpoints);

/// One path of a tree, as the snapshot diff sees it.
struct Node {
  std::uint32_t mode = 0;  // st_mode: type and permission bits
  std::uint32_t uid = 0, gid = 0;
  std::uint64_t size = 0, ino = 0, dev = 0, nlink = 0, rdev = 0;
  std::uint64_t blocks = 0;  // st_blocks (512-byte units): what a sparse file holds on disk
  std::int64_t mtime_ns = 0, ctime_ns = 0;
  std::string link_target;
  std::uint64_t content = 0;  // a hash of a regular file's bytes (holes cost nothing to hash)
  std::string capability;     // a regular file's security.capability xattr ("" = none)
};
using Snapshot = std::map<std::string, Node>;  // relative path → node; bytewise order

/// Walks `root` (not descending into `mountpoints`), hashing regular files.
Snapshot take_snapshot(const std::filesystem::path& root, const std::vector<std::string>& mountpoints);

/// The change from `before` to the tree at `root` now. `map_caller_to_root`: files owned by the
/// calling (non-root) user were root's inside the sandbox's user namespace, and are stored so.
Capture capture_snapshot(const Snapshot& before, const std::filesystem::path& root,
                         const std::vector<std::string>& mountpoints, bool map_caller_to_root);

}  // namespace kiln::run
