// kiln version (and --version): kiln's version, the git revision it was built from, and the
// versions of the libraries that shape its output (archive, compression, TLS, HTTP, git).
// (libdeflate has no run-time version call: the version kiln was built against.)
#include <archive.h>
#include <curl/curl.h>
#include <git2.h>
#include <libdeflate.h>
#include <openssl/crypto.h>
#include <sqlite3.h>
#include <zstd.h>

#include <iostream>

#include "builder/cli/common.h"

#ifndef KILN_GIT_REVISION
#define KILN_GIT_REVISION "unknown"
#endif

namespace kiln::cli {

json version_json() {
  int maj = 0, min = 0, rev = 0;
  git_libgit2_version(&maj, &min, &rev);
  const int av = archive_version_number();
  const curl_version_info_data* cv = curl_version_info(CURLVERSION_NOW);
  return {{"version", KILN_VERSION},
          {"git_revision", KILN_GIT_REVISION},
          {"libraries",
           {{"libarchive", std::to_string(av / 1000000) + "." + std::to_string(av / 1000 % 1000) + "." +
                               std::to_string(av % 1000)},
            {"libdeflate", LIBDEFLATE_VERSION_STRING},  // writes gzip layers of levels 0, 2-9: their bytes follow its version
            {"zstd", ZSTD_versionString()},
            {"openssl", OpenSSL_version(OPENSSL_VERSION_STRING)},
            {"libcurl", cv && cv->version ? cv->version : "unknown"},
            {"libgit2", std::to_string(maj) + "." + std::to_string(min) + "." + std::to_string(rev)},
            {"sqlite", sqlite3_libversion()}}}};
}

std::string version_text() {
  json j = version_json();
  std::string out = "kiln " + j["version"].get<std::string>() + " (git " + j["git_revision"].get<std::string>() + ")";
  for (const auto& [name, v] : j["libraries"].items()) out += "\n  " + name + ": " + v.get<std::string>();
  return out;
}

void add_version_command(CLI::App& app, Common& c, std::vector<Command>& out) {
  auto* v = app.add_subcommand("version", "Print kiln's version, git revision and library versions");
  v->add_flag("--json", c.json_out, "Print them as a JSON object");
  out.push_back({v, [](Context& ctx) {
                   std::cout << (ctx.common.json_out ? version_json().dump(2) : version_text()) << std::endl;
                   return kOk;
                 }});
}

}  // namespace kiln::cli
