// Libraries only some commands need (libcurl: registries; libarchive: layer tars and unpacking)
// are opened on first use rather than at program start: each pulls a tree of dependencies
// (libcurl alone ~30 shared objects: TLS, LDAP, Kerberos, SSH, IDN...) whose mapping and
// relocation the dynamic loader would otherwise pay on every run, a no-change rebuild included.
//
// kiln defines the few functions it calls of such a library (same names and signatures as the
// library's header), each forwarding to the library's own definition, looked up once. The library
// is opened by its soname (fixed at configure time from the library kiln was built against), so
// the binary needs the same package as when it was linked directly.
#pragma once

namespace kiln::lazy {

/// Opens `soname` once (RTLD_NOW | RTLD_LOCAL) and returns `symbol` from it (from that library
/// and its dependencies, never kiln's own forwarder of the same name). When the library or the
/// symbol is missing, prints why to stderr and aborts: the program was installed without a
/// package it was built against.
void* symbol(const char* soname, const char* symbol);

}  // namespace kiln::lazy

/// Defines `ret name params` forwarding to `name` in the library `soname` (`args`: the parameter
/// names, parenthesized).
#define KILN_LAZY_FORWARD(soname, ret, name, params, args)                                             \
  extern "C" ret name params {                                                                         \
    static auto* const real = reinterpret_cast<decltype(&::name)>(::kiln::lazy::symbol(soname, #name)); \
    return real args;                                                                                  \
  }
