// libcurl, opened on first use (layers/lazy_lib.h): only registry access needs it, and its
// dependency tree is most of what the dynamic loader would map at every start.
#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>

#include <cstdarg>

#include "layers/lazy_lib.h"

#undef curl_easy_setopt
#undef curl_easy_getinfo

#ifndef KILN_LIBCURL_SONAME
#define KILN_LIBCURL_SONAME "libcurl.so.4"
#endif

#define FWD(ret, name, params, args) KILN_LAZY_FORWARD(KILN_LIBCURL_SONAME, ret, name, params, args)

FWD(CURLcode, curl_global_init, (long flags), (flags))
FWD(CURL*, curl_easy_init, (void), ())
FWD(void, curl_easy_cleanup, (CURL * c), (c))
FWD(void, curl_easy_reset, (CURL * c), (c))
FWD(CURLcode, curl_easy_perform, (CURL * c), (c))
FWD(const char*, curl_easy_strerror, (CURLcode e), (e))
FWD(struct curl_slist*, curl_slist_append, (struct curl_slist * l, const char* s), (l, s))
FWD(void, curl_slist_free_all, (struct curl_slist * l), (l))
FWD(curl_version_info_data*, curl_version_info, (CURLversion v), (v))

#undef FWD

// The variadic two: the argument's type follows from the option's number (curl.h's CURLOPTTYPE_*
// and CURLINFO_* ranges), as libcurl itself reads it; it is passed on as that type.
extern "C" CURLcode curl_easy_setopt(CURL* c, CURLoption option, ...) {
  using Fn = CURLcode (*)(CURL*, CURLoption, ...);
  static const auto real = reinterpret_cast<Fn>(kiln::lazy::symbol(KILN_LIBCURL_SONAME, "curl_easy_setopt"));
  va_list ap;
  va_start(ap, option);
  CURLcode rc;
  const int type = option / 10000 * 10000;
  if (type == CURLOPTTYPE_LONG) {
    long v = va_arg(ap, long);
    rc = real(c, option, v);
  } else if (type == CURLOPTTYPE_OFF_T) {
    curl_off_t v = va_arg(ap, curl_off_t);
    rc = real(c, option, v);
  } else if (type == CURLOPTTYPE_FUNCTIONPOINT) {
    void (*v)(void) = va_arg(ap, void (*)(void));
    rc = real(c, option, v);
  } else {  // CURLOPTTYPE_OBJECTPOINT (strings, pointers, lists), CURLOPTTYPE_BLOB
    void* v = va_arg(ap, void*);
    rc = real(c, option, v);
  }
  va_end(ap);
  return rc;
}

extern "C" CURLcode curl_easy_getinfo(CURL* c, CURLINFO info, ...) {
  using Fn = CURLcode (*)(CURL*, CURLINFO, ...);
  static const auto real = reinterpret_cast<Fn>(kiln::lazy::symbol(KILN_LIBCURL_SONAME, "curl_easy_getinfo"));
  va_list ap;
  va_start(ap, info);
  void* out = va_arg(ap, void*);  // always a pointer to where the value goes
  va_end(ap);
  return real(c, info, out);
}
