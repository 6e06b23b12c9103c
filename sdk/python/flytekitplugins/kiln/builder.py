"""The ImageSpecBuilder named "kiln", and kiln's exit codes as flytekit exceptions.

Configuration (constructor arguments, else environment variables):

- ``kiln``: a ``Kiln`` (binary ``$KILN`` or ``kiln`` on PATH; ``KILN_FLYTE_ARGS`` are added to
  every call, e.g. ``--insecure-allow-http localhost:5000 --cache DIR``);
- ``outputs``: kiln ``-o`` targets for every build (``KILN_FLYTE_OUTPUTS``, space-separated), e.g.
  ``oci:/srv/images``;
- push: as flytekit's default builder, a spec with ``registry`` is pushed unless
  ``FLYTE_PUSH_IMAGE_SPEC`` is false; ``ImageSpec.force_push()`` passes ``--force``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

from flytekit.exceptions.system import FlyteNonRecoverableSystemException
from flytekit.exceptions.user import (
    FlyteAuthenticationException,
    FlyteEntityNotExistException,
    FlyteRecoverableException,
    FlyteUserException,
    FlyteValidationException,
)
from flytekit.image_spec.image_spec import ImageBuildEngine, ImageSpec, ImageSpecBuilder

from . import cli
from .cli import Kiln, KilnRun
from .spec import IMAGE_ID_FIELD, strip_image_id, to_kiln_spec

BUILDER_TYPE = "kiln"
# flytekit picks the registered builder with the highest priority for an ImageSpec without
# `builder`: its own docker builder has 1 and envd 5. kiln sits between them.
BUILDER_PRIORITY = 2


class KilnError(FlyteUserException):
    """A kiln failure. `failure` is kiln's --json failure object (exit_code, message, failed_step, ...)."""

    _ERROR_CODE = "USER:KilnError"

    def __init__(self, message: str, failure: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.failure = failure or {}
        self.exit_code = self.failure.get("exit_code")
        self.failed_step = self.failure.get("failed_step")
        self.log_path = self.failure.get("log_path")


class KilnSpecError(KilnError, FlyteValidationException):
    """Exit 2: the spec (or a flag, or a file it names, or a project file kiln may not read) is wrong; fix it."""

    _ERROR_CODE = "USER:KilnSpecError"


class KilnBuildError(KilnError):
    """Exit 3: a build step failed (a RUN command, or a layer whose files changed while it was written)."""

    _ERROR_CODE = "USER:KilnBuildError"


class KilnAuthenticationError(KilnError, FlyteAuthenticationException):
    """Exit 4: no credentials, or the registry rejected them."""

    _ERROR_CODE = "USER:KilnAuthenticationError"


class KilnNotFoundError(KilnError, FlyteEntityNotExistException):
    """Exit 5: a base image, tag, repository or platform does not exist."""

    _ERROR_CODE = "USER:KilnNotFound"


class KilnTransientError(KilnError, FlyteRecoverableException):
    """Exit 6: the registry or the network failed in a way a retry may fix."""

    _ERROR_CODE = "USER:KilnTransientError"


class KilnPermissionError(KilnAuthenticationError):
    """Exit 7: authenticated, but not allowed (e.g. a pull-only token pushing)."""

    _ERROR_CODE = "USER:KilnPermissionDenied"


class KilnRegistryError(KilnError):
    """Exit 8: the registry sent content that does not match its digest, or broke the protocol."""

    _ERROR_CODE = "USER:KilnRegistryError"


class KilnInterruptedError(KilnError):
    """Exit 130 or 143: kiln was stopped by SIGINT or SIGTERM (error_kind "interrupted"); nothing it had not committed is kept."""

    _ERROR_CODE = "USER:KilnInterrupted"


class KilnInternalError(KilnError, FlyteNonRecoverableSystemException):
    """Exit 1 (or any code kiln does not document): a kiln bug or an unexpected system failure."""

    _ERROR_CODE = "USER:KilnInternalError"


_BY_CODE = {
    cli.EXIT_INPUT: KilnSpecError,
    cli.EXIT_STEP: KilnBuildError,
    cli.EXIT_AUTH: KilnAuthenticationError,
    cli.EXIT_NOT_FOUND: KilnNotFoundError,
    cli.EXIT_TRANSIENT: KilnTransientError,
    cli.EXIT_PERMISSION: KilnPermissionError,
    cli.EXIT_REGISTRY: KilnRegistryError,
    cli.EXIT_SIGINT: KilnInterruptedError,
    cli.EXIT_SIGTERM: KilnInterruptedError,
}


def error_for_failure(failure: Dict[str, Any], what: str = "kiln") -> KilnError:
    """The exception for kiln's failure object (its exit_code picks the class)."""
    code = failure.get("exit_code")
    cls = _BY_CODE.get(code, KilnInternalError)
    message = "%s failed (exit %s): %s" % (what, code, failure.get("message", ""))
    if failure.get("failed_step"):
        message += " [step: %s]" % failure["failed_step"]
    if failure.get("log_path"):
        message += " (log: %s)" % failure["log_path"]
    return cls(message, failure)


def _layout_without_tag(outputs: Sequence[str]) -> Optional[str]:
    """The directory of the first `oci:DIR` output that names no tag (the image's tag goes there)."""
    for o in outputs:
        if not o.startswith("oci:"):
            continue
        body = o[len("oci:") :]
        if ":" in body and "/" not in body.rsplit(":", 1)[1]:
            continue  # oci:DIR:TAG: a tag of the user's, not the content tag
        return body
    return None


def _flag(name: str, default: bool) -> bool:
    v = os.environ.get(name)
    if v is None:
        return default
    return v.strip().lower() in ("1", "true", "yes", "on")


class KilnImageSpecBuilder(ImageSpecBuilder):
    """flytekit's ImageSpecBuilder backed by the kiln binary (no Docker daemon)."""

    builder_type = BUILDER_TYPE

    def __init__(self, kiln: Optional[Kiln] = None, outputs: Optional[Sequence[str]] = None):
        self._kiln = kiln
        self._outputs = list(outputs) if outputs is not None else None
        self._local_bases: Dict[str, ImageSpec] = {}  # kiln's name → the spec, for images with no registry
        self.last_result: Optional[Dict[str, Any]] = None  # the last `kiln build --json` result
        self._warned_image_id = False

    @property
    def kiln(self) -> Kiln:
        if self._kiln is None:
            self._kiln = Kiln(common_args=cli.split_args(os.environ.get("KILN_FLYTE_ARGS")))
        return self._kiln

    @property
    def outputs(self):
        if self._outputs is not None:
            return self._outputs
        return cli.split_args(os.environ.get("KILN_FLYTE_OUTPUTS"))

    # ---- the spec kiln gets ----

    def kiln_spec(self, image_spec: ImageSpec) -> Dict[str, Any]:
        """to_kiln_spec, without _F_IMG_ID when this kiln does not know the field (a warning).

        ImageBuildEngine builds a nested base ImageSpec first and hands this builder the spec with
        `base_image` replaced by the base's name. When that base went to no registry (it is only in
        kiln's store or a layout), the name cannot be pulled, so the base goes to kiln as the nested
        spec it came from (kiln takes it from its cache)."""
        spec = to_kiln_spec(image_spec)
        base = getattr(image_spec, "base_image", None)
        if isinstance(base, str) and base in self._local_bases:
            spec["base_image"] = to_kiln_spec(self._local_bases[base])
        if not self.kiln.supports_field(IMAGE_ID_FIELD):
            if not self._warned_image_id:
                self._warned_image_id = True
                cli.eprint(
                    "flytekitplugins-kiln: warning: this kiln does not accept %s; ImageSpec.is_container() "
                    "will be False in its images (upgrade kiln)" % IMAGE_ID_FIELD
                )
            spec = strip_image_id(spec)
        return spec

    def image_ref(self, image_spec: ImageSpec) -> str:
        """The [registry/]name:tag kiln builds for this spec (kiln tag; nothing built)."""
        r = self.kiln.tag(self.kiln_spec(image_spec))
        if r.code != 0 or not isinstance(r.json, dict) or "image" not in r.json:
            raise error_for_failure(r.failure(), "kiln tag")
        return r.json["image"]

    @staticmethod
    def _flytekit_name(image_spec: ImageSpec) -> str:
        """The name ImageBuildEngine keys its map of real names with (flytekit's own tag)."""
        name = "%s:%s" % (image_spec.name, image_spec.tag)
        return "%s/%s" % (image_spec.registry, name) if image_spec.registry else name

    def _record(self, image_spec: ImageSpec, ref: str) -> None:
        # ImageSpec.image_name() returns this from now on: tasks reference kiln's tag, which is
        # what exists, whether this builder built it or found it.
        ImageBuildEngine._IMAGE_NAME_TO_REAL_NAME[self._flytekit_name(image_spec)] = ref
        if not image_spec.registry:
            self._local_bases[ref] = image_spec

    # ---- ImageSpecBuilder ----

    def should_build(self, image_spec: ImageSpec) -> bool:
        """True unless kiln's tag already exists where the image goes (a registry, else the first
        oci: output). `force_push()` always builds. When existence cannot be checked, build:
        `kiln build` checks again itself (and skips an existing tag), unless FLYTE_IMG_FAST_FAIL."""
        if getattr(image_spec, "_is_force_push", False):
            return True
        ref = self.image_ref(image_spec)
        where = None
        if image_spec.registry:
            where = ref
        else:
            layout = _layout_without_tag(self.outputs)
            if layout is not None:
                where = "oci:%s:%s" % (layout, ref.rsplit(":", 1)[1])
        if where is None:
            return True  # built into kiln's cache only: a rebuild of unchanged inputs takes milliseconds
        r = self.kiln.inspect(where)
        if r.code == 0:
            self._record(image_spec, ref)
            cli.eprint("flytekitplugins-kiln: image %s found. Skip building." % ref)
            return False
        if r.code == cli.EXIT_NOT_FOUND:
            return True
        if getattr(image_spec, "_fast_fail", False):
            raise RuntimeError(
                "kiln could not check whether %s exists (%s); FLYTE_IMG_FAST_FAIL is set"
                % (ref, r.failure().get("message"))
            )
        return True

    def build_image(self, image_spec: ImageSpec) -> Optional[str]:
        """`kiln build - --json`; returns [registry/]name:tag (kiln's content-hash tag)."""
        spec = self.kiln_spec(image_spec)
        push = None
        if image_spec.registry:
            push = _flag("FLYTE_PUSH_IMAGE_SPEC", True)
        r = self.kiln.build(
            spec, outputs=self.outputs, push=push, force=bool(getattr(image_spec, "_is_force_push", False))
        )
        if r.code != 0 or not isinstance(r.json, dict) or r.json.get("status") == "failed":
            raise error_for_failure(r.failure(), "kiln build of %s" % image_spec.name)
        self.last_result = r.json
        ref = r.json["image"]
        self._record(image_spec, ref)
        return ref


def register(builder: Optional[KilnImageSpecBuilder] = None, priority: int = BUILDER_PRIORITY) -> KilnImageSpecBuilder:
    """Registers `builder` (a new KilnImageSpecBuilder by default) as "kiln" with ImageBuildEngine."""
    builder = builder or KilnImageSpecBuilder()
    ImageBuildEngine.register(BUILDER_TYPE, builder, priority=priority)
    return builder
