"""Step 1 of the builder: seeds, i.e. self-contained functions sampled from real Python code.

Why: every later stage (run, mutate inputs, trace, render monologues) needs a program that defines one function
and nothing else it cannot see.  The release sampled AST subtrees so that every seed parses; we go one step further
and cut a *dependency slice*, so every seed also defines everything it names.

What, in order (each drop is a named reason, counted as ``dropped:<reason>`` in ``SeedReport.counts``):

1. **Sources**: ``.py`` files (a directory is walked recursively, files in sorted order) and JSON Lines files of
   snippets (``{"code": ..., "id"?: ...}``, ``.jsonl`` or ``.jsonl.gz``; a bad line raises ``UserError`` naming
   ``file:line``; an indented snippet is dedented).  Unparseable files and snippets are counted as
   ``parse_errors``.
2. **Candidates**: module-level functions, and methods of module-level classes.  A method is *lifted* to a
   module-level function when it does not use ``self``/``cls`` (its first parameter is dropped unless it is a
   ``staticmethod``; ``staticmethod``/``classmethod`` decorators are dropped; it is renamed ``Class_method`` if its
   name would clash with a module-level name or a builtin).  Statement blocks are not sampled: a block has no
   parameters, so it is not a function of an input, which every later stage needs.
3. **Slice**: the function plus, transitively, the module-level definitions its free names need (found with
   ``symtable``): other functions, classes, constants (``NAME = <expression>`` at the top level of the module) and
   ``import`` / ``from ... import`` statements.  Only unconditional top-level bindings count (a top-level ``try``
   counts as its success path, without overriding an earlier binding); the last one wins.  A
   name that is rebound in a conditional top-level block or mutated at the top level (``X[k] = ...``,
   ``X.update(...)``, ``X += ...``) is not sliced (its value depends on the module's execution), nor is a
   constant defined in terms of itself; a name that resolves to nothing (not a builtin, not a parameter or local,
   not in the slice) drops the seed (``unresolved name``).  The code is rebuilt with ``ast.unparse`` (comments and
   formatting do not survive): docstrings of every definition are removed (the entry's is kept in ``Seed.doc``),
   annotations are removed except the entry's own signature annotations that resolve to builtins, the slice or
   allowed imports (kept as type hints for input generation).  Dependencies come in source order, the entry last.
4. **Static filters**, checked in this order (the first that fails is the one counted): ``async``,
   ``uses self/cls`` (also ``super()``, ``__class__`` and private name mangling), ``decorated`` (any decorator on
   the entry but ``staticmethod``/``classmethod`` on a method and ``functools.lru_cache``/``cache``, which are
   dropped), ``generator`` (``yield`` in the entry's own body), ``no parameters`` (one possible input only),
   ``only *args/**kwargs``, ``no return value`` (no ``return <value>`` in the entry's own body: the released
   records assert on return values, so an in-place mutator or a function that only raises has nothing to
   predict), ``unresolved name``, ``too short`` / ``too long`` (non-blank lines of the seed's code within
   ``[min_lines, max_lines]``, at most ``max_chars`` characters), then on the whole slice ``async``,
   ``global/nonlocal``, ``disallowed import`` (any import, also inside functions, of a module outside
   ``ALLOWED_MODULES``: this is what keeps files, network, processes, time, randomness and threads out, since
   ``os``, ``sys``, ``io``, ``time``, ``random``, ``threading``, ``socket``, ``subprocess`` ... are not allowed),
   ``unsafe name`` (builtins in ``UNSAFE_NAMES`` such as ``open``, ``input``, ``exec``, ``eval``, ``compile``,
   ``__import__``, ``globals``, ``id``, unless the code rebinds the name; attributes in ``UNSAFE_ATTRS`` such as
   ``__globals__`` or ``datetime.now``), ``dynamic attribute`` (``getattr``/``setattr``/``delattr``/``hasattr``
   with a non-constant name), ``print`` (printed output is a side effect that no released record asserts on,
   and it would clutter the sandbox's stdout: dropped rather than kept), ``compile error``.
5. **Dedup** in input order (the first copy is kept): exact duplicates share ``normalised_ast_hash`` (docstrings
   and annotations removed, unused imports dropped, every name the code binds renamed canonically, constants
   kept, formatting irrelevant); near duplicates have a Jaccard similarity ``>= near_dup_threshold`` between the
   3-token shingles of their canonical sources (candidates from a datasketch MinHash LSH index, 128 permutations,
   tuned 0.1 below the threshold for recall; the exact Jaccard decides, so no pair below the threshold is
   removed, and a pair above it is missed only with a small probability).  The entry functions alone must be
   that similar too, so two entries that share a large helper (``heapq.heappop`` and ``heapreplace``) are kept.

``Seed.params`` is the entry's signature without defaults or annotations, e.g. ``("a", "x", "lo", "*", "key")``
or ``("s", "*args", "**kw")``; positional-only parameters are listed plainly.

Ids are the first 16 hex digits of sha256 over ``entry`` and the (unparse-normalised) ``code``: stable across runs
and machines for the same interpreter version.  Nothing here executes seed code; ``compile`` is the only check.
"""

from __future__ import annotations

import ast
import builtins
import copy
import dataclasses
import gzip
import hashlib
import json
import re
import symtable
import sysconfig
import textwrap
import tokenize
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from datasketch import MinHash, MinHashLSH

from data_pipeline.builder.types import Seed
from data_pipeline.errors import UserError

