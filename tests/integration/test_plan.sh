#!/usr/bin/env bash
# Integration tests for `kiln plan` and `kiln build --plan`, driving the real binary:
#   - exit codes: 0 for a plan without errors, 2 for a plan with errors (JSON still on stdout) and
#     for malformed input (a clear message on stderr, nothing on stdout);
#   - stdout holds only JSON, the readable summary goes to stderr;
#   - inputs validate against docs/schemas/plan-input.schema.json, outputs against
#     docs/schemas/plan-output.schema.json (python3-jsonschema);
#   - the output is byte-identical across runs, from stdin, and from a copy of the project;
#   - the import path: a source_root that is a subfolder of the project root is not baked
#     (module_path_mismatch; code_unavailable under copy none), a task with no modules is never
#     baked (modules_unknown), and the project root at source_root is;
#   - with every task baked, no file of the project outside the baked set is touched, even with
#     copy all (a FIFO, and an unreadable directory for an unprivileged user);
#   - `kiln build --plan PLAN -o oci:DIR` builds the spec images and prints {status, plan, builds}.
# ctest runs it with KILN=<binary> and KILN_SOURCE_DIR=<repository>.
set -euo pipefail

: "${KILN:?set KILN to the kiln binary}"
: "${KILN_SOURCE_DIR:?set KILN_SOURCE_DIR to the repository}"
KILN=$(realpath "$KILN")
SCHEMAS="$KILN_SOURCE_DIR/docs/schemas"

