"""Runs the plugin's tests: exit 0 when they pass, 1 when one fails, 77 (skip) when flytekit is
neither installed nor present in ../shared/flytekit-e96c720."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flytekit_env  # noqa: E402

how = flytekit_env.setup()
if how is None:
    print(
        "SKIP: flytekit is not installed and its source is not at %s "
        "(set KILN_FLYTEKIT_SRC to a flytekit checkout)" % os.path.realpath(flytekit_env.flytekit_source_dir()),
        file=sys.stderr,
    )
    sys.exit(77)
print("flytekit: %s" % how, file=sys.stderr)
suite = unittest.defaultTestLoader.discover(os.path.dirname(os.path.abspath(__file__)), pattern="test_*.py")
result = unittest.TextTestRunner(verbosity=2).run(suite)
for test, reason in result.skipped:
    print("skipped: %s: %s" % (test.id(), reason), file=sys.stderr)
sys.exit(0 if result.wasSuccessful() else 1)
