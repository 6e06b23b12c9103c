// The content-addressed store, the layer cache and the stat index.
#include "layers/store.h"

#include "layers/spill_file.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <vector>

#include "layers/digest.h"
#include "layers/fsutil.h"
#include "layers/parallel.h"
#include "layers/unique_fd.h"

namespace fs = std::filesystem;

namespace kiln::layers {

// ---------------------------------------------------------------------------------------------
// Verified blobs: verified/<hex> holds "ino size mtime_ns" of the blob file whose content was last
// checked against its name. (Not ctime: linking a blob into a layout changes it.)

namespace {

std::string identity(const struct stat& st) {
  return std::to_string(st.st_ino) + " " + std::to_string(st.st_size) + " " +
         std::to_string(std::int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec) + "\n";
}

void remember_verified(const fs::path& root, const std::string& hex, const struct stat& st) {
  try {
    atomic_write(root / "verified" / hex, identity(st), root / "tmp", /*sync=*/false);
  } catch (const std::exception&) {
    // Only a memo: without it the blob is hashed again when next used.
  }
}

}  // namespace

FileLock::~FileLock() {
  if (fd_ >= 0) ::close(fd_);
}

// ---------------------------------------------------------------------------------------------
// BlobWriter

namespace {
// A blob writes its first kDirectFrom bytes through the page cache (configs, manifests and small
// layers never leave it), the rest with O_DIRECT in kDirectBlock pieces aligned to kDirectAlign.
constexpr std::uint64_t kDirectFrom = 8u << 20;
constexpr std::size_t kDirectAlign = 4096;  // a multiple of every logical block size in use
constexpr std::size_t kDirectBlock = 1u << 20;

void pwrite_all(int fd, const char* d, std::size_t n, std::uint64_t off, const fs::path& what) {
  while (n > 0) {
    ssize_t w = ::pwrite(fd, d, n, static_cast<off_t>(off));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) throw std::system_error(errno, std::generic_category(), "cannot write " + what.string());
    d += w, n -= static_cast<std::size_t>(w), off += static_cast<std::uint64_t>(w);
  }
}
}  // namespace

/// The O_DIRECT part of a big file (a blob, a docker-archive). Every byte kiln stores or outputs is
/// fsynced before it is named, so going through the page cache bought nothing but a copy, and pages
/// the machine has to find: where the kernel must first get them back (a VM handing free memory to
/// its host; the bench's machine, after the previous build's files were removed), that copy cost a
/// cold uncompressed build of the bench tree 2-3 s of system time (`copy_folio_from_iter_atomic`
/// half the profile) for 0.3 s of writing. Written directly, the bytes go from the writer's buffer
/// to the disk. Two aligned buffers: the writer fills one while a thread of the file's own writes
/// the other, so the writer waits for the disk only when the disk is the slower of the two. Where
/// the file system refuses O_DIRECT (some network or old file systems) the file stays buffered:
/// open() failing leaves no Direct; a refused write (EINVAL) goes through the page cache instead,
/// as do the next ones.
class FileWriter::Direct {
 public:
  /// Null when O_DIRECT cannot be opened here. `off`: where the direct part starts (aligned).
  static std::unique_ptr<Direct> open(const fs::path& path, int buffered_fd, std::uint64_t off) {
    UniqueFd dfd(::open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC));
    if (!dfd) return nullptr;
    std::unique_ptr<Direct> d(new Direct(path, std::move(dfd), buffered_fd, off));
    if (!d->bufs_[0] || !d->bufs_[1]) return nullptr;
    try {
      d->io_ = std::make_unique<Handoff>();
    } catch (const std::system_error&) {
      return nullptr;
    }
    return d;
  }
  ~Direct() {
    io_.reset();  // (waits for the piece in hand) before the buffers go
    std::free(bufs_[0]);
    std::free(bufs_[1]);
  }
  void append(const char* d, std::size_t n) {
    while (n > 0) {
      const std::size_t take = std::min(n, kDirectBlock - fill_);
      std::memcpy(bufs_[cur_] + fill_, d, take);
      fill_ += take, d += take, n -= take;
      if (fill_ == kDirectBlock) submit(kDirectBlock);
    }
  }
  /// Writes what is left (the unaligned tail through the page cache) once the thread is done.
  void finish() {
    const std::size_t aligned = fill_ / kDirectAlign * kDirectAlign;
    const std::size_t tail = fill_ - aligned;
    char* last = bufs_[cur_];
    if (aligned) submit(aligned);  // (moves to the other buffer: `last` still holds the tail)
    io_->wait();
    pwrite_all(buffered_fd_, last + aligned, tail, off_, path_);
  }

 private:
  Direct(const fs::path& path, UniqueFd dfd, int buffered_fd, std::uint64_t off)
      : path_(path), direct_fd_(std::move(dfd)), buffered_fd_(buffered_fd), off_(off) {
    for (char*& b : bufs_) {
      void* p = nullptr;
      b = ::posix_memalign(&p, kDirectAlign, kDirectBlock) == 0 ? static_cast<char*>(p) : nullptr;
    }
  }
  /// Hands the first `n` bytes of the current buffer to the thread (once it is done with the other
  /// one, which is filled next).
  void submit(std::size_t n) {
    io_->start([this, d = bufs_[cur_], n, off = off_] { write_piece(d, n, off); });
    off_ += n;
    cur_ ^= 1;
    fill_ = 0;
  }
  void write_piece(const char* d, std::size_t n, std::uint64_t off) {
    while (n > 0 && direct_) {
      ssize_t w = ::pwrite(direct_fd_.get(), d, n, static_cast<off_t>(off));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && errno == EINVAL) {  // refused here: the page cache, for this piece and the next
        direct_ = false;
        break;
      }
      if (w < 0) throw std::system_error(errno, std::generic_category(), "cannot write " + path_.string());
      d += w, n -= static_cast<std::size_t>(w), off += static_cast<std::uint64_t>(w);
      // A short direct write leaves an unaligned rest: it goes through the page cache.
      if (n > 0 && (static_cast<std::size_t>(w) % kDirectAlign) != 0) direct_ = false;
    }
    pwrite_all(buffered_fd_, d, n, off, path_);
  }

  fs::path path_;
  UniqueFd direct_fd_;
  int buffered_fd_;
  std::uint64_t off_;  // file offset of bufs_[cur_][0]
  char* bufs_[2] = {nullptr, nullptr};
  int cur_ = 0;
  std::size_t fill_ = 0;
  bool direct_ = true;  // the thread's: false once the file system refused a direct write
  std::unique_ptr<Handoff> io_;  // writes the pieces
};

