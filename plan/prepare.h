// The glue between the task plan and the builder: prepare every ImageSpec image of a plan (walk,
// hash, tag; nothing built) and decide from the prepared builds. The plan itself (plan/plan.h)
// needs only each image's file set; this header is where builder::Prepared meets it.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "builder/build.h"
#include "plan/plan.h"

namespace kiln::plan {

/// Prepares every ImageSpec image of the plan (walk + hash + tag; nothing built). The plan's
/// loaded_modules that lie under an image's source_root are that image's loaded modules.
std::map<std::string, builder::Prepared> prepare_images(const PlanInput& in, const builder::BuildOptions& opts);

/// The facts the plan needs of one prepared build. Points into `p`, which must outlive the result.
PreparedImage prepared_image(const builder::Prepared& p);

/// decide() over prepared builds, by image id.
nlohmann::json decide(const PlanInput& in, const std::map<std::string, builder::Prepared>& prepared);

}  // namespace kiln::plan
