// The content-addressed store: blobs by sha256, a layer cache keyed on each layer's inputs, and a
// stat index so that a rebuild with nothing changed reads no file content.
//
// On-disk format (version 1), under the cache root ($KILN_CACHE, else $XDG_CACHE_HOME/kiln, else
// ~/.cache/kiln) — see docs/store.md:
//   VERSION                      "kiln-store 1"
//   blobs/sha256/<hex>           immutable blobs, written to tmp/ then renamed into place
//   layers/<key>.json            layer cache records: {digest, diff_id, media_type, size, tar_size}
//   stat/<key>.idx               stat indexes (path, size, mtime, ctime, inode → sha256)
//   verified/<hex>               "ino size mtime_ns" of a blob whose content was checked against its
//                                digest (by the writer, or by hashing): while the blob's identity
//                                is unchanged it is not hashed again
//   verified/ext-<key>           the same for a blob outside the store (a base's OCI layout), keyed
//                                on its path: "digest dev ino size mtime_ns"
//   locks/<key>.lock             flock held while a process writes the layer <key>
//   rootfs/flat-<chain>/         unpacked base trees RUN steps start from (docs/run-steps.md)
//   rootfs/diff-<chain>/         step layers in overlayfs form; both rebuilt from blobs when gone
//   tmp/                         in-flight writes; anything here is garbage after a crash
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <filesystem>
#include <array>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "layers/spill_file.h"
#include "layers/compress.h"
#include "layers/unique_fd.h"

namespace kiln::layers {

/// A cached layer: what write_layer produced for a given input key.
struct LayerRecord {
  std::string digest, diff_id, media_type;
  std::uint64_t size = 0, tar_size = 0;
};

/// A new file written front to back and made durable: small writes are gathered (256 KiB); the
/// first 8 MiB go through the page cache, with their writeback started as they grow; the rest goes
/// with O_DIRECT, from two aligned buffers and a thread of the file's own (store.cc,
/// FileWriter::Direct); finish() writes what is left and fsyncs. Destroyed before keep(), the file
/// is removed. Not thread-safe.
class FileWriter {
 public:
  /// Creates `path` (O_EXCL, mode 0644).
  explicit FileWriter(std::filesystem::path path);
  ~FileWriter();
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;
  void write(const void* data, std::size_t n);
  /// Writes every byte, fsyncs and closes. Returns the file's stat taken before the close
  /// (st_ino 0 when fstat failed).
  struct stat finish();
  /// The file stays when this writer goes (after finish() and a successful rename of path()).
  void keep() { keep_ = true; }
  const std::filesystem::path& path() const { return path_; }

 private:
  class Direct;
  void flush();
  void written(std::size_t n);
  std::filesystem::path path_;
  int fd_ = -1;
  bool keep_ = false;
  static constexpr std::size_t kBuffer = 256u << 10;  // small writes are gathered up to this
  std::string buf_;
  std::uint64_t size_ = 0, kicked_ = 0;  // bytes written; bytes whose writeback was started
  std::shared_ptr<UniqueFd> kick_fd_;     // a duplicate of fd_ for the writeback thread (store.cc)
  std::unique_ptr<Direct> direct_;        // past kDirectFrom bytes
  bool direct_tried_ = false;
};

/// A blob being written: bytes go to a temp file; commit() verifies the digest and renames it into
/// place. Destroyed without commit(), the temp file is removed.
class BlobWriter {
 public:
  BlobWriter(const std::filesystem::path& tmp_dir, const std::filesystem::path& blobs_dir);
  BlobWriter(const BlobWriter&) = delete;
  BlobWriter& operator=(const BlobWriter&) = delete;
  void write(const void* data, std::size_t n) { file_.write(data, n); }
  ByteSink sink() {
    return [this](const void* d, std::size_t n) { write(d, n); };
  }
  /// fsync, then rename to blobs/sha256/<hex of digest>. `digest` was computed by the caller on
  /// the same bytes. Returns the final path.
  std::filesystem::path commit(const std::string& digest);

