// Unnamed temporary files written once and read back (spill_file.h).
#include "layers/spill_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace kiln::layers {

SpillFile::SpillFile(std::filesystem::path dir) : dir_(std::move(dir)) {
  fd_ = UniqueFd(::open(dir_.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  if (fd_) return;
  if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL) fail("cannot create a temporary file");
  // No O_TMPFILE on this file system: a file unlinked at once.
  std::string path = (dir_ / "kiln-spill-XXXXXX").string();
  fd_ = UniqueFd(::mkostemp(path.data(), O_CLOEXEC));
  if (!fd_) fail("cannot create a temporary file");
  ::unlink(path.c_str());
}

void SpillFile::fail(const char* what) const {
  throw std::runtime_error(std::string(what) + " in " + dir_.string() + " (kiln's spill of a big tree): " +
                           std::strerror(errno));
}

void SpillFile::append(const void* p, std::size_t n) {
  if (pending_.capacity() < kPending) pending_.reserve(kPending);
  pending_.append(static_cast<const char*>(p), n);
  if (pending_.size() >= kPending) write_pending();
}

void SpillFile::flush() {
  write_pending();
  std::string().swap(pending_);  // a written file holds no buffer: a walk keeps many of them
}

void SpillFile::write_pending() {
  write_at(size_, pending_.data(), pending_.size());
  size_ += pending_.size();
  pending_.clear();
}

void SpillFile::extend(std::uint64_t size) {
  if (size <= size_) return;
  flush();
  if (::ftruncate(fd_.get(), static_cast<off_t>(size)) != 0) fail("cannot extend a temporary file");
  size_ = size;
}

void SpillFile::write_at(std::uint64_t offset, const void* p, std::size_t n) {
  const char* at = static_cast<const char*>(p);
  while (n) {
    ssize_t w = ::pwrite(fd_.get(), at, n, static_cast<off_t>(offset));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail("cannot write a temporary file");
    at += w;
    n -= static_cast<std::size_t>(w);
    offset += static_cast<std::uint64_t>(w);
  }
}

SpillFile::Reader::Reader(const SpillFile& f, std::size_t buffer) : f_(&f), buf_(buffer) {}

const char* SpillFile::Reader::take(std::size_t n) {
  if (len_ - pos_ < n) {
    std::memmove(buf_.data(), buf_.data() + pos_, len_ - pos_);
    len_ -= pos_;
    pos_ = 0;
    if (buf_.size() < n) buf_.resize(n);
    while (len_ < n && offset_ < f_->size_) {
      ssize_t r = ::pread(f_->fd_.get(), buf_.data() + len_, buf_.size() - len_, static_cast<off_t>(offset_));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) f_->fail("cannot read a temporary file");
      if (r == 0) throw std::runtime_error("a temporary file of kiln's is shorter than written (in " + f_->dir_.string() + ")");
      len_ += static_cast<std::size_t>(r);
      offset_ += static_cast<std::uint64_t>(r);
    }
    if (len_ < n) {
      if (len_ == 0) return nullptr;
      throw std::runtime_error("a temporary file of kiln's ends within a record (in " + f_->dir_.string() + ")");
    }
  }
  const char* p = buf_.data() + pos_;
  pos_ += n;
  return p;
}

}  // namespace kiln::layers
