// Error types shared by builder sources and sinks (besides spec::SpecError, layers::InputError and
// builder::StepError in build.h), so callers can map them to exit codes without parsing messages.
#pragma once

#include <stdexcept>
#include <string>

namespace kiln::builder {

/// Something named does not exist: an OCI layout, a tag in it, an image for a platform.
class NotFoundError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace kiln::builder
