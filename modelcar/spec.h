// The ImageSpec behind `kiln modelcar MODEL_DIR --base BASE`: the command builds this spec, through
// the same parser, builder and sinks as `kiln build`, so an SDK that writes the spec itself gets
// the very same image (docs/modelcar.md).
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "spec/image_spec.h"

namespace kiln::modelcar {

struct SpecRequest {
  std::filesystem::path model_dir;  // relative paths resolve against base_dir
  std::string base = "scratch";     // "scratch", "oci:DIR[:TAG]" or a registry reference
  std::string name;                 // "" = from the model directory's name
  std::string registry;             // "" = none
  std::string platform;             // "" = the spec default (linux/amd64)
  std::filesystem::path base_dir;   // "" = the working directory
};

/// {"name", "modelcar": true, "source_root", "base_image", ["registry"], ["platform"]}: the spec
/// as a file in base_dir would say it. Paths stay as given, so the image (whose manifest names the
/// base as written) is the one `kiln build` makes of that file.
nlohmann::json spec_json(const SpecRequest& req);

/// The parsed spec. Throws spec::SpecError.
spec::ImageSpec make_spec(const SpecRequest& req);

/// A valid repository name from a directory name: lowercased, other characters turned into '-'
/// ("My Model_v2" → "my-model-v2"); "model" when nothing is left.
std::string default_name(const std::filesystem::path& model_dir);

}  // namespace kiln::modelcar