FileWriter::FileWriter(fs::path path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "cannot create " + path_.string());
  buf_.reserve(kBuffer);
}

FileWriter::~FileWriter() {
  direct_.reset();  // its thread may be writing through fd_
  if (fd_ >= 0) ::close(fd_);
  if (!keep_) ::unlink(path_.c_str());
}

void FileWriter::write(const void* data, std::size_t n) {
  const char* d = static_cast<const char*>(data);
  if (direct_) {
    direct_->append(d, n);
    return;
  }
  if (!direct_tried_ && size_ + buf_.size() + n >= kDirectFrom) {
    // Big enough: through the page cache up to an aligned offset, then the rest through Direct.
    direct_tried_ = true;
    const std::uint64_t before = size_ + buf_.size();
    const std::uint64_t start = (before + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
    const std::size_t lead = static_cast<std::size_t>(std::min<std::uint64_t>(start - before, n));
    buf_.append(d, lead);
    d += lead, n -= lead;
    flush();
    if (size_ != start) {  // all of it went into the lead: switch with the next bytes
      direct_tried_ = false;
      return;
    }
    direct_ = Direct::open(path_, fd_, start);
    if (direct_) {
      direct_->append(d, n);
      return;
    }
  }
  if (buf_.size() + n > kBuffer) flush();
  if (n >= kBuffer) {
    write_all(fd_, d, n, path_);
    written(n);
  } else {
    buf_.append(d, n);
  }
}

void FileWriter::flush() {
  if (!buf_.empty()) {
    write_all(fd_, buf_.data(), buf_.size(), path_);
    written(buf_.size());
  }
  buf_.clear();
}

namespace {

/// Starts the writeback of blob ranges on a thread of its own. sync_file_range(WRITE) submits the
/// pages to the disk and sleeps once the device's request queue is full: a layer writer that called
/// it ran at the disk's speed (a 512 MiB uncompressed layer: 1.2 s instead of 0.9 s, while the
/// compressing layers waited for a core it was not using). One thread for the process, started on
/// first use; ranges of one blob queued back to back are merged. Each range holds a duplicate of
/// the blob's descriptor, so a blob committed or dropped meanwhile is never confused with another
/// file given the same number. Never destroyed, its thread detached: nothing at exit waits for
/// hints or races a writer still running.
class Writeback {
 public:
  static Writeback& instance() {
    static Writeback* w = new Writeback;
    return *w;
  }
  /// False when no thread can be started: the caller starts the writeback itself.
  bool start(const std::shared_ptr<UniqueFd>& fd, std::uint64_t off, std::uint64_t len) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_) {
      if (failed_) return false;
      try {
        std::thread([this] { run(); }).detach();
        started_ = true;
      } catch (const std::system_error&) {
        failed_ = true;
        return false;
      }
    }
    if (!queue_.empty() && queue_.back().fd == fd && queue_.back().off + queue_.back().len == off) {
      queue_.back().len += len;
    } else {
      queue_.push_back({fd, off, len});
    }
    cv_.notify_one();
    return true;
  }

 private:
  struct Range {
    std::shared_ptr<UniqueFd> fd;
    std::uint64_t off, len;
  };
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return !queue_.empty(); });
      Range r = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      ::sync_file_range(r.fd->get(), static_cast<off_t>(r.off), static_cast<off_t>(r.len), SYNC_FILE_RANGE_WRITE);
      r.fd.reset();  // before the lock: closing may be the last reference
      lock.lock();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Range> queue_;
  bool started_ = false, failed_ = false;
};

}  // namespace

// Writeback is started every 8 MiB as the blob grows, so the disk works while the layer is still
// being written and commit()'s fsync waits for the tail only (on this machine, a 792 MB blob's
// write + fsync: 0.50 s instead of 0.60-1.1 s), by the Writeback thread, so the writer does not
// wait for the disk's queue. A hint: failure changes nothing, fsync still decides.
void FileWriter::written(std::size_t n) {
  constexpr std::uint64_t kKick = 8u << 20;
  size_ += n;
  if (size_ - kicked_ >= kKick) {
    if (!kick_fd_) {
      const int dup = ::fcntl(fd_, F_DUPFD_CLOEXEC, 0);
      if (dup >= 0) kick_fd_ = std::make_shared<UniqueFd>(dup);
    }
    if (!kick_fd_ || !Writeback::instance().start(kick_fd_, kicked_, size_ - kicked_))
      ::sync_file_range(fd_, static_cast<off_t>(kicked_), static_cast<off_t>(size_ - kicked_), SYNC_FILE_RANGE_WRITE);
    kicked_ = size_;
  }
}

