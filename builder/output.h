// Output targets ("sinks"): where a built image goes. One parser and one writer, so the CLI and
// SDK callers share them.
#pragma once

#include <filesystem>
#include <string>

#include "builder/image.h"

namespace kiln::builder {

struct OutputTarget {
  enum class Kind { OciLayout, DockerArchive };
  Kind kind = Kind::OciLayout;
  std::filesystem::path path;
  std::string tag;  // OCI layout: the tag to set ("" = the image's own tag)
  std::string text; // as given
};

/// Parses "oci:DIR[:TAG]" or "docker-archive:FILE". Throws std::invalid_argument.
OutputTarget parse_output(const std::string& text);

/// Writes `img`; `repository` and `tag` name it (the layout tag, unless the target gives one;
/// RepoTags in a docker-archive). Returns the manifest digest.
std::string write_output(const Image& img, const OutputTarget& target, const std::string& repository,
                         const std::string& tag);

/// Writes a multi-platform image: an OCI layout takes the index; a docker-archive, which holds one
/// image, is refused (layers::InputError). Returns the index digest.
std::string write_output(const ImageIndex& index, const OutputTarget& target, const std::string& repository,
                         const std::string& tag);

/// Refuses, before a build, a target that cannot take a multi-platform image (layers::InputError).
void check_output_for_index(const OutputTarget& target, const std::string& platforms);

}  // namespace kiln::builder
