"""The per-task fast-register decision (`kiln plan`, docs/plan.md) for flytekit tasks.

Three steps, each a plain function:

1. ``plan_input(tasks, ...)``: the plan kiln reads, from the tasks pyflyte loaded (``task_ref``
   turns a flytekit task into a ``TaskRef``: name, kind, image, module files), the project root
   (pyflyte's: the first parent directory without ``__init__.py``), the loaded modules and
   ``--copy``.
2. ``run_plan(plan)``: ``kiln plan -``; kiln answers per task ``fast_register`` and why.
3. ``apply_to_args(args, decision)`` / ``apply_plan(plan, args_by_task)``: a task kiln found
   baked (``fast_register: false``) loses pyflyte's ``pyflyte-fast-execute ... --`` prefix and runs
   the code in its image; every other task keeps its arguments as flytekit made them.
"""

from __future__ import annotations

import inspect
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from .spec import loaded_module_files, to_kiln_spec

FAST_EXECUTE = "pyflyte-fast-execute"
# pyflyte-fast-execute's options that take a value (flytekit's translator writes both).
_FAST_EXECUTE_OPTIONS = ("--additional-distribution", "--dest-dir")


# ---- container args -------------------------------------------------------------------------


def _prefix_end(args: Sequence[str]) -> Optional[int]:
    """Index of the `--` that ends a leading `pyflyte-fast-execute [options] --`, or None."""
    if not args or args[0] != FAST_EXECUTE:
        return None
    i = 1
    while i < len(args):
        if args[i] == "--":
            return i
        i += 2 if args[i] in _FAST_EXECUTE_OPTIONS else 1
    return None


def has_fast_execute_prefix(args: Sequence[str]) -> bool:
    """Do the container args start with `pyflyte-fast-execute ... --`?"""
    return _prefix_end(args) is not None


def strip_fast_execute_prefix(args: Sequence[str]) -> List[str]:
    """The args without a leading `pyflyte-fast-execute ... --` (a copy; unchanged when absent)."""
    end = _prefix_end(args)
    return list(args) if end is None else list(args[end + 1 :])


def apply_to_args(args: Sequence[str], decision: Mapping[str, Any]) -> List[str]:
    """A task's container args under kiln's decision for it (one entry of the plan's `tasks`):
    without the fast-execute prefix when the task does not fast-register, else unchanged."""
    if decision.get("fast_register", True):
        return list(args)
    return strip_fast_execute_prefix(args)


def apply_plan(plan: Mapping[str, Any], args_by_task: Mapping[str, Sequence[str]]) -> Dict[str, List[str]]:
    """apply_to_args for every task, by name. A task the plan does not list keeps its args."""
    decisions = {t["name"]: t for t in plan.get("tasks", [])}
    return {name: apply_to_args(args, decisions.get(name, {})) for name, args in args_by_task.items()}


def bundle_needed(plan: Mapping[str, Any]) -> bool:
    """Must pyflyte still upload a fast-register bundle?"""
    return bool(plan.get("bundle", {}).get("needed", True))


# ---- tasks ----------------------------------------------------------------------------------


@dataclass
class TaskRef:
    """What the plan needs of one task."""

    name: str
    image: Any = None  # an ImageSpec, an image reference, or None (the default image)
    modules: List[str] = field(default_factory=list)  # files: absolute, or relative to the project root
    kind: str = "python"  # "python", "map", "raw_container", ...


def _class_names(obj: Any) -> List[str]:
    return [c.__name__ for c in type(obj).__mro__]


def _module_file(fn: Any) -> Optional[str]:
    mod = sys.modules.get(getattr(fn, "__module__", None) or "")
    f = getattr(mod, "__file__", None)
    if f:
        return os.path.abspath(f)
    try:
        return os.path.abspath(inspect.getfile(fn))
    except (TypeError, OSError):
        return None


def task_ref(task: Any, default_image: Any = None) -> TaskRef:
    """A TaskRef from a loaded flytekit task (read through its public attributes)."""
    names = _class_names(task)
    inner = task
    kind = "python"
    if "ContainerTask" in names:
        kind = "raw_container"
    elif any(n in names for n in ("ArrayNodeMapTask", "MapPythonTask")):
        kind = "map"
        inner = getattr(task, "python_function_task", None) or getattr(task, "_run_task", None) or task
    image = getattr(inner, "container_image", None) or getattr(task, "container_image", None) or default_image
    modules: List[str] = []
    if kind != "raw_container":
        # As flytekit's extract_task_module: the task function's module, else (an instance task)
        # the module it was instantiated in.
        fn = getattr(inner, "task_function", None)
        f = None
        if fn is not None:
            f = _module_file(fn)
        elif getattr(inner, "instantiated_in", None):
            mod = sys.modules.get(inner.instantiated_in)
            f = os.path.abspath(mod.__file__) if getattr(mod, "__file__", None) else None
        if f:
            modules.append(f)
    return TaskRef(name=task.name, image=image, modules=modules, kind=kind)