 private:
  FileWriter file_;
  std::filesystem::path blobs_dir_;
};

/// An exclusive flock, released on destruction (or by the kernel when the process dies).
class FileLock {
 public:
  explicit FileLock(int fd) : fd_(fd) {}
  FileLock(FileLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  FileLock& operator=(FileLock&&) = delete;
  FileLock(const FileLock&) = delete;
  ~FileLock();

 private:
  int fd_;
};

/// Commits finished blobs on a thread of its own: fsync, rename into place, then the caller's
/// follow-up (the layer record), then the layer's lock is released. The threads writing layers hand
/// a blob over and go on to the next one instead of waiting for the disk; the disk works through
/// the commits while they compute. A blob is still durable before any record names it, and the
/// layer stays locked (other processes wait) until its record is written. drain() waits for every
/// commit handed over and rethrows the first failure; a commit that fails leaves no record, and
/// the blobs not yet committed when the committer is destroyed are removed (their temp files).
class BlobCommitter {
 public:
  BlobCommitter();
  ~BlobCommitter();
  BlobCommitter(const BlobCommitter&) = delete;
  BlobCommitter& operator=(const BlobCommitter&) = delete;
  /// `then` runs on the committer's thread once the blob is in place; `lock` is released after it.
  void submit(std::unique_ptr<BlobWriter> blob, std::string digest, std::function<void()> then,
              std::optional<FileLock> lock);
  void drain();

 private:
  struct Job {
    std::unique_ptr<BlobWriter> blob;
    std::string digest;
    std::function<void()> then;
    std::optional<FileLock> lock;
  };
  void run();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool busy_ = false, stop_ = false;
  std::exception_ptr failure_;
  std::thread thread_;  // last: started once the members above exist
};

class Store {
 public:
  static constexpr int kFormatVersion = 1;

  /// Opens (creating if needed) the store at `root`. Throws when the directory holds a store of
  /// another format version.
  explicit Store(std::filesystem::path root);

  /// $KILN_CACHE, else $XDG_CACHE_HOME/kiln, else $HOME/.cache/kiln.
  static std::filesystem::path default_root();
  /// Is there a store at `root` (its VERSION file)? Creates nothing: for readers (`kiln cache
  /// du`, `kiln cache prune`), which must not make a store where there is none.
  static bool exists_at(const std::filesystem::path& root);

  const std::filesystem::path& root() const { return root_; }
  std::filesystem::path blob_path(const std::string& digest) const;
  bool has_blob(const std::string& digest) const;
  std::unique_ptr<BlobWriter> new_blob() const;
  /// Stores small bytes (config, manifest) under their digest; returns the digest.
  std::string put_bytes(const std::string& bytes) const;
  std::string read_bytes(const std::string& digest) const;
  /// Copies a file in by digest, verifying the content (hardlink first where it can).
  void put_file(const std::filesystem::path& file, const std::string& digest) const;

  /// The layer cache. A record is returned only if its blob is present, has the recorded size,
  /// and its content is known to match its digest: checked once (hashed) per blob identity, then
  /// remembered under verified/. A blob that does not match is removed, and the layer is a miss.
  std::optional<LayerRecord> find_layer(const std::string& key) const;
  /// Waits until no other process (or thread) is writing layer `key`, then holds it: the caller
  /// looks in the cache again (find_layer), and writes the layer only on a miss. `on_wait` is
  /// called once, before waiting, when another holds it.
  FileLock lock_layer(const std::string& key, const std::function<void()>& on_wait = {}) const;
  /// Is the blob's content known to match `digest` (hashing it unless remembered)? A blob that
  /// does not match is removed. False when the blob is missing.
  bool verify_blob(const std::string& digest) const;
  void put_layer(const std::string& key, const LayerRecord& rec) const;
  /// Is `file`, a blob outside the store (in a base's OCI layout), known to hold `digest`? It is
  /// hashed unless this very file — same path, device, inode, size and mtime — was verified to
  /// hold `digest` before; a match is remembered under verified/ext-<path key>. Throws
  /// std::system_error when the file cannot be read.
  bool verify_external(const std::filesystem::path& file, const std::string& digest) const;

  std::filesystem::path stat_index_path(const std::string& key) const;
  std::filesystem::path tmp_dir() const { return root_ / "tmp"; }

  struct Usage {
    std::uint64_t blobs = 0, blob_bytes = 0, layer_records = 0, stat_indexes = 0, stat_bytes = 0,
                  tmp_files = 0, tmp_bytes = 0, rootfs_trees = 0, rootfs_bytes = 0;
  };
  Usage usage() const;

