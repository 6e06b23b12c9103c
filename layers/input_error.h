// The error for bad input on disk or in a project's files (a missing source_root, a fifo, a bad
// .dockerignore pattern…): the user must fix it. The CLI maps it to exit code 2.
#pragma once

#include <stdexcept>

namespace kiln::layers {

class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace kiln::layers
