// File-system helpers: atomic replace, hardlink/reflink/copy.
#include "layers/fsutil.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <system_error>
#include <vector>

namespace fs = std::filesystem;

namespace kiln::layers {

std::string unique_name(const std::string& prefix) {
  static std::atomic<unsigned> counter{0};
  static const unsigned long salt = std::random_device{}();
  return prefix + "." + std::to_string(::getpid()) + "." + std::to_string(counter++) + "." + std::to_string(salt);
}

void write_all(int fd, const void* data, std::size_t n, const fs::path& what) {
  auto* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) throw std::system_error(errno, std::generic_category(), "cannot write " + what.string());
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

bool read_file_if_exists(const fs::path& path, std::string* out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return false;
    throw std::system_error(errno, std::generic_category(), "cannot open " + path.string());
  }
  out->clear();
  struct stat st{};
  if (::fstat(fd, &st) == 0 && st.st_size > 0) out->reserve(static_cast<std::size_t>(st.st_size));
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      throw std::system_error(e, std::generic_category(), "cannot read " + path.string());
    }
    if (n == 0) break;
    out->append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return true;
}

void atomic_write_stream(const fs::path& path, const fs::path& tmp_dir, bool sync,
                         const std::function<void(const std::function<void(const void*, std::size_t)>&)>& produce) {
  fs::path tmp = tmp_dir / unique_name(path.filename().string());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "cannot create " + tmp.string());
  try {
    std::string buf;  // grows to at most 1 MiB: small contents cost no big allocation
    produce([&](const void* d, std::size_t n) {
      if (buf.size() + n > (1 << 20)) {
        write_all(fd, buf.data(), buf.size(), tmp);
        buf.clear();
      }
      if (n >= (1 << 20)) {
        write_all(fd, d, n, tmp);
      } else {
        buf.append(static_cast<const char*>(d), n);
      }
    });
    write_all(fd, buf.data(), buf.size(), tmp);
    if (sync && ::fsync(fd) != 0) throw std::system_error(errno, std::generic_category(), "fsync " + tmp.string());
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw std::system_error(e, std::generic_category(), "cannot replace " + path.string());
  }
  if (sync) sync_dir(path.parent_path());
}

void atomic_write(const fs::path& path, const std::string& content, const fs::path& tmp_dir, bool sync) {
  atomic_write_stream(path, tmp_dir, sync, [&](const std::function<void(const void*, std::size_t)>& write) {
    write(content.data(), content.size());
  });
}

const char* link_or_copy(const fs::path& src, const fs::path& dst) {
  if (::link(src.c_str(), dst.c_str()) == 0) return "hardlink";
  int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) throw std::system_error(errno, std::generic_category(), "cannot open " + src.string());
  int out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (out < 0) {
    int e = errno;
    ::close(in);
    throw std::system_error(e, std::generic_category(), "cannot create " + dst.string());
  }
  const char* how = "reflink";
  try {
    if (::ioctl(out, FICLONE, in) != 0) {
      how = "copy";
      struct stat st{};
      if (::fstat(in, &st) != 0) throw std::system_error(errno, std::generic_category(), "cannot stat " + src.string());
      off_t left = st.st_size;
      while (left > 0) {
        ssize_t n = ::copy_file_range(in, nullptr, out, nullptr, static_cast<std::size_t>(left), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == ENOSPC || errno == EDQUOT || errno == EIO))
          throw std::system_error(errno, std::generic_category(), "cannot write " + dst.string());
        if (n <= 0) {
          // Fallback for file systems without copy_file_range.
          char buf[1 << 16];
          ssize_t r;
          while ((r = ::read(in, buf, sizeof buf)) > 0) write_all(out, buf, static_cast<std::size_t>(r), dst);
          if (r < 0) throw std::system_error(errno, std::generic_category(), "cannot read " + src.string());
          break;
        }
        left -= n;
      }
      if (::fsync(out) != 0) throw std::system_error(errno, std::generic_category(), "fsync " + dst.string());
    }
  } catch (...) {
    // A full disk (or any failure) leaves no partial copy behind.
    ::close(in);
    ::close(out);
    ::unlink(dst.c_str());
    throw;
  }
  ::close(in);
  if (::close(out) != 0) {
    int e = errno;
    ::unlink(dst.c_str());
    throw std::system_error(e, std::generic_category(), "cannot write " + dst.string());
  }
  return how;
}

void sync_dir(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

void remove_tree(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(dir, ec))) return;
  fs::remove_all(dir, ec);
  if (!ec) return;
  for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
    if (it->is_directory(ec) && !it->is_symlink(ec)) ::chmod(it->path().c_str(), 0700);
  ::chmod(dir.c_str(), 0700);
  fs::remove_all(dir, ec);
  if (ec) throw std::system_error(ec, "cannot remove " + dir.string());
}

void read_blocks(const std::filesystem::path& path, const std::function<void(const char*, std::size_t)>& f,
                 std::size_t block, bool follow) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW));
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "cannot open " + path.string());
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  // One buffer per thread, reused: allocating (and zeroing) a fresh one per file
  // dominated hashing a tree of many small files.
  // (A nested call from `f` gets its own.)
  thread_local std::vector<char> shared;
  thread_local bool busy = false;
  std::vector<char> own;
  std::vector<char>& buf = busy ? own : shared;
  if (buf.size() < block) buf.resize(block);
  struct Busy {
    bool& flag;
    bool was;
    ~Busy() { flag = was; }
  } busy_guard{busy, busy};
  busy = true;
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), block);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::system_error(errno, std::generic_category(), "cannot read " + path.string());
    if (n == 0) return;
    f(buf.data(), static_cast<std::size_t>(n));
  }
}

}  // namespace kiln::layers