# Standard-library modules that give many self-contained, pure functions (129 seeds with the default bounds on
# CPython 3.11.7; see tests/data_pipeline/builder/test_seeds.py).  Each name is a module of the running interpreter's
# standard library with Python source; a package name means its ``__init__.py``.
STDLIB_MODULES: tuple[str, ...] = (
    "_pydecimal",  # integer helpers of the pure-Python decimal: _sqrt_nearest, _iexp, _log10_lb, ...
    "base64",
    "bisect",
    "calendar",
    "colorsys",
    "datetime",  # the pure-Python implementation's date arithmetic helpers
    "difflib",
    "encodings.punycode",
    "heapq",
    "html",
    "ipaddress",
    "quopri",
    "statistics",
    "string",
    "textwrap",
    "unittest.util",
    "urllib.parse",
)

# Modules a seed may import: pure computation, no I/O, clock, randomness, threads or interpreter state.
ALLOWED_MODULES: frozenset[str] = frozenset({
    "__future__", "abc", "array", "base64", "binascii", "bisect", "calendar", "cmath", "collections", "colorsys",
    "copy", "dataclasses", "datetime", "decimal", "difflib", "enum", "fnmatch", "fractions", "functools",
    "graphlib", "hashlib", "heapq", "html", "itertools", "json", "keyword", "math", "numbers", "operator", "re",
    "reprlib", "statistics", "string", "struct", "textwrap", "types", "typing", "unicodedata", "zlib",
})

# Builtins a seed may not use (unless its code rebinds the name): I/O, dynamic code, interpreter state, identity
# (``id`` differs between runs) and exits.
UNSAFE_NAMES: frozenset[str] = frozenset({
    "open", "input", "exec", "eval", "compile", "__import__", "globals", "locals", "vars", "breakpoint", "exit",
    "quit", "help", "id", "SystemExit", "KeyboardInterrupt", "GeneratorExit",
})

# Attributes a seed may not touch: interpreter internals (sandbox escapes) and the clock / local time zone.
# Also as string constants anywhere (``operator.attrgetter("f_back")``, ``"tb_frame"`` built up elsewhere is
# caught by the ban on attrgetter/methodcaller below), and any dunder attribute outside ``SAFE_DUNDERS``: a
# program in the sandbox shares its process with the trusted driver, and a frame reached through
# ``e.__traceback__`` leads to the driver's ``emit``, with which it could forge its own trace.
UNSAFE_ATTRS: frozenset[str] = frozenset({
    "__globals__", "__builtins__", "__code__", "__closure__", "__subclasses__", "__import__", "__loader__",
    "__spec__", "__getattribute__", "f_globals", "f_locals", "f_back", "f_code", "f_builtins", "gi_frame",
    "gi_code", "cr_frame", "tb_frame", "tb_next", "ag_frame", "now", "today", "utcnow", "fromtimestamp",
    "utcfromtimestamp", "astimezone", "timestamp", "setcontext", "attrgetter", "methodcaller",
})

# Dunder attributes a seed may use: names and the numeric / container protocol, nothing that reaches frames,
# code, globals or the class hierarchy.
SAFE_DUNDERS: frozenset[str] = frozenset({
    "__name__", "__qualname__", "__doc__", "__module__", "__len__", "__index__", "__int__", "__float__",
    "__abs__", "__neg__", "__str__", "__repr__", "__iter__", "__next__", "__contains__", "__getitem__",
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__hash__", "__add__", "__sub__", "__mul__",
    "__bool__", "__init__", "__class__",
})

_BUILTIN_NAMES = frozenset(n for n in dir(builtins) if not (n.startswith("__") and n.endswith("__"))) | {
    "__debug__", "__import__"}
_DYNAMIC_ATTR_FUNCS = frozenset({"getattr", "setattr", "delattr", "hasattr"})
_STRIP_DECORATORS = frozenset({"staticmethod", "classmethod"})
# Caches do not change a pure function's values: stripped from the entry (kept on helpers).
_CACHE_DECORATORS = frozenset({"lru_cache", "cache", "functools.lru_cache", "functools.cache"})
_SHINGLE = 3
_NUM_PERM = 128
_TOKEN_RE = re.compile(r"[A-Za-z_]\w*|\d[\w.]*|\S")
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


@dataclasses.dataclass
class SeedReport:
    """The seeds kept, counts per stage and filter, and every removed item with its reason.

    ``removed`` rows: ``{"id", "origin", "entry", "reason", "detail"}`` (``id`` is None when the item was dropped
    before its code was built; ``detail`` names the offending name, module or size) and, for duplicates,
    ``"duplicate_of"`` (the kept seed's id).  Parse errors have ``entry`` None.
    """

    seeds: list[Seed]
    counts: dict[str, int]
    removed: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"seeds": [s.to_json() for s in self.seeds], "counts": dict(self.counts), "removed": self.removed}


# ----------------------------------------------------------------------------------------------------------------
# Sources


