// The file set: exactly which files of a project an image bakes in (source_root under its copy
// mode, and the `copy` entries), found by one walk that the tag, the build and the task plan share.
//
// Safety rules: the walk never follows a symlink (symlinks are stored as symlinks); a listed path
// that resolves outside its root through a symlink is refused; fifos, sockets and devices are
// refused; file names must be valid UTF-8. Directories are opened relative to their parent's
// descriptor (O_NOFOLLOW) and files are read only through open_walked_file, so a path swapped
// for a symlink during a build is an error, never followed. Which files mode "all" selects, and
// why: docs/files.md.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "layers/input_error.h"
#include "layers/store.h"
#include "spec/image_spec.h"

namespace kiln::layers {


/// A file's SHA-256, 32 raw bytes (empty until hash_files() fills it).
struct ContentDigest {
  std::array<unsigned char, 32> bytes{};
  bool set = false;
  bool empty() const { return !set; }
  /// Lowercase hex ("" when empty).
  std::string hex() const;
  /// Writes the 64 hex characters to `out` (no terminator).
  void hex_to(char* out) const;
  /// From 64 lowercase hex characters.
  static ContentDigest from_hex(std::string_view hex);
  bool operator==(const ContentDigest&) const = default;
};

struct FileEntry {
  enum class Type : std::uint8_t { File, Dir, Symlink };
  // (Members ordered for size, no padding holes: 144 bytes. A walked tree holds one per file, so
  // what most entries never have (a link, a rel of their own) lives behind one pointer.)
  std::string dest;         // inside the image, relative: "root/pkg/mod.py"
  /// The real path `rel` is relative to, shared by the entries of one walk (no per-file copy).
  std::shared_ptr<const std::string> root;
  StatIndex::Key key;       // identity when walked
  std::uint64_t size = 0;
  std::uint16_t mode = 0644;  // normalized: files 0644 or 0755 (any x bit), dirs 0755, links 0777
  std::uint16_t nlink = 1;    // st_nlink, saturated at 65535: only "more than one" matters
  std::uint16_t rel_tail_ = 0;  // (use rel()) rel's length, when it is dest's tail
  ContentDigest sha256;     // File: content digest, filled by hash_files()
  Type type = Type::File;

  /// Symlink: its target. File: the dest of the first (bytewise) file of the same list sharing its
  /// inode, stored as a hardlink to it, "" for the first or a lone file. (One string for the two:
  /// an entry is one or the other.)
  const std::string& link_target() const { return type == Type::Symlink ? link() : kNoLink; }
  const std::string& link_to() const { return type == Type::File ? link() : kNoLink; }
  const std::string& link() const { return extra_ ? extra_->link : kNoLink; }
  void set_link(std::string l);
  inline static const std::string kNoLink;
  /// The absolute path on disk (built on demand: root + "/" + rel).
  std::string abs() const;
  /// The path relative to its root (source_root, or the spec's directory for copy). A walked
  /// entry's rel is the tail of its dest ("pkg/mod.py" of "root/pkg/mod.py"): it is kept as that
  /// tail, so an entry costs one path string, not two.
  std::string_view rel() const {
    return extra_ && !extra_->rel.empty() ? std::string_view(extra_->rel)
                                          : std::string_view(dest).substr(dest.size() - rel_tail_);
  }
  /// Sets rel and dest together (dest is not changed on its own afterwards).
  void set_paths(std::string rel, std::string dest_path);
  /// Does rel have a string of its own (it is not dest's tail)?
  bool owns_rel() const { return extra_ && !extra_->rel.empty(); }

  FileEntry() = default;
  FileEntry(const FileEntry& o);
  FileEntry& operator=(const FileEntry& o);
  FileEntry(FileEntry&&) noexcept = default;
  FileEntry& operator=(FileEntry&&) noexcept = default;

