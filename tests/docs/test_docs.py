"""The docs run: every shell and Python block of README.md and docs/*.md, and every example of a ``--help`` text.

Blocks are found with Sybil's Markdown lexers (fenced code blocks and HTML-comment directives).  A block
runs on CPU in a scratch directory that holds the checkout's code (each document has its own, shared by
its blocks in order, so a later block may use what an earlier one made).  An HTML comment right before a
block says how it is tested, in the doc itself, where a reader sees it::

    <!-- doc-test: run -->                                     the default: run it, it must exit 0
    <!-- doc-test: run; replace "--limit 20" "--limit 2" -->   run it with a size made small (shown)
    <!-- doc-test: run; slow -->                               run it under ``-m slow`` only
    <!-- doc-test: run; expect "57.09 GiB" -->                 its output must hold a figure the doc states
    <!-- doc-test: check; needs a TPU slice -->                syntax (bash -n) and every semcoder
                                                               command's flags, parsed by the real CLI
    <!-- doc-test: skip; it is the test suite itself -->       not run; the reason is required

Blocks without a language (file trees, output) are not code.  ``--help`` examples (indented
``semcoder ...`` lines of the subcommands' descriptions) are parsed by the real CLI as ``check`` blocks.
The suite prints how many blocks ran, were checked and were skipped (with the reasons).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sybil import Document
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer, FencedCodeBlockLexer

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LANGUAGES = r"bash|python"
# What a scratch directory copies from the checkout (everything a doc's command may read).
LINKED = ("semcoder_jax", "data_pipeline", "eval", "sandbox", "launch", "benchmarks", "tests", "docs",
          "pyproject.toml", "README.md")
BLOCK_TIMEOUT = 900


@dataclasses.dataclass(frozen=True)
class Block:
    """One code block and how the doc says to test it."""

    path: Path
    line: int
    language: str
    source: str
    mode: str  # run | check | skip
    reason: str = ""
    slow: bool = False
    replacements: tuple[tuple[str, str], ...] = ()
    expected: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    def script(self) -> str:
        text = self.source
        for old, new in self.replacements:
            if old not in text:
                raise AssertionError(f"{self.id}: the doc-test replacement {old!r} is not in the block")
            text = text.replace(old, new)
        return text


def parse_directive(text: str, where: str) -> dict:
    """``run; replace "A" "B"; slow`` -> mode, reason, slow, replacements."""
    parts = [p.strip() for p in text.split(";")]
    mode, rest = parts[0], parts[1:]
    if mode not in ("run", "check", "skip"):
        raise AssertionError(f"{where}: doc-test mode must be run, check or skip, got {mode!r}")
    spec: dict = {"mode": mode, "reason": "", "slow": False, "replacements": (), "expected": ()}
    for part in rest:
        if part == "slow":
            spec["slow"] = True
        elif part.startswith("expect "):
            spec["expected"] += tuple(shlex.split(part[len("expect "):]))
        elif part.startswith("replace "):
            words = shlex.split(part[len("replace "):])
            if len(words) != 2:
                raise AssertionError(f"{where}: replace takes two quoted strings, got {part!r}")
            spec["replacements"] += (tuple(words),)
        else:
            spec["reason"] = (spec["reason"] + "; " + part).strip("; ")
    if mode in ("check", "skip") and not spec["reason"]:
        raise AssertionError(f"{where}: a doc-test {mode} must say why (e.g. 'check; needs a TPU slice')")
    return spec


def blocks_of(path: Path) -> list[Block]:
    text = path.read_text()
    document = Document(text, str(path))
    directives = list(DirectiveInHTMLCommentLexer("doc-test", r".*?")(document))
    out = []
    for lexeme in FencedCodeBlockLexer(LANGUAGES)(document):
        line = text.count("\n", 0, lexeme.start) + 1
        where = f"{path.relative_to(REPO)}:{line}"
        before = [d for d in directives
                  if d.end <= lexeme.start and not text[d.end:lexeme.start].strip().removeprefix("-->").strip()]
        spec = parse_directive(str(before[-1].lexemes["arguments"]), where) if before else parse_directive("run", where)
        out.append(Block(path, line, str(lexeme.lexemes["language"]), str(lexeme.lexemes["source"]), **spec))
    return out


def help_examples() -> list[Block]:
    """Every ``semcoder ...`` example line in the subcommands' --help descriptions."""
    from semcoder_jax.cli import build_parser

    parser = build_parser()
    out = []
    seen = set()
    for action in parser._subparsers._group_actions:  # the subcommands' parsers
        for name, sub in action.choices.items():
            parsers = [(name, sub)]
            for sub_action in getattr(sub._subparsers, "_group_actions", []):
                parsers += [(f"{name} {n}", p) for n, p in sub_action.choices.items()]
            for command, p in parsers:
                for line in (p.description or "").splitlines():
                    example = re.split(r"\s{2,}", line.strip())[0]  # a table row's description is not a word
                    if example.startswith("semcoder ") and example not in seen:
                        seen.add(example)
                        out.append(Block(REPO / "semcoder_jax" / "cli.py", 0, "bash", example, "check",
                                         reason=f"`semcoder {command} --help` example: flags parsed"))
    return out


