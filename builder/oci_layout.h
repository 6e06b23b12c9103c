// OCI image layout as a source (read an image by tag) and a sink (write an image, then replace
// index.json atomically under a lock, so a failed or concurrent build never moves a tag wrongly).
#pragma once

#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>

#include "builder/errors.h"  // NotFoundError
#include "builder/image.h"

namespace kiln::builder {

/// An image read from a layout, with the digest of its manifest.
struct LayoutImage {
  Image image;
  std::string manifest_digest;
  std::optional<IndexSummary> index;  // the tag named an image index, resolved to the platform
};

/// Reads the image tagged `tag` ("" = the layout's only image) from the layout at `dir`, resolving
/// an image index to `platform`. Every blob read is verified against its digest.
LayoutImage read_oci_layout(const std::filesystem::path& dir, const std::string& tag, const std::string& platform);

/// The multi-platform image `tag` names ("" = the layout's only entry), when it names an image index
/// (each platform's image read and verified); nullopt when it names one image. An index kiln would
/// not write byte for byte (a nested index, an entry without a platform, another manifest form) is
/// refused (layers::InputError): pushed as kiln writes it, it would be another digest.
std::optional<ImageIndex> read_oci_layout_index(const std::filesystem::path& dir, const std::string& tag);

/// The image index `tag` names, summarized; nullopt when it names one image.
std::optional<IndexSummary> oci_layout_index_summary(const std::filesystem::path& dir, const std::string& tag);

/// Only resolves `tag` to its manifest digest (cheap: reads index.json, and nested indexes). With
/// `platform` "": the digest the tag names, an image index included (not resolved).
std::string resolve_oci_layout(const std::filesystem::path& dir, const std::string& tag, const std::string& platform);

/// Writes `img` into the layout at `dir` (created if missing) and points `tag` at it. Blobs arrive
/// by hardlink or reflink from where they are, else by copy. Returns the manifest digest.
std::string write_oci_layout(const Image& img, const std::filesystem::path& dir, const std::string& tag);

/// Only the first half of write_oci_layout: every blob of `img` into the layout, atomically; no
/// tag moves. (A later write_oci_layout finds them there.) A blob already present with the wrong
/// size is replaced.
void stage_oci_layout(const Image& img, const std::filesystem::path& dir);

/// The same for a multi-platform image: every platform's blobs, then the index, whose digest
/// `tag` then names. Returns the index digest.
std::string write_oci_layout(const ImageIndex& index, const std::filesystem::path& dir, const std::string& tag);
void stage_oci_layout(const ImageIndex& index, const std::filesystem::path& dir);

/// Checks, before a build, that `dir` can take an image: absent (it is created), or a writable
/// directory whose index.json, if any, is an index. Throws layers::InputError naming what is wrong.
void check_oci_output(const std::filesystem::path& dir);

/// Parses "oci:DIR[:TAG]" (the tag after the last ':' when it holds no '/').
void split_oci_ref(const std::string& ref, std::filesystem::path* dir, std::string* tag);

}  // namespace kiln::builder