T=$(mktemp -d "${TMPDIR:-/tmp}/kiln-plan-it.XXXXXX")
cleanup() {
  chmod -R u+rwX "$T" 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
if [[ -n ${KILN_TEST_KEEP:-} ]]; then trap 'echo "kept $T" >&2' EXIT; fi  # for debugging
export KILN_CACHE="$T/cache"
unset SOURCE_DATE_EPOCH

failures=0
pass() { echo "ok   - $*"; }
fail() {
  echo "FAIL - $*" >&2
  failures=$((failures + 1))
}
check() {  # check DESCRIPTION COMMAND...: passes when the command succeeds
  local what=$1
  shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

# A python with jsonschema (Debian's python3-jsonschema, installed by scripts/install-deps.sh --test).
PY=""
for p in /usr/bin/python3 python3; do
  if command -v "$p" >/dev/null && "$p" -c 'import jsonschema' 2>/dev/null; then
    PY=$p
    break
  fi
done
if [[ -z $PY ]]; then
  echo "test_plan: no python3 with jsonschema (install python3-jsonschema: scripts/install-deps.sh --test)" >&2
  exit 1
fi

# Schema checks are queued and run in one python process at the end (importing jsonschema costs
# ~0.3 s): schema_check DESCRIPTION valid|invalid input|output FILE [DEF]. FILE is copied at once;
# DEF validates against the output schema's $defs/DEF instead of its root.
mkdir "$T/schema-queue"
schema_n=0
schema_check() {
  schema_n=$((schema_n + 1))
  cp "$4" "$T/schema-queue/$schema_n.json"
  printf '%s\t%s\t%s\t%s\t%s\n' "$2" "$3" "$T/schema-queue/$schema_n.json" "${5:-}" "$1" >>"$T/schema-queue/list"
}
run_schema_checks() {
  "$PY" - "$SCHEMAS" "$T/schema-queue/list" <<'EOF'
import json, sys
import jsonschema
V = jsonschema.Draft202012Validator
schemas = {k: json.load(open("%s/plan-%s.schema.json" % (sys.argv[1], k))) for k in ("input", "output")}
for s in schemas.values():
    V.check_schema(s)
failed = 0
for line in open(sys.argv[2]):
    expect, which, path, sub, desc = line.rstrip("\n").split("\t")
    schema = schemas[which]
    if sub:
        schema = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/" + sub}
    errors = list(V(schema).iter_errors(json.load(open(path))))
    if (expect == "valid") == (not errors):
        print("ok   - " + desc)
    else:
        failed += 1
        print("FAIL - " + desc, file=sys.stderr)
        for e in errors[:5]:
            print("  %s: %s" % ("/".join(map(str, e.absolute_path)) or "(root)", e.message), file=sys.stderr)
sys.exit(min(failed, 100))
EOF
}

# jq-like assertions: pyexpr FILE EXPR -> true when EXPR (python, `d` = the JSON) holds.
pyexpr() {
  "$PY" - "$1" "$2" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
ok = eval("(" + sys.argv[2] + "\n)")
if not ok:
    print("  expression false: %s" % sys.argv[2], file=sys.stderr)
sys.exit(0 if ok else 1)
EOF
}

# run_kiln NAME ARGS...: runs kiln with stdout in $T/NAME.out, stderr in $T/NAME.err, exit code in $RC.
run_kiln() {
  local name=$1
  shift
  RC=0
  timeout 60 "$KILN" "$@" >"$T/$name.out" 2>"$T/$name.err" || RC=$?
}

# ---------------------------------------------------------------------------------------------
# The project: src/ is the baking image's source_root (copy mode all); other/ lies outside it.
P="$T/proj"
mkdir -p "$P/src/wf" "$P/other" "$P/specs"
: >"$P/src/wf/__init__.py"
echo 'def baked(): pass' >"$P/src/wf/baked.py"
echo 'def mapped(x): return x' >"$P/src/wf/mapped.py"
echo 'def plain(): pass' >"$P/other/plain.py"
# src/ lands at /root/src and the working directory is /root, so src/wf/baked.py is where the
# task (task-module src.wf.baked, relative to the project root proj/) imports it from.
cat >"$P/specs/baked.json" <<'EOF'
{"name": "baked", "source_root": "../src", "source_copy_mode": "all", "tag_format": "{spec_hash}",
 "source_dest": "/root/src", "workdir": "/root"}
EOF

# write_plan FILE COPY [EXTRA_TASKS_JSON]: the mixed workflow (baked python task, plain-image python
# task, raw container on a spec with source_root and on one without, a map task).
write_plan() {
  cat >"$1" <<EOF
{
  "copy": "$2",
  "images": {
    "baked": {"spec": "specs/baked.json"},
    "bare": {"inline": {"name": "bare", "env": {"A": "1"}}},
    "plain": "python:3.12-slim"
  },
  "tasks": [
    {"name": "wf.baked", "kind": "python", "image": "baked", "modules": ["src/wf/baked.py"]},
    {"name": "wf.plain", "kind": "python", "image": "plain", "modules": ["other/plain.py"]},
    {"name": "wf.raw_src", "kind": "raw_container", "image": "baked"},
    {"name": "wf.raw_bare", "kind": "raw_container", "image": "bare"},
    {"name": "wf.map", "kind": "map", "image": "baked", "modules": ["src/wf/mapped.py"]}${3:+,
    $3}
  ]
}
EOF
}
write_plan "$P/plan-auto.json" auto
write_plan "$P/plan-none.json" none

# ---------------------------------------------------------------------------------------------
# A plan without errors: exit 0, JSON only on stdout, the summary on stderr.
run_kiln auto plan "$P/plan-auto.json"
check "plan without errors exits 0 (got $RC)" test "$RC" -eq 0
check "stdout is one JSON document" pyexpr "$T/auto.out" 'isinstance(d, dict)'
check "stdout has no summary text" bash -c "! grep -q 'plan (copy' '$T/auto.out'"
check "the summary is on stderr" grep -q '^plan (copy auto):$' "$T/auto.err"
check "summary line for the plain-image task" grep -q '^  fast-register wf.plain on python:3.12-slim (plain_image)$' "$T/auto.err"
schema_check "input validates against plan-input.schema.json" valid input "$P/plan-auto.json"
schema_check "output validates against plan-output.schema.json" valid output "$T/auto.out"
check "copy auto: exact decisions" pyexpr "$T/auto.out" \
  '[(t["name"], t["fast_register"], t["reason"]) for t in d["tasks"]] == [
     ("wf.baked", False, "source_baked"), ("wf.plain", True, "plain_image"),
     ("wf.raw_src", False, "raw_container"), ("wf.raw_bare", False, "raw_container"),
     ("wf.map", False, "source_baked")]'
check "copy auto: one raw_container_without_source warning, no error" pyexpr "$T/auto.out" \
  '[(w["code"], w["task"]) for w in d["warnings"]] == [("raw_container_without_source", "wf.raw_bare")] and d["errors"] == []'
check "copy auto: bundle of the python-like tasks' modules" pyexpr "$T/auto.out" \
  'd["bundle"] == {"needed": True, "file_count": 3, "files": ["other/plain.py", "src/wf/baked.py", "src/wf/mapped.py"]}'
check "spec image reference matches \`kiln tag\`" pyexpr "$T/auto.out" \
  "d['images']['baked']['image'] == '$("$KILN" tag "$P/specs/baked.json" 2>/dev/null)'"

# Deterministic: twice, from stdin, from another working directory, from a copy of the project.
run_kiln auto2 plan "$P/plan-auto.json"
check "two runs print byte-identical JSON" cmp -s "$T/auto.out" "$T/auto2.out"
RC=0
(cd "$P" && timeout 60 "$KILN" plan - <plan-auto.json >"$T/stdin.out" 2>/dev/null) || RC=$?
check "stdin (project_root = working directory) prints the same JSON" cmp -s "$T/auto.out" "$T/stdin.out"
cp -a "$P" "$T/copy"
RC=0
(cd / && timeout 60 "$KILN" plan "$T/copy/plan-auto.json" >"$T/copy.out" 2>/dev/null) || RC=$?
check "a copy of the project in another directory prints the same JSON" cmp -s "$T/auto.out" "$T/copy.out"
rm -rf "$T/copy"

# ---------------------------------------------------------------------------------------------
# copy none: code_unavailable for the plain-image task, exit 2, JSON still on stdout.
run_kiln none plan "$P/plan-none.json"
check "plan with errors exits 2 (got $RC)" test "$RC" -eq 2
schema_check "copy none (plan with errors): output validates" valid output "$T/none.out"
schema_check "input (copy none) validates" valid input "$P/plan-none.json"
check "copy none: exact decisions, one code_unavailable error, no warning, no bundle" pyexpr "$T/none.out" \
  '[(t["name"], t["fast_register"], t["reason"]) for t in d["tasks"]] == [
     ("wf.baked", False, "source_baked"), ("wf.plain", False, "copy_none"),
     ("wf.raw_src", False, "raw_container"), ("wf.raw_bare", False, "raw_container"),
     ("wf.map", False, "source_baked")]
   and [(e["code"], e["task"]) for e in d["errors"]] == [("code_unavailable", "wf.plain")]
   and d["warnings"] == [] and d["bundle"] == {"needed": False}'