def stdlib_corpus(modules: Sequence[str] = STDLIB_MODULES) -> list[Path]:
    """The source files of the running interpreter's standard library for ``modules`` (no module is imported).

    Raises ``UserError`` for a name without Python source (a C module such as ``math``, or a typo).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for name in modules:
        rel = Path(*name.split("."))
        for cand in (root / f"{rel}.py", root / rel / "__init__.py"):
            if cand.is_file():
                out.append(cand)
                break
        else:
            raise UserError(f"stdlib module {name!r}: no Python source under {root}")
    return out


def _label(path: Path, base: Path | None) -> str:
    """How origins name a file: relative to the walked directory, to the stdlib, or its bare name."""
    if base is not None:
        return path.relative_to(base).as_posix()
    try:
        return path.resolve().relative_to(Path(sysconfig.get_paths()["stdlib"]).resolve()).as_posix()
    except ValueError:
        return path.name


def _read_py(path: Path) -> str:
    raw = path.read_bytes()
    encoding, _ = tokenize.detect_encoding(iter(raw.splitlines(keepends=True)).__next__)
    return raw.decode(encoding)


def _read_jsonl(path: Path) -> Iterator[tuple[str, str]]:
    """(label, code) per snippet; label is the snippet's ``id`` when it has one, else ``file:line``."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{where}: not valid UTF-8 ({e.reason})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("code"), str):
                raise UserError(f'{where}: expected a JSON object with a string "code"')
            sid = obj.get("id")
            yield (str(sid) if sid not in (None, "") else f"{path.name}:{lineno}"), obj["code"]


def _units(sources: Sequence[str | Path], counts: dict[str, int],
           removed: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """(label, source text) for every readable file or snippet, in a deterministic order."""
    for src in sources:
        path = Path(src)
        if path.is_dir():
            files = sorted(path.rglob("*.py"), key=lambda p: p.relative_to(path).as_posix())
            pairs = [(f, _label(f, path)) for f in files if f.is_file()]
        elif path.is_file() and path.suffix == ".py":
            pairs = [(path, _label(path, None))]
        elif path.is_file() and (path.name.endswith(".jsonl") or path.name.endswith(".jsonl.gz")):
            counts["files"] += 1
            for label, code in _read_jsonl(path):
                counts["snippets"] += 1
                yield label, code
            continue
        elif not path.exists():
            raise UserError(f"{path}: no such file or directory")
        else:
            raise UserError(f"{path}: a seed source is a directory, a .py file or a .jsonl(.gz) file of snippets")
        for f, label in pairs:
            counts["files"] += 1
            try:
                text = _read_py(f)
            except (OSError, UnicodeDecodeError, SyntaxError) as e:
                counts["parse_errors"] += 1
                removed.append({"id": None, "origin": label, "entry": None, "reason": "parse error",
                                "detail": str(e)})
                continue
            yield label, text


# ----------------------------------------------------------------------------------------------------------------
# AST helpers


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _is_docstring(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str))


def _fix_empty_bodies(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module) and isinstance(getattr(node, "body", None), list) and not node.body:
            node.body = [ast.Pass()]


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (*_FUNCS, ast.ClassDef, ast.Module)) and node.body and _is_docstring(node.body[0]):
            node.body = node.body[1:]
    _fix_empty_bodies(tree)


