"""flytekitplugins-kiln: build flytekit ImageSpecs with kiln.

Importing this package (flytekit does it through the ``flytekit.plugins`` entry point) registers
the image builder ``kiln`` with flytekit's ImageBuildEngine, so ``ImageSpec(builder="kiln", ...)``
builds with kiln: no Docker daemon, a content-hash tag, byte-reproducible layers.

- ``KilnImageSpecBuilder``: the ImageSpecBuilder (build_image, should_build).
- ``to_kiln_spec``: an ImageSpec as kiln's spec JSON.
- ``plan_input`` / ``run_plan`` / ``apply_plan``: the per-task fast-register decision (``kiln plan``)
  and its effect on a task's container args.
"""

from .builder import (
    BUILDER_PRIORITY,
    BUILDER_TYPE,
    KilnAuthenticationError,
    KilnBuildError,
    KilnError,
    KilnInternalError,
    KilnInterruptedError,
    KilnNotFoundError,
    KilnPermissionError,
    KilnRegistryError,
    KilnSpecError,
    KilnTransientError,
    KilnImageSpecBuilder,
    error_for_failure,
    register,
)
from .cli import Kiln
from .plan import (
    TaskRef,
    apply_plan,
    apply_to_args,
    bundle_needed,
    find_project_root,
    has_fast_execute_prefix,
    plan_input,
    plan_input_for_settings,
    run_plan,
    strip_fast_execute_prefix,
    task_ref,
)
from .spec import loaded_module_files, to_kiln_spec

__all__ = [
    "BUILDER_PRIORITY",
    "BUILDER_TYPE",
    "Kiln",
    "KilnAuthenticationError",
    "KilnBuildError",
    "KilnError",
    "KilnImageSpecBuilder",
    "KilnInternalError",
    "KilnInterruptedError",
    "KilnNotFoundError",
    "KilnPermissionError",
    "KilnRegistryError",
    "KilnSpecError",
    "KilnTransientError",
    "TaskRef",
    "apply_plan",
    "apply_to_args",
    "bundle_needed",
    "error_for_failure",
    "find_project_root",
    "has_fast_execute_prefix",
    "loaded_module_files",
    "plan_input",
    "plan_input_for_settings",
    "register",
    "run_plan",
    "strip_fast_execute_prefix",
    "task_ref",
    "to_kiln_spec",
]

register()
