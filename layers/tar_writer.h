// The deterministic layer writer: a sorted list of entries becomes a PAX tar, compressed, with the
// blob digest and the diff_id computed in the same pass as the bytes are written.
//
// Normalization: entries sorted bytewise by path, parent directories emitted, uid/gid from the
// entry (0 by default), empty uname/gname, one fixed mtime, no atime/ctime, hardlinks as hardlinks.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "layers/compress.h"

namespace kiln::layers {

/// One entry of a layer, with its path inside the image.
struct TarEntry {
  enum class Type { File, Dir, Symlink, Hardlink, Whiteout };
  std::string path;           // relative to the image root, no leading or trailing '/'
  Type type = Type::File;
  std::uint32_t mode = 0644;  // permission bits only
  std::uint64_t size = 0;     // File: byte count
  std::string link_target;    // Symlink: target as stored; Hardlink: path of the first link
  std::string source;         // File: where the bytes come from (a plain string: a layer of a big
                              // tree holds thousands, and a path object allocates per component)
  std::uint32_t uid = 0, gid = 0;
  // Identity of the source file at the time it was hashed: the writer refuses a file that changed.
  std::int64_t mtime_ns = 0, ctime_ns = 0;
  // Identity of the source file when it was walked (0: not checked): the writer reads only from a
  // descriptor that is this file, so a path swapped for a symlink is refused, never followed.
  std::uint64_t dev = 0, ino = 0;
  /// File: its security.capability xattr (file capabilities, as setcap writes them), "" for
  /// none. The one xattr layers carry: it is what makes ping work for non-root users.
  std::string capability;
};

/// Sort bytewise, add missing parent directories (mode 0755), drop duplicate paths (the last
/// one given wins). Throws on a path that is absolute, empty or has a "." / ".." segment.
std::vector<TarEntry> normalize_entries(std::vector<TarEntry> entries, std::uint32_t uid = 0,
                                        std::uint32_t gid = 0);

struct LayerWriteOptions {
  Compression compression = Compression::Gzip;
  int level = -1;               // codec default
  std::int64_t mtime = 0;       // SOURCE_DATE_EPOCH or 0
  int threads = 1;              // gzip compression threads (the bytes do not depend on it)
  /// Also compute each regular file's SHA-256 from the very bytes written (WrittenLayer::contents),
  /// for a build that hashes files as it writes them. With threads >= 2, a big file's digest is
  /// computed on a second thread beside the tar's.
  bool hash_contents = false;
};

struct WrittenLayer {
  std::string digest;           // sha256 of the bytes written (the blob)
  std::string diff_id;          // sha256 of the uncompressed tar
  std::string media_type;
  std::uint64_t size = 0;       // blob size
  std::uint64_t tar_size = 0;   // uncompressed size
  /// hash_contents: (entry path, content SHA-256 hex) for every File entry, in entry order.
  std::vector<std::pair<std::string, std::string>> contents;
};

/// Writes the (normalized) entries as a tar to `out`, compressed. `on_progress` receives counts
/// of source bytes consumed. Throws std::runtime_error naming the file on any read error, or
/// when a source file changed since it was hashed.
WrittenLayer write_layer(const std::vector<TarEntry>& entries, const LayerWriteOptions& opts,
                         const ByteSink& out,
                         const std::function<void(std::uint64_t)>& on_progress = {});

}  // namespace kiln::layers
