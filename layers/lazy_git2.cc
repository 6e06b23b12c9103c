// libgit2, opened on first use (layers/lazy_lib.h): only mode all's walk (the repository holding
// source_root) and `kiln version` need it. A build that walks a repository opens it from another
// thread early on (session.cc: with libgit2's own init, which loads the CA certificates), so
// mapping its seven shared objects overlaps the build's start instead of preceding main().
#include <git2.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>

#include "layers/lazy_lib.h"

#ifndef KILN_LIBGIT2_SONAME
#define KILN_LIBGIT2_SONAME "libgit2.so.1.5"
#endif

#define FWD(ret, name, params, args) KILN_LAZY_FORWARD(KILN_LIBGIT2_SONAME, ret, name, params, args)

FWD(int, git_libgit2_init, (void), ())
FWD(int, git_libgit2_shutdown, (void), ())
FWD(int, git_libgit2_version, (int* major, int* minor, int* rev), (major, minor, rev))
FWD(const git_error*, git_error_last, (void), ())
FWD(int, git_repository_open_ext, (git_repository * *out, const char* path, unsigned int flags, const char* ceiling),
    (out, path, flags, ceiling))
FWD(void, git_repository_free, (git_repository * repo), (repo))
FWD(const char*, git_repository_workdir, (const git_repository* repo), (repo))
FWD(const char*, git_repository_commondir, (const git_repository* repo), (repo))
FWD(const char*, git_repository_path, (const git_repository* repo), (repo))
FWD(int, git_repository_index, (git_index * *out, git_repository* repo), (out, repo))
FWD(int, git_repository_config_snapshot, (git_config * *out, git_repository* repo), (out, repo))
FWD(void, git_config_free, (git_config * cfg), (cfg))
FWD(int, git_config_get_path, (git_buf * out, const git_config* cfg, const char* name), (out, cfg, name))
FWD(int, git_config_get_bool, (int* out, const git_config* cfg, const char* name), (out, cfg, name))
FWD(void, git_buf_dispose, (git_buf * buf), (buf))
FWD(int, git_index_find, (size_t * at, git_index* index, const char* path), (at, index, path))
FWD(int, git_index_find_prefix, (size_t * at, git_index* index, const char* prefix), (at, index, prefix))
FWD(void, git_index_free, (git_index * index), (index))
FWD(size_t, git_index_entrycount, (const git_index* index), (index))
FWD(const git_index_entry*, git_index_get_byindex, (git_index * index, size_t n), (index, n))

#undef FWD

// Variadic: the options kiln sets, each passed on with its argument's type (git2/common.h).
extern "C" int git_libgit2_opts(int option, ...) {
  using Fn = int (*)(int, ...);
  static const auto real = reinterpret_cast<Fn>(kiln::lazy::symbol(KILN_LIBGIT2_SONAME, "git_libgit2_opts"));
  va_list ap;
  va_start(ap, option);
  int rc;
  switch (option) {
    case GIT_OPT_SET_OWNER_VALIDATION: {
      int v = va_arg(ap, int);
      rc = real(option, v);
      break;
    }
    case GIT_OPT_GET_OWNER_VALIDATION: {
      int* v = va_arg(ap, int*);
      rc = real(option, v);
      break;
    }
    default:
      std::fprintf(stderr, "kiln: git_libgit2_opts option %d is not forwarded (layers/lazy_git2.cc)\n", option);
      std::abort();
  }
  va_end(ap);
  return rc;
}
