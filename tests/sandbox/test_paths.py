"""The candidates' filesystem view still holds the interpreter: a virtualenv that lives under /tmp imports."""

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
        code = ("from sandbox import Sandbox, Job\n"
                "with Sandbox(workers=1, preload=()) as sb:\n"
                "    o = sb.run(Job('import marker_for_sandbox_test as m\\nemit(m.VALUE)', timeout_s=5))\n"
                "    w = sb.run(Job('import marker_for_sandbox_test as m\\n'\n"
                "                   'try:\\n    open(m.__file__, \"a\")\\n    emit(\"written\")\\n'\n"
                "                   'except OSError as e:\\n    emit(e.strerror)', timeout_s=5))\n"
                "print(o.values, w.values, sb.mode)\n")
        out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                             env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split("\n")[0] == "[42] ['Read-only file system'] namespaces"