struct stat FileWriter::finish() {
  flush();
  if (direct_) {
    direct_->finish();
    direct_.reset();
  }
  if (::fsync(fd_) != 0) throw std::system_error(errno, std::generic_category(), "fsync " + path_.string());
  struct stat st{};
  if (::fstat(fd_, &st) != 0) st = {};
  ::close(fd_);
  fd_ = -1;
  return st;
}

BlobWriter::BlobWriter(const fs::path& tmp_dir, const fs::path& blobs_dir)
    : file_(tmp_dir / unique_name("blob")), blobs_dir_(blobs_dir) {}

fs::path BlobWriter::commit(const std::string& digest) {
  // First, while the writer still owns (and removes) the temp file: digest_hex throws on a
  // malformed digest.
  fs::path dest = blobs_dir_ / std::string(digest_hex(digest));
  const struct stat st = file_.finish();
  if (::rename(file_.path().c_str(), dest.c_str()) != 0)
    throw std::system_error(errno, std::generic_category(), "cannot store blob " + digest);  // (the writer removes it)
  file_.keep();
  // The digest was computed on these very bytes: the blob is verified as written.
  if (st.st_ino != 0) remember_verified(blobs_dir_.parent_path().parent_path(), dest.filename().string(), st);
  return dest;
}

// ---------------------------------------------------------------------------------------------
// BlobCommitter

BlobCommitter::BlobCommitter() : thread_([this] { run(); }) {}

BlobCommitter::~BlobCommitter() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
    queue_.clear();  // not committed: the writers' destructors remove the temp files
  }
  cv_.notify_all();
  thread_.join();
}

void BlobCommitter::submit(std::unique_ptr<BlobWriter> blob, std::string digest, std::function<void()> then,
                           std::optional<FileLock> lock) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    queue_.push_back(Job{std::move(blob), std::move(digest), std::move(then), std::move(lock)});
  }
  cv_.notify_all();
}

void BlobCommitter::drain() {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return queue_.empty() && !busy_; });
  if (failure_) {
    std::exception_ptr f = failure_;
    failure_ = nullptr;
    std::rethrow_exception(f);
  }
}

void BlobCommitter::run() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    std::exception_ptr err;
    {
      Job job = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      const bool skip = failure_ != nullptr;  // after a failure: nothing more is published
      lk.unlock();
      if (!skip) {
        try {
          job.blob->commit(job.digest);
          if (job.then) job.then();
        } catch (...) {
          err = std::current_exception();
        }
      }
    }  // the temp file (when not committed) and the lock go here, outside the mutex
    lk.lock();
    if (err && !failure_) failure_ = err;
    busy_ = false;
    cv_.notify_all();
  }
}

// ---------------------------------------------------------------------------------------------
// Store

namespace {
const char* kVersionLine = "kiln-store 1\n";
}

