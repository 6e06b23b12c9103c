"""A flytekit ImageSpec as kiln's spec JSON (README, "The spec").

kiln reads flytekit's field names as they are, so the conversion is mostly a copy. What changes:

- host paths (``source_root``, ``requirements``, ``registry_config``, ``pip_secret_mounts``
  sources) become absolute, resolved against the working directory as flytekit resolves them;
  ``copy`` entries stay relative (kiln refuses absolute ones) and kiln resolves them against its
  working directory, which is this process's;
- ``source_copy_mode`` (CopyFileDetection) becomes ``loaded_modules``, ``all`` or ``no_copy``, and
  for ``loaded_modules`` the module files Python has loaded from ``source_root`` are listed in
  kiln's ``loaded_modules`` field (what flytekit's default builder copies);
- a nested base ImageSpec becomes a nested spec object, which kiln builds first;
- ``runtime_packages`` is left out: flytekit installs those when the task starts, not at build
  time (and leaves them out of the ImageSpec's id);
- ``_F_IMG_ID`` carries ``ImageSpec.id``, so ``ImageSpec.is_container()`` works in the image. kiln
  sets it as the config's last environment entry, outside the tag and the cached layers.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, Iterable, List, Optional

IMAGE_ID_FIELD = "_F_IMG_ID"

# ImageSpec fields copied as they are (when not None).
_PLAIN_FIELDS = (
    "name",
    "python_version",
    "builder",
    "env",
    "registry",
    "packages",
    "conda_packages",
    "conda_channels",
    "apt_packages",
    "cuda",
    "cudnn",
    "platform",
    "pip_index",
    "pip_extra_index_url",
    "pip_extra_args",
    "entrypoint",
    "commands",
    "tag_format",
    "copy",
    "python_exec",
)


def _abs(path: str, cwd: str) -> str:
    return os.path.normpath(os.path.join(cwd, os.fspath(path)))


def copy_mode_name(mode: Any) -> Optional[str]:
    """CopyFileDetection.LOADED_MODULES → "loaded_modules" (also accepts a string)."""
    if mode is None:
        return None
    name = getattr(mode, "name", mode)
    return str(name).lower()


def _in_dir(path: str, directory: str) -> bool:
    try:
        return os.path.commonpath([path, directory]) == directory
    except ValueError:
        return False


def loaded_module_files(root: str, modules: Optional[Iterable[Any]] = None) -> List[str]:
    """The files of loaded Python modules that lie under `root`, relative to it, sorted.

    Modules installed in the interpreter (sys.prefix, sys.base_prefix, site-packages) and flytekit
    itself never count, as in flytekit's loaded-modules detection. `modules` defaults to
    sys.modules' values. Paths are compared as flytekit compares them (its
    list_imported_modules_as_files), without resolving symlinks: a module file linked into the
    project from elsewhere counts (kiln bakes the link, and `kiln plan` says the module is not
    baked when its target is outside source_root), a module imported through a symlinked path to
    the project does not.
    """
    import site

    root = os.path.abspath(root)
    excluded = [sys.prefix, sys.base_prefix]
    try:
        excluded += site.getsitepackages() + [site.getusersitepackages()]
    except AttributeError:  # a virtualenv's old site module
        pass
    flytekit = sys.modules.get("flytekit")
    if flytekit is not None and getattr(flytekit, "__file__", None):
        excluded.append(os.path.dirname(flytekit.__file__))
    excluded = [os.path.abspath(d) for d in excluded if d]
    out = set()
    for mod in list(sys.modules.values()) if modules is None else modules:
        f = getattr(mod, "__file__", None)
        if not f:
            continue
        f = os.path.abspath(f)
        if any(_in_dir(f, d) for d in excluded) or not _in_dir(f, root):
            continue
        out.add(os.path.relpath(f, root).replace(os.sep, "/"))
    return sorted(out)


def to_kiln_spec(
    image_spec: Any,
    *,
    cwd: Optional[str] = None,
    image_id: bool = True,
    loaded_modules: Optional[Iterable[str]] = None,
) -> Dict[str, Any]:
    """The kiln spec (a JSON-ready dict) for a flytekit ImageSpec.

    `cwd` is where relative paths resolve (default: the working directory). `image_id` adds
    `_F_IMG_ID` (= image_spec.id). `loaded_modules` (relative to source_root) overrides the module
    files found in sys.modules for a loaded_modules-mode spec.
    """
    cwd = cwd or os.getcwd()
    out: Dict[str, Any] = {}
    for f in _PLAIN_FIELDS:
        v = getattr(image_spec, f, None)
        if v is not None:
            out[f] = list(v) if isinstance(v, tuple) else v
    if isinstance(out.get("env"), dict):
        out["env"] = dict(out["env"])

    if getattr(image_spec, "source_root", None) is not None:
        out["source_root"] = _abs(image_spec.source_root, cwd)
    mode = copy_mode_name(getattr(image_spec, "source_copy_mode", None))
    if mode is not None:
        out["source_copy_mode"] = mode
    if mode == "loaded_modules" and "source_root" in out:
        mods = list(loaded_modules) if loaded_modules is not None else loaded_module_files(out["source_root"])
        if mods:
            out["loaded_modules"] = mods

    if getattr(image_spec, "requirements", None) is not None:
        out["requirements"] = _abs(image_spec.requirements, cwd)
    if getattr(image_spec, "registry_config", None) is not None:
        out["registry_config"] = _abs(image_spec.registry_config, cwd)
    if getattr(image_spec, "pip_secret_mounts", None) is not None:
        out["pip_secret_mounts"] = [[_abs(src, cwd), dst] for src, dst in image_spec.pip_secret_mounts]

    base = getattr(image_spec, "base_image", None)
    if base is not None:
        if isinstance(base, str):
            out["base_image"] = base
        else:  # a nested ImageSpec
            out["base_image"] = to_kiln_spec(base, cwd=cwd, image_id=image_id)

    # builder_options (a builder's options) and builder_config (the builder images) are two
    # fields, as in flytekit: both pass through. kiln keeps them, uses neither, and leaves both out
    # of the tag.
    for f in ("builder_options", "builder_config"):
        v = getattr(image_spec, f, None)
        if v is not None:
            out[f] = dict(v) if isinstance(v, dict) else v

    if image_id:
        out[IMAGE_ID_FIELD] = image_spec.id
    return out


def strip_image_id(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The spec without `_F_IMG_ID`, nested bases included (for a kiln that does not know it)."""
    out = {k: v for k, v in spec.items() if k != IMAGE_ID_FIELD}
    if isinstance(out.get("base_image"), dict):
        out["base_image"] = strip_image_id(out["base_image"])
    return out
