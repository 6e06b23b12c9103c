// docker-archive sink: the tar `docker save` writes (manifest.json, the config, uncompressed
// layers), loadable by `docker load` and `skopeo copy docker-archive:`. Written to a temp file and
// renamed, so a failed build never leaves half an archive.
#pragma once

#include <filesystem>
#include <string>

#include "builder/image.h"

namespace kiln::builder {

/// Writes `img` to `file`; `repo_tag` ("name:tag", may be empty) goes in RepoTags. Layers are
/// stored uncompressed and their diff_ids verified on the way.
void write_docker_archive(const Image& img, const std::filesystem::path& file, const std::string& repo_tag);

}  // namespace kiln::builder
