// kiln modelcar / kiln k8s-patch (KServe modelcar images): registered here.
#include "builder/cli/common.h"

namespace kiln::cli {

void add_modelcar_commands(CLI::App&, Common&, std::vector<Command>&) {}

}  // namespace kiln::cli
