"""A harness, run as its own process by test_signals.py: each hostile candidate first, then 50 benign ones.

    python hostile_batch.py MODE REPO   (the hostile programs come as JSON on stdin)

Prints one JSON line per hostile program: its verdict and how many of the 50 benign candidates passed.
Standard library only (plus the ``sandbox`` package), so it also runs under a system Python as 'nobody'.
"""

import json
import sys

sys.path.insert(0, sys.argv[2])

from sandbox import Sandbox  # noqa: E402
from sandbox.function_tests import Program, check  # noqa: E402

BENIGN = "def add(a, b):\n    return a + b\n"
CALLS = [(1, 2), (3, 4), (-5, 5)]
EXPECTED = [3, 7, 0]

with Sandbox(workers=2, mode=sys.argv[1], preload=()) as sandbox:
    for hostile in json.load(sys.stdin):
        items = [(Program(hostile, "add", CALLS, timeout_s=3), EXPECTED)]
        items += [(Program(BENIGN, "add", CALLS, timeout_s=10), EXPECTED) for _ in range(50)]  # generous: CI is loaded
        verdicts = check(sandbox, items)
        print(json.dumps({"status": verdicts[0].status, "message": verdicts[0].message,
                          "benign_passed": sum(v.status == "passed" for v in verdicts[1:])}), flush=True)
    print(json.dumps({"mode": sandbox.mode}), flush=True)
