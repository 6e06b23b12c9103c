// kiln history / show / diff (build records): registered here.
#include "builder/cli/common.h"

namespace kiln::cli {

void add_history_commands(CLI::App&, Common&, std::vector<Command>&) {}

}  // namespace kiln::cli