Store::Store(fs::path root) : root_(std::move(root)) {
  fs::create_directories(root_);
  fs::path vfile = root_ / "VERSION";
  std::string v;
  if (read_file_if_exists(vfile, &v)) {
    if (v != kVersionLine)
      throw std::runtime_error("the cache at " + root_.string() + " has format '" +
                               v.substr(0, v.find('\n')) + "', this kiln reads '" +
                               std::string(kVersionLine, std::strlen(kVersionLine) - 1) +
                               "'; use another KILN_CACHE or remove it");
  }
  for (const char* d : {"blobs/sha256", "layers", "stat", "tmp", "verified", "locks"}) fs::create_directories(root_ / d);
  // tmp/ holds scratch trees of RUN steps (a base's files as the image has them): owner only.
  ::chmod((root_ / "tmp").c_str(), 0700);
  if (v.empty()) atomic_write(vfile, kVersionLine, root_ / "tmp");
  // In use while this Store lives: a prune (which takes the lock exclusively) waits for it. A
  // store kiln cannot lock (a read-only file system) is used unlocked.
  // (flock works on a read-only descriptor: a store shared with another user still locks.)
  fs::path in_use = root_ / "locks" / "in-use";
  UniqueFd fd(::open(in_use.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd) fd = UniqueFd(::open(in_use.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd) {
    while (::flock(fd.get(), LOCK_SH) != 0 && errno == EINTR) {
    }
    in_use_ = std::make_shared<UniqueFd>(std::move(fd));
  }
}

fs::path Store::default_root() {
  if (const char* c = std::getenv("KILN_CACHE"); c && *c) return fs::absolute(c);
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return fs::path(x) / "kiln";
  if (const char* h = std::getenv("HOME"); h && *h) return fs::path(h) / ".cache" / "kiln";
  return fs::temp_directory_path() / "kiln-cache";
}

bool Store::exists_at(const fs::path& root) {
  std::error_code ec;
  return fs::is_regular_file(root / "VERSION", ec);
}

fs::path Store::blob_path(const std::string& digest) const {
  return root_ / "blobs" / "sha256" / std::string(digest_hex(digest));
}

bool Store::has_blob(const std::string& digest) const {
  struct stat st{};
  return ::stat(blob_path(digest).c_str(), &st) == 0;
}

std::unique_ptr<BlobWriter> Store::new_blob() const {
  return std::make_unique<BlobWriter>(root_ / "tmp", root_ / "blobs" / "sha256");
}

std::string Store::put_bytes(const std::string& bytes) const {
  std::string d = sha256_digest(bytes);
  if (has_blob(d)) return d;
  auto w = new_blob();
  w->write(bytes.data(), bytes.size());
  w->commit(d);
  return d;
}

std::string Store::read_bytes(const std::string& digest) const {
  std::string s;
  if (!read_file_if_exists(blob_path(digest), &s)) throw std::runtime_error("blob missing from the cache: " + digest);
  if (sha256_digest(s) != digest) throw std::runtime_error("blob in the cache is corrupt: " + digest);
  return s;
}

void Store::put_file(const fs::path& file, const std::string& digest) const {
  if (has_blob(digest)) return;
  if (("sha256:" + sha256_file_hex(file)) != digest)
    throw std::runtime_error("blob " + file.string() + " does not match its digest " + digest);
  fs::path tmp = root_ / "tmp" / unique_name("in");
  link_or_copy(file, tmp);
  struct stat st{};
  const bool have_stat = ::stat(tmp.c_str(), &st) == 0;
  if (::rename(tmp.c_str(), blob_path(digest).c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw std::system_error(e, std::generic_category(), "cannot store blob " + digest);
  }
  if (have_stat) remember_verified(root_, std::string(digest_hex(digest)), st);
}

bool Store::verify_blob(const std::string& digest) const {
  const std::string hex(digest_hex(digest));
  fs::path blob = blob_path(digest);
  struct stat st{};
  if (::stat(blob.c_str(), &st) != 0) return false;
  std::string memo;
  if (read_file_if_exists(root_ / "verified" / hex, &memo) && memo == identity(st)) return true;
  std::string actual;
  try {
    actual = sha256_file_hex(blob);
  } catch (const std::system_error&) {
    return false;
  }
  if (actual == hex) {
    remember_verified(root_, hex, st);
    return true;
  }
  // Not what its name says (a torn write on a crash, or tampering): no later build may use it.
  ::unlink(blob.c_str());
  std::error_code ec;
  fs::remove(root_ / "verified" / hex, ec);
  return false;
}

bool Store::verify_external(const fs::path& file, const std::string& digest) const {
  const std::string hex(digest_hex(digest));
  std::error_code ec;
  fs::path abs = fs::absolute(file, ec);
  if (ec) abs = file;
  KeyHasher k;
  k.field("external-blob");
  k.field(abs.lexically_normal().string());
  fs::path memo_path = root_ / "verified" / ("ext-" + k.hex());
  auto identity_of = [&](const struct stat& st) {
    return digest + " " + std::to_string(st.st_dev) + " " + identity(st);
  };
  struct stat st{};
  if (::stat(file.c_str(), &st) != 0) throw std::system_error(errno, std::generic_category(), "cannot read " + file.string());
  std::string memo;
  if (read_file_if_exists(memo_path, &memo) && memo == identity_of(st)) return true;
  // Hash from one descriptor, and remember the identity of what was hashed.
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "cannot read " + file.string());
  Sha256 h;
  std::vector<char> buf(1 << 20);
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      throw std::system_error(e, std::generic_category(), "cannot read " + file.string());
    }
    if (n == 0) break;
    h.update(buf.data(), static_cast<std::size_t>(n));
  }
  struct stat after{};
  const bool stable = ::fstat(fd, &after) == 0 && identity(after) == identity(st) && after.st_dev == st.st_dev;
  ::close(fd);
  if (h.hex() != hex) {
    fs::remove(memo_path, ec);
    return false;
  }
  if (stable) {
    try {
      atomic_write(memo_path, identity_of(after), root_ / "tmp", /*sync=*/false);
    } catch (const std::exception&) {
      // Only a memo: without it the blob is hashed again when next used.
    }
  }
  return true;
}

FileLock Store::lock_layer(const std::string& key, const std::function<void()>& on_wait) const {
  fs::path p = root_ / "locks" / (key + ".lock");
  int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0 && errno == ENOENT) {  // a store opened before locks/ existed
    fs::create_directories(root_ / "locks");
    fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  }
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "cannot open " + p.string());
  FileLock lock(fd);
  if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return lock;
  if (errno != EWOULDBLOCK && errno != EAGAIN) throw std::system_error(errno, std::generic_category(), "flock " + p.string());
  if (on_wait) on_wait();
  while (::flock(fd, LOCK_EX) != 0)
    if (errno != EINTR) throw std::system_error(errno, std::generic_category(), "flock " + p.string());
  return lock;
}

std::optional<LayerRecord> Store::find_layer(const std::string& key) const {
  fs::path rec = root_ / "layers" / (key + ".json");
  std::string text;
  if (!read_file_if_exists(rec, &text)) return std::nullopt;
  try {
    auto j = nlohmann::json::parse(text);
    LayerRecord r{j.at("digest"), j.at("diff_id"), j.at("media_type"), j.at("size"), j.at("tar_size")};
    struct stat st{};
    if (::stat(blob_path(r.digest).c_str(), &st) != 0 || static_cast<std::uint64_t>(st.st_size) != r.size)
      return std::nullopt;
    if (!verify_blob(r.digest)) return std::nullopt;
    ::utimensat(AT_FDCWD, rec.c_str(), nullptr, 0);  // last use, for prune
    return r;
  } catch (const std::exception&) {
    return std::nullopt;  // an unreadable record is a miss; the layer is rebuilt and rewritten
  }
}

void Store::put_layer(const std::string& key, const LayerRecord& r) const {
  nlohmann::json j = {{"digest", r.digest}, {"diff_id", r.diff_id}, {"media_type", r.media_type},
                      {"size", r.size}, {"tar_size", r.tar_size}};
  // Not fsynced: the blob it names is durable already (committed first), and a record a crash
  // leaves empty or torn does not parse, which find_layer takes as a miss.
  atomic_write(root_ / "layers" / (key + ".json"), j.dump() + "\n", root_ / "tmp", /*sync=*/false);
}

