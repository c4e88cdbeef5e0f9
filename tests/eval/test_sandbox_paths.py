"""The private /tmp of the sandbox does not hide the interpreter: a virtualenv under /tmp still imports."""

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_candidates_import_site_packages_of_a_virtualenv_that_lives_under_tmp():
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        site = next(venv.glob("lib/python*/site-packages"))
        (site / "marker_for_sandbox_test.py").write_text("VALUE = 42\n")
        code = ("from eval.sandbox import Sandbox, Job\n"
                "with Sandbox(workers=1) as sb:\n"
                "    o = sb.run(Job('import marker_for_sandbox_test as m\\nassert m.VALUE == 42', timeout_s=5))\n"
                "    w = sb.run(Job('open(' + repr(str(__import__('marker_for_sandbox_test').__file__)) + ', \"a\")', timeout_s=5))\n"
                "print(o.status, o.message)\nprint(w.status)\n")
        out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                             env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
        lines = out.stdout.splitlines()
        assert out.returncode == 0, out.stderr[-2000:]
        assert lines[0].startswith("passed"), lines  # the module under /tmp was importable
        assert lines[1] != "passed"  # and the bound-back directory is still read-only