def find_project_root(path: str) -> str:
    """pyflyte's project root of a module file: the first parent directory without __init__.py."""
    d = os.path.dirname(os.path.abspath(path))
    while os.path.exists(os.path.join(d, "__init__.py")):
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return d


def _image_key(image: Any) -> str:
    if isinstance(image, str):
        return image
    return "imagespec-" + image.id


def plan_input(
    tasks: Iterable[TaskRef],
    *,
    project_root: Optional[str] = None,
    copy: str = "auto",
    loaded_modules: Optional[Iterable[str]] = None,
    dest_dir: Optional[str] = None,
    default_image: Optional[str] = None,
    cwd: Optional[str] = None,
) -> Dict[str, Any]:
    """The `kiln plan` input (docs/plan.md) for these tasks.

    project_root defaults to pyflyte's project root of the first task module (every module must
    lie under it). loaded_modules (files, absolute or relative to project_root) defaults to the
    files of the modules Python has loaded from project_root. copy is pyflyte's --copy; dest_dir
    its --destination-dir, when given.
    """
    tasks = list(tasks)
    cwd = cwd or os.getcwd()
    if project_root is None:
        first = next((m for t in tasks for m in t.modules), None)
        if first is None:
            raise ValueError("no task has a module file: give project_root")
        project_root = find_project_root(os.path.join(cwd, first))
    project_root = os.path.realpath(os.path.join(cwd, project_root))

    def rel(path: str, what: str) -> str:
        p = os.path.realpath(os.path.join(project_root, path))
        r = os.path.relpath(p, project_root)
        if r == os.curdir or r.startswith(os.pardir + os.sep) or r == os.pardir:
            raise ValueError("%s %s lies outside the project root %s" % (what, path, project_root))
        return r.replace(os.sep, "/")

    images: Dict[str, Any] = {}
    out_tasks = []
    for t in tasks:
        image = t.image if t.image is not None else default_image
        if image is None:
            raise ValueError("task %s has no image and no default_image was given" % t.name)
        key = _image_key(image)
        if key not in images:
            images[key] = image if isinstance(image, str) else {"inline": to_kiln_spec(image, cwd=cwd, image_id=False)}
        out_tasks.append(
            {"name": t.name, "kind": t.kind, "image": key, "modules": [rel(m, "task %s: module" % t.name) for m in t.modules]}
        )
    if loaded_modules is None:
        loaded = loaded_module_files(project_root)
    else:
        loaded = sorted({rel(m, "loaded module") for m in loaded_modules})
    plan: Dict[str, Any] = {
        "copy": copy,
        "project_root": project_root,
        "loaded_modules": loaded,
        "images": images,
        "tasks": out_tasks,
    }
    if dest_dir is not None:
        plan["dest_dir"] = dest_dir
    return plan


def plan_input_for_settings(tasks: Iterable[TaskRef], settings: Any, copy: str = "auto", **kw: Any) -> Dict[str, Any]:
    """plan_input with what flytekit's SerializationSettings know: the project root
    (settings.source_root), pyflyte's --destination-dir (fast_serialization_settings.destination_dir,
    when absolute: pyflyte's default "." means the container's working directory, which is also
    kiln's default) and the default image (image_config.default_image.full)."""
    fast = getattr(settings, "fast_serialization_settings", None)
    dest = getattr(fast, "destination_dir", None) if fast is not None else None
    if dest is not None and os.path.isabs(dest):
        kw.setdefault("dest_dir", dest)
    if getattr(settings, "source_root", None):
        kw.setdefault("project_root", settings.source_root)
    image_config = getattr(settings, "image_config", None)
    default = getattr(getattr(image_config, "default_image", None), "full", None)
    if default:
        kw.setdefault("default_image", default)
    return plan_input(tasks, copy=copy, **kw)


def run_plan(plan: Mapping[str, Any], kiln: Any = None) -> Dict[str, Any]:
    """`kiln plan -`: the plan's answer (also when it holds errors: see has_errors). Raises the
    mapped KilnError when kiln refuses the input."""
    from .builder import error_for_failure
    from .cli import EXIT_INPUT, Kiln

    kiln = kiln or Kiln()
    r = kiln.plan(dict(plan))
    if r.code in (0, EXIT_INPUT) and isinstance(r.json, dict) and "tasks" in r.json:
        return r.json
    raise error_for_failure(r.failure(), "kiln plan")


def has_errors(plan: Mapping[str, Any]) -> bool:
    return bool(plan.get("errors"))
