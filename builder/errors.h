// Error types shared by builder sources and sinks (besides spec::SpecError, layers::InputError and
// builder::StepError in build.h), so callers can map them to exit codes without parsing messages.
#pragma once

#include <stdexcept>
#include <string>

#include "layers/fileset.h"  // InputError

namespace kiln::builder {

/// Something named does not exist: an OCI layout, a tag in it, an image for a platform.
class NotFoundError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A base image that is corrupt or hostile: a blob whose bytes do not match its digest, a layer
/// whose content does not match its diff_id, an entry the unpacker refuses. Bad input (exit 2);
/// the message names the base, the blob or layer, and the entry.
class BaseError : public layers::InputError {
 public:
  using layers::InputError::InputError;
};

}  // namespace kiln::builder