check "the error is in the summary on stderr" grep -q "^error: \[code_unavailable\] task 'wf.plain'" "$T/none.err"

# ---------------------------------------------------------------------------------------------
# .dockerignore excluding a task's module: module_not_baked, fast register, a warning.
echo 'wf/mapped.py' >"$P/src/.dockerignore"
run_kiln ignored plan "$P/plan-auto.json"
check "dockerignored module: exit 0" test "$RC" -eq 0
schema_check "dockerignored module: output validates" valid output "$T/ignored.out"
check "dockerignored module: module_not_baked, fast_register, warning" pyexpr "$T/ignored.out" \
  '[t for t in d["tasks"] if t["name"] == "wf.map"][0]["reason"] == "module_not_baked"
   and [t for t in d["tasks"] if t["name"] == "wf.map"][0]["fast_register"] is True
   and [(w["code"], w["task"], w.get("modules")) for w in d["warnings"]] == [
       ("raw_container_without_source", "wf.raw_bare", None), ("module_not_baked", "wf.map", ["src/wf/mapped.py"])]'
rm "$P/src/.dockerignore"

# ---------------------------------------------------------------------------------------------
# The import path. A source_root that is a subfolder of the project root (kiln's default
# source_dest /root): src/wf/baked.py lands at /root/wf/baked.py, but the task imports src.wf.baked
# from /root/src/wf/baked.py. Not baked: fast register with module_path_mismatch, or, under copy
# none, code_unavailable. A task listing no modules is never counted as baked (modules_unknown).
cat >"$P/specs/subfolder.json" <<'EOF'
{"name": "subfolder", "source_root": "../src", "source_copy_mode": "all", "tag_format": "{spec_hash}"}
EOF
for copy in auto none; do
  cat >"$P/plan-sub-$copy.json" <<EOF
{"copy": "$copy", "images": {"sub": {"spec": "specs/subfolder.json"}},
 "tasks": [{"name": "wf.baked", "image": "sub", "modules": ["src/wf/baked.py"]},
           {"name": "wf.nomod", "image": "sub"}]}
