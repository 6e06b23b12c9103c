// Small file-system helpers shared by the store and the sinks: atomic writes, linking blobs.
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <string>

namespace kiln::layers {

/// A name unique to this process and call ("<prefix>.<pid>.<counter>.<random>").
std::string unique_name(const std::string& prefix);

/// write(2) until done; throws std::system_error naming `what`.
void write_all(int fd, const void* data, std::size_t n, const std::filesystem::path& what);

/// Reads a whole file; false when it does not exist. Throws on other errors.
bool read_file_if_exists(const std::filesystem::path& path, std::string* out);

/// Writes `content` to a temp file in `tmp_dir` (same file system), fsyncs it (when `sync`), and
/// renames it over `path`: readers see the old file or the new one, never a mix.
void atomic_write(const std::filesystem::path& path, const std::string& content,
                  const std::filesystem::path& tmp_dir, bool sync = true);

/// Makes `dst` (which must not exist) have `src`'s bytes: a hardlink where possible, else a
/// reflink (FICLONE), else a copy. Returns "hardlink", "reflink" or "copy".
/// The same, with the content produced in pieces through `write` (nothing held whole in memory).
void atomic_write_stream(const std::filesystem::path& path, const std::filesystem::path& tmp_dir, bool sync,
                         const std::function<void(const std::function<void(const void*, std::size_t)>& write)>& produce);

const char* link_or_copy(const std::filesystem::path& src, const std::filesystem::path& dst);

/// Removes a tree (no error when it is absent), first making writable the directories a RUN step
/// may have left read-only (0555). Throws std::system_error when it cannot.
void remove_tree(const std::filesystem::path& dir);

/// Reads a whole file in blocks of up to `block` bytes, handing each to `f`. A symlink is refused
/// unless `follow`. Throws std::system_error naming the file.
void read_blocks(const std::filesystem::path& path, const std::function<void(const char*, std::size_t)>& f,
                 std::size_t block = 1 << 20, bool follow = false);

/// fsync a directory, so a rename in it is durable.
void sync_dir(const std::filesystem::path& dir);

}  // namespace kiln::layers
