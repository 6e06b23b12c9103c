// The file set: exactly which files of a project an image bakes in (source_root under its copy
// mode, and the `copy` entries), found by one walk that the tag, the build and the task plan share.
//
// Safety rules: the walk never follows a symlink (symlinks are stored as symlinks); a listed path
// that resolves outside its root through a symlink is refused; fifos, sockets and devices are
// refused; file names must be valid UTF-8.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "layers/store.h"
#include "spec/image_spec.h"

namespace kiln::layers {

/// Bad input on disk (missing source_root, a fifo, an unreadable file…): the user must fix it.
class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct FileEntry {
  enum class Type { File, Dir, Symlink };
  std::string rel;          // relative to its root (source_root, or the spec's directory for copy)
  std::string dest;         // inside the image, relative: "root/pkg/mod.py"
  Type type = Type::File;
  std::uint32_t mode = 0644;  // normalized: files 0644 or 0755 (any x bit), dirs 0755, links 0777
  std::uint64_t size = 0;
  std::string link_target;  // Symlink
  std::string abs;          // absolute path on disk
  StatIndex::Key key;       // identity when walked
  std::uint64_t nlink = 1;
  std::string sha256;       // File: hex content digest, filled by hash_files()
  std::string link_to;      // File: dest of the first (bytewise) file of the same list sharing its
                            // inode — stored as a hardlink to it; "" for the first or a lone file
};

struct FileSet {
  bool has_source = false;                 // source_root set and copied (mode != no_copy)
  spec::CopyMode mode = spec::CopyMode::NoCopy;
  std::string dest;                        // "/root"
  std::vector<FileEntry> source;           // sorted by rel
  std::vector<FileEntry> copy;             // sorted by dest
  std::vector<std::string> warnings;       // e.g. a symlink pointing outside source_root
  std::uint64_t total_bytes() const;
  /// Is this path (relative to source_root) a file the image bakes in?
  bool contains_source_file(const std::string& rel) const;
};

/// Walks what `spec` copies. `extra_modules` adds to the spec's loaded_modules (as an SDK passes
/// them on the command line). Reads no file content. Throws InputError.
FileSet collect_files(const spec::ImageSpec& spec, const std::vector<std::string>& extra_modules = {});

/// Fills FileEntry::sha256 for every file, from `index` where the stat identity matches, reading
/// the rest with up to `jobs` threads (and recording them in `index`). Throws InputError.
void hash_files(FileSet& set, StatIndex* index, int jobs);

/// Is `name` valid UTF-8?
bool valid_utf8(std::string_view name);

}  // namespace kiln::layers