fs::path Store::stat_index_path(const std::string& key) const { return root_ / "stat" / (key + ".idx"); }

namespace {
/// Bytes of the regular files in a tree (hardlinks counted once).
std::uint64_t tree_bytes(const fs::path& dir) {
  std::uint64_t n = 0;
  std::error_code ec;
  std::set<std::pair<std::uint64_t, std::uint64_t>> seen;
  for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    struct stat st{};
    if (::lstat(it->path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (st.st_nlink > 1 && !seen.insert({st.st_dev, st.st_ino}).second) continue;
    n += static_cast<std::uint64_t>(st.st_size);
  }
  return n;
}
}  // namespace

Store::Usage Store::usage() const {
  Usage u;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(root_ / "blobs" / "sha256", ec)) {
    ++u.blobs;
    u.blob_bytes += e.file_size(ec);
  }
  for (auto& e : fs::directory_iterator(root_ / "layers", ec)) { (void)e; ++u.layer_records; }
  for (auto& e : fs::directory_iterator(root_ / "stat", ec)) {  // stat indexes and their git memos
    if (e.path().extension() == ".idx") ++u.stat_indexes;
    u.stat_bytes += e.file_size(ec);
  }
  for (auto& e : fs::directory_iterator(root_ / "tmp", ec)) {
    ++u.tmp_files;
    u.tmp_bytes += e.is_directory(ec) ? tree_bytes(e.path()) : e.file_size(ec);
  }
  for (auto& e : fs::directory_iterator(root_ / "rootfs", ec)) {
    ++u.rootfs_trees;
    u.rootfs_bytes += tree_bytes(e.path());
  }
  return u;
}

