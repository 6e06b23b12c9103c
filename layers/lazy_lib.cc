// Opening a library on first use (lazy_lib.h).
#include "layers/lazy_lib.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

namespace kiln::lazy {

namespace {
[[noreturn]] void missing(const std::string& what) {
  std::fprintf(stderr, "kiln: %s\n", what.c_str());
  std::abort();
}
}  // namespace

void* symbol(const char* soname, const char* name) {
  static std::mutex mu;
  static std::map<std::string, void*>* handles = new std::map<std::string, void*>;  // never freed: used until exit
  void* h = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu);
    void*& slot = (*handles)[soname];
    if (!slot) {
      slot = ::dlopen(soname, RTLD_NOW | RTLD_LOCAL);
      if (!slot) {
        const char* err = ::dlerror();
        missing(std::string("cannot load ") + soname + " (kiln was built against it; install its package): " +
                (err ? err : "unknown error"));
      }
    }
    h = slot;
  }
  ::dlerror();
  void* f = ::dlsym(h, name);
  if (!f) missing(std::string(soname) + " has no function " + name + " (a different version than kiln was built against?)");
  return f;
}

}  // namespace kiln::lazy
