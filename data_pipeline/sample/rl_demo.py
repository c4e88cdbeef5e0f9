"""The GRPO demonstration's data: short string programs whose output the tiny model can learn to predict.

Two files in ``data_pipeline/sample/rl_demo/`` (not beside the PyX sample: training on the bundled sample
reads every file of its folder), PyX-shaped (``fwd_mnl`` + ``response``), from disjoint inputs:
- ``sft.jsonl.gz``: the supervised warm-up, each response only the answer block
  (``[ANSWER]\\nassert f('abc') == 'cba'\\n[/ANSWER]``);
- ``tasks.jsonl.gz``: the GRPO tasks, scored by execution (``eval.rewards``).

Programs: a handful of one-line string functions (identity, reverse, upper case, doubling, first letter,
...) on random lowercase words of 2 to 4 letters.  Regenerate with ``python -m data_pipeline.sample.rl_demo``;
the output is a function of the seed.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
from pathlib import Path

PROGRAMS = {
    "identity": "def f(s):\n    return s",
    "reverse": "def f(s):\n    return s[::-1]",
    "upper": "def f(s):\n    return s.upper()",
    "double": "def f(s):\n    return s + s",
    "first": "def f(s):\n    return s[0]",
    "last": "def f(s):\n    return s[-1]",
    "drop_first": "def f(s):\n    return s[1:]",
    "wrap": "def f(s):\n    return '(' + s + ')'",
}
DATA = Path(__file__).resolve().parent / "rl_demo"


def _run(code: str, arg: str) -> str:
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - our own fixed programs above, not input
    return repr(namespace["f"](arg))


def records(count: int, seed: int, avoid: set[str] = frozenset()) -> list[dict]:
    """``count`` PyX-shaped forward records over random (program, word) pairs not in ``avoid``."""
    rng = random.Random(seed)
    out, seen = [], set(avoid)
    names = sorted(PROGRAMS)
    while len(out) < count:
        name = rng.choice(names)
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 4)))
        if (name, word) in seen:
            continue
        seen.add((name, word))
        code, call = PROGRAMS[name], repr(word)
        question = f"[PYTHON]\n{code}\nassert f({call}) == ??\n[/PYTHON]"
        answer = f"[ANSWER]\nassert f({call}) == {_run(code, word)}\n[/ANSWER]"
        out.append({"nl": "", "fwd_mnl": question, "bwd_mnl": "", "response": answer,
                    "id": f"demo-{seed}-{len(out)}", "family": name, "word": word})
    return out


def _write(path: Path, rows: list[dict]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        for r in rows:
            gz.write((json.dumps(r) + "\n").encode())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def main(sft: int = 3000, tasks: int = 400, seed: int = 0) -> None:
    task_rows = records(tasks, seed + 1)
    used = {(r["family"], r["word"]) for r in task_rows}
    _write(DATA / "tasks.jsonl.gz", task_rows)
    _write(DATA / "sft.jsonl.gz", records(sft, seed, avoid=used))


if __name__ == "__main__":
    main()
