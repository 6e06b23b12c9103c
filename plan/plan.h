// The task plan: for each task of a workflow, does it still need pyflyte's fast-register bundle,
// or does its image already bake its code in, at the place the task imports it from? And is a
// bundle needed at all?
//
// The decision uses exactly the file set a build uses (layers::collect_files): one walk, one set
// of rules. This header needs only the file set of each image (PreparedImage); preparing the images
// through the builder is in plan/prepare.h. Input and output formats: docs/plan.md and
// docs/schemas/plan-*.schema.json.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "layers/fileset.h"
#include "spec/image_spec.h"

namespace kiln::plan {

enum class CopyMode { Auto, All, None };  // pyflyte's --copy

struct ImageInput {
  std::string id;
  std::shared_ptr<spec::ImageSpec> spec;  // null for a plain reference
  std::string ref;                        // plain image reference
};

struct TaskInput {
  std::string name;
  std::string kind;                  // "python", "raw_container", "map", "array", ...
  std::string image;                 // an ImageInput id
  std::vector<std::string> modules;  // relative to project_root
  bool raw_container() const { return kind == "raw_container" || kind == "raw-container" || kind == "container"; }
};

struct PlanInput {
  CopyMode copy = CopyMode::Auto;
  std::filesystem::path project_root;        // absolute
  std::optional<std::string> dest_dir;       // absolute, normalized: where pyflyte puts the code (--destination-dir)
  std::vector<std::string> loaded_modules;   // what the SDK loaded, relative to project_root
  std::vector<ImageInput> images;
  std::vector<TaskInput> tasks;
  std::string origin;
};

/// What the plan needs of one ImageSpec image once its file set is walked and hashed (see
/// plan/prepare.h for the builder glue). `files` is owned by the caller and must outlive decide().
struct PreparedImage {
  std::string image_ref;                    // [registry/]name:tag, as `kiln tag` prints it
  const layers::FileSet* files = nullptr;   // what the image bakes
  std::string source_digest;                // digest of the baked source set ("" without source)
  std::filesystem::path source_root;        // absolute (meaningful when files->has_source)
  std::string source_dest = "/root";        // where source_root lands in the image
  std::string workdir = "/root";            // the image's working directory (pyflyte-execute imports from it)
};

/// Parses plan JSON; paths resolve against `base_dir` (the plan file's directory). Throws
/// spec::SpecError naming the field.
PlanInput parse_plan(std::string_view text, const std::filesystem::path& base_dir, const std::string& origin);
PlanInput load_plan(const std::string& path);  // "-" reads stdin

/// For an image with source_copy_mode loaded_modules: the plan's loaded_modules that lie under its
/// source_root, relative to it (what the image bakes).
std::vector<std::string> loaded_modules_under(const PlanInput& in, const std::filesystem::path& source_root);

/// Computes the plan as JSON (see docs/plan.md). `images` holds each spec image's facts, by image
/// id (every ImageSpec image of `in` must be there).
nlohmann::json decide(const PlanInput& in, const std::map<std::string, PreparedImage>& images);

/// Does the plan JSON hold errors?
bool has_errors(const nlohmann::json& plan);

/// A readable summary of a plan, one line per task, then warnings and errors.
std::string summary(const nlohmann::json& plan);

const char* to_string(CopyMode m);

}  // namespace kiln::plan
