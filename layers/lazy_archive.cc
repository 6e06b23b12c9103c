// libarchive, opened on first use (layers/lazy_lib.h): only writing a layer's tar, unpacking
// one and reading tars need it, never a no-change rebuild. Each forwarder repeats the header's
// signature; a mismatch does not compile (the header declares every one of them).
#include <archive.h>
#include <archive_entry.h>

#include <cstdarg>
#include <cstdio>

#include "layers/lazy_lib.h"

#ifndef KILN_LIBARCHIVE_SONAME
#define KILN_LIBARCHIVE_SONAME "libarchive.so.13"
#endif

#define FWD(ret, name, params, args) KILN_LAZY_FORWARD(KILN_LIBARCHIVE_SONAME, ret, name, params, args)
using E = struct archive_entry;
using A = struct archive;

FWD(int, archive_version_number, (void), ())
FWD(const char*, archive_error_string, (A * a), (a))

// Entries.
FWD(E*, archive_entry_new, (void), ())
FWD(E*, archive_entry_new2, (A * a), (a))
FWD(E*, archive_entry_clear, (E * e), (e))
FWD(void, archive_entry_free, (E * e), (e))
FWD(__LA_MODE_T, archive_entry_filetype, (E * e), (e))
FWD(__LA_MODE_T, archive_entry_perm, (E * e), (e))
FWD(la_int64_t, archive_entry_uid, (E * e), (e))
FWD(la_int64_t, archive_entry_gid, (E * e), (e))
FWD(la_int64_t, archive_entry_size, (E * e), (e))
FWD(int, archive_entry_size_is_set, (E * e), (e))
FWD(time_t, archive_entry_mtime, (E * e), (e))
FWD(long, archive_entry_mtime_nsec, (E * e), (e))
FWD(dev_t, archive_entry_rdevmajor, (E * e), (e))
FWD(dev_t, archive_entry_rdevminor, (E * e), (e))
FWD(const char*, archive_entry_pathname, (E * e), (e))
FWD(const char*, archive_entry_pathname_utf8, (E * e), (e))
FWD(const char*, archive_entry_hardlink, (E * e), (e))
FWD(const char*, archive_entry_hardlink_utf8, (E * e), (e))
FWD(const char*, archive_entry_symlink, (E * e), (e))
FWD(const char*, archive_entry_symlink_utf8, (E * e), (e))
FWD(void, archive_entry_set_filetype, (E * e, unsigned int t), (e, t))
FWD(void, archive_entry_set_perm, (E * e, __LA_MODE_T m), (e, m))
FWD(void, archive_entry_set_uid, (E * e, la_int64_t v), (e, v))
FWD(void, archive_entry_set_gid, (E * e, la_int64_t v), (e, v))
FWD(void, archive_entry_set_size, (E * e, la_int64_t v), (e, v))
FWD(void, archive_entry_set_mtime, (E * e, time_t s, long ns), (e, s, ns))
FWD(void, archive_entry_set_pathname_utf8, (E * e, const char* s), (e, s))
FWD(void, archive_entry_set_hardlink_utf8, (E * e, const char* s), (e, s))
FWD(void, archive_entry_set_symlink_utf8, (E * e, const char* s), (e, s))
FWD(void, archive_entry_xattr_add_entry, (E * e, const char* name, const void* value, size_t size),
    (e, name, value, size))
FWD(int, archive_entry_xattr_reset, (E * e), (e))
FWD(int, archive_entry_xattr_next, (E * e, const char** name, const void** value, size_t* size), (e, name, value, size))

// Reading.
FWD(A*, archive_read_new, (void), ())
FWD(int, archive_read_free, (A * a), (a))
FWD(int, archive_read_support_filter_all, (A * a), (a))
FWD(int, archive_read_support_format_empty, (A * a), (a))
FWD(int, archive_read_support_format_tar, (A * a), (a))
FWD(int, archive_read_open,
    (A * a, void* data, archive_open_callback* open, archive_read_callback* read, archive_close_callback* close),
    (a, data, open, read, close))
FWD(int, archive_read_open_filename, (A * a, const char* name, size_t block), (a, name, block))
FWD(int, archive_read_next_header, (A * a, E** e), (a, e))
FWD(int, archive_read_data_block, (A * a, const void** buf, size_t* size, la_int64_t* offset), (a, buf, size, offset))
FWD(int, archive_read_data_skip, (A * a), (a))

// Writing.
FWD(A*, archive_write_new, (void), ())
FWD(int, archive_write_free, (A * a), (a))
FWD(int, archive_write_close, (A * a), (a))
FWD(int, archive_write_set_format_pax_restricted, (A * a), (a))
FWD(int, archive_write_set_bytes_per_block, (A * a, int n), (a, n))
FWD(int, archive_write_set_bytes_in_last_block, (A * a, int n), (a, n))
FWD(int, archive_write_open,
    (A * a, void* data, archive_open_callback* open, archive_write_callback* write, archive_close_callback* close),
    (a, data, open, write, close))
FWD(int, archive_write_header, (A * a, E* e), (a, e))
FWD(la_ssize_t, archive_write_data, (A * a, const void* buf, size_t n), (a, buf, n))

#undef FWD

// printf-style: formatted here, passed on as one "%s" argument.
extern "C" void archive_set_error(A* a, int err, const char* fmt, ...) {
  using Fn = void (*)(A*, int, const char*, ...);
  static const auto real = reinterpret_cast<Fn>(kiln::lazy::symbol(KILN_LIBARCHIVE_SONAME, "archive_set_error"));
  if (!fmt) return real(a, err, nullptr);  // clears the error
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  real(a, err, "%s", msg);
}
