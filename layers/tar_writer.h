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
#include <string_view>
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
/// (LayerOrder, on the paths alone.)
std::vector<TarEntry> normalize_entries(std::vector<TarEntry> entries, std::uint32_t uid = 0,
                                        std::uint32_t gid = 0);

/// The order normalize_entries gives, worked out on the paths alone, for a writer that makes each
/// entry only as it is written (a layer of a million files then holds 4 bytes per entry, not a
/// TarEntry): `path(i)` is the i-th input's path; next() yields, in the layer's order, either an
/// input's index or a parent directory the input lacks. `path` must stay valid while next() is
/// called, for the inputs not yet yielded. Throws as normalize_entries does.
class LayerOrder {
 public:
  LayerOrder(std::size_t n, std::function<std::string_view(std::size_t)> path);
  /// The next item: true with *index set (and *parent null), or *parent set (a missing parent
  /// directory); false at the end.
  bool next(std::size_t* index, const std::string** parent);
  /// How many items next() yields in all.
  std::size_t size() const { return kept_.size() + missing_.size(); }

 private:
  std::function<std::string_view(std::size_t)> path_;
  std::vector<std::uint32_t> kept_;   // input indices, sorted by path, one per path (the last given)
  std::vector<std::string> missing_;  // parents no input is, sorted
  std::size_t a_ = 0, b_ = 0;         // next of kept_, of missing_
};

struct LayerWriteOptions {
  Compression compression = Compression::Gzip;
  int level = -1;               // codec default
  std::int64_t mtime = 0;       // SOURCE_DATE_EPOCH or 0
  int threads = 1;              // gzip compression threads (the bytes do not depend on it)
  /// Also compute each regular file's SHA-256 from the very bytes written, for a build that hashes
  /// files as it writes them: on_content(entry, hex) is called for every File entry once its bytes
  /// are written, before the next entry is asked for. A big file's digest is computed on a second
  /// thread beside the tar's when threads >= 2, and always when uncompressed: there the two SHA-256
  /// passes are nearly all the work, and a thread idle once the other layers are done takes one.
  bool hash_contents = false;
  std::function<void(const TarEntry&, const std::string& hex)> on_content;
};

struct WrittenLayer {
  std::string digest;           // sha256 of the bytes written (the blob)
  std::string diff_id;          // sha256 of the uncompressed tar
  std::string media_type;
  std::uint64_t size = 0;       // blob size
  std::uint64_t tar_size = 0;   // uncompressed size
};

/// Writes the (normalized) entries as a tar to `out`, compressed. `on_progress` receives counts
/// of source bytes consumed. Throws std::runtime_error naming the file on any read error, or
/// when a source file changed since it was hashed.
WrittenLayer write_layer(const std::vector<TarEntry>& entries, const LayerWriteOptions& opts,
                         const ByteSink& out,
                         const std::function<void(std::uint64_t)>& on_progress = {});

/// The entries of a layer one at a time, already in normalized order (LayerOrder): fills in `e`
/// (a reused object: every field is set) and returns true, or returns false at the end.
using EntrySource = std::function<bool(TarEntry& e)>;

/// write_layer for entries made as they are written: no list of them is held.
WrittenLayer write_layer(const EntrySource& next, const LayerWriteOptions& opts, const ByteSink& out,
                         const std::function<void(std::uint64_t)>& on_progress = {});

}  // namespace kiln::layers