 private:
  struct Extra {
    std::string rel;   // rel when it is not the tail of dest, else ""
    std::string link;  // see link()
  };
  std::unique_ptr<Extra> extra_;  // null while both are ""
  Extra& extra() {
    if (!extra_) extra_ = std::make_unique<Extra>();
    return *extra_;
  }
};
static_assert(sizeof(FileEntry) <= 144, "FileEntry grew: every walked file pays for it");

struct FileSet {
  bool has_source = false;                 // source_root set and copied (mode != no_copy)
  spec::CopyMode mode = spec::CopyMode::NoCopy;
  std::string dest;                        // "/root"
  std::vector<FileEntry> source;           // sorted by rel
  std::vector<FileEntry> copy;             // sorted by dest
  std::vector<std::string> warnings;       // e.g. a symlink pointing outside source_root
  std::string git_workdir;                 // mode all: the git work tree holding source_root, or ""
  std::uint64_t total_bytes() const;
  /// Is this path (relative to source_root) a file the image bakes in?
  bool contains_source_file(const std::string& rel) const;
  /// Does the image hold the bytes of `rel` (relative to source_root) when read as a file: a baked
  /// regular file, or a baked symlink leading, through the baked set, to one, resolved as the
  /// container resolves it (a relative target from the link's directory, an absolute one in the image,
  /// where source_root sits at `dest`; at most 40 links). A symlink whose target the image does not
  /// hold (outside source_root, or not baked) is not: `why` (when given) then says where it leads.
  bool source_file_resolves(const std::string& rel, std::string* why = nullptr) const;
};

struct CollectOptions {
  /// Added to the spec's loaded_modules (as an SDK passes them on the command line).
  std::vector<std::string> extra_modules;
  /// Select as pyflyte's fast-register bundle does (mode all), not as the image's build: also apply
  /// `<source_root>/.flyteignore` (flytekit's image builder ignores it), and read it and
  /// `.dockerignore` alike as pyflyte's FlyteIgnore and DockerIgnore do, with docker-py's
  /// PatternMatcher (case-insensitive, layers/dockerpy_ignore.h), not Docker's matcher.
  bool pyflyte_bundle = false;
  /// Where the git context of source_root is remembered between walks (GitRepo::open_remembered),
  /// or empty: asked of libgit2 every time.
  std::filesystem::path git_memo;
  /// A size hint: room for this many entries is reserved up front (a rebuild passes the size of
  /// the stat index, so the entry list does not grow by doubling). 0: none.
  std::size_t expected_entries = 0;
  /// Called with the files mode all's walk found since the last call and their bytes (for a
  /// progress view): once per directory, or per 256 files in a big one; or empty. From the walk's
  /// threads (it must be thread-safe).
  std::function<void(std::uint64_t files, std::uint64_t bytes)> walked;
  /// Threads for mode all's walk of source_root: 0 = one per core the process may run on, at most
  /// 4. The file set (entries, warnings, the error reported) does not depend on it.
  int jobs = 0;
  /// collect_files_streamed only: where the walk's entries go once a walk thread holds
  /// `spill_budget` of them (sorted runs in unnamed temporary files, layers/entry_spill.h); empty:
  /// the system's temporary directory.
  std::filesystem::path spill_dir;
  std::size_t spill_budget = std::size_t(1) << 15;
};

class EntryMerge;

/// The source entries of collect_files_streamed, in collect_files' order (by rel), each once:
/// later hardlinks marked, modelcar modes applied, as collect_files lists them.
class SourceStream {
 public:
  SourceStream(std::unique_ptr<EntryMerge> merge, bool modelcar, std::size_t runs);
  SourceStream(const SourceStream&) = delete;
  SourceStream& operator=(const SourceStream&) = delete;
  ~SourceStream();
  /// The next entry; false at the end. Throws std::runtime_error when a run cannot be read back.
  bool next(FileEntry& e);
  /// How many sorted runs the walk wrote to disk (0: it all fit in memory).
  std::size_t spilled_runs() const { return runs_; }

 private:
  std::unique_ptr<EntryMerge> merge_;
  bool modelcar_;
  std::size_t runs_;
  std::string prev_;
  bool started_ = false;
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::string> first_link_;
};

/// Walks what `spec` copies. Reads no file content. Throws InputError.
///
/// Mode all selects the files flytekit selects (docs/files.md): inside a git work tree, the files
/// `git ls-files -io --exclude-standard` does not list (tracked files are kept even when ignored;
/// .gitignore files above source_root, .git/info/exclude and core.excludesFile apply); outside
/// one, the tree's .gitignore files; then the root .dockerignore (Docker's semantics) and
/// flytekit's standard ignores. Directories are listed only when they hold something listed.
///
/// Every directory is opened relative to its parent's descriptor with O_NOFOLLOW and checked
/// against what lstat saw, so a directory swapped for a symlink is an InputError, never followed.
FileSet collect_files(const spec::ImageSpec& spec, const CollectOptions& opts);
FileSet collect_files(const spec::ImageSpec& spec, const std::vector<std::string>& extra_modules = {});

/// collect_files for a consumer that reads the source entries once, in order, in bounded memory:
/// the same file set, except that `source` is empty and its entries come from `*source` (a walk
/// thread holds at most opts.spill_budget entries; the rest wait on disk in sorted runs). The
/// warnings, the copy list and every error are collect_files'; the walk is done when this returns.
FileSet collect_files_streamed(const spec::ImageSpec& spec, const CollectOptions& opts,
                               std::unique_ptr<SourceStream>* source);

/// Opens a walked file for reading: O_NOFOLLOW, and refused (InputError) unless the descriptor is
/// the regular file the walk saw (same device and inode), so bytes from outside the root are
/// never read through a path swapped since. The caller owns the returned descriptor.
int open_walked_file(const FileEntry& e);

/// What hash_files reports: `start` once with the files and bytes it has to read (those the index
/// does not know), then `read` from its threads per chunk (`files` 1 when the chunk ends a file).
struct HashProgress {
  std::function<void(std::uint64_t files, std::uint64_t bytes)> start, read;
};

/// Fills FileEntry::sha256 for every file, from `index` where the stat identity matches, reading
/// the rest with up to `jobs` threads (and recording them in `index`). Throws InputError.
void hash_files(FileSet& set, StatIndex* index, int jobs, const HashProgress& progress = {});

// hash_files in parts, for a build that hashes each layer's files as it comes to the layer:
/// Fills FileEntry::sha256 from `index` where the stat identity matches; returns the files (of
/// both lists) still without a digest.
std::vector<FileEntry*> lookup_hashes(FileSet& set, const StatIndex* index);
/// Reads one walked file and fills its sha256 (thread-safe for distinct entries). InputError.
void hash_file(FileEntry& e, const HashProgress& progress = {});
/// Records the digests of `hashed` (entries of `set`, read by hash_file) in `index`, borrowing the
/// entries' paths and digests: save the index before `set` changes or goes.
void record_hashes(const FileSet& set, std::vector<FileEntry*> hashed, StatIndex* index);

/// Is `name` valid UTF-8?
bool valid_utf8(std::string_view name);

}  // namespace kiln::layers
