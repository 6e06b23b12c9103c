"""to_kiln_spec: every ImageSpec field reaches kiln's spec, with flytekit's meaning."""

import json
import os
import sys
import types

import kiln_env
from flytekit.constants import CopyFileDetection
from flytekit.image_spec import ImageSpec

from flytekitplugins.kiln import loaded_module_files, to_kiln_spec
from flytekitplugins.kiln.spec import IMAGE_ID_FIELD, strip_image_id


class ToKilnSpecTest(kiln_env.TempDirTest):
    def full_spec(self):
        self.put("proj/wf/__init__.py")
        self.put("proj/requirements.txt", "six\n")
        return ImageSpec(
            name="Trainer",
            python_version="3.11",
            builder="kiln",
            source_root="proj",
            env={"MODE": "train"},
            registry="ghcr.io/acme",
            packages=["numpy==1.26.4"],
            conda_packages=["cudatoolkit"],
            conda_channels=["nvidia"],
            requirements="proj/requirements.txt",
            apt_packages=["git"],
            cuda="12.1",
            cudnn="8",
            base_image="python:3.11-slim",
            platform="linux/arm64",
            pip_index="https://pypi.example/simple",
            pip_extra_index_url=["https://extra.example/simple"],
            pip_secret_mounts=[("secrets/netrc", "/root/.netrc")],
            pip_extra_args="--no-cache-dir --pre",
            registry_config="auth/config.json",
            entrypoint=["python", "-m", "serve"],
            commands=["echo built"],
            tag_format="{spec_hash}-dev",
            source_copy_mode=CopyFileDetection.ALL,
            copy=["proj/requirements.txt"],
            python_exec="/usr/bin/python3",
            runtime_packages=["pandas"],
            builder_options={"cache": True},
            builder_config={"uv_image": "ghcr.io/astral-sh/uv:0.5"},
        )

    def test_every_field(self):
        spec = self.full_spec()
        out = to_kiln_spec(spec, cwd=self.tmp)
        expected = {
            "name": "trainer",  # flytekit lowercases the name
            "python_version": "3.11",
            "builder": "kiln",
            "source_root": os.path.join(self.tmp, "proj"),
            "env": {"MODE": "train"},
            "registry": "ghcr.io/acme",
            "packages": ["numpy==1.26.4"],
            "conda_packages": ["cudatoolkit"],
            "conda_channels": ["nvidia"],
            "requirements": os.path.join(self.tmp, "proj/requirements.txt"),
            "apt_packages": ["git"],
            "cuda": "12.1",
            "cudnn": "8",
            "base_image": "python:3.11-slim",
            "platform": "linux/arm64",
            "pip_index": "https://pypi.example/simple",
            "pip_extra_index_url": ["https://extra.example/simple"],
            "pip_secret_mounts": [[os.path.join(self.tmp, "secrets/netrc"), "/root/.netrc"]],
            "pip_extra_args": "--no-cache-dir --pre",
            "registry_config": os.path.join(self.tmp, "auth/config.json"),
            "entrypoint": ["python", "-m", "serve"],
            "commands": ["echo built"],
            "tag_format": "{spec_hash}-dev",
            "source_copy_mode": "all",
            "copy": ["proj/requirements.txt"],  # relative: kiln resolves it against its working directory
            "python_exec": "/usr/bin/python3",
            "builder_options": {"cache": True},
            "builder_config": {"uv_image": "ghcr.io/astral-sh/uv:0.5"},
            IMAGE_ID_FIELD: spec.id,
        }
        self.assertEqual(out, expected)
        # Every ImageSpec field is accounted for: mapped, or deliberately left out.
        left_out = {"runtime_packages"}  # flytekit installs them at task start
        fields = {f for f in ImageSpec.__dataclass_fields__}
        self.assertEqual(fields - set(out) - left_out, set())
        json.dumps(out)  # JSON-ready

    def test_nested_base_spec_and_image_ids(self):
        base = ImageSpec(name="base", apt_packages=["curl"], env={"A": "1"})
        spec = ImageSpec(name="app", base_image=base, packages=["six"])
        out = to_kiln_spec(spec, cwd=self.tmp)
        self.assertEqual(out["base_image"]["name"], "base")
        self.assertEqual(out["base_image"]["apt_packages"], ["curl"])
        self.assertEqual(out["base_image"][IMAGE_ID_FIELD], base.id)
        self.assertEqual(out[IMAGE_ID_FIELD], spec.id)
        self.assertNotEqual(base.id, spec.id)
        stripped = strip_image_id(out)
        self.assertNotIn(IMAGE_ID_FIELD, stripped)
        self.assertNotIn(IMAGE_ID_FIELD, stripped["base_image"])
        self.assertNotIn(IMAGE_ID_FIELD, to_kiln_spec(spec, cwd=self.tmp, image_id=False))

    def test_copy_modes(self):
        self.put("proj/a.py")
        for mode, name in (
            (CopyFileDetection.LOADED_MODULES, "loaded_modules"),
            (CopyFileDetection.ALL, "all"),
            (CopyFileDetection.NO_COPY, "no_copy"),
        ):
            spec = ImageSpec(name="m", source_root=os.path.join(self.tmp, "proj"), source_copy_mode=mode)
            self.assertEqual(to_kiln_spec(spec)["source_copy_mode"], name)
        # flytekit defaults the mode to LOADED_MODULES when source_root is set.
        self.assertEqual(to_kiln_spec(ImageSpec(name="m", source_root="proj"), cwd=self.tmp)["source_copy_mode"], "loaded_modules")
        self.assertNotIn("source_copy_mode", to_kiln_spec(ImageSpec(name="m")))

    def test_loaded_modules_lists_the_python_files_loaded_from_source_root(self):
        self.put("proj/pkg/__init__.py")
        self.put("proj/pkg/used.py", "X = 1\n")
        self.put("proj/pkg/unused.py", "Y = 2\n")
        root = os.path.join(self.tmp, "proj")
        sys.path.insert(0, root)
        self.addCleanup(sys.path.remove, root)
        self.addCleanup(lambda: [sys.modules.pop(m, None) for m in ("pkg", "pkg.used")])
        import importlib

        importlib.import_module("pkg.used")
        self.assertEqual(loaded_module_files(root), ["pkg/__init__.py", "pkg/used.py"])
        spec = ImageSpec(name="lm", source_root=root, source_copy_mode=CopyFileDetection.LOADED_MODULES)
        self.assertEqual(to_kiln_spec(spec)["loaded_modules"], ["pkg/__init__.py", "pkg/used.py"])
        self.assertEqual(to_kiln_spec(spec, loaded_modules=["pkg/unused.py"])["loaded_modules"], ["pkg/unused.py"])
        # A module of the interpreter's own (the standard library) never counts.
        self.assertEqual(loaded_module_files(os.path.dirname(os.__file__)), [])
        fake = types.SimpleNamespace(__file__=os.path.join(root, "pkg", "unused.py"))
        self.assertEqual(loaded_module_files(root, [fake]), ["pkg/unused.py"])
        # Paths compare as flytekit compares them, symlinks unresolved: a module linked into the
        # project from outside counts; one imported through a symlinked path to the project does not.
        self.put("common/shared.py", "V = 1\n")
        os.symlink(os.path.join("..", "common", "shared.py"), os.path.join(root, "shared.py"))
        os.symlink(root, os.path.join(self.tmp, "proj_link"))
        linked = types.SimpleNamespace(__file__=os.path.join(root, "shared.py"))
        via_link = types.SimpleNamespace(__file__=os.path.join(self.tmp, "proj_link", "pkg", "used.py"))
        self.assertEqual(loaded_module_files(root, [linked, via_link]), ["shared.py"])

    def test_kiln_accepts_the_converted_spec(self):
        kiln_env.require_kiln(self)
        self.put("proj/wf/__init__.py")
        self.put("proj/wf/hello.py", "def hello(): pass\n")
        self.put("proj/requirements.txt", "six\n")
        self.put("proj/data/config.yaml", "a: 1\n")
        spec = ImageSpec(
            name="accept",
            source_root=os.path.join(self.tmp, "proj"),
            source_copy_mode=CopyFileDetection.ALL,
            env={"K": "V"},
            packages=["six"],
            requirements=os.path.join(self.tmp, "proj/requirements.txt"),
            apt_packages=["git"],
            pip_extra_args="--no-cache-dir",
            entrypoint=["python"],
            commands=["echo ok"],
            tag_format="{spec_hash}-dev",
            copy=["proj/data"],
            builder_options={"x": 1},
            builder_config={"uv_image": "u"},  # a field of its own: kiln takes both
        )
        out = to_kiln_spec(spec, cwd=self.tmp, image_id=False)
        self.assertEqual((out["builder_options"], out["builder_config"]), ({"x": 1}, {"uv_image": "u"}))
        r = self.kiln("tag", "-", "--json", stdin=json.dumps(out), cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stderr)
        tag = json.loads(r.stdout)
        self.assertEqual(tag["repository"], "accept")
        self.assertTrue(tag["tag"].endswith("-dev"))
        # kiln refuses the fields it does not build, with exit 2 and the field named.
        bad = to_kiln_spec(ImageSpec(name="bad", conda_packages=["x"]), image_id=False)
        r = self.kiln("tag", "-", stdin=json.dumps(bad))
        self.assertEqual(r.returncode, 2)
        self.assertIn("conda_packages", r.stderr)
