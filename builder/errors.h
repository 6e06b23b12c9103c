// Error types shared by builder sources and sinks (besides spec::SpecError, layers::InputError and
// builder::StepError in build.h), so callers can map them to exit codes without parsing messages.
#pragma once

#include <exception>
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

/// The spec field an error is about, around the error itself: the error (whose type decides the
/// exit code) is kept as the nested exception, and what() is its message. session::classify names
/// the field in the failure (a field the inner error names already goes after it: a nested base
/// spec's "source_root" becomes "base_image.source_root").
class FieldError : public std::runtime_error, public std::nested_exception {
 public:
  /// Call it in a handler: the exception being handled becomes the nested one.
  FieldError(std::string field, const std::string& message)
      : std::runtime_error(message), field_(std::move(field)) {}
  const std::string& field() const { return field_; }

 private:
  std::string field_;
};

/// Rethrows the exception being handled (a std::exception) as a FieldError on `field`; anything
/// else unchanged. Call it only in a catch handler.
[[noreturn]] inline void rethrow_with_field(const std::string& field) {
  try {
    throw;
  } catch (const std::exception& e) {  // a FieldError too: a base's base gives "base_image.base_image…"
    throw FieldError(field, e.what());
  }
}

}  // namespace kiln::builder
