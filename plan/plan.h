// The task plan: for each task of a workflow, does it still need pyflyte's fast-register bundle,
// or does its image already bake its code in? And is a bundle needed at all?
//
// The decision uses exactly the file set a build uses (layers::collect_files): one walk, one set
// of rules. Input and output formats: docs/plan.md and docs/schemas/plan-*.schema.json.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "builder/build.h"
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
  std::vector<std::string> loaded_modules;   // what the SDK loaded, relative to project_root
  std::vector<ImageInput> images;
  std::vector<TaskInput> tasks;
  std::string origin;
};

/// Parses plan JSON; paths resolve against `base_dir` (the plan file's directory). Throws
/// spec::SpecError naming the field.
PlanInput parse_plan(std::string_view text, const std::filesystem::path& base_dir, const std::string& origin);
PlanInput load_plan(const std::string& path);  // "-" reads stdin

/// Prepares every ImageSpec image of the plan (walk + hash + tag; nothing built). The plan's
/// loaded_modules that lie under an image's source_root are that image's loaded modules.
std::map<std::string, builder::Prepared> prepare_images(const PlanInput& in, const builder::BuildOptions& opts);

/// Computes the plan as JSON (see docs/plan.md). `prepared` holds each spec image's prepared
/// build, by image id (the caller prepares them, with the store and the loaded modules).
nlohmann::json decide(const PlanInput& in, const std::map<std::string, builder::Prepared>& prepared);

/// Does the plan JSON hold errors?
bool has_errors(const nlohmann::json& plan);

/// A readable summary of a plan, one line per task, then warnings and errors.
std::string summary(const nlohmann::json& plan);

const char* to_string(CopyMode m);

}  // namespace kiln::plan
