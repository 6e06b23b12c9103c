"""Makes flytekit importable for the plugin's tests.

The installed flytekit when there is one; else flytekit's source in
$KILN_SOURCE_DIR/../shared/flytekit-e96c720 (or $KILN_FLYTEKIT_SRC), imported without running
flytekit/__init__.py (which needs flyteidl), with stubs for the few modules the image_spec code
imports that need flyteidl or extra packages: flytekit.loggers, flytekit.clis.helpers (str2bool)
and flytekit.core.context_manager (ImageBuildEngine.build asks it for the execution mode). Every
class the tests use (ImageSpec, ImageSpecBuilder, ImageBuildEngine, CopyFileDetection, the
exceptions) is flytekit's own.
"""

import logging
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
SDK_DIR = os.path.dirname(HERE)
REPO = os.environ.get("KILN_SOURCE_DIR") or os.path.dirname(os.path.dirname(SDK_DIR))


def _drop_flytekit_modules():
    for name in [m for m in sys.modules if m == "flytekit" or m.startswith("flytekit.")]:
        del sys.modules[name]


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def _str2bool(value):
    return str(value).strip().lower() in ("true", "1", "yes", "y", "on", "t")


class _ExecutionState:
    class Mode:
        TASK_EXECUTION = 1
        LOCAL_WORKFLOW_EXECUTION = 2
        LOCAL_TASK_EXECUTION = 3

    def __init__(self, mode=None):
        self.mode = mode


class _Context:
    def __init__(self):
        self.execution_state = _ExecutionState()


class _FlyteContextManager:
    @staticmethod
    def current_context():
        return _Context()


def flytekit_source_dir():
    return os.environ.get("KILN_FLYTEKIT_SRC") or os.path.join(REPO, "..", "shared", "flytekit-e96c720")


def setup():
    """Returns "installed" or "source"; None when flytekit is neither installed nor available."""
    if SDK_DIR not in sys.path:
        sys.path.insert(0, SDK_DIR)
    try:
        import flytekit  # noqa: F401

        import flytekit.image_spec  # noqa: F401

        return "installed"
    except ImportError:
        _drop_flytekit_modules()
    src = os.path.realpath(flytekit_source_dir())
    pkg_dir = os.path.join(src, "flytekit")
    if not os.path.isfile(os.path.join(pkg_dir, "image_spec", "image_spec.py")):
        return None
    _module("flytekit", __path__=[pkg_dir], __file__=os.path.join(pkg_dir, "__init__.py"))
    _module("flytekit.loggers", logger=logging.getLogger("flytekit"))
    import flytekit.clis  # noqa: F401  (its __init__ imports nothing heavy)

    _module("flytekit.clis.helpers", str2bool=_str2bool)
    import flytekit.core  # noqa: F401

    _module(
        "flytekit.core.context_manager",
        FlyteContextManager=_FlyteContextManager,
        ExecutionState=_ExecutionState,
    )
    import flytekit.image_spec  # noqa: F401

    return "source"
