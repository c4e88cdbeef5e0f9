"""The reference scripts' CRUXEval logic, copied from their sources (neither is an installable package).

- ``release_process_cruxeval``: ARiSE-Lab/SemCoder @ edc4ad39, ``experiments/process_cruxeval.py`` (the
  loop body of ``__main__``).  The release runs it on ``generations_raw.json``, whose entries are prompt +
  generation (``experiments/cruxeval_utils.py``, ``complete_code``: ``batch["prompt"][0] +
  generated_text``), then scores the result with CRUXEval's ``evaluate_generations.py``.
- ``official_postprocess``: facebookresearch/cruxeval @ 190faf16, ``inference/tasks/output_prediction.py``
  and ``input_prediction.py``, ``postprocess_generation`` after the prompt is cut off (CRUXEval has no
  monologue mode; its cot rule takes the text after the *first* ``[ANSWER]``).
- ``official_program`` / ``official_check``: the same repository, ``evaluation/utils_general.py``
  (``evaluate_score``) and ``evaluation/utils_execute.py`` (``check_correctness``, ``unsafe_execute``,
  ``reliability_guard``): one fresh process per program, ``exec(program, {})``, 3 s.

Run as a script (``python reference_scripts.py request.json result.json``) it checks a list of programs
the official way, each in a forked child of a single-threaded process, and writes their pass/fail.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import os
import signal
import sys
import tempfile


def release_process_cruxeval(raw: str, task: str) -> str:
    """``process_cruxeval.py``: ``raw`` is prompt + generation, ``task`` is ``"i"`` or ``"o"``."""
    if "\nANSWER]" in raw:
        start = raw.rfind("ANSWER]") + len("ANSWER]")
    else:
        start = raw.rfind("[ANSWER]") + len("[ANSWER]")
    end = raw.rfind("[/ANS")
    if start == -1:
        start = 0
    if end == -1 or end < start:
        end = len(raw)
    answer = raw[start:end]
    if task == 'o':
        if "==" in answer:
            answer = answer.split("==")[1].strip()
        if "assert" in answer:
            answer = answer.split("assert")[1].strip()
    elif task == 'i':
        if "==" in answer:
            answer = answer.split("==")[0].strip()
        if "assert" in answer:
            answer = answer.split("assert")[1].strip()
    answer = answer.replace('"', "'")  # replace double quotes with single quotes
    return answer


def official_postprocess(generation: str, task: str, cot: bool) -> str:
    """CRUXEval's ``postprocess_generation``; ``generation`` is the text after the prompt."""
    if task == "o":
        if cot:
            if "[ANSWER]" in generation:
                generation = generation.split("[ANSWER]")[1].strip()
        if "==" in generation:
            generation = generation.split("==")[1].strip()
        return generation.strip()
    if cot:
        if "[ANSWER]" in generation:
            generation = generation.split("[ANSWER]")[1].strip()
    if "==" in generation:
        generation = generation.split("==")[0].strip()
    if "assert f" in generation:
        generation = "f" + generation.split("assert f")[1].strip()
    return generation.strip()


def official_program(code: str, input: str, output: str, answer: str, task: str) -> str | None:
    """The program ``evaluate_score`` executes for one generation, or None where it fails it unexecuted."""
    if task == "i" and "f(" not in answer:
        return None
    if task == "o" and f"f({input})" in answer:
        return None
    return f"{code}\nassert {output} == {answer}"


# ---- check_correctness, one forked child per program ---------------------------------------------------------

class TimeoutException(Exception):
    pass


class WriteOnlyStringIO(io.StringIO):
    def read(self, *args, **kwargs):
        raise OSError

    def readline(self, *args, **kwargs):
        raise OSError

    def readlines(self, *args, **kwargs):
        raise OSError

    def readable(self, *args, **kwargs):
        return False


class redirect_stdin(contextlib._RedirectStream):  # type: ignore[type-arg]
    _stream = "stdin"


@contextlib.contextmanager
def swallow_io():
    stream = WriteOnlyStringIO()
    with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream), redirect_stdin(stream):
        yield


@contextlib.contextmanager
def time_limit(seconds: float):
    def signal_handler(signum, frame):
        raise TimeoutException("Timed out!")

    signal.setitimer(signal.ITIMER_REAL, seconds)
    signal.signal(signal.SIGALRM, signal_handler)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def reliability_guard() -> None:
    """``utils_execute.reliability_guard`` (no memory limit, as CRUXEval calls it)."""
    faulthandler.disable()
    import builtins
    import shutil
    import subprocess

    builtins.exit = None
    builtins.quit = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
                 "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod",
                 "chown", "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
        setattr(os, name, None)
    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


def _unsafe_execute(program: str, timeout: float) -> str:
    import shutil

    with tempfile.TemporaryDirectory() as dirname:
        cwd = os.getcwd()
        os.chdir(dirname)
        rmtree, rmdir, chdir = shutil.rmtree, os.rmdir, os.chdir  # needed for cleaning up, as there
        reliability_guard()
        try:
            with swallow_io(), time_limit(timeout):
                exec(program, {})
            result = "passed"
        except TimeoutException:
            result = "timed out"
        except BaseException as e:  # noqa: BLE001 - as the reference
            result = f"failed: {e}"
        shutil.rmtree, os.rmdir, os.chdir = rmtree, rmdir, chdir
        os.chdir(cwd)
    return result


def official_check(program: str, timeout: float = 3.0) -> bool:
    """``check_correctness``: run ``program`` in a fresh child; passed only if it ran to the end in time."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        try:
            result = _unsafe_execute(program, timeout)
        except BaseException:  # noqa: BLE001
            result = "failed"
        with contextlib.suppress(BaseException):
            os.write(write, result[:6].encode())
        os._exit(0)
    os.close(write)
    chunks = []
    signal.setitimer(signal.ITIMER_REAL, timeout + 1)
    signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))
    try:
        while chunk := os.read(read, 64):
            chunks.append(chunk)
    except OSError:
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        os.close(read)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return b"".join(chunks) == b"passed"


def official_verdicts(programs: list[str | None], workdir) -> list[bool]:
    """CRUXEval's ``check_correctness`` on each program (None: refused unexecuted), in a child process of this
    script (single-threaded: it forks one process per program), without network where ``unshare`` allows."""
    import subprocess
    from pathlib import Path

    request, result = Path(workdir) / "programs.json", Path(workdir) / "verdicts.json"
    request.write_text(json.dumps(programs))
    isolate = ["unshare", "--net"] if os.geteuid() == 0 else []
    subprocess.run([*isolate, sys.executable, os.path.abspath(__file__), str(request), str(result)], check=True)
    return json.loads(result.read_text())


def load(name: str):
    """Another helper module of this folder, by file (the tests run in importlib mode, without packages)."""
    import runpy
    import types
    from pathlib import Path

    return types.SimpleNamespace(**runpy.run_path(str(Path(__file__).with_name(f"{name}.py"))))


if __name__ == "__main__":
    programs = json.load(open(sys.argv[1]))
    json.dump([program is not None and official_check(program) for program in programs], open(sys.argv[2], "w"))