ALL = [b for path in DOCS for b in blocks_of(path)]


# ---- running ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One scratch directory per document: a copy of the checkout's code, a fresh place to write."""
    made: dict[Path, Path] = {}

    def get(doc: Path) -> Path:
        if doc not in made:
            root = tmp_path_factory.mktemp(doc.stem.lower())
            for name in LINKED:  # copies: a doc's command that writes under e.g. eval/ must not touch the checkout
                source = REPO / name
                if source.is_dir():
                    shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    shutil.copy2(source, root / name)
            made[doc] = root
        return made[doc]

    return get


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the suite's 8 simulated devices: a doc that needs more than one must say so
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_block(block: Block, cwd: Path) -> None:
    script = block.script()
    if block.language == "python":
        argv = [sys.executable, "-c", script]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", script]
    proc = subprocess.run(argv, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    assert proc.returncode == 0, (f"{block.id} exited with {proc.returncode}:\n{script}\n--- stdout\n"
                                  f"{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}")
    for figure in block.expected:  # a figure the doc states beside the block is what the block prints now
        assert figure in proc.stdout + proc.stderr, (f"{block.id}: the doc states {figure!r}; the block printed:\n"
                                                    f"{proc.stdout[-3000:]}")


def logical_lines(script: str) -> list[str]:
    """Lines with their continuations joined and comments dropped."""
    out, current = [], ""
    for raw in script.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        words = shlex.split(current, comments=True) if current.strip() else []
        if words:
            out.append(" ".join(shlex.quote(w) for w in words))
        current = ""
    return out


PLACEHOLDER = re.compile(r"\$|\[|<|\.\.\.")


def check_block(block: Block) -> int:
    """bash -n, then every ``semcoder`` command's flags through the real parser; returns commands parsed."""
    from semcoder_jax.cli import build_parser

    script = block.script()
    if block.language == "python":
        compile(script, block.id, "exec")
        return 0
    proc = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, f"{block.id}: bash -n: {proc.stderr}"
    parsed = 0
    parser = build_parser()
    for line in logical_lines(script):
        words = shlex.split(line)
        while words and "=" in words[0] and not words[0].startswith("-"):
            words = words[1:]  # VAR=value prefixes
        if not words or Path(words[0]).name != "semcoder" or PLACEHOLDER.search(line):
            continue
        try:
            args, extra = parser.parse_known_args(words[1:])
        except SystemExit as e:
            raise AssertionError(f"{block.id}: `{line}` is refused by the CLI (exit {e.code})") from None
        bad = [a for a in extra if "=" not in a or a.startswith("-")]
        assert not bad, f"{block.id}: `{line}`: unrecognized arguments {bad}"
        parsed += 1
    return parsed


def _param(block: Block):
    marks = [pytest.mark.slow] if block.slow else []
    return pytest.param(block, id=block.id, marks=marks)


@pytest.mark.parametrize("block", [_param(b) for b in ALL] + [_param(b) for b in help_examples()])
def test_doc_block(block: Block, scratch, request):
    counts = request.config.__dict__.setdefault("semcoder_doc_counts", {"run": 0, "check": 0, "skip": []})
    if block.mode == "skip":
        counts["skip"].append(f"{block.id}: {block.reason}")
        pytest.skip(block.reason)
    if block.mode == "check":
        check_block(block)
        counts["check"] += 1
        return
    run_block(block, scratch(block.path))
    counts["run"] += 1


def test_every_code_block_in_the_docs_names_its_language():
    """Commands hide in unlabelled blocks or in languages the suite does not run (``sh``, ``shell``): every
    opening fence says bash or python (collected above), or text/yaml/json (not code)."""
    unlabelled = []
    for path in DOCS:
        inside = False
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if not stripped.startswith("```"):
                continue
            if not inside and stripped[3:] not in ("bash", "python", "text", "yaml", "json"):
                unlabelled.append(f"{path.relative_to(REPO)}:{number}: {stripped!r}")
            inside = not inside
    assert not unlabelled

