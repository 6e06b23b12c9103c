// The tag algorithm (docs/tag.md).
#include "spec/tag.h"

#include <algorithm>
#include <cstdio>

#include "layers/digest.h"

namespace kiln::spec {

namespace {
bool by_dest(const TagFile& a, const TagFile& b) { return a.dest < b.dest; }

/// Hashes the per-file lines of the files `next` yields (in dest order). Lines are gathered into
/// one buffer and hashed in large pieces: per-line digest updates cost more than the hashing
/// itself for a tree of small files.
void hash_files(layers::Sha256& h, const FileSource& next) {
  std::string buf;
  buf.reserve(1 << 16);
  char mode[8];
  TagFile f;
  while (next(f)) {
    std::snprintf(mode, sizeof mode, "%04o", f.mode & 07777);
    buf += f.type;
    buf += ' ';
    buf += mode;
    buf += ' ';
    buf += f.content;
    buf += ' ';
    buf += f.dest;
    buf += '\0';
    if (buf.size() >= (1 << 16) - 512) {
      h.update(buf);
      buf.clear();
    }
  }
  h.update(buf);
}

FileSource from_sorted(const std::vector<TagFile>& files) {
  return [&files, i = std::size_t(0)](TagFile& out) mutable {
    if (i == files.size()) return false;
    out = files[i++];
    return true;
  };
}
}  // namespace

std::string spec_hash_streamed(const ImageSpec& spec, const std::string& base_id, const FileSource& files,
                      std::int64_t env_epoch, const std::vector<std::pair<std::string, std::string>>& inputs) {
  layers::Sha256 h;
  h.update(kSpecHashPrefix);
  h.update(spec.canonical().dump());
  h.update("\nbase " + base_id + "\n");
  if (env_epoch != 0 && !spec.source_date_epoch) h.update("epoch " + std::to_string(env_epoch) + "\n");
  for (const auto& [name, sha] : inputs) h.update("input " + name + " " + sha + "\n");
  hash_files(h, files);
  return h.hex();
}

std::string spec_hash(const ImageSpec& spec, const std::string& base_id, std::vector<TagFile> files,
                      std::int64_t env_epoch, const std::vector<std::pair<std::string, std::string>>& inputs) {
  if (!std::is_sorted(files.begin(), files.end(), by_dest)) std::sort(files.begin(), files.end(), by_dest);
  return spec_hash_streamed(spec, base_id, from_sorted(files), env_epoch, inputs);
}

std::string files_digest_streamed(const FileSource& files) {
  layers::Sha256 h;
  h.update("kiln-files-v1\n");
  hash_files(h, files);
  return h.hex();
}

std::string files_digest(std::vector<TagFile> files) {
  if (!std::is_sorted(files.begin(), files.end(), by_dest)) std::sort(files.begin(), files.end(), by_dest);
  return files_digest_streamed(from_sorted(files));
}

bool valid_tag(const std::string& tag) {
  auto word = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  };
  if (tag.empty() || tag.size() > 128 || !word(tag[0])) return false;
  return std::all_of(tag.begin() + 1, tag.end(), [&](char c) { return word(c) || c == '.' || c == '-'; });
}

std::string make_tag(const ImageSpec& spec, const std::string& hash) {
  std::string fmt = spec.tag_format.value_or("{spec_hash}");
  std::string short_hash = hash.substr(0, 32);
  std::string out;
  bool used = false;
  for (std::size_t i = 0; i < fmt.size();) {
    if (fmt.compare(i, 11, "{spec_hash}") == 0) {
      out += short_hash;
      i += 11;
      used = true;
    } else {
      out += fmt[i++];
    }
  }
  if (!used)
    throw SpecError("tag_format", "tag_format '" + fmt + "' must contain {spec_hash}, or every build would get the same tag");
  if (!valid_tag(out))
    throw SpecError("tag_format", "tag_format '" + fmt + "' gives '" + out +
                                      "', which is not a valid tag (letters, digits, '_', '.', '-'; at most 128)");
  return out;
}

std::string repository(const ImageSpec& spec) {
  return spec.registry && !spec.registry->empty() ? *spec.registry + "/" + spec.name : spec.name;
}

}  // namespace kiln::spec
