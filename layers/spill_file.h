// An unnamed temporary file, written once front to back and then read back (any number of times)
// through a buffer: where a streamed walk keeps what does not fit its memory budget (sorted runs of
// entries, the stat index's ordered updates). O_TMPFILE, so nothing is ever named: a killed
// process leaves no file behind.
#pragma once

#include <cstddef>
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "layers/unique_fd.h"

namespace kiln::layers {

class SpillFile {
 public:
  /// Creates the file in `dir`. Throws std::runtime_error naming `dir`.
  explicit SpillFile(std::filesystem::path dir);
  SpillFile(SpillFile&&) noexcept = default;
  SpillFile& operator=(SpillFile&&) noexcept = default;

  /// Appends, through a buffer of 256 KiB; flush() before reading (it writes the rest and frees
  /// the buffer).
  void append(const void* p, std::size_t n);
  void flush();
  std::uint64_t size() const { return size_; }
  /// Writes at `offset` (pwrite: threads may write disjoint ranges at once), for a file of slots
  /// written out of order; then extend() to the slots' end before reading (a slot never written
  /// reads as zeros).
  void write_at(std::uint64_t offset, const void* p, std::size_t n);
  void extend(std::uint64_t size);

  /// Reads the file from its start (after flush()).
  class Reader {
   public:
    explicit Reader(const SpillFile& f, std::size_t buffer = 64u << 10);
    /// The next `n` bytes, valid until the next call; nullptr at the very end of the file. Throws
    /// when the file ends within them (a torn record).
    const char* take(std::size_t n);

   private:
    const SpillFile* f_;
    std::vector<char> buf_;
    std::uint64_t offset_ = 0;
    std::size_t pos_ = 0, len_ = 0;
  };

 private:
  static constexpr std::size_t kPending = 256u << 10;
  void write_pending();
  [[noreturn]] void fail(const char* what) const;
  UniqueFd fd_;
  std::filesystem::path dir_;
  std::string pending_;
  std::uint64_t size_ = 0;
};

}  // namespace kiln::layers