  struct PruneResult {
    std::uint64_t removed_blobs = 0, removed_bytes = 0, removed_records = 0, removed_trees = 0,
                  removed_tree_bytes = 0;
  };
  /// Removes layer records unused for `older_than_seconds` (0 = all), stat indexes of that age,
  /// blobs no remaining record or pinned digest refers to, unpacked trees unused that long, and
  /// stale tmp files. Every Store holds a shared lock on the store (locks/in-use) while it lives;
  /// prune takes it exclusively, so it waits for the other kilns using the store (a build that
  /// has just committed a blob, or found a cached layer, still needs it for its outputs).
  /// `on_wait` is called once, before waiting, when another process uses the store.
  PruneResult prune(std::int64_t older_than_seconds, const std::function<void()>& on_wait = {}) const;

 private:
  std::filesystem::path root_;
  std::shared_ptr<UniqueFd> in_use_;  // the shared lock on locks/in-use (shared by copies)
};

/// Maps a file's identity (size, mtime, ctime, inode, device) to its sha256, so unchanged files are
/// not read again. Entries whose mtime is not safely older than the index's own write time are
/// not trusted ("racy", as in git) and are hashed again.
///
/// The file (format KILNSTAT3, docs/store.md) is a sorted table of fixed-size records and a path
/// arena; load() maps it and lookups binary-search it in place, so a rebuild builds no table and
/// copies no path. Only updated entries are held in memory (one arena of paths).
class StatIndex {
 public:
  struct Key {
    std::uint64_t size = 0, ino = 0, dev = 0;
    std::int64_t mtime_ns = 0, ctime_ns = 0;
    bool operator==(const Key&) const = default;
  };
  using Digest = std::array<unsigned char, 32>;

  StatIndex() = default;
  ~StatIndex();
  StatIndex(const StatIndex&) = delete;
  StatIndex& operator=(const StatIndex&) = delete;

  void load(const std::filesystem::path& file);
  /// Writes atomically, only when an entry was added or updated since load(). Entries this walk did
  /// not look up are kept (several specs may share one index) until unseen for 8 rewrites.
  void save(const std::filesystem::path& file);
  std::optional<std::string> lookup(std::string_view path, const Key& key) const;
  /// The same without a string: true and `*out` filled on a trusted hit.
  bool lookup(std::string_view path, const Key& key, Digest* out) const;
  void update(std::string_view path, const Key& key, const std::string& sha256_hex);
  void update(std::string_view path, const Key& key, const Digest& sha256);
  /// The same without a copy: `path`, `key` and `sha256` must stay valid and unchanged until
  /// save() (a walk's entries, recorded right before saving). 32 bytes per update.
  void update_borrowed(std::string_view path, const Key& key, const Digest& sha256);
  void reserve_updates(std::size_t n) { updates_.reserve(updates_.size() + n); }
  /// For a walk that records its digests in path order (a streamed walk): each `path` must come
  /// after the previous one's (std::logic_error otherwise). The updates wait in an unnamed file in
  /// `spill_dir`, not in memory, until save() merges them in; lookup() does not see them before.
  void update_ordered(std::string_view path, const Key& key, const Digest& sha256,
                      const std::filesystem::path& spill_dir);

  /// Records in the loaded file (for tests and `kiln cache du`).
  std::size_t loaded_size() const { return count_; }

 private:
  struct Update {  // borrowed, or pointing into owned_
    const char* path = nullptr;
    std::size_t len = 0;
    const Key* key = nullptr;
    const Digest* sha256 = nullptr;
  };
  struct Owned {
    std::string path;
    Key key;
    Digest sha256{};
  };
  static std::string_view update_path(const Update& u) { return {u.path, u.len}; }
  const Update* find_update(std::string_view path) const;
  void sort_updates() const;
  void unmap();
  void drop_below(std::size_t record) const;

  const char* map_ = nullptr;  // the loaded file, mapped read-only
  std::size_t map_len_ = 0;
  const unsigned char* records_ = nullptr;
  std::size_t count_ = 0;
  mutable std::vector<std::uint8_t> seen_;  // per loaded record: looked up with a trusted hit
  mutable std::vector<Update> updates_;
  mutable bool updates_sorted_ = true;
  std::deque<Owned> owned_;  // a deque: its elements never move
  std::unique_ptr<SpillFile> ordered_;  // update_ordered's records: u32 path length, path, Key, sha256
  std::string ordered_last_;
  std::int64_t written_ns_ = 0;
  mutable std::size_t cursor_ = 0;                        // where the last lookup landed
  mutable std::size_t dropped_rec_ = 0, dropped_arena_ = 0;  // mapped bytes already released
  bool dirty_ = false;
};

}  // namespace kiln::layers