EOF
  schema_check "subfolder source_root (copy $copy): input validates" valid input "$P/plan-sub-$copy.json"
done
run_kiln sub-auto plan "$P/plan-sub-auto.json"
check "subfolder source_root, copy auto: exit 0 (got $RC)" test "$RC" -eq 0
schema_check "subfolder source_root, copy auto: output validates" valid output "$T/sub-auto.out"
check "subfolder source_root: not baked - module_path_mismatch and modules_unknown, both fast register" pyexpr "$T/sub-auto.out" \
  '[(t["name"], t["fast_register"], t["reason"]) for t in d["tasks"]] == [
     ("wf.baked", True, "module_path_mismatch"), ("wf.nomod", True, "modules_unknown")]
   and [(w["code"], w["task"]) for w in d["warnings"]] == [("module_path_mismatch", "wf.baked"), ("modules_unknown", "wf.nomod")]
   and d["warnings"][0]["locations"] == [{"module": "src/wf/baked.py", "baked_at": "/root/wf/baked.py", "expected_at": "/root/src/wf/baked.py"}]
   and d["bundle"]["needed"] is True and d["errors"] == []'
check "the summary says where the module is and where it must be" \
  grep -q "src/wf/baked.py is baked at /root/wf/baked.py but must be at /root/src/wf/baked.py" "$T/sub-auto.err"
run_kiln sub-none plan "$P/plan-sub-none.json"
check "subfolder source_root, copy none: exit 2 (got $RC)" test "$RC" -eq 2
schema_check "subfolder source_root, copy none: output validates" valid output "$T/sub-none.out"
check "copy none: code_unavailable naming both places; modules_unknown stays a warning" pyexpr "$T/sub-none.out" \
  '[(t["name"], t["fast_register"], t["reason"]) for t in d["tasks"]] == [
     ("wf.baked", False, "copy_none"), ("wf.nomod", False, "modules_unknown")]
   and [(e["code"], e["task"]) for e in d["errors"]] == [("code_unavailable", "wf.baked")]
   and d["errors"][0]["locations"][0]["expected_at"] == "/root/src/wf/baked.py"
   and [w["code"] for w in d["warnings"]] == ["modules_unknown"] and d["bundle"] == {"needed": False}'
# With the project root at source_root (src/, pyflyte's root there: src/ has no __init__.py) the
# same image bakes the task; dest_dir names where pyflyte puts the code.
"$PY" - "$P/plan-sub-auto.json" "$P/plan-sub-dest.json" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1]))
p["dest_dir"] = "/root"
p["project_root"] = "src"
p["tasks"] = [{"name": "wf.baked", "image": "sub", "modules": ["wf/baked.py"]}]
json.dump(p, open(sys.argv[2], "w"))
EOF
schema_check "dest_dir input validates" valid input "$P/plan-sub-dest.json"
run_kiln sub-dest plan "$P/plan-sub-dest.json"
check "project_root = source_root, dest_dir /root: baked (got $RC)" pyexpr "$T/sub-dest.out" \
  '[(t["name"], t["reason"]) for t in d["tasks"]] == [("wf.baked", "source_baked")] and d["bundle"] == {"needed": False}'
schema_check "dest_dir plan: output validates" valid output "$T/sub-dest.out"

# ---------------------------------------------------------------------------------------------
# Malformed input: exit 2, nothing on stdout, a clear message on stderr; --json puts the failure
# on stdout. The schema rejects what it can express (not an unknown image id).
bad_case() {  # bad_case NAME JSON EXPECTED_STDERR_SUBSTRING SCHEMA_REJECTS(yes|no)
  printf '%s\n' "$2" >"$P/bad-$1.json"
  run_kiln "bad-$1" plan "$P/bad-$1.json"
  check "malformed ($1): exit 2 (got $RC)" test "$RC" -eq 2
  check "malformed ($1): empty stdout" test ! -s "$T/bad-$1.out"
  check "malformed ($1): stderr says: $3" grep -qF "kiln: error: $3" "$T/bad-$1.err"
  if [[ $4 == yes ]]; then schema_check "malformed ($1): the input schema rejects it" invalid input "$P/bad-$1.json"; fi
}
bad_case unknown-field '{"copy": "auto", "tasks": [], "extra": true}' "unknown field 'extra' in plan" yes
bad_case unknown-task-field '{"images": {"a": "x"}, "tasks": [{"name": "t", "image": "a", "module": "m.py"}]}' \
  "unknown field 'module' in tasks[0]" yes
