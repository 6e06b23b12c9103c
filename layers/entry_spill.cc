// Bounded-memory sorting of a walk's entries (entry_spill.h).
#include "layers/entry_spill.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <type_traits>

#include "layers/string_sort.h"

namespace kiln::layers {

namespace {

/// A record's fixed part; the digest (when set), then dest, the entry's own rel (when it is not
/// dest's tail) and its link follow. Native layout: a run is read back by the process that wrote it.
struct Head {
  std::uint32_t dest_len = 0, rel_len = 0, link_len = 0;
  std::uint16_t mode = 0, nlink = 0;
  std::uint8_t type = 0, sha_set = 0, rel_own = 0;  // rel_own: rel's bytes follow dest; else dest's tail
  std::uint8_t pad = 0;
  StatIndex::Key key;
  std::uint64_t size = 0;
};
static_assert(std::is_trivially_copyable_v<Head>);


/// Reads one record into `out`; false at the end of the file.
bool read_entry(SpillFile::Reader& reader, const std::shared_ptr<const std::string>& root, FileEntry& out) {
  const char* at = reader.take(sizeof(Head));
  if (!at) return false;
  Head h;
  std::memcpy(&h, at, sizeof h);
  const std::size_t own_rel = h.rel_own ? h.rel_len : 0;
  if (!h.rel_own && h.rel_len > h.dest_len) throw std::runtime_error("a temporary file of the walk holds a bad record");
  const std::size_t body = (h.sha_set ? 32 : 0) + std::size_t(h.dest_len) + own_rel + h.link_len;
  const char* p = reader.take(body);
  if (!p && body) throw std::runtime_error("a temporary file of the walk ends within a record");
  FileEntry e;
  if (h.sha_set) {
    std::memcpy(e.sha256.bytes.data(), p, 32);
    e.sha256.set = true;
    p += 32;
  }
  std::string dest(p, h.dest_len);
  p += h.dest_len;
  std::string rel = h.rel_own ? std::string(p, h.rel_len) : dest.substr(dest.size() - h.rel_len);
  p += own_rel;
  e.set_paths(std::move(rel), std::move(dest));
  if (h.link_len) e.set_link(std::string(p, h.link_len));
  e.mode = h.mode;
  e.nlink = h.nlink;
  e.type = static_cast<FileEntry::Type>(h.type);
  e.key = h.key;
  e.size = h.size;
  e.root = root;
  out = std::move(e);
  return true;
}

/// The order of `list` by rel (indices), without moving the entries.
std::vector<std::uint32_t> rel_order(const std::vector<FileEntry>& list) {
  std::vector<KeyedIndex> items(list.size());
  for (std::size_t i = 0; i < list.size(); ++i) items[i] = {list[i].rel(), static_cast<std::uint32_t>(i)};
  sort_keyed(items.data(), items.size());
  std::vector<std::uint32_t> order(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) order[i] = items[i].index;
  return order;
}

}  // namespace

void append_entry(SpillFile& f, const FileEntry& e) {
  Head h;
  const std::string_view own_rel = e.owns_rel() ? e.rel() : std::string_view();
  h.dest_len = static_cast<std::uint32_t>(e.dest.size());
  h.rel_len = static_cast<std::uint32_t>(e.rel().size());
  h.rel_own = e.owns_rel();
  h.link_len = static_cast<std::uint32_t>(e.link().size());
  h.mode = e.mode;
  h.nlink = e.nlink;
  h.type = static_cast<std::uint8_t>(e.type);
  h.sha_set = e.sha256.set;
  h.key = e.key;
  h.size = e.size;
  // Piece by piece into the file's buffer: no string per entry.
  f.append(&h, sizeof h);
  if (e.sha256.set) f.append(e.sha256.bytes.data(), e.sha256.bytes.size());
  f.append(e.dest.data(), e.dest.size());
  f.append(own_rel.data(), own_rel.size());
  f.append(e.link().data(), e.link().size());
}

bool EntryReader::next(FileEntry& e) { return read_entry(reader_, root_, e); }

EntryRuns::EntryRuns(std::filesystem::path dir, std::size_t budget) : dir_(std::move(dir)), budget_(std::max<std::size_t>(budget, 1)) {}
EntryRuns::EntryRuns(EntryRuns&&) noexcept = default;
EntryRuns& EntryRuns::operator=(EntryRuns&&) noexcept = default;
EntryRuns::~EntryRuns() = default;

void EntryRuns::add(FileEntry&& e) {
  if (buffer_.size() >= budget_) spill();
  if (buffer_.capacity() == 0) buffer_.reserve(std::min<std::size_t>(budget_, 4096));
  buffer_.push_back(std::move(e));
  ++added_;
}

void EntryRuns::spill() {
  if (buffer_.empty()) return;
  SpillFile run(dir_);
  for (std::uint32_t i : rel_order(buffer_)) append_entry(run, buffer_[i]);
  run.flush();
  runs_.push_back(std::move(run));
  buffer_.clear();  // its room is kept for the next run
}

/// One sorted source of a merge: a run read back through a buffer, or a list in memory.
struct EntryMerge::Source {
  std::optional<SpillFile> run;
  std::optional<SpillFile::Reader> reader;
  std::vector<FileEntry> list;  // or a list, in `order`
  std::vector<std::uint32_t> order;
  std::size_t next_index = 0;
  FileEntry current;

  /// Loads the next entry into `current` (a run's with `root`); false at the end.
  bool load(const std::shared_ptr<const std::string>& root) {
    if (!run) {
      if (next_index == order.size()) return false;
      current = std::move(list[order[next_index++]]);
      return true;
    }
    return read_entry(*reader, root, current);
  }
};

EntryMerge::EntryMerge(std::shared_ptr<const std::string> root) : root_(std::move(root)) {}
EntryMerge::~EntryMerge() = default;

void EntryMerge::add(EntryRuns&& runs) {
  for (auto& r : runs.runs_) {
    auto s = std::make_unique<Source>();
    s->run.emplace(std::move(r));
    s->reader.emplace(*s->run);
    sources_.push_back(std::move(s));
  }
  runs.runs_.clear();
  add(std::move(runs.buffer_));
  runs.buffer_ = std::vector<FileEntry>();
}

void EntryMerge::add(std::vector<FileEntry>&& list) {
  if (list.empty()) return;
  auto s = std::make_unique<Source>();
  s->order = rel_order(list);
  s->list = std::move(list);
  sources_.push_back(std::move(s));
}

bool EntryMerge::less(std::size_t a, std::size_t b) const {
  return sources_[a]->current.rel() < sources_[b]->current.rel();
}

bool EntryMerge::next(FileEntry& e) {
  // A min-heap of the sources by their current entry (std::*_heap keep the greatest on top).
  auto after = [this](std::size_t a, std::size_t b) { return less(b, a); };
  if (!started_) {
    started_ = true;
    for (std::size_t i = 0; i < sources_.size(); ++i)
      if (sources_[i]->load(root_)) heap_.push_back(i);
    std::make_heap(heap_.begin(), heap_.end(), after);
  }
  if (heap_.empty()) return false;
  std::pop_heap(heap_.begin(), heap_.end(), after);
  const std::size_t s = heap_.back();
  e = std::move(sources_[s]->current);
  if (sources_[s]->load(root_)) {
    std::push_heap(heap_.begin(), heap_.end(), after);
  } else {
    heap_.pop_back();
    sources_[s].reset();  // its descriptor and buffer go now
  }
  return true;
}

}  // namespace kiln::layers
