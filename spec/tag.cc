// The tag algorithm (docs/tag.md).
#include "spec/tag.h"

#include <algorithm>
#include <cstdio>

#include "layers/digest.h"

namespace kiln::spec {

namespace {
bool by_dest(const TagFile& a, const TagFile& b) { return a.dest < b.dest; }

/// Lines are gathered into a buffer and hashed in large pieces: per-line digest updates cost more
/// than the hashing itself for a tree of small files.
constexpr std::size_t kLineBuffer = 1 << 16;

void append_line(std::string& buf, char type, unsigned mode, std::string_view content, std::string_view dest) {
  const std::size_t at = buf.size();
  buf.resize(at + 8);
  char* p = buf.data() + at;
  p[0] = type;
  p[1] = ' ';
  mode &= 07777;  // four octal digits, as printf's "%04o" of a value below 010000
  p[2] = static_cast<char>('0' + ((mode >> 9) & 7));
  p[3] = static_cast<char>('0' + ((mode >> 6) & 7));
  p[4] = static_cast<char>('0' + ((mode >> 3) & 7));
  p[5] = static_cast<char>('0' + (mode & 7));
  p[6] = ' ';
  buf.resize(at + 7);
  buf.append(content);
  buf += ' ';
  buf.append(dest);
  buf += '\0';
}
FileSource from_sorted(const std::vector<TagFile>& files) {
  return [&files, i = std::size_t(0)](TagFile& out) mutable {
    if (i == files.size()) return false;
    out = files[i++];
    return true;
  };
}
}  // namespace

struct TagHasher::Impl {
  layers::Sha256 spec, files;
  std::string spec_buf, files_buf;
  void flush_spec() {
    spec.update(spec_buf);
    spec_buf.clear();
  }
  void flush_files() {
    files.update(files_buf);
    files_buf.clear();
  }
};

TagHasher::TagHasher(const ImageSpec& spec, const std::string& base_id, std::int64_t env_epoch,
                     const std::vector<std::pair<std::string, std::string>>& inputs)
    : impl_(std::make_unique<Impl>()) {
  layers::Sha256& h = impl_->spec;
  h.update(kSpecHashPrefix);
  h.update(spec.canonical().dump());
  h.update("\nbase " + base_id + "\n");
  if (env_epoch != 0 && !spec.source_date_epoch) h.update("epoch " + std::to_string(env_epoch) + "\n");
  for (const auto& [name, sha] : inputs) h.update("input " + name + " " + sha + "\n");
  impl_->files.update("kiln-files-v1\n");
  impl_->spec_buf.reserve(kLineBuffer);
  impl_->files_buf.reserve(kLineBuffer);
}

TagHasher::~TagHasher() = default;

void TagHasher::add(char type, unsigned mode, std::string_view content, std::string_view dest, bool in_source) {
  append_line(impl_->spec_buf, type, mode, content, dest);
  if (impl_->spec_buf.size() >= kLineBuffer - 512) impl_->flush_spec();
  if (in_source) {
    append_line(impl_->files_buf, type, mode, content, dest);
    if (impl_->files_buf.size() >= kLineBuffer - 512) impl_->flush_files();
  }
}

std::string TagHasher::spec_hash() {
  impl_->flush_spec();
  return impl_->spec.hex();
}

std::string TagHasher::files_digest() {
  impl_->flush_files();
  return impl_->files.hex();
}

std::string spec_hash_streamed(const ImageSpec& spec, const std::string& base_id, const FileSource& files,
                      std::int64_t env_epoch, const std::vector<std::pair<std::string, std::string>>& inputs) {
  TagHasher h(spec, base_id, env_epoch, inputs);
  TagFile f;
  while (files(f)) h.add(f, false);
  return h.spec_hash();
}

std::string spec_hash(const ImageSpec& spec, const std::string& base_id, std::vector<TagFile> files,
                      std::int64_t env_epoch, const std::vector<std::pair<std::string, std::string>>& inputs) {
  if (!std::is_sorted(files.begin(), files.end(), by_dest)) std::sort(files.begin(), files.end(), by_dest);
  return spec_hash_streamed(spec, base_id, from_sorted(files), env_epoch, inputs);
}

std::string files_digest_streamed(const FileSource& files) {
  layers::Sha256 h;
  h.update("kiln-files-v1\n");
  std::string buf;
  buf.reserve(kLineBuffer);
  TagFile f;
  while (files(f)) {
    append_line(buf, f.type, f.mode, f.content, f.dest);
    if (buf.size() >= kLineBuffer - 512) {
      h.update(buf);
      buf.clear();
    }
  }
  h.update(buf);
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

std::string index_hash(const std::vector<std::pair<std::string, std::string>>& platform_hashes) {
  std::string text = "kiln-index-hash-v1\n";
  for (const auto& [platform, hash] : platform_hashes) text += platform + " " + hash + "\n";
  return layers::sha256_hex(text);
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
  // "SPEC: field 'tag_format' …", as every other spec error begins.
  const std::string where = (spec.origin.empty() ? std::string() : spec.origin + ": ") + "field 'tag_format' ";
  if (!used)
    throw SpecError("tag_format", where + "('" + fmt + "') must contain {spec_hash}, or every build would get the same tag");
  if (!valid_tag(out))
    throw SpecError("tag_format", where + "('" + fmt + "') gives '" + out +
                                      "', which is not a valid tag (letters, digits, '_', '.', '-'; at most 128)");
  return out;
}

std::string repository(const ImageSpec& spec) {
  return spec.registry && !spec.registry->empty() ? *spec.registry + "/" + spec.name : spec.name;
}

}  // namespace kiln::spec