bad_case unknown-image '{"images": {"a": "x"}, "tasks": [{"name": "t", "image": "b"}]}' \
  "task 't' uses image 'b', which 'images' does not define" no
bad_case bad-copy '{"copy": "sometimes"}' "field 'copy' must be auto, all or none (pyflyte's --copy), not 'sometimes'" yes
bad_case copy-type '{"copy": true}' "field 'copy' must be a string" yes
bad_case syntax '{"copy": "auto",}' "$P/bad-syntax.json:1:17: JSON syntax error in the plan" no
bad_case two-forms '{"images": {"a": {"ref": "x", "spec": "y.json"}}}' "images.a must have exactly one of" yes
bad_case dest-dir '{"dest_dir": "root"}' "field 'dest_dir' must be an absolute path" yes

run_kiln bad-json plan --json "$P/bad-unknown-image.json"
check "malformed with --json: exit 2" test "$RC" -eq 2
check "malformed with --json: the failure object on stdout" pyexpr "$T/bad-json.out" \
  'd["status"] == "failed" and d["exit_code"] == 2 and d["error_kind"] == "spec" and d["field"] == "tasks[0].image"'
run_kiln no-file plan "$T/does-not-exist.json"
check "missing plan file: exit 2 (got $RC)" test "$RC" -eq 2
check "missing plan file: message" grep -qF "cannot read plan file" "$T/no-file.err"

# ---------------------------------------------------------------------------------------------
# Every task baked: no file outside the baked set is touched, even with copy all.
#
# Method 1 (works as root too): a FIFO in scratch/, outside source_root (src/). The file-set walk
# refuses a FIFO as soon as it meets one, and opening it would block (the 60 s timeout would
# fail the test). The all-baked plan succeeding proves scratch/ was never walked; the same tree
# with one task not baked makes the plan list the copy-all bundle, which meets the FIFO and fails:
# the file would have been touched.
baked_only='[
  {"name": "wf.baked", "image": "baked", "modules": ["src/wf/baked.py"]},
  {"name": "wf.map", "kind": "map", "image": "baked", "modules": ["src/wf/mapped.py"]},
  {"name": "wf.raw", "kind": "raw_container", "image": "plain"}]'
cat >"$P/plan-baked.json" <<EOF
{"copy": "all", "images": {"baked": {"spec": "specs/baked.json"}, "plain": {"ref": "python:3.12-slim"}}, "tasks": $baked_only}
EOF
"$PY" - "$P/plan-baked.json" "$P/plan-unbaked.json" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1]))
p["tasks"].append({"name": "wf.plain", "image": "plain", "modules": ["other/plain.py"]})
json.dump(p, open(sys.argv[2], "w"), indent=2)
EOF
schema_check "all-baked inputs validate" valid input "$P/plan-baked.json"
schema_check "one-unbaked input validates" valid input "$P/plan-unbaked.json"
mkdir -p "$P/scratch"
mkfifo "$P/scratch/pipe"
run_kiln fifo-baked plan "$P/plan-baked.json"
check "FIFO outside the baked set, every task baked, copy all: exit 0 (got $RC)" test "$RC" -eq 0
check "... no bundle" pyexpr "$T/fifo-baked.out" 'd["bundle"] == {"needed": False} and d["errors"] == []'
schema_check "FIFO, every task baked: output validates" valid output "$T/fifo-baked.out"
run_kiln fifo-unbaked plan "$P/plan-unbaked.json"
check "same tree, one task not baked: the bundle walk meets the FIFO, exit 2 (got $RC)" test "$RC" -eq 2
check "... and says so" grep -q "scratch/pipe' is a fifo" "$T/fifo-unbaked.err"
rm "$P/scratch/pipe"

