"""The fast-register plan from flytekit tasks: the plan input, `kiln plan`, and the container args."""

import importlib
import os
import sys
import types
import unittest

import kiln_env
from flytekit.constants import CopyFileDetection
from flytekit.image_spec import ImageSpec

from flytekitplugins.kiln import (
    Kiln,
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

# The container args flytekit writes for a Python task (PythonAutoContainerTask.get_default_command),
# and the prefix its translator adds under fast register (get_command_prefix_for_fast_execute).
EXECUTE = [
    "pyflyte-execute", "--inputs", "{{.input}}", "--output-prefix", "{{.outputPrefix}}",
    "--raw-output-data-prefix", "{{.rawOutputDataPrefix}}", "--checkpoint-path", "{{.checkpointOutputPrefix}}",
    "--prev-checkpoint", "{{.prevCheckpointPrefix}}", "--resolver",
    "flytekit.core.python_auto_container.default_task_resolver", "--", "task-module", "wf.hello", "task-name", "greet",
]
PREFIX = ["pyflyte-fast-execute", "--additional-distribution", "s3://bucket/fast/abc.tar.gz", "--dest-dir", "/root", "--"]


class ArgsTest(unittest.TestCase):
    def test_strip_prefix(self):
        self.assertTrue(has_fast_execute_prefix(PREFIX + EXECUTE))
        self.assertFalse(has_fast_execute_prefix(EXECUTE))
        self.assertEqual(strip_fast_execute_prefix(PREFIX + EXECUTE), EXECUTE)
        self.assertEqual(strip_fast_execute_prefix(EXECUTE), EXECUTE)
        # The template placeholders flytekit writes when it has no settings.
        templ = ["pyflyte-fast-execute", "--additional-distribution", "{{ .remote_package_path }}",
                 "--dest-dir", "{{ .dest_dir }}", "--"]
        self.assertEqual(strip_fast_execute_prefix(templ + EXECUTE), EXECUTE)
        # An option value that is "--" does not end the prefix early.
        odd = ["pyflyte-fast-execute", "--dest-dir", "--", "--"]
        self.assertEqual(strip_fast_execute_prefix(odd + EXECUTE), EXECUTE)
        # No closing "--": not a prefix, left alone.
        self.assertEqual(strip_fast_execute_prefix(["pyflyte-fast-execute", "x"]), ["pyflyte-fast-execute", "x"])
        args = PREFIX + EXECUTE
        strip_fast_execute_prefix(args)
        self.assertEqual(args, PREFIX + EXECUTE)  # pure: the input list is not changed

    def test_apply(self):
        self.assertEqual(apply_to_args(PREFIX + EXECUTE, {"fast_register": False, "reason": "source_baked"}), EXECUTE)
        self.assertEqual(apply_to_args(PREFIX + EXECUTE, {"fast_register": True}), PREFIX + EXECUTE)
        self.assertEqual(apply_to_args(PREFIX + EXECUTE, {}), PREFIX + EXECUTE)  # no decision: unchanged
        raw = ["python", "-c", "print(1)"]
        plan = {"tasks": [{"name": "a", "fast_register": False}, {"name": "b", "fast_register": True},
                          {"name": "r", "fast_register": False, "reason": "raw_container"}]}
        out = apply_plan(plan, {"a": PREFIX + EXECUTE, "b": PREFIX + EXECUTE, "r": raw, "other": PREFIX + EXECUTE})
        self.assertEqual(out, {"a": EXECUTE, "b": PREFIX + EXECUTE, "r": raw, "other": PREFIX + EXECUTE})


class ProjectTest(kiln_env.TempDirTest):
    """proj/ is pyflyte's project root (no __init__.py); wf/ a package with two task modules."""

    def setUp(self):
        super().setUp()
        self.proj = os.path.join(self.tmp, "proj")
        self.put("proj/wf/__init__.py")
        self.put("proj/wf/hello.py", "def greet():\n    return 'hi'\n")
        self.put("proj/wf/train.py", "def train():\n    return 1\n")
        self.put("proj/README.md", "x\n")

    def test_find_project_root(self):
        self.put("proj/wf/sub/__init__.py")
        self.put("proj/wf/sub/deep.py")
        self.assertEqual(find_project_root(os.path.join(self.proj, "wf/hello.py")), self.proj)
        self.assertEqual(find_project_root(os.path.join(self.proj, "wf/sub/deep.py")), self.proj)
        self.assertEqual(find_project_root(os.path.join(self.proj, "README.md")), self.proj)

    def test_task_ref_reads_flytekit_like_tasks(self):
        sys.path.insert(0, self.proj)
        self.addCleanup(sys.path.remove, self.proj)
        self.addCleanup(lambda: [sys.modules.pop(m, None) for m in ("wf", "wf.hello")])
        hello = importlib.import_module("wf.hello")
        image = ImageSpec(name="img")
        PythonFunctionTask = type("PythonFunctionTask", (), {})
        ContainerTask = type("ContainerTask", (), {})
        t = PythonFunctionTask()
        t.name, t.task_function, t.container_image = "wf.hello.greet", hello.greet, image
        ref = task_ref(t)
        self.assertEqual(ref, TaskRef("wf.hello.greet", image, [os.path.join(self.proj, "wf/hello.py")], "python"))
        c = ContainerTask()
        c.name, c.container_image = "raw", "busybox"
        self.assertEqual(task_ref(c), TaskRef("raw", "busybox", [], "raw_container"))
        ArrayNodeMapTask = type("ArrayNodeMapTask", (), {})
        m = ArrayNodeMapTask()
        m.name, m.python_function_task = "map_greet", t
        self.assertEqual(task_ref(m, default_image="default:1"), TaskRef("map_greet", image, ref.modules, "map"))
        PythonInstanceTask = type("PythonInstanceTask", (), {})
        inst = PythonInstanceTask()
        inst.name, inst.instantiated_in, inst.container_image = "sql", "wf.hello", "img:1"
        self.assertEqual(task_ref(inst), TaskRef("sql", "img:1", ref.modules, "python"))
        bare = PythonFunctionTask()
        bare.name, bare.task_function, bare.container_image = "b", hello.greet, None
        self.assertEqual(task_ref(bare, default_image="default:1").image, "default:1")
        # The plan input sees the loaded modules under the project root.
        p = plan_input([ref], copy="auto")
        self.assertEqual(p["project_root"], self.proj)
        self.assertEqual(p["loaded_modules"], ["wf/__init__.py", "wf/hello.py"])

    def test_plan_input(self):
        baked = ImageSpec(name="baked", source_root=self.proj, source_copy_mode=CopyFileDetection.ALL)
        tasks = [
            TaskRef("wf.hello.greet", baked, [os.path.join(self.proj, "wf/hello.py")]),
            TaskRef("wf.train.train", "ghcr.io/flyteorg/flytekit:py3.11-latest", ["wf/train.py"]),
            TaskRef("raw", None, [], "raw_container"),
        ]
        p = plan_input(tasks, copy="all", loaded_modules=["wf/hello.py"], dest_dir="/root", default_image="busybox:1")
        key = "imagespec-" + baked.id
        self.assertEqual(p["copy"], "all")
        self.assertEqual(p["project_root"], self.proj)  # pyflyte's, found from the first module
        self.assertEqual(p["dest_dir"], "/root")
        self.assertEqual(p["loaded_modules"], ["wf/hello.py"])
        self.assertEqual(set(p["images"]), {key, "ghcr.io/flyteorg/flytekit:py3.11-latest", "busybox:1"})
        self.assertEqual(p["images"][key]["inline"]["source_root"], self.proj)
        self.assertNotIn("_F_IMG_ID", p["images"][key]["inline"])
        self.assertEqual(
            p["tasks"],
            [
                {"name": "wf.hello.greet", "kind": "python", "image": key, "modules": ["wf/hello.py"]},
                {"name": "wf.train.train", "kind": "python", "image": "ghcr.io/flyteorg/flytekit:py3.11-latest",
                 "modules": ["wf/train.py"]},
                {"name": "raw", "kind": "raw_container", "image": "busybox:1", "modules": []},
            ],
        )
        with self.assertRaises(ValueError):
            plan_input([TaskRef("x", "img", [os.path.join(self.tmp, "elsewhere.py")])], project_root=self.proj)
        with self.assertRaises(ValueError):
            plan_input([TaskRef("x", None, ["wf/hello.py"])], project_root=self.proj)

    def test_plan_input_for_settings(self):
        # The attributes flytekit's SerializationSettings, FastSerializationSettings and ImageConfig have.
        ns = types.SimpleNamespace
        settings = ns(
            source_root=self.proj,
            fast_serialization_settings=ns(enabled=True, destination_dir="/root/code", distribution_location="s3://b/x"),
            image_config=ns(default_image=ns(full="cr.flyte.org/flyteorg/flytekit:py3.11-1.14.0")),
        )
        p = plan_input_for_settings([TaskRef("t", None, ["wf/hello.py"])], settings, copy="all", loaded_modules=[])
        self.assertEqual(p["project_root"], self.proj)
        self.assertEqual(p["dest_dir"], "/root/code")
        self.assertEqual(p["copy"], "all")
        self.assertEqual(p["tasks"][0]["image"], "cr.flyte.org/flyteorg/flytekit:py3.11-1.14.0")
        # pyflyte's default destination "." is the working directory: left to kiln's default.
        settings.fast_serialization_settings.destination_dir = "."
        self.assertNotIn("dest_dir", plan_input_for_settings([TaskRef("t", None, ["wf/hello.py"])], settings,
                                                             loaded_modules=[]))

    def kiln(self):
        kiln_env.require_kiln(self)
        return Kiln(common_args=["--cache", self.cache])

    def test_kiln_plan_decides_and_args_follow(self):
        kiln = self.kiln()
        at_root = ImageSpec(name="at-root", source_root=self.proj, source_copy_mode=CopyFileDetection.ALL)
        # source_root a subfolder of the project root: wf/hello.py lands at /root/hello.py, but the
        # task imports wf.hello, i.e. /root/wf/hello.py.
        subfolder = ImageSpec(name="subfolder", source_root=os.path.join(self.proj, "wf"),
                              source_copy_mode=CopyFileDetection.ALL)
        tasks = [
            TaskRef("wf.hello.greet", at_root, ["wf/hello.py"]),
            TaskRef("wf.train.train", subfolder, ["wf/train.py"]),
            TaskRef("plain", "ghcr.io/flyteorg/flytekit:py3.11-latest", ["wf/train.py"]),
            TaskRef("unknown", at_root, []),
        ]
        plan = run_plan(plan_input(tasks, project_root=self.proj, copy="auto", loaded_modules=[]), kiln=kiln)
        decisions = {t["name"]: (t["fast_register"], t["reason"]) for t in plan["tasks"]}
        self.assertEqual(
            decisions,
            {
                "wf.hello.greet": (False, "source_baked"),
                "wf.train.train": (True, "module_path_mismatch"),
                "plain": (True, "plain_image"),
                "unknown": (True, "modules_unknown"),
            },
        )
        mismatch = [w for w in plan["warnings"] if w["code"] == "module_path_mismatch"]
        self.assertEqual(mismatch[0]["locations"],
                         [{"module": "wf/train.py", "baked_at": "/root/train.py", "expected_at": "/root/wf/train.py"}])
        self.assertTrue(bundle_needed(plan))
        args = {name: PREFIX + EXECUTE for name in decisions}
        out = apply_plan(plan, args)
        self.assertEqual(out["wf.hello.greet"], EXECUTE)
        for name in ("wf.train.train", "plain", "unknown"):
            self.assertEqual(out[name], PREFIX + EXECUTE)

        # The image kiln plans is the one the builder names (same tag).
        r = kiln.tag(__import__("flytekitplugins.kiln.spec", fromlist=["x"]).to_kiln_spec(at_root, image_id=False))
        self.assertEqual(r.code, 0, r.stderr)
        self.assertEqual(plan["images"]["imagespec-" + at_root.id]["image"], r.json["image"])

    def test_copy_none_errors_and_bad_input(self):
        kiln = self.kiln()
        subfolder = ImageSpec(name="subfolder", source_root=os.path.join(self.proj, "wf"),
                              source_copy_mode=CopyFileDetection.ALL)
        plan = run_plan(plan_input([TaskRef("t", subfolder, ["wf/hello.py"])], project_root=self.proj, copy="none",
                                   loaded_modules=[]), kiln=kiln)
        self.assertEqual([e["code"] for e in plan["errors"]], ["code_unavailable"])
        self.assertFalse(bundle_needed(plan))
        from flytekitplugins.kiln import KilnSpecError

        with self.assertRaises(KilnSpecError) as cm:
            run_plan({"copy": "sometimes"}, kiln=kiln)
        self.assertIn("copy", str(cm.exception))