def _clear_signature(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
    a = fn.args
    for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
        if arg is not None:
            arg.annotation = None
    fn.returns = None


class _AnnotationStripper(ast.NodeTransformer):
    """Remove annotations from signatures and function bodies (``everywhere``: also class and module bodies)."""

    def __init__(self, everywhere: bool) -> None:
        self.everywhere = everywhere
        self.in_function = False

    def _scoped(self, node: ast.AST, in_function: bool) -> ast.AST:
        saved, self.in_function = self.in_function, in_function
        self.generic_visit(node)
        self.in_function = saved
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        _clear_signature(node)
        return self._scoped(node, True)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        return self._scoped(node, False)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST | None:
        if not (self.in_function or self.everywhere):
            return node
        if node.value is None:
            return None
        return ast.copy_location(ast.Assign(targets=[node.target], value=node.value), node)


def _strip_annotations(tree: ast.AST, everywhere: bool = False) -> None:
    _AnnotationStripper(everywhere).visit(tree)
    _fix_empty_bodies(tree)


def _own_nodes(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[ast.AST]:
    """Nodes of a function's own body, not descending into nested functions, lambdas or classes."""
    stack: list[ast.AST] = list(fn.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, _SCOPES):
            stack.extend(ast.iter_child_nodes(node))


def _bound_names(tree: ast.AST) -> set[str]:
    """Every name the code binds anywhere (params, assignments, defs, imports, except/match captures)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            out.add(node.id)
        elif isinstance(node, (*_FUNCS, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, ast.alias):
            out.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            out.add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            out.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            out.add(node.rest)
    return out


_INLINE_SCOPES = frozenset({"listcomp", "setcomp", "dictcomp", "genexpr"})


def _needs(source: str) -> tuple[set[str], set[str]]:
    """Global names a top-level statement reads: (when it executes, only when its functions run).

    Definition-time reads are the module-level expressions, default values, decorators, bases and class bodies;
    they must be bound *before* the statement, which is what the slice's source order checks.
    """
    table = symtable.symtable(source, "<seed>", "exec")
    now = {s.get_name() for s in table.get_symbols() if s.is_referenced()}
    later: set[str] = set()
    stack = [(t, False) for t in table.get_children()]
    while stack:
        t, deferred = stack.pop()
        deferred = deferred or (t.get_type() == "function" and t.get_name() not in _INLINE_SCOPES)
        (later if deferred else now).update(
            s.get_name() for s in t.get_symbols() if s.is_global() and s.is_referenced())
        stack.extend((c, deferred) for c in t.get_children())
    return now, later


# ----------------------------------------------------------------------------------------------------------------
# Module analysis and slicing


@dataclasses.dataclass
class _Binding:
    key: tuple[int, int, int]  # (statement index, index inside a top-level try, alias index): source order
    kind: str  # "def" | "class" | "const" | "import"
    source: ast.stmt  # as parsed (defs and classes are cleaned on first use: most are never needed)
    names: frozenset[str]
    _stmt: ast.stmt | None = None
    _text: str | None = None
    _needs: set[str] | None = None
    _later: set[str] = dataclasses.field(default_factory=set)
    broken: bool = False

    @property
    def stmt(self) -> ast.stmt:
        """The statement as it goes into a seed: docstrings and annotations of defs and classes removed."""
        if self._stmt is None:
            node = copy.deepcopy(self.source)
            if self.kind in ("def", "class"):
                _strip_docstrings(node)
                _strip_annotations(node)
            self._stmt = node
        return self._stmt

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = ast.unparse(self.stmt)
        return self._text

    def needs(self) -> set[str]:
        """Everything the statement reads (its own names excepted: recursion)."""
        return (self.needs_now() | self._later) - (self.names if self.kind in ("def", "class") else set())

    def needs_now(self) -> set[str]:
        """What it reads when it executes (its own names included: ``X = X + 1`` is not self-contained)."""
        if self._needs is None:
            try:
                self._needs, self._later = _needs(self.text)
            except SyntaxError:
                self._needs, self._later, self.broken = set(), set(), True
        return self._needs


def _target_names(target: ast.expr) -> list[str] | None:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        out: list[str] = []
        for elt in target.elts:
            names = _target_names(elt)
            if names is None:
                return None
            out += names
        return out
    return None


def _unstable_names(stmt: ast.stmt) -> set[str]:
    """Names a non-definition top-level statement rebinds (conditionally) or mutates; imports are ignored, as in
    the ``try: from _accel import *`` accelerator pattern, whose pure-Python definitions we take."""
    out: set[str] = set()
    stack: list[ast.AST] = [stmt]
    while stack:
        node = stack.pop()
        if isinstance(node, (*_FUNCS, ast.ClassDef)):
            out.add(node.name)
            continue
        if isinstance(node, (ast.Lambda, ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.ctx, (ast.Store, ast.Del)) \
                and getattr(node, "attr", None) != "__doc__":
            out.add(_root_name(node.value) or "")
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) \
                and isinstance(node.value.func, ast.Attribute):
            out.add(_root_name(node.value.func.value) or "")
        stack.extend(ast.iter_child_nodes(node))
    return out - {""}


def _simple_value(expr: ast.expr) -> bool:
    return not any(isinstance(n, (ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)) for n in ast.walk(expr))


class _Module:
    """The top-level bindings of one parsed module or snippet.

    A top-level ``try`` is read as its success path: bindings in its body and ``else`` count (without overriding
    an earlier unconditional binding, so the pure-Python definitions win over ``try: from _accel import f``), its
    handlers are ignored.
    """

    def __init__(self, tree: ast.Module) -> None:
        self.bindings: dict[str, _Binding] = {}
        self._unstable: set[str] = set()
        for i, stmt in enumerate(tree.body):
            self._statement((i, 0), stmt, override=True)
        for name in self._unstable:
            if name in self.bindings and self.bindings[name].kind != "import":
                del self.bindings[name]

    def _statement(self, i: tuple[int, int], stmt: ast.stmt, override: bool) -> None:
        bind = self._bind if override else self._bind_weak
        if isinstance(stmt, (*_FUNCS, ast.ClassDef)):
            kind = "class" if isinstance(stmt, ast.ClassDef) else "def"
            bind(_Binding((*i, 0), kind, stmt, frozenset({stmt.name})))
        elif isinstance(stmt, ast.Import):
            for j, alias in enumerate(stmt.names):
                name = alias.asname or alias.name.split(".")[0]
                node = ast.copy_location(ast.Import(names=[alias]), stmt)
                bind(_Binding((*i, j), "import", node, frozenset({name})))
        elif isinstance(stmt, ast.ImportFrom):
            for j, alias in enumerate(stmt.names):
                if alias.name == "*":
                    continue
                node = ast.copy_location(ast.ImportFrom(module=stmt.module, names=[alias], level=stmt.level), stmt)
                bind(_Binding((*i, j), "import", node, frozenset({alias.asname or alias.name})))
        elif isinstance(stmt, ast.Assign) and _simple_value(stmt.value) \
                and all(_target_names(t) is not None for t in stmt.targets):
            names = frozenset(n for t in stmt.targets for n in _target_names(t) or [])
            bind(_Binding((*i, 0), "const", stmt, names))
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None \
                and _simple_value(stmt.value):
            node = ast.copy_location(ast.Assign(targets=[stmt.target], value=stmt.value), stmt)
            bind(_Binding((*i, 0), "const", node, frozenset({stmt.target.id})))
        elif isinstance(stmt, ast.Try) and override:
            for k, sub in enumerate((*stmt.body, *stmt.orelse), 1):
                self._statement((i[0], k), sub, override=False)
            self._unstable |= {n for sub in stmt.finalbody for n in _unstable_names(sub)}
        else:
            self._unstable |= _unstable_names(stmt)

    def _bind_weak(self, b: _Binding) -> None:
        if not any(name in self.bindings for name in b.names):
            self._bind(b)

    def _bind(self, b: _Binding) -> None:
        for name in b.names:
            self.bindings[name] = b

    def slice(self, needs: set[str], own: frozenset[str]) -> tuple[list[_Binding], list[str]]:
        """Bindings needed transitively (source order) and the names that resolve to nothing."""
        chosen: dict[tuple[int, int, int], _Binding] = {}
        unresolved: set[str] = set()
        todo = sorted(needs - own)
        seen: set[str] = set(own)
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            b = self.bindings.get(name)
            if b is None:
                if name not in _BUILTIN_NAMES:
                    unresolved.add(name)
                continue
            if b.key in chosen:
                continue
            chosen[b.key] = b
            deps = b.needs()
            if b.broken:
                unresolved.add(name)
            for early in sorted(b.needs_now()):  # must be bound before b: it is read when b executes
                other = self.bindings.get(early)
                if other is not None and other.key >= b.key:
                    unresolved.add(early)
            todo.extend(sorted(deps - seen))
        return [chosen[k] for k in sorted(chosen)], sorted(unresolved)


# ----------------------------------------------------------------------------------------------------------------
# Candidates


@dataclasses.dataclass
class _Candidate:
    origin: str
    entry: str
    reason: str | None = None
    detail: str = ""
    seed: Seed | None = None


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, ...]:
    """The signature without defaults or annotations: ``a``, ``b``, ``*args``, ``key``, ``**kw`` (``*`` alone
    before keyword-only parameters when there is no ``*args``; positional-only parameters are listed plainly)."""
    a = fn.args
    out = [x.arg for x in (*a.posonlyargs, *a.args)]
    if a.vararg is not None:
        out.append("*" + a.vararg.arg)
    elif a.kwonlyargs:
        out.append("*")
    out += [x.arg for x in a.kwonlyargs]
    if a.kwarg is not None:
        out.append("**" + a.kwarg.arg)
    return tuple(out)


def _decorator_name(dec: ast.expr) -> str:
    """``staticmethod``, ``functools.lru_cache`` (a call's callee), or "" for anything else."""
    if isinstance(dec, ast.Call):
        dec = dec.func
    if isinstance(dec, ast.Name):
        return dec.id
    if isinstance(dec, ast.Attribute) and isinstance(dec.value, ast.Name):
        return f"{dec.value.id}.{dec.attr}"
    return ""


def _uses_class_context(fn: ast.FunctionDef | ast.AsyncFunctionDef, first: str | None) -> str:
    """Why a method cannot be lifted out of its class ("" if it can)."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Name):
            if node.id == first:
                return first
            if node.id in ("super", "__class__"):
                return node.id
        ident = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
        if ident.startswith("__") and not ident.endswith("__"):
            return ident  # private name mangling depends on the class
    return ""


def _lift(fn: ast.FunctionDef | ast.AsyncFunctionDef, static: bool) -> ast.FunctionDef | ast.AsyncFunctionDef:
    out = copy.deepcopy(fn)
    out.decorator_list = []
    if not static:
        a = out.args
        positional = a.posonlyargs + a.args
        if positional:
            if len(a.defaults) == len(positional):
                a.defaults = a.defaults[1:]
            if a.posonlyargs:
                a.posonlyargs = a.posonlyargs[1:]
            else:
                a.args = a.args[1:]
    return out


def _has_return_value(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(isinstance(n, ast.Return) and n.value is not None
               and not (isinstance(n.value, ast.Constant) and n.value.value is None) for n in _own_nodes(fn))


def _restore_annotations(entry: ast.FunctionDef | ast.AsyncFunctionDef,
                         original: ast.FunctionDef | ast.AsyncFunctionDef, module: _Module,
                         chosen: list[_Binding]) -> list[_Binding]:
    """Put back the entry's signature annotations whose names resolve; returns imports they add to the slice."""
    in_slice = {n for b in chosen for n in b.names}
    extra: dict[tuple[int, int, int], _Binding] = {}

    def resolvable(ann: ast.expr) -> bool:
        for node in ast.walk(ann):
            if isinstance(node, ast.Name) and node.id not in _BUILTIN_NAMES and node.id not in in_slice:
                b = module.bindings.get(node.id)
                if b is None or b.kind != "import" or _disallowed_import(b.stmt):
                    return False
                extra[b.key] = b
        return True

    a_new, a_old = entry.args, original.args
    old = {x.arg: x.annotation for x in (*a_old.posonlyargs, *a_old.args, *a_old.kwonlyargs, a_old.vararg,
                                         a_old.kwarg) if x is not None}
    for x in (*a_new.posonlyargs, *a_new.args, *a_new.kwonlyargs, a_new.vararg, a_new.kwarg):
        if x is not None and old.get(x.arg) is not None and resolvable(old[x.arg]):
            x.annotation = copy.deepcopy(old[x.arg])
    if original.returns is not None and resolvable(original.returns):
        entry.returns = copy.deepcopy(original.returns)
    return [b for k, b in sorted(extra.items()) if k not in {c.key for c in chosen}]


def _disallowed_import(node: ast.AST) -> str:
    """The first module an import statement names outside ``ALLOWED_MODULES`` ("" if none)."""
    if isinstance(node, ast.ImportFrom):
        if node.level:
            return "." * node.level + (node.module or "")
        mods = [node.module or ""]
    elif isinstance(node, ast.Import):
        mods = [a.name for a in node.names]
    else:
        return ""
    for mod in mods:
        if mod.split(".")[0] not in ALLOWED_MODULES:
            return mod
    return ""


def _code_filters(tree: ast.Module) -> tuple[str, str] | None:
    """The first static filter the whole seed fails, as (reason, detail)."""
    bound = _bound_names(tree)
    checks: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.AsyncFunctionDef, ast.Await, ast.AsyncFor, ast.AsyncWith)):
            checks.append(("async", type(node).__name__))
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            checks.append(("global/nonlocal", ", ".join(node.names)))
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and (mod := _disallowed_import(node)):
            checks.append(("disallowed import", mod))
        elif isinstance(node, ast.Name) and node.id not in bound and node.id in UNSAFE_NAMES:
            checks.append(("unsafe name", node.id))
        elif isinstance(node, ast.Attribute) and (node.attr in UNSAFE_ATTRS or (
                node.attr.startswith("__") and node.attr.endswith("__") and node.attr not in SAFE_DUNDERS)):
            checks.append(("unsafe name", "." + node.attr))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in UNSAFE_ATTRS:
            checks.append(("unsafe name", repr(node.value)))
        elif isinstance(node, ast.ImportFrom) and any(a.name in UNSAFE_ATTRS for a in node.names):
            checks.append(("unsafe name", next(a.name for a in node.names if a.name in UNSAFE_ATTRS)))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in bound \
                and node.func.id in _DYNAMIC_ATTR_FUNCS:
            name = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                checks.append(("dynamic attribute", node.func.id))
            elif name.value in UNSAFE_ATTRS:
                checks.append(("unsafe name", name.value))
        elif isinstance(node, ast.Name) and node.id == "print" and "print" not in bound:
            checks.append(("print", "print"))
    order = ["async", "global/nonlocal", "disallowed import", "unsafe name", "dynamic attribute", "print"]
    return min(checks, key=lambda c: (order.index(c[0]), c[1])) if checks else None


def _seed_id(entry: str, code: str) -> str:
    return hashlib.sha256(f"{entry}\n{code}".encode()).hexdigest()[:16]


def _render(parts: list[tuple[str, str]]) -> str:
    """Top-level statements (kind, source) with a blank line around definitions, none between imports/constants."""
    out: list[str] = []
    prev = ""
    for kind, text in parts:
        if out and (kind in ("def", "class") or prev in ("def", "class")):
            out.append("")
        out.append(text)
        prev = kind
    return "\n".join(out)


def _candidates(text: str, label: str, bounds: tuple[int, int, int]) -> Iterator[_Candidate] | None:
    """Every function and method of a module as a candidate (None when the module does not parse)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        try:  # an indented snippet (a method cut from its class)
            tree = ast.parse(textwrap.dedent(text))
        except (SyntaxError, ValueError):
            return None
    return _module_candidates(tree, label, bounds)


def _module_candidates(tree: ast.Module, label: str, bounds: tuple[int, int, int]) -> Iterator[_Candidate]:
    module = _Module(tree)
    for stmt in tree.body:
        if isinstance(stmt, _FUNCS):
            pairs: list[tuple[ast.FunctionDef | ast.AsyncFunctionDef, str | None]] = [(stmt, None)]
        elif isinstance(stmt, ast.ClassDef):
            pairs = [(sub, stmt.name) for sub in stmt.body if isinstance(sub, _FUNCS)]
        else:
            continue
        for fn, cls in pairs:
            try:
                yield _candidate(module, fn, cls, label, bounds)
            except RecursionError:  # pathologically nested code
                yield _Candidate(origin=f"{label}:{fn.lineno}", entry=fn.name, reason="compile error",
                                 detail="too deeply nested")


def _candidate(module: _Module, fn: ast.FunctionDef | ast.AsyncFunctionDef, cls: str | None, label: str,
               bounds: tuple[int, int, int]) -> _Candidate:
    c = _Candidate(origin=f"{label}:{fn.lineno}", entry=fn.name if cls is None else f"{cls}.{fn.name}")

    def drop(reason: str, detail: str = "") -> _Candidate:
        c.reason, c.detail = reason, detail
        return c

    if isinstance(fn, ast.AsyncFunctionDef):
        return drop("async", "async def")
    decorators = [_decorator_name(d) for d in fn.decorator_list]
    if cls is not None:
        static = "staticmethod" in decorators  # (a classmethod's ``cls`` is its first parameter, as ``self``)
        positional = fn.args.posonlyargs + fn.args.args
        first = None if static or not positional else positional[0].arg
        if why := _uses_class_context(fn, first):
            return drop("uses self/cls", why)
        original = _lift(fn, static)
        name = fn.name
        if name in module.bindings or name in _BUILTIN_NAMES:
            name = f"{cls}_{fn.name}"
            while name in module.bindings or name in _BUILTIN_NAMES:
                name += "_"
        original.name = name
    else:
        original = copy.deepcopy(fn)
        original.decorator_list = []
    other = [ast.unparse(d) for d, n in zip(fn.decorator_list, decorators, strict=True)
             if n not in _CACHE_DECORATORS and (cls is None or n not in _STRIP_DECORATORS)]
    if other:
        return drop("decorated", other[0])
    c.entry = original.name
    if any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in _own_nodes(original)):
        return drop("generator")
    a = original.args
    if not (a.posonlyargs or a.args or a.kwonlyargs or a.vararg or a.kwarg):
        return drop("no parameters")
    if not (a.posonlyargs or a.args or a.kwonlyargs):
        return drop("only *args/**kwargs")
    if not _has_return_value(original):
        return drop("no return value")

    doc = ast.get_docstring(original, clean=True) or ""
    entry = copy.deepcopy(original)
    _strip_docstrings(entry)
    _strip_annotations(entry)
    try:
        needs = set.union(*_needs(ast.unparse(entry))) - {entry.name}
    except SyntaxError as e:
        return drop("compile error", str(e))
    chosen, unresolved = module.slice(needs, frozenset({entry.name}))
    chosen += _restore_annotations(entry, original, module, chosen)
    chosen.sort(key=lambda b: b.key)
    code = _render([(b.kind, b.text) for b in chosen] + [("def", ast.unparse(entry))])
    c.seed = Seed(id=_seed_id(entry.name, code), code=code, entry=entry.name, params=_params(entry),
                  origin=c.origin, doc=doc)
    if unresolved:
        return drop("unresolved name", ", ".join(unresolved))
    min_lines, max_lines, max_chars = bounds
    lines = sum(1 for line in code.splitlines() if line.strip())
    if lines < min_lines:
        return drop("too short", f"{lines} lines")
    if lines > max_lines or len(code) > max_chars:
        return drop("too long", f"{lines} lines, {len(code)} chars")
    if failed := _code_filters(ast.parse(code)):
        return drop(*failed)
    try:
        compile(code, "<seed>", "exec")
    except (SyntaxError, ValueError) as e:
        return drop("compile error", str(e))
    return c


# ----------------------------------------------------------------------------------------------------------------
# Normalisation and dedup


class _Renamer(ast.NodeTransformer):
    def __init__(self, mapping: dict[str, str]) -> None:
        self.mapping = mapping

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = self.mapping.get(node.id, node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = self.mapping.get(node.arg, node.arg)
        return node

    def _named(self, node: Any) -> ast.AST:
        if getattr(node, "name", None):
            node.name = self.mapping.get(node.name, node.name)
        self.generic_visit(node)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _named  # type: ignore[assignment]
    visit_ExceptHandler = visit_MatchAs = visit_MatchStar = _named  # type: ignore[assignment]

    def visit_MatchMapping(self, node: ast.MatchMapping) -> ast.AST:
        if node.rest:
            node.rest = self.mapping.get(node.rest, node.rest)
        self.generic_visit(node)
        return node

    def _names(self, node: ast.Global | ast.Nonlocal) -> ast.AST:
        node.names = [self.mapping.get(n, n) for n in node.names]
        return node

    visit_Global = visit_Nonlocal = _names  # type: ignore[assignment]

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id in self.mapping:  # keywords of the code's own functions
            for kw in node.keywords:
                if kw.arg is not None:
                    kw.arg = self.mapping.get(kw.arg, kw.arg)
        self.generic_visit(node)
        return node


def _identifiers_in_order(tree: ast.AST) -> Iterator[str]:
    """Identifiers in source (field) order, depth first: a renamed copy visits them in the same order."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.arg):
            yield node.arg
        elif isinstance(node, (*_FUNCS, ast.ClassDef, ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) \
                and node.name:
            yield node.name
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            yield from node.names
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _drop_unused_imports(tree: ast.Module) -> None:
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if not isinstance(stmts, list):
                continue
            kept = []
            for stmt in stmts:
                if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
                        continue
                    stmt.names = [a for a in stmt.names
                                  if a.name == "*" or (a.asname or a.name.split(".")[0]) in used]
                    if not stmt.names:
                        continue
                kept.append(stmt)
            setattr(node, field, kept)
    _fix_empty_bodies(tree)


def canonical_source(code: str) -> str:
    """``code`` with docstrings, annotations and unused imports removed and every name it binds (functions,
    classes, parameters, locals, module-level constants) renamed ``_v0``, ``_v1``... in order of first appearance;
    imported and builtin names, attributes and constants are kept.  Formatting and comments do not survive.

    Two programs that differ only by formatting, comments, docstrings, type hints or a consistent renaming of
    their own names get the same result.  Raises ``SyntaxError`` when ``code`` does not parse.
    """
    tree = ast.parse(code)
    _strip_docstrings(tree)
    _strip_annotations(tree, everywhere=True)
    _drop_unused_imports(tree)
    imported = {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import,
                                                                                            ast.ImportFrom))
                for a in n.names}
    bound = _bound_names(tree) - imported
    mapping: dict[str, str] = {}
    for ident in _identifiers_in_order(tree):
        if ident in bound and ident not in mapping:
            mapping[ident] = f"_v{len(mapping)}"
    tree = _Renamer(mapping).visit(tree)
    return ast.unparse(tree)


