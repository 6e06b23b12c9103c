// The image tag: a documented digest of the canonical spec, the base, and the copied files
// (docs/tag.md gives the algorithm, so an SDK can reproduce it).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "spec/image_spec.h"

namespace kiln::spec {

/// One copied file as the tag sees it.
struct TagFile {
  std::string dest;     // path inside the image, relative ("root/pkg/mod.py")
  char type = 'f';      // 'f' file, 'd' directory, 'l' symlink
  unsigned mode = 0644; // normalized permission bits
  std::string content;  // file: sha256 hex; symlink: target; directory: ""
};

/// The first line of the spec hash; changes whenever the algorithm does (docs/tag.md).
inline constexpr const char* kSpecHashPrefix = "kiln-spec-hash-v4\n";

/// sha256 hex over: kSpecHashPrefix, the canonical spec JSON, "\n", "base " + base_id + "\n",
/// then per file (sorted by dest, bytewise): type, ' ', mode (4 octal digits), ' ', content, ' ',
/// dest, '\0'. `base_id` is "scratch", the base manifest digest, or a nested spec's hash.
/// `env_epoch` is SOURCE_DATE_EPOCH from the environment when the spec does not set
/// source_date_epoch itself (which the canonical spec already holds); when non-zero, the line
/// "epoch <n>\n" follows the base line. `inputs` are the files RUN steps read that the spec only
/// names (the requirements file): each adds "input <name> <sha256 hex>\n" after those lines.
std::string spec_hash(const ImageSpec& spec, const std::string& base_id, std::vector<TagFile> files,
                      std::int64_t env_epoch = 0,
                      const std::vector<std::pair<std::string, std::string>>& inputs = {});

/// sha256 hex of a file list alone ("kiln-files-v1\n" then the per-file lines above): the
/// digest of a baked source tree, carried in the image's labels.
std::string files_digest(std::vector<TagFile> files);

/// The files of a tree one at a time, already sorted by dest (bytewise): fills its argument and
/// returns true, or returns false when there are no more. The streaming forms below hash exactly
/// what the list forms do, without a list as long as the tree.
using FileSource = std::function<bool(TagFile&)>;
std::string spec_hash_streamed(const ImageSpec& spec, const std::string& base_id, const FileSource& files,
                               std::int64_t env_epoch = 0,
                               const std::vector<std::pair<std::string, std::string>>& inputs = {});
std::string files_digest_streamed(const FileSource& files);

/// The spec hash and the files digest of one file list, in one pass: each file's line is formatted
/// once and fed to both (a rebuild of a big tree computes them on its critical path). Files are
/// added in dest order; those with `in_source` set also go into the files digest. The results are
/// exactly spec_hash() and files_digest() of the same lists.
class TagHasher {
 public:
  TagHasher(const ImageSpec& spec, const std::string& base_id, std::int64_t env_epoch = 0,
            const std::vector<std::pair<std::string, std::string>>& inputs = {});
  ~TagHasher();
  TagHasher(const TagHasher&) = delete;
  TagHasher& operator=(const TagHasher&) = delete;
  void add(char type, unsigned mode, std::string_view content, std::string_view dest, bool in_source);
  void add(const TagFile& f, bool in_source) { add(f.type, f.mode, f.content, f.dest, in_source); }
  /// Both finish the hashing; call each once, after the last add().
  std::string spec_hash();
  std::string files_digest();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// The spec hash of a spec listing several platforms (an image index): sha256 hex over
/// "kiln-index-hash-v1\n", then per platform, in the spec's order, platform + " " + the spec hash of
/// the spec built for that platform alone + "\n" (docs/tag.md).
std::string index_hash(const std::vector<std::pair<std::string, std::string>>& platform_hashes);

/// The tag: tag_format (default "{spec_hash}") with {spec_hash} replaced by the first 32 hex
/// characters of `hash`. Throws SpecError when the result is not a valid OCI tag.
std::string make_tag(const ImageSpec& spec, const std::string& hash);

/// "[registry/]name".
std::string repository(const ImageSpec& spec);

/// Is `tag` a valid OCI tag ([A-Za-z0-9_][A-Za-z0-9._-]{0,127})?
bool valid_tag(const std::string& tag);

}  // namespace kiln::spec