# Method 2: an unreadable directory. chmod 000 does not stop root, so kiln runs as an unprivileged
# user (setpriv, uid/gid 65534). (chmod 000 on a plain file would prove nothing: the walk only
# stats files, it reads the content of baked files alone; so the directory is made unreadable.)
if [[ $(id -u) -eq 0 ]] && command -v setpriv >/dev/null &&
  setpriv --reuid=65534 --regid=65534 --clear-groups true 2>/dev/null; then
  N="$T/nobody"
  cp -a "$P" "$N"
  mkdir -p "$N/scratch/secret" "$N/cache"
  echo "private" >"$N/scratch/secret/data.txt"
  chmod 755 "$T"
  chmod -R a+rX "$N"
  chown 65534:65534 "$N/cache"
  chmod 000 "$N/scratch/secret"
  as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups env KILN_CACHE="$N/cache" timeout 60 "$KILN" "$@"; }
  RC=0
  as_nobody plan "$N/plan-baked.json" >"$T/nobody-baked.out" 2>"$T/nobody-baked.err" || RC=$?
  check "unreadable directory, every task baked, copy all, as uid 65534: exit 0 (got $RC)" test "$RC" -eq 0
  check "... no bundle" pyexpr "$T/nobody-baked.out" 'd["bundle"] == {"needed": False}'
  RC=0
  as_nobody plan "$N/plan-unbaked.json" >"$T/nobody-unbaked.out" 2>"$T/nobody-unbaked.err" || RC=$?
  check "same tree, one task not baked, as uid 65534: exit 2 (got $RC)" test "$RC" -eq 2
  check "... cannot read the directory" grep -q "cannot read directory '.*scratch/secret'" "$T/nobody-unbaked.err"
  chmod 700 "$N/scratch/secret"
  chmod 700 "$T"
else
  echo "skip - unreadable-directory check (needs root and setpriv)"
fi

# ---------------------------------------------------------------------------------------------
# The example project's plan.
EX="$KILN_SOURCE_DIR/examples/flyte-project"
run_kiln example plan "$EX/plan.json"
check "example plan: exit 0 (got $RC)" test "$RC" -eq 0
schema_check "example plan input validates" valid input "$EX/plan.json"
schema_check "example plan output validates" valid output "$T/example.out"
check "example plan: baked + plain" pyexpr "$T/example.out" \
  '[(t["name"], t["reason"]) for t in d["tasks"]] == [("workflows.hello.greet", "source_baked"), ("workflows.train.train", "plain_image")]'

# ---------------------------------------------------------------------------------------------
# kiln build --plan: builds the spec images, prints {status, plan, builds}.
run_kiln build build --plan "$P/plan-auto.json" -o "oci:$T/out" --progress quiet
check "build --plan: exit 0 (got $RC)" test "$RC" -eq 0
schema_check "build --plan: output validates (build_plan_output)" valid output "$T/build.out" build_plan_output
check "build --plan: status, plan equal to kiln plan's, a build per spec image" pyexpr "$T/build.out" \
  "d['status'] == 'success' and d['plan'] == json.load(open('$T/auto.out')) and sorted(d['builds']) == ['baked', 'bare']
   and all(d['builds'][i]['image'] == d['plan']['images'][i]['image'] for i in ('bare', 'baked'))
   and all(b['outputs'][0]['target'] == 'oci:$T/out' for b in d['builds'].values())"
check "build --plan: the OCI layout holds both images" pyexpr "$T/out/index.json" \
  "len(d['manifests']) == 2"
run_kiln build-none build --plan "$P/plan-none.json" -o "oci:$T/out-none" --progress quiet
check "build --plan with plan errors: exit 2 (got $RC)" test "$RC" -eq 2
schema_check "build --plan with plan errors: output validates (build_plan_output)" valid output "$T/build-none.out" build_plan_output
check "build --plan with plan errors: status failed, errors in plan" pyexpr "$T/build-none.out" \
  'd["status"] == "failed" and [e["code"] for e in d["plan"]["errors"]] == ["code_unavailable"]'
run_kiln build-both build "$P/specs/baked.json" --plan "$P/plan-auto.json"
check "build with both a spec and --plan: exit 2 (got $RC)" test "$RC" -eq 2

RC=0
run_schema_checks || RC=$?
failures=$((failures + RC))

if ((failures > 0)); then
  echo "test_plan: $failures check(s) failed" >&2
  exit 1
fi
echo "test_plan: all checks passed"
