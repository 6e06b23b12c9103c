// Sorting a walk's entries in bounded memory: entries past a budget go to sorted runs in unnamed
// temporary files, and a merge gives them back one at a time, in order. What lets a consumer that
// reads a tree once, in order (`kiln files`, and the streamed build of docs/flat-memory.md), hold
// a few runs' buffers rather than the whole tree.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "layers/fileset.h"
#include "layers/spill_file.h"

namespace kiln::layers {

/// One walker thread's entries: kept in memory up to `budget` entries, then sorted by rel and
/// written as a run to an unnamed file (O_TMPFILE) in `dir`. Never named, so a killed process
/// leaves nothing behind. Not thread-safe: one per thread.
class EntryRuns {
 public:
  EntryRuns(std::filesystem::path dir, std::size_t budget);
  EntryRuns(EntryRuns&&) noexcept;
  EntryRuns& operator=(EntryRuns&&) noexcept;
  EntryRuns(const EntryRuns&) = delete;
  EntryRuns& operator=(const EntryRuns&) = delete;
  ~EntryRuns();

  void add(FileEntry&& e);
  /// Writes what is still in memory as a run too (a walk that spilled: the merge then holds no
  /// entries, only the runs' read buffers).
  void spill_rest() { spill(); }
  std::size_t size() const { return added_; }
  /// Runs written so far (0: everything is still in memory).
  std::size_t runs() const { return runs_.size(); }

 private:
  friend class EntryMerge;
  void spill();
  std::filesystem::path dir_;
  std::size_t budget_;
  std::vector<FileEntry> buffer_;
  std::vector<SpillFile> runs_;
  std::size_t added_ = 0;
};

/// Appends `e` to `f` as a record (what EntryReader reads back).
void append_entry(SpillFile& f, const FileEntry& e);

/// Reads back the entries append_entry wrote, in order, with `root` as their root.
class EntryReader {
 public:
  EntryReader(const SpillFile& f, std::shared_ptr<const std::string> root) : reader_(f), root_(std::move(root)) {}
  /// The next entry; false at the end. Throws std::runtime_error on a torn or bad record.
  bool next(FileEntry& e);

 private:
  SpillFile::Reader reader_;
  std::shared_ptr<const std::string> root_;
};

/// Entries in rel order (bytewise), merged from runs and from lists sorted by rel. Equal rels are
/// not merged: the walk never gives one twice.
class EntryMerge {
 public:
  /// `root`: what every entry's rel is relative to (the runs store no root).
  explicit EntryMerge(std::shared_ptr<const std::string> root);
  EntryMerge(const EntryMerge&) = delete;
  EntryMerge& operator=(const EntryMerge&) = delete;
  ~EntryMerge();
  /// Takes `runs`' runs and its entries still in memory (sorted here).
  void add(EntryRuns&& runs);
  /// Takes a list (sorted here).
  void add(std::vector<FileEntry>&& list);
  /// The next entry, or false at the end. Throws std::runtime_error when a run cannot be read.
  bool next(FileEntry& e);

 private:
  struct Source;
  bool less(std::size_t a, std::size_t b) const;
  std::shared_ptr<const std::string> root_;
  std::vector<std::unique_ptr<Source>> sources_;
  std::vector<std::size_t> heap_;
  bool started_ = false;
};

}  // namespace kiln::layers
