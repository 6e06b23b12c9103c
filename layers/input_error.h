// The error for bad input on disk or in a project's files (a missing source_root, a fifo, a bad
// .dockerignore pattern…): the user must fix it. The CLI maps it to exit code 2.
#pragma once

#include <stdexcept>
#include <string>

namespace kiln::layers {

class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  /// An error about one spec field ("source_root", "copy"): the failure object names it, and a
  /// GitHub annotation points at its line.
  InputError(std::string field, const std::string& message)
      : std::runtime_error(message), field_(std::move(field)) {}
  /// The spec field at fault ("" when the error is not about one).
  const std::string& field() const { return field_; }

 private:
  std::string field_;
};

}  // namespace kiln::layers