def normalised_ast_hash(code: str) -> str:
    """sha256 (hex) of ``canonical_source(code)``: equal for formatting-, docstring- and renaming-only copies."""
    return hashlib.sha256(canonical_source(code).encode()).hexdigest()


def _shingles(canonical: str) -> set[str]:
    tokens = _TOKEN_RE.findall(canonical)
    if len(tokens) <= _SHINGLE:
        return {" ".join(tokens)}
    return {" ".join(tokens[i:i + _SHINGLE]) for i in range(len(tokens) - _SHINGLE + 1)}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class _NearDup:
    """Near-duplicate index: MinHash LSH over the whole program's shingles for candidates; a candidate is a near
    duplicate when the exact Jaccard of the whole programs *and* of the entry functions alone reach the threshold
    (so two different entries that share a large helper are not duplicates of each other)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        # Retrieval below the decision threshold, for recall; the exact Jaccard decides.
        self.lsh = MinHashLSH(threshold=min(max(threshold - 0.1, 0.05), 0.9), num_perm=_NUM_PERM)
        self.kept: dict[str, tuple[int, set[str], set[str]]] = {}

    @staticmethod
    def shingles(canonical: str) -> tuple[set[str], set[str]]:
        """Shingles of the whole canonical program and of its last statement (the entry)."""
        entry = ast.unparse(ast.parse(canonical).body[-1])
        return _shingles(canonical), _shingles(entry)

    def find(self, whole: set[str], entry: set[str]) -> tuple[str | None, MinHash]:
        mh = MinHash(num_perm=_NUM_PERM, seed=1)
        mh.update_batch([s.encode() for s in sorted(whole)])
        best: tuple[int, str] | None = None
        for other in self.lsh.query(mh):
            order, their_whole, their_entry = self.kept[other]
            if (_jaccard(whole, their_whole) >= self.threshold and _jaccard(entry, their_entry) >= self.threshold
                    and (best is None or order < best[0])):
                best = (order, other)
        return (best[1] if best else None), mh

    def add(self, key: str, whole: set[str], entry: set[str], mh: MinHash) -> None:
        self.kept[key] = (len(self.kept), whole, entry)
        self.lsh.insert(key, mh)


# ----------------------------------------------------------------------------------------------------------------
# The stage


def select_seeds(sources: Sequence[str | Path], *, min_lines: int = 3, max_lines: int = 60, max_chars: int = 3000,
                 near_dup_threshold: float = 0.85, limit: int | None = None) -> SeedReport:
    """Seeds from ``sources`` (directories of .py files, .py files, .jsonl(.gz) snippet files), in input order.

    ``limit`` stops after that many seeds are kept: the seeds are then the first ``limit`` of the unlimited run,
    and the counts cover the part of the corpus read so far.  ``near_dup_threshold`` > 1 turns near-duplicate
    removal off.  See the module docstring for the filters and their reasons.
    """
    if near_dup_threshold <= 0 or min_lines < 0 or max_lines < min_lines or max_chars <= 0:
        raise UserError(f"select_seeds: bad bounds (min_lines={min_lines}, max_lines={max_lines}, "
                        f"max_chars={max_chars}, near_dup_threshold={near_dup_threshold})")
    counts: dict[str, int] = dict.fromkeys(("files", "snippets", "parse_errors", "candidates"), 0)
    removed: list[dict[str, Any]] = []
    seeds: list[Seed] = []
    exact: dict[str, str] = {}
    near = _NearDup(near_dup_threshold) if near_dup_threshold <= 1 else None
    bounds = (min_lines, max_lines, max_chars)
    dropped: dict[str, int] = {}
    exact_n = near_n = 0
    for label, text in _units(sources, counts, removed):
        if limit is not None and len(seeds) >= limit:
            break
        cands = _candidates(text, label, bounds)
        if cands is None:
            counts["parse_errors"] += 1
            removed.append({"id": None, "origin": label, "entry": None, "reason": "parse error", "detail": ""})
            continue
        for c in cands:
            if limit is not None and len(seeds) >= limit:
                break
            counts["candidates"] += 1
            seed = c.seed
            if c.reason is not None or seed is None:
                dropped[c.reason or "?"] = dropped.get(c.reason or "?", 0) + 1
                removed.append({"id": seed.id if seed else None, "origin": c.origin, "entry": c.entry,
                                "reason": c.reason, "detail": c.detail})
                continue
            canonical = canonical_source(seed.code)
            digest = hashlib.sha256(canonical.encode()).hexdigest()
            if digest in exact:
                exact_n += 1
                removed.append({"id": seed.id, "origin": seed.origin, "entry": seed.entry,
                                "reason": "exact duplicate", "detail": "", "duplicate_of": exact[digest]})
                continue
            if near is not None:
                whole, entry = near.shingles(canonical)
                dup, mh = near.find(whole, entry)
                if dup is not None:
                    near_n += 1
                    exact[digest] = dup
                    removed.append({"id": seed.id, "origin": seed.origin, "entry": seed.entry,
                                    "reason": "near duplicate", "detail": "", "duplicate_of": dup})
                    continue
                near.add(seed.id, whole, entry, mh)
            exact[digest] = seed.id
            seeds.append(seed)
    for reason in sorted(dropped):
        counts[f"dropped:{reason}"] = dropped[reason]
    counts["exact_duplicates"] = exact_n
    counts["near_duplicates"] = near_n
    counts["kept"] = len(seeds)
    return SeedReport(seeds=seeds, counts=counts, removed=removed)


def program_from_code(code: str, origin: str, entry: str | None = None, *, max_lines: int = 200,
                      max_chars: int = 12000) -> Seed | str:
    """A teacher's solution as a program, through the same slicing and static filters as the seeds: the
    function named ``entry`` (default: the last top-level function that passes), or why none does, as
    ``"StaticCheck(<filter>): ..."`` (counted beside runtime error types) or ``"SyntaxError: ..."``."""
    cands = _candidates(code, origin, (1, max_lines, max_chars))
    if cands is None:
        return "SyntaxError: the solution does not parse"
    passing, reasons = [], []
    for c in cands:
        if c.reason is None and c.seed is not None:
            passing.append(c.seed)
        elif entry is None or c.entry == entry:
            reasons.append((c.reason, f"{c.entry}" + (f" ({c.detail})" if c.detail else "")))
    chosen = [s for s in passing if entry is None or s.entry == entry]
    if chosen:
        return chosen[-1]
    if not reasons:
        return "StaticCheck(no function): no function with parameters"
    return f"StaticCheck({reasons[-1][0]}): " + "; ".join(f"{what}: {why}" for why, what in reasons)