Store::PruneResult Store::prune(std::int64_t older_than_seconds, const std::function<void()>& on_wait) const {
  // Exclusive for the prune (converting this Store's own shared lock), shared again after.
  struct Exclusive {
    int fd;
    explicit Exclusive(int f, const std::function<void()>& on_wait) : fd(f) {
      if (fd < 0) return;
      if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return;
      if (on_wait) on_wait();
      while (::flock(fd, LOCK_EX) != 0 && errno == EINTR) {
      }
    }
    ~Exclusive() {
      if (fd >= 0) ::flock(fd, LOCK_SH);
    }
  } exclusive(in_use_ ? in_use_->get() : -1, on_wait);
  PruneResult r;
  std::error_code ec;
  auto now = fs::file_time_type::clock::now();
  auto old = [&](const fs::directory_entry& e) {
    if (older_than_seconds <= 0) return true;
    auto age = std::chrono::duration_cast<std::chrono::seconds>(now - e.last_write_time(ec)).count();
    return age >= older_than_seconds;
  };
  std::set<std::string> keep;
  for (auto& e : fs::directory_iterator(root_ / "layers", ec)) {
    if (old(e)) {
      fs::remove(e.path(), ec);
      ++r.removed_records;
      continue;
    }
    std::string text;
    if (!read_file_if_exists(e.path(), &text)) continue;
    try {
      auto j = nlohmann::json::parse(text);
      keep.insert(std::string(digest_hex(j.at("digest").get<std::string>())));
    } catch (const std::exception&) {
    }
  }
  for (auto& e : fs::directory_iterator(root_ / "stat", ec))
    if (old(e)) fs::remove(e.path(), ec);
  // Blobs: layer blobs a record keeps are kept; other blobs (configs, manifests, base layers) are
  // kept while younger than the cut-off.
  for (auto& e : fs::directory_iterator(root_ / "blobs" / "sha256", ec)) {
    if (keep.count(e.path().filename().string())) continue;
    if (!old(e)) continue;
    r.removed_bytes += e.file_size(ec);
    fs::remove(e.path(), ec);
    ++r.removed_blobs;
  }
  // Memos of removed blobs; lock files nobody holds (a day old: a lock only saves duplicate work).
  for (auto& e : fs::directory_iterator(root_ / "verified", ec)) {
    if (e.path().filename().string().rfind("ext-", 0) == 0) {  // a blob outside the store
      if (old(e)) fs::remove(e.path(), ec);
      continue;
    }
    if (!fs::exists(root_ / "blobs" / "sha256" / e.path().filename(), ec)) fs::remove(e.path(), ec);
  }
  for (auto& e : fs::directory_iterator(root_ / "locks", ec)) {
    auto age = std::chrono::duration_cast<std::chrono::seconds>(now - e.last_write_time(ec)).count();
    if (age < 86400 || e.path().filename() == "in-use") continue;
    int fd = ::open(e.path().c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) continue;
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) fs::remove(e.path(), ec);
    ::close(fd);
  }
  // tmp files are from writes in flight: only those over an hour old are certainly dead.
  for (auto& e : fs::directory_iterator(root_ / "tmp", ec)) {
    auto age = std::chrono::duration_cast<std::chrono::seconds>(now - e.last_write_time(ec)).count();
    if (age > 3600) {
      try {
        remove_tree(e.path());
      } catch (const std::exception&) {
      }
    }
  }
  // Unpacked trees: used ones are touched (mtime) each time a build starts on them; a ".name" is
  // one being built (or left by a killed build: dead after an hour).
  for (auto& e : fs::directory_iterator(root_ / "rootfs", ec)) {
    const bool building = e.path().filename().string().front() == '.';
    auto age = std::chrono::duration_cast<std::chrono::seconds>(now - e.last_write_time(ec)).count();
    if (building ? age <= 3600 : !old(e)) continue;
    r.removed_tree_bytes += tree_bytes(e.path());
    try {
      remove_tree(e.path());
    } catch (const std::exception&) {
      continue;
    }
    ++r.removed_trees;
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// StatIndex, format 3: a 32-byte header — "KILNSTAT3\n", 6 zero bytes, i64 written_ns, u64 count —
// then `count` records of 88 bytes sorted bytewise by path —
//   u64 path offset (into the arena), u32 path length, u16 age (saves since a walk last saw the
//   entry), u16 zero, u64 size, i64 mtime_ns, i64 ctime_ns, u64 ino, u64 dev, 32-byte sha256 —
// then the arena of path bytes. Little-endian host order (the index is a cache of this machine).

namespace {
const char kStatMagic[] = "KILNSTAT3\n";
constexpr std::size_t kStatHeader = 32;
constexpr std::size_t kStatRecord = 88;
// Racy: modified within this window before the index was written (see lookup()).
constexpr std::int64_t kRacyWindow = 1000000000;

template <class T>
T load_at(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
void store_at(unsigned char* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

struct RecordView {
  const unsigned char* p;
  std::string_view path(const char* base) const {
    return {base + load_at<std::uint64_t>(p), load_at<std::uint32_t>(p + 8)};
  }
  std::uint16_t age() const { return load_at<std::uint16_t>(p + 12); }
  StatIndex::Key key() const {
    StatIndex::Key k;
    k.size = load_at<std::uint64_t>(p + 16);
    k.mtime_ns = load_at<std::int64_t>(p + 24);
    k.ctime_ns = load_at<std::int64_t>(p + 32);
    k.ino = load_at<std::uint64_t>(p + 40);
    k.dev = load_at<std::uint64_t>(p + 48);
    return k;
  }
  const unsigned char* sha256() const { return p + 56; }
};

void put_record(unsigned char* r, std::uint64_t off, std::uint32_t len, std::uint16_t age, const StatIndex::Key& k,
                const unsigned char* sha) {
  std::memset(r, 0, kStatRecord);
  store_at(r, off);
  store_at(r + 8, len);
  store_at(r + 12, age);
  store_at(r + 16, k.size);
  store_at(r + 24, k.mtime_ns);
  store_at(r + 32, k.ctime_ns);
  store_at(r + 40, k.ino);
  store_at(r + 48, k.dev);
  std::memcpy(r + 56, sha, 32);
}

bool hex_to_digest(const std::string& hex, StatIndex::Digest* out) {
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (hex.size() != 64) return false;
  for (std::size_t i = 0; i < 32; ++i) {
    int hi = nib(hex[2 * i]), lo = nib(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    (*out)[i] = static_cast<unsigned char>(hi << 4 | lo);
  }
  return true;
}
std::string raw_to_hex(const unsigned char* p, std::size_t n) {
  static const char* k = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (std::size_t i = 0; i < n; ++i) {
    out[2 * i] = k[p[i] >> 4];
    out[2 * i + 1] = k[p[i] & 15];
  }
  return out;
}
std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}
bool racy(const StatIndex::Key& k, std::int64_t written_ns) {
  return k.mtime_ns >= written_ns - kRacyWindow || k.ctime_ns >= written_ns - kRacyWindow;
}
}  // namespace

StatIndex::~StatIndex() { unmap(); }

void StatIndex::unmap() {
  if (map_) ::munmap(const_cast<char*>(map_), map_len_);
  map_ = nullptr;
  map_len_ = 0;
  records_ = nullptr;
  count_ = 0;
  seen_.clear();
}

void StatIndex::load(const fs::path& file) {
  unmap();
  updates_.clear();
  owned_.clear();
  ordered_.reset();
  ordered_last_.clear();
  updates_sorted_ = true;
  dirty_ = false;
  written_ns_ = 0;
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || static_cast<std::size_t>(st.st_size) < kStatHeader) {
    ::close(fd);
    return;
  }
  const std::size_t len = static_cast<std::size_t>(st.st_size);
  // Populated: every page is read below (the check) and again by the lookups; mapping them in one
  // call saves a page fault per 4 KiB. Not a big index (a tree of some 100k files and more): its
  // pages are mapped as the check reaches them and dropped behind it (drop_below), so the build's
  // peak memory never holds the whole file; the kernel reads ahead of the check meanwhile.
  constexpr std::size_t kPopulateMax = 16u << 20;
  void* m = ::mmap(nullptr, len, PROT_READ, MAP_PRIVATE | (len <= kPopulateMax ? MAP_POPULATE : 0), fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) return;
  if (len > kPopulateMax) ::madvise(m, len, MADV_WILLNEED);
  const auto* p = static_cast<const unsigned char*>(m);
  // Anything that does not check out (another version, a torn or foreign file) loads as empty.
  const std::uint64_t count = load_at<std::uint64_t>(p + 24);
  bool ok = std::memcmp(p, kStatMagic, sizeof kStatMagic - 1) == 0 && count <= (len - kStatHeader) / kStatRecord;
  map_ = static_cast<const char*>(m);
  map_len_ = len;
  records_ = p + kStatHeader;
  dropped_rec_ = dropped_arena_ = 0;
  cursor_ = 0;
  if (ok) {
    count_ = static_cast<std::size_t>(count);  // for drop_below
    const std::uint64_t arena = kStatHeader + count * kStatRecord;
    std::string_view prev;
    for (std::uint64_t i = 0; ok && i < count; ++i) {
      const unsigned char* r = p + kStatHeader + i * kStatRecord;
      std::uint64_t off = load_at<std::uint64_t>(r);
      std::uint32_t n = load_at<std::uint32_t>(r + 8);
      ok = off >= arena && off <= len && n <= len - off;
      if (!ok) break;
      std::string_view path(reinterpret_cast<const char*>(p) + off, n);
      ok = i == 0 || prev < path;  // sorted, no duplicates: binary search relies on it
      prev = path;
      if ((i & 4095) == 4095) drop_below(static_cast<std::size_t>(i));
    }
    dropped_rec_ = dropped_arena_ = 0;  // the lookups read it front to back again
  }
  if (!ok) {
    ::munmap(m, len);
    map_ = nullptr;
    map_len_ = 0;
    records_ = nullptr;
    count_ = 0;
    return;
  }
  count_ = static_cast<std::size_t>(count);
  written_ns_ = load_at<std::int64_t>(p + 16);
  seen_.assign(count_, 0);
}

void StatIndex::sort_updates() const {
  if (updates_sorted_) return;
  // Last update of a path wins: stable sort, then keep the last of each run.
  std::stable_sort(updates_.begin(), updates_.end(),
                   [&](const Update& a, const Update& b) { return update_path(a) < update_path(b); });
  std::size_t w = 0;
  for (std::size_t i = 0; i < updates_.size(); ++i) {
    if (i + 1 < updates_.size() && update_path(updates_[i]) == update_path(updates_[i + 1])) continue;
    updates_[w++] = updates_[i];
  }
  updates_.resize(w);
  updates_sorted_ = true;
}

const StatIndex::Update* StatIndex::find_update(std::string_view path) const {
  if (updates_.empty()) return nullptr;
  sort_updates();
  auto it = std::lower_bound(updates_.begin(), updates_.end(), path,
                             [&](const Update& u, std::string_view p) { return update_path(u) < p; });
  return it != updates_.end() && update_path(*it) == path ? &*it : nullptr;
}

void StatIndex::drop_below(std::size_t i) const {
  // The mapped file's pages are only a cache of a file kiln never writes in place: drop those of
  // the records before `i` and of their paths (stored in record order) from this process once
  // passed, so a big index never adds its whole size to the build's peak memory. A page needed
  // again is faulted back in from the page cache.
  constexpr std::size_t kMinMap = 4u << 20, kStep = 1u << 20;
  if (map_len_ < kMinMap || !map_) return;
  static const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::size_t arena_begin = kStatHeader + count_ * kStatRecord;
  std::size_t rec_end = std::min(kStatHeader + i * kStatRecord, arena_begin) / page * page;
  if (rec_end >= dropped_rec_ + kStep) {
    ::madvise(const_cast<char*>(map_) + dropped_rec_, rec_end - dropped_rec_, MADV_DONTNEED);
    dropped_rec_ = rec_end;
  }
  std::size_t arena_end = i < count_ ? static_cast<std::size_t>(load_at<std::uint64_t>(records_ + i * kStatRecord)) : map_len_;
  arena_end = std::min(arena_end, map_len_) / page * page;
  const std::size_t from = std::max(dropped_arena_, arena_begin / page * page);
  if (arena_end >= from + kStep) {
    ::madvise(const_cast<char*>(map_) + from, arena_end - from, MADV_DONTNEED);
    dropped_arena_ = arena_end;
  }
}

bool StatIndex::lookup(std::string_view path, const Key& key, Digest* out) const {
  // Racy: modified within the same second the index was written; a later edit could keep the
  // same mtime. Hash it again (the next save makes it safe).
  if (racy(key, written_ns_)) return false;
  if (const Update* u = find_update(path)) {
    if (!(*u->key == key)) return false;
    *out = *u->sha256;
    return true;
  }
  auto path_at = [&](std::size_t k) { return RecordView{records_ + k * kStatRecord}.path(map_); };
  // A walk looks its sorted list up in order: gallop forward from the last position, so the
  // lookups read the file front to back once and the pages behind can be dropped (drop_below).
  // A path before the last one (another list, another order) searches the whole table.
  std::size_t lo = 0, hi = count_;
  if (cursor_ > 0 && cursor_ <= count_ && path_at(cursor_ - 1) < path) {
    lo = cursor_;
    for (std::size_t step = 1;; step *= 2) {
      const std::size_t probe = lo + step - 1;
      if (probe >= count_) break;
      if (!(path_at(probe) < path)) {
        hi = probe;
        break;
      }
      lo = probe + 1;
    }
  }
  while (lo < hi) {
    std::size_t mid = lo + (hi - lo) / 2;
    if (path_at(mid) < path)
      lo = mid + 1;
    else
      hi = mid;
  }
  cursor_ = lo;
  drop_below(lo);
  if (lo == count_) return false;
  RecordView r{records_ + lo * kStatRecord};
  if (r.path(map_) != path || !(r.key() == key)) return false;
  std::memcpy(out->data(), r.sha256(), 32);
  seen_[lo] = 1;
  return true;
}

std::optional<std::string> StatIndex::lookup(std::string_view path, const Key& key) const {
  Digest d;
  if (!lookup(path, key, &d)) return std::nullopt;
  return raw_to_hex(d.data(), d.size());
}

void StatIndex::update(std::string_view path, const Key& key, const Digest& sha256) {
  Owned& o = owned_.emplace_back();
  o.path.assign(path);
  o.key = key;
  o.sha256 = sha256;
  update_borrowed(o.path, o.key, o.sha256);
}

void StatIndex::update_borrowed(std::string_view path, const Key& key, const Digest& sha256) {
  Update u{path.data(), path.size(), &key, &sha256};
  if (updates_sorted_ && !updates_.empty() && !(update_path(updates_.back()) < path)) updates_sorted_ = false;
  updates_.push_back(u);
  dirty_ = true;
}

void StatIndex::update_ordered(std::string_view path, const Key& key, const Digest& sha256,
                               const fs::path& spill_dir) {
  if (!ordered_) {
    ordered_ = std::make_unique<SpillFile>(spill_dir);
  } else if (!(ordered_last_ < path)) {
    throw std::logic_error("StatIndex::update_ordered: '" + std::string(path) + "' is not after '" + ordered_last_ + "'");
  }
  ordered_last_.assign(path);
  const auto n = static_cast<std::uint32_t>(path.size());
  ordered_->append(&n, sizeof n);
  ordered_->append(path.data(), path.size());
  ordered_->append(&key, sizeof key);
  ordered_->append(sha256.data(), sha256.size());
  dirty_ = true;
}

void StatIndex::update(std::string_view path, const Key& key, const std::string& sha256_hex) {
  Digest d{};
  if (!hex_to_digest(sha256_hex, &d)) throw std::invalid_argument("StatIndex::update: not a sha256 hex digest");
  update(path, key, d);
}

void StatIndex::save(const fs::path& file) {
  // Entries this walk did not see stay (another spec may walk them: two specs sharing a root, or
  // alternating builds), unless they were racy when last written — those were never trusted and
  // would look safe under the new write time — or have gone unseen for kMaxAge rewrites.
  if (!dirty_) return;
  constexpr std::uint16_t kMaxAge = 8;
  sort_updates();
  // Merge the loaded records and the updates (an update replaces the record of its path).
  std::size_t n_out = 0;
  auto each = [&](auto&& emit) {
    // Each pass reads the mapped file front to back, dropping the pages it has passed.
    dropped_rec_ = dropped_arena_ = 0;
    drop_below(count_);
    dropped_rec_ = dropped_arena_ = 0;
    // The ordered updates (update_ordered), read back from their file: a third sorted source.
    std::optional<SpillFile::Reader> spilled;
    std::string sp;
    Key sk;
    Digest ssha{};
    bool have_s = false;
    auto next_spilled = [&] {
      const char* at = spilled->take(sizeof(std::uint32_t));
      have_s = at != nullptr;
      if (!have_s) return;
      std::uint32_t n;
      std::memcpy(&n, at, sizeof n);
      const char* p = spilled->take(n + sizeof(Key) + 32);
      if (!p) throw std::runtime_error("the stat index's ordered updates end within a record");
      sp.assign(p, n);
      std::memcpy(&sk, p + n, sizeof sk);
      std::memcpy(ssha.data(), p + n + sizeof sk, 32);
    };
    if (ordered_) {
      spilled.emplace(*ordered_);
      next_spilled();
    }
    std::size_t i = 0, j = 0;
    while (i < count_ || j < updates_.size() || have_s) {
      RecordView r{i < count_ ? records_ + i * kStatRecord : nullptr};
      std::string_view rp = i < count_ ? r.path(map_) : std::string_view();
      // The least of the two kinds of update (an in-memory one wins a tie: the same path twice).
      const bool from_memory = j < updates_.size() && (!have_s || update_path(updates_[j]) <= std::string_view(sp));
      if (from_memory || have_s) {
        const std::string_view up = from_memory ? update_path(updates_[j]) : std::string_view(sp);
        if (i == count_ || up <= rp) {
          if (i < count_ && up == rp) ++i;
          if (from_memory) {
            const Update& u = updates_[j++];
            emit(up, *u.key, u.sha256->data(), std::uint16_t(0));
            if (have_s && std::string_view(sp) == up) next_spilled();
          } else {
            emit(up, sk, ssha.data(), std::uint16_t(0));
            next_spilled();
          }
          continue;
        }
      }
      const bool seen = seen_[i];
      if ((i & 4095) == 4095) drop_below(i);
      ++i;
      const Key k = r.key();
      if (!seen && (racy(k, written_ns_) || r.age() >= kMaxAge)) continue;
      emit(rp, k, r.sha256(), seen ? std::uint16_t(0) : static_cast<std::uint16_t>(r.age() + 1));
    }
  };
  if (ordered_) ordered_->flush();
  each([&](std::string_view, const Key&, const unsigned char*, std::uint16_t) { ++n_out; });
  // Streamed to the file (the records, then the paths): no copy of the index in memory.
  atomic_write_stream(file, file.parent_path().parent_path() / "tmp", /*sync=*/false, [&](const ByteSink& out) {
    unsigned char head[kStatHeader] = {};
    std::memcpy(head, kStatMagic, sizeof kStatMagic - 1);
    store_at(head + 16, now_ns());
    store_at(head + 24, static_cast<std::uint64_t>(n_out));
    out(head, sizeof head);
    std::size_t off = kStatHeader + n_out * kStatRecord;
    each([&](std::string_view p, const Key& k, const unsigned char* sha, std::uint16_t age) {
      unsigned char rec[kStatRecord] = {};
      put_record(rec, off, static_cast<std::uint32_t>(p.size()), age, k, sha);
      out(rec, sizeof rec);
      off += p.size();
    });
    each([&](std::string_view p, const Key&, const unsigned char*, std::uint16_t) { out(p.data(), p.size()); });
  });
  dirty_ = false;
  ordered_.reset();
  ordered_last_.clear();
}

}  // namespace kiln::layers
