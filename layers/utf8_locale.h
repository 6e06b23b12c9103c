// A UTF-8 LC_CTYPE for the calling thread, for as long as the object lives.
//
// libarchive converts entry names through the current locale's charset. Writing, libarchive
// 3.6/3.7 crash (NULL pathname) when that conversion fails — in the "C" locale, any non-ASCII
// name; reading, a PAX (UTF-8) name would be mangled. Under a UTF-8 LC_CTYPE names go through as
// stored, whatever the process locale, which also keeps layer bytes independent of the user's.
#pragma once

#include <clocale>
#include <locale.h>

namespace kiln::layers {

class Utf8Ctype {
 public:
  Utf8Ctype() {
    for (const char* name : {"C.UTF-8", "C.utf8", "en_US.UTF-8"})
      if ((loc_ = ::newlocale(LC_CTYPE_MASK, name, locale_t(0))) != locale_t(0)) break;
    if (loc_ != locale_t(0)) old_ = ::uselocale(loc_);
  }
  ~Utf8Ctype() {
    if (loc_ != locale_t(0)) {
      ::uselocale(old_);
      ::freelocale(loc_);
    }
  }
  Utf8Ctype(const Utf8Ctype&) = delete;
  Utf8Ctype& operator=(const Utf8Ctype&) = delete;

 private:
  locale_t loc_ = locale_t(0), old_ = locale_t(0);
};

}  // namespace kiln::layers
