"""Inputs for a seed that has none (or too few): guess, run, mutate, keep what runs, is deterministic and covers.

Candidates (argument strings, canonical: ``", ".join(canonical_repr(v) for v in values)``) come from:

1. the given ``examples``, doctest lines of the docstring (``>>> entry(1, 'a')``), then per-parameter guesses
   ranked by evidence: the default value, the annotation (``int``, ``list[str]``, ``Optional[...]``), how the
   body uses the name (``p.split()`` -> str, ``range(p)`` -> int, ``p.items()`` -> dict, ``for x in p`` ->
   list), the name itself (``s``/``text`` -> str, ``n``/``k`` -> int, ``xs``/``nums`` -> list, ...), then a
   small type grid (int, str, list of ints, list of strs, dict, tuple, bool, None, float, bytes); a default
   that names a module-level literal constant counts as that literal;
2. EvalPlus-style type-aware mutation of the inputs that ran (ints +-1, x2, negated, 0, boundaries; strings
   insert/delete/replace/duplicate characters; lists append/remove/swap/mutate an element/empty/sort; dicts
   add/remove keys, mutate values; tuples elementwise; recursively; the body's int and str constants, ints
   +-1, are tried as a fuzzer's dictionary), from ``random.Random`` seeded by ``(rng_seed, seed.id)``, so a
   rerun proposes the same candidates;
3. with ``propose`` (a teacher), batches alternate between its proposals and mutation.

A candidate is *kept* only if: its call returns (no exception, no timeout, trace not truncated); inputs and
output are small (CodeI/O caps: strings < 100 characters, containers < 20 items, repr < 1 KiB; no NaN or
infinity) and the output reads back with ``ast.literal_eval``; and a second, independent run (another sandbox
job, the program loaded afresh for the call, ``trace.trace_calls(fresh=True)``) gives the same output and the
same trace.  The first run executes a whole batch in one namespace, so a function whose result depends on
earlier calls (a module-level counter, ``id()`` of new objects) differs from the fresh run; then the whole
seed is rejected (``InputsResult.nondeterministic``, every input counted ``nondeterministic``): one such call
means none of its traces can be trusted.  Limit: every job of one sandbox worker shares that worker's
``PYTHONHASHSEED`` and memory layout, so dependence on string hashing (a set of strings turned into a list)
or on ``id()`` of cached objects is caught only when the two runs land on different workers.

Of the valid candidates, those that add line or branch coverage are kept first; inputs with a new (output,
path) fill up to ``max_inputs``.  The search stops at ``max_inputs`` coverage-adding inputs, when coverage is
full and ``max_inputs`` inputs are kept, after ``patience`` batches without coverage growth (counted from the
first candidate that ran: until one does, guessing goes on), or after ``max_tries`` candidates.  Coverage
counts only kept (returning) runs, so a line that only raises stays uncovered.  Batches of ``batch_size``
candidates run as one sandbox job each (about 6 ms a job); ``generate_inputs_many`` advances many seeds per
round through one ``Sandbox.map``.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from data_pipeline.builder.coverage import Static, analyze, entry_node
from data_pipeline.builder.trace import (
    DEFAULT_MAX_REPR,
    DEFAULT_MAX_STEPS,
    DEFAULT_TIMEOUT_S,
    Trace,
    TraceFailure,
    canonical_repr,
    parse_args,
    trace_many,
)
from data_pipeline.builder.types import Seed
from sandbox import Sandbox

MAX_STR = 100      # strings (and bytes) shorter than this
MAX_ITEMS = 20     # containers with fewer items than this
MAX_REPR = 1024    # the repr of each input argument list / output shorter than this
MAX_DEPTH = 8
MAX_INT = 10**6    # mutation keeps ints within this (larger values are not rejected, only not proposed)

Propose = Callable[[Seed, list[str]], list[str]]

GRID: dict[str, list[Any]] = {
    "int": [3, 0, 1, 2, 5, -1, 10, 7],
    "str": ["abc", "", "a", "hello world", "aAbB12", "racecar", "a,b,c"],
    "list_int": [[1, 2, 3], [], [3, 1, 2], [5], [0, -1, 5, 5, 2]],
    "list_str": [["a", "b"], [], ["hello", "world", "hi"], ["x"]],
    "dict": [{"a": 1, "b": 2}, {}, {"x": 10}],
    "tuple": [(1, 2), (), (0, 5, 3)],
    "bool": [True, False],
    "none": [None],
    "bytes": [b"abc", b"", b"hello world"],
    "float": [1.5, 0.0, -2.5, 3.25],
}
GRID_ORDER = ("int", "str", "list_int", "list_str", "dict", "tuple", "bool", "none", "float", "bytes")

_NAMES = {
    "str": {"s", "text", "string", "word", "name", "line", "sentence", "prefix", "suffix", "sep", "delimiter",
            "char", "ch", "c", "pattern", "msg", "message", "substring", "sub", "src", "source", "path", "key",
            "st", "str1", "str2", "s1", "s2", "letter", "letters", "txt", "input_string", "input_str", "word1",
            "word2", "chars", "code", "expr", "expression", "html", "url", "title", "label", "fmt", "template"},
    "int": {"n", "i", "j", "k", "m", "num", "number", "count", "size", "length", "index", "idx", "start", "end",
            "stop", "step", "width", "height", "depth", "level", "base", "x", "y", "a", "b", "val", "value",
            "limit", "target", "pos", "offset", "amount", "times", "year", "month", "day", "p", "q", "r",
            "num1", "num2", "n1", "n2", "low", "high", "lo", "hi", "left", "right", "row", "col", "total", "bits"},
    "list_int": {"xs", "items", "lst", "nums", "numbers", "arr", "array", "values", "l", "seq", "sequence",
                 "data", "elements", "ints", "li", "vals", "iterable", "lista", "nums1", "nums2", "arr1", "arr2",
                 "scores", "prices", "heights", "weights", "matrix", "grid", "stack", "queue", "a_list"},
    "list_str": {"words", "strings", "names", "lines", "strs", "tokens", "texts", "sentences", "parts", "args",
                 "keys", "labels"},
    "dict": {"d", "dic", "dct", "mapping", "counts", "table", "config", "options", "graph", "freq",
             "dictionary", "kwargs", "env", "attrs", "params", "headers", "obj", "record", "data_dict"},
    "bool": {"flag", "reverse", "strict", "verbose", "recursive", "ignore_case", "case_sensitive", "inplace",
             "keepends", "sort", "unique"},
    "tuple": {"pair", "point", "tup", "t", "coords", "coord", "interval", "span", "shape"},
}
_STR_METHODS = {"lower", "upper", "split", "rsplit", "strip", "lstrip", "rstrip", "startswith", "endswith",
                "replace", "find", "rfind", "isdigit", "isalpha", "isalnum", "isspace", "isupper", "islower",
                "title", "capitalize", "casefold", "encode", "splitlines", "partition", "rpartition", "zfill",
                "center", "ljust", "rjust", "expandtabs", "swapcase", "format", "translate", "isidentifier",
                "removeprefix", "removesuffix", "isdecimal", "isnumeric"}
_BYTES_METHODS = {"decode", "hex"}
_LIST_METHODS = {"append", "extend", "pop", "insert", "sort", "reverse", "remove", "clear", "copy"}
_DICT_METHODS = {"items", "keys", "values", "get", "setdefault", "update", "popitem"}
_ANNOTATIONS = {"int": "int", "str": "str", "float": "float", "bool": "bool", "dict": "dict", "Dict": "dict",
                "Mapping": "dict", "MutableMapping": "dict", "tuple": "tuple", "Tuple": "tuple", "list": "list_int",
                "List": "list_int", "Sequence": "list_int", "Iterable": "list_int", "set": "list_int",
                "None": "none", "bytes": "bytes", "bytearray": "bytes", "Any": "int", "object": "int",
                "complex": "float", "Set": "list_int", "FrozenSet": "list_int", "frozenset": "list_int"}
_ISINSTANCE = {"int": "int", "str": "str", "float": "float", "bool": "bool", "dict": "dict", "list": "list_int",
               "tuple": "tuple", "bytes": "bytes", "bytearray": "bytes", "set": "list_int"}


@dataclasses.dataclass
class InputsResult:
    """The kept inputs (argument strings) with their traces, the coverage they reach, and why others were not
    kept (``raised:<Type>``, ``nondeterministic``, ``too_large``, ``nonfinite``, ``unliteral_output``,
    ``timeout``, ``truncated``, ``duplicate``, ``bad_args``, ``load_error``, ``crashed``, ``redundant``)."""

    inputs: list[str]
    traces: list[Trace]
    line_coverage: float
    branch_coverage: float
    rejected: dict[str, int]
    tried: int = 0
    batches: int = 0
    nondeterministic: bool = False

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "traces": [t.to_json() for t in self.traces]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> InputsResult:
        return cls(**{**obj, "traces": [Trace.from_json(t) for t in obj["traces"]]})


# ---- value checks ------------------------------------------------------------------------------------------

def value_problem(value: Any, depth: int = 0) -> str | None:
    """``too_large`` or ``nonfinite`` when ``value`` breaks the CodeI/O caps, else None."""
    t = type(value)
    if t is float:
        return None if math.isfinite(value) else "nonfinite"
    if t is complex:
        return None if math.isfinite(value.real) and math.isfinite(value.imag) else "nonfinite"
    if t in (str, bytes, bytearray):
        return "too_large" if len(value) >= MAX_STR else None
    if t in (list, tuple, set, frozenset, dict):
        if len(value) >= MAX_ITEMS or depth >= MAX_DEPTH:
            return "too_large"
        items = [x for kv in value.items() for x in kv] if t is dict else value
        for item in items:
            problem = value_problem(item, depth + 1)
            if problem:
                return problem
    return None


def output_problem(output: str) -> str | None:
    """Why a trace's output (a canonical repr) may not be kept, or None."""
    if len(output) >= MAX_REPR:
        return "too_large"
    try:
        value = ast.literal_eval(output)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return "nonfinite" if re.search(r"\b(nan|inf)\b", output) else "unliteral_output"
    return value_problem(value)


def args_source(values: Sequence[Any]) -> str:
    """The canonical argument string of a list of values."""
    return ", ".join(canonical_repr(v) for v in values)


# ---- static guesses ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Signature:
    names: list[str]
    defaults: dict[str, Any]
    n_min: int
    n_max: float
    kinds: dict[str, list[str]]
    node: ast.FunctionDef | ast.AsyncFunctionDef | None


def _annotation_kinds(node: ast.AST | None) -> list[str]:
    if node is None:
        return []
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            node = ast.parse(node.value, mode="eval").body
        except SyntaxError:
            return []
    if isinstance(node, ast.Constant) and node.value is None:
        return ["none"]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _annotation_kinds(node.left) + _annotation_kinds(node.right)
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    if name is not None:
        return [_ANNOTATIONS[name]] if name in _ANNOTATIONS else []
    if isinstance(node, ast.Subscript):
        outer = _annotation_kinds(node.value)
        inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        head = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
        if head in ("Optional",):
            return _annotation_kinds(inner[0]) + ["none"]
        if head == "Union":
            return [k for part in inner for k in _annotation_kinds(part)]
        if outer == ["list_int"]:
            return ["list_str"] if _annotation_kinds(inner[0])[:1] == ["str"] else ["list_int"]
        return outer
    return []


def _usage_kinds(fn: ast.AST, name: str) -> list[str]:
    """Votes from how the body uses a parameter, most votes first."""
    votes: dict[str, int] = {}

    def vote(kind: str) -> None:
        votes[kind] = votes.get(kind, 0) + 1

    def is_param(node: ast.AST) -> bool:
        return isinstance(node, ast.Name) and node.id == name

    for node in ast.walk(fn):
        if isinstance(node, ast.Attribute) and is_param(node.value):
            if node.attr in _BYTES_METHODS:
                vote("bytes")
            elif node.attr in _STR_METHODS:
                vote("str")
            elif node.attr in _LIST_METHODS:
                vote("list_int")
            elif node.attr in _DICT_METHODS:
                vote("dict")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "range" and any(is_param(a) for a in node.args):
                vote("int")
            elif node.func.id in ("len", "sorted", "enumerate", "reversed", "sum", "max", "min") \
                    and node.args and is_param(node.args[0]):
                vote("list_int")
            elif node.func.id in ("ord",) and node.args and is_param(node.args[0]):
                vote("str")
            elif node.func.id in ("chr", "bin", "hex", "oct") and node.args and is_param(node.args[0]):
                vote("int")
            elif node.func.id == "isinstance" and len(node.args) == 2 and is_param(node.args[0]):
                types_ = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
                for t in types_:
                    if isinstance(t, ast.Name) and t.id in _ISINSTANCE:
                        vote(_ISINSTANCE[t.id])
        elif isinstance(node, ast.For | ast.comprehension) and is_param(node.iter):
            vote("list_int")
        elif isinstance(node, ast.BinOp | ast.Compare | ast.AugAssign):
            parts = ([node.left, node.right] if isinstance(node, ast.BinOp) else
                     [node.left, *node.comparators] if isinstance(node, ast.Compare) else [node.target, node.value])
            if any(is_param(p) for p in parts):
                for p in parts:
                    if isinstance(p, ast.Constant) and type(p.value) is int:
                        vote("int")
                    elif isinstance(p, ast.Constant) and type(p.value) is str:
                        vote("str")
    return sorted(votes, key=lambda k: -votes[k])


def _name_kinds(name: str) -> list[str]:
    low = name.lower().lstrip("_")
    for kind, names in _NAMES.items():
        if low in names:
            return [kind]
    if low.startswith(("is_", "has_", "use_", "should_", "allow_", "with_")):
        return ["bool"]
    if low.endswith(("_str", "_string", "_name", "text", "_char", "_word", "_prefix", "_suffix", "_sep")):
        return ["str"]
    if low.startswith(("num_", "n_")) or low.endswith(("_count", "_len", "_size", "_idx", "_index", "_num")):
        return ["int"]
    if low.endswith(("_list", "_lst", "_arr")):
        return ["list_int"]
    if low.endswith(("_dict", "_map")):
        return ["dict"]
    if low.endswith("words") or low.endswith("strings") or low.endswith("names"):
        return ["list_str"]
    if len(low) > 2 and low.endswith("s") and not low.endswith("ss"):
        return ["list_int"]
    return []


def _module_constants(tree: ast.Module) -> dict[str, Any]:
    """Top-level ``NAME = <literal>`` assignments (a default is often such a constant)."""
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                found.pop(node.targets[0].id, None)
    return found


def _signature(seed: Seed) -> _Signature:
    try:
        tree = ast.parse(seed.code)
    except SyntaxError:
        tree = None
    fn = entry_node(tree, seed.entry) if tree is not None else None
    if tree is None or fn is None:
        names = list(seed.params)
        return _Signature(names, {}, 0, float("inf"), {n: list(GRID_ORDER) for n in names}, None)
    constants = _module_constants(tree)
    positional = [*fn.args.posonlyargs, *fn.args.args]
    names = [a.arg for a in positional]
    defaults: dict[str, Any] = {}
    for arg, default in zip(positional[len(positional) - len(fn.args.defaults):], fn.args.defaults):
        if isinstance(default, ast.Name) and default.id in constants:
            defaults[arg.arg] = constants[default.id]
            continue
        try:
            defaults[arg.arg] = ast.literal_eval(default)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    kinds: dict[str, list[str]] = {}
    for arg in positional:
        ranked: list[str] = []
        if arg.arg in defaults and defaults[arg.arg] is not None:
            ranked += _kind_of(defaults[arg.arg])
        ranked += _annotation_kinds(arg.annotation) + _usage_kinds(fn, arg.arg) + _name_kinds(arg.arg)
        if arg.arg in defaults and defaults[arg.arg] is None:  # a placeholder: the typed guess first, then None
            ranked.insert(1, "none")
        kinds[arg.arg] = list(dict.fromkeys([*ranked, *GRID_ORDER]))
    n_max = float("inf") if fn.args.vararg is not None else len(names)
    return _Signature(names, defaults, len(names) - len(fn.args.defaults), n_max, kinds, fn)


def _kind_of(value: Any) -> list[str]:
    t = type(value)
    if t is list:
        return ["list_str"] if value and all(type(x) is str for x in value) else ["list_int"]
    return [{bool: "bool", int: "int", float: "float", str: "str", dict: "dict", tuple: "tuple",
             type(None): "none", bytes: "bytes"}.get(t, "int")]


def _param_values(sig: _Signature, name: str) -> list[Any]:
    """Candidate values for one parameter, best guess first."""
    out: list[Any] = []
    if sig.defaults.get(name) is not None:
        out.append(sig.defaults[name])
    for rank, kind in enumerate(sig.kinds.get(name, GRID_ORDER)):
        out += GRID[kind] if rank == 0 else GRID[kind][:2]
    seen: set[str] = set()
    unique = []
    for value in out:
        key = canonical_repr(value)
        if key not in seen:
            seen.add(key)
            unique.append(value)
    return unique


def parameter_guesses(seed: Seed) -> dict[str, list[Any]]:
    """Candidate values per positional parameter, best guess first (default, annotation, usage, name, grid)."""
    sig = _signature(seed)
    return {name: _param_values(sig, name) for name in sig.names}


def doctest_calls(seed: Seed) -> list[tuple]:
    """The argument tuples of ``>>> entry(...)`` lines in the docstring (literal arguments only)."""
    doc = seed.doc
    sig = _signature(seed)
    if not doc and sig.node is not None:
        doc = ast.get_docstring(sig.node) or ""
    found = []
    for match in re.finditer(r"^\s*>>>\s?(.*)$", doc, re.MULTILINE):
        try:
            expr = ast.parse(match.group(1).strip(), mode="eval").body
        except SyntaxError:
            continue
        if not isinstance(expr, ast.Call):
            continue
        func = expr.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if called != seed.entry or any(isinstance(a, ast.Starred) for a in expr.args):
            continue
        try:
            values = [ast.literal_eval(a) for a in expr.args]
            keywords = {k.arg: ast.literal_eval(k.value) for k in expr.keywords}
        except (ValueError, SyntaxError, TypeError):
            continue
        if keywords:
            if None in keywords or any(k not in sig.names[len(values):] for k in keywords):
                continue
            last = max(sig.names.index(k) for k in keywords)
            for name in sig.names[len(values):last + 1]:
                if name in keywords:
                    values.append(keywords[name])
                elif name in sig.defaults:
                    values.append(sig.defaults[name])
                else:
                    break
            else:
                found.append(tuple(values))
            continue
        found.append(tuple(values))
    return found


# ---- mutation ------------------------------------------------------------------------------------------------

_ALPHABET = "abcxyzAZ019 ,.-_!"


@dataclasses.dataclass(frozen=True)
class Hints:
    """Constants of the function's body (ints, and strings under ``MAX_STR``): mutation tries them and their
    neighbours, as fuzzers use a dictionary, so ``if n > 100`` or ``s.startswith('x')`` get both outcomes."""

    ints: tuple[int, ...] = ()
    strs: tuple[str, ...] = ()


def constant_hints(fn: ast.AST | None) -> Hints:
    """The int and str constants of a function body (with c - 1 and c + 1 for ints)."""
    if fn is None:
        return Hints()
    ints: dict[int, None] = {}
    strs: dict[str, None] = {}
    for node in ast.walk(fn):
        if isinstance(node, ast.Constant):
            if type(node.value) is int and abs(node.value) <= MAX_INT:
                for value in (node.value - 1, node.value, node.value + 1):
                    ints[value] = None
            elif type(node.value) is str and 0 < len(node.value) < MAX_STR // 4:
                strs[node.value] = None
    return Hints(tuple(ints), tuple(strs))


_NO_HINTS = Hints()


def _new_element(like: Sequence[Any], rng: random.Random, kind: str, hints: Hints = _NO_HINTS) -> Any:
    if like:
        return mutate_value(rng.choice(list(like)), rng, 1, hints=hints)
    if kind == "list_str":
        return rng.choice(["a", "b", "hello", "x y", ""])
    return rng.randint(-5, 10)


def mutate_value(value: Any, rng: random.Random, depth: int = 0, kind: str = "", hints: Hints = _NO_HINTS) -> Any:
    """One EvalPlus-style type-preserving mutation of ``value`` (recursive into containers)."""
    t = type(value)
    if t is bool:
        return not value
    if t is int and hints.ints and rng.random() < 0.25:
        return rng.choice(hints.ints)
    if t is str and hints.strs and rng.random() < 0.25:
        hint = rng.choice(hints.strs)
        if rng.random() < 0.5 or len(value) + len(hint) >= MAX_STR:
            return hint
        i = rng.randint(0, len(value))
        return value[:i] + hint + value[i:]
    if t is int:
        op = rng.randrange(7)
        new = [value + 1, value - 1, value * 2, -value, 0, rng.choice([1, -1, 2, 10, 100]),
               value + rng.randint(-10, 10)][op]
        return new if abs(new) <= MAX_INT else rng.randint(-10, 10)
    if t is float:
        new = rng.choice([value + 1.0, value - 1.0, value * 2, -value, 0.0, value / 2, 0.5])
        return new if math.isfinite(new) and abs(new) <= MAX_INT else 1.5
    if t is str:
        return _mutate_str(value, rng)
    if t is bytes:
        return _mutate_str(value.decode("latin-1"), rng).encode("latin-1", "replace")
    if depth >= MAX_DEPTH:
        return value
    if t is list:
        items = list(value)
        ops = ["append", "append", "mutate", "mutate", "mutate", "remove", "swap", "dup", "empty", "sort",
               "reverse"]
        op = rng.choice(ops if items else ["append", "append", "append"])
        if op == "append" and len(items) < MAX_ITEMS - 1:
            items.insert(rng.randint(0, len(items)), _new_element(items, rng, kind, hints))
        elif op == "mutate" or (op == "append" and items):
            i = rng.randrange(len(items))
            items[i] = mutate_value(items[i], rng, depth + 1, hints=hints)
        elif op == "remove":
            del items[rng.randrange(len(items))]
        elif op == "swap" and len(items) > 1:
            i, j = rng.sample(range(len(items)), 2)
            items[i], items[j] = items[j], items[i]
        elif op == "dup" and len(items) < MAX_ITEMS - 1:
            items.append(rng.choice(items))
        elif op == "empty":
            items = []
        elif op == "sort":
            try:
                items.sort()
            except TypeError:
                items.reverse()
        else:
            items.reverse()
        return items
    if t is tuple:
        if not value:
            return (rng.randint(0, 5),) if rng.random() < 0.5 else value
        i = rng.randrange(len(value))
        return value[:i] + (mutate_value(value[i], rng, depth + 1, hints=hints),) + value[i + 1:]
    if t is dict:
        d = dict(value)
        op = rng.choice(["add", "remove", "mutate", "mutate", "empty"] if d else ["add"])
        if op == "add" and len(d) < MAX_ITEMS - 1:
            keys = list(d)
            if keys:
                key = mutate_value(rng.choice(keys), rng, depth + 1, hints=hints)
            else:
                key = rng.choice(["a", "b", "c", "key"])
            try:
                d[key] = mutate_value(d[rng.choice(keys)], rng, depth + 1, hints=hints) if keys else \
                    rng.randint(0, 9)
            except TypeError:  # an unhashable key
                pass
        elif op == "remove" and d:
            del d[rng.choice(list(d))]
        elif op == "mutate" and d:
            key = rng.choice(list(d))
            d[key] = mutate_value(d[key], rng, depth + 1, hints=hints)
        elif op == "empty":
            d = {}
        return d
    if t is set or t is frozenset:
        items = sorted(value, key=canonical_repr)
        if items and rng.random() < 0.5:
            items.remove(rng.choice(items))
        elif len(items) < MAX_ITEMS - 1:
            try:
                items.append(_new_element(items, rng, kind, hints))
            except TypeError:
                pass
        try:
            return t(items)
        except TypeError:
            return value
    return value


def _mutate_str(s: str, rng: random.Random) -> str:
    alphabet = (s or "") + _ALPHABET
    op = rng.choice(["insert", "delete", "replace", "dup", "empty", "case"] if s else ["insert", "insert"])
    if op == "insert" and len(s) < MAX_STR - 2:
        i = rng.randint(0, len(s))
        return s[:i] + rng.choice(alphabet) + s[i:]
    if op == "delete" or (op == "insert" and s):
        i = rng.randrange(len(s))
        return s[:i] + s[i + 1:]
    if op == "replace":
        i = rng.randrange(len(s))
        return s[:i] + rng.choice(alphabet) + s[i + 1:]
    if op == "dup" and 2 * len(s) < MAX_STR:
        i = rng.randrange(len(s))
        j = rng.randint(i + 1, len(s))
        return s[:j] + s[i:j] + s[j:]
    if op == "case":
        i = rng.randrange(len(s))
        return s[:i] + s[i].swapcase() + s[i + 1:]
    return ""


def mutate_args(values: tuple, rng: random.Random, kinds: Sequence[str] = (), hints: Hints = _NO_HINTS) -> tuple:
    """Mutate one argument (sometimes two) of an argument tuple."""
    if not values:
        return values
    out = list(values)
    for _ in range(2 if len(out) > 1 and rng.random() < 0.3 else 1):
        i = rng.randrange(len(out))
        out[i] = mutate_value(out[i], rng, 0, kinds[i] if i < len(kinds) else "", hints)
    return tuple(out)


# ---- the search ----------------------------------------------------------------------------------------------

class _Search:
    """One seed's input search: hands out batches, takes their traces, decides what to keep."""

    def __init__(self, seed: Seed, examples: Sequence[str], rng_seed: int, max_inputs: int, patience: int,
                 max_tries: int, batch_size: int, propose: Propose | None, guess: bool = True):
        self.seed, self.max_inputs, self.patience = seed, max_inputs, patience
        self.max_tries, self.batch_size, self.propose = max_tries, batch_size, propose
        self.rng = random.Random(f"{rng_seed}:{seed.id}")
        try:
            self.static = analyze(seed.code, seed.entry)
        except ValueError:
            self.static = Static(def_line=0)
        self.sig = _signature(seed)
        self.values = {name: _param_values(self.sig, name) for name in self.sig.names}
        self.kinds = [self.sig.kinds.get(n, GRID_ORDER)[0] for n in self.sig.names]
        self.hints = constant_hints(self.sig.node)
        self.rejected: dict[str, int] = {}
        self.tried: set[str] = set()
        self.kept: list[tuple[int, str, Trace, bool]] = []   # (order, args, trace, adds coverage)
        self.signatures: set[tuple] = set()
        self.lines: set[int] = set()
        self.branches: set[tuple[int, bool]] = set()
        self.pool: list[tuple] = []                            # inputs that ran: the mutation corpus
        self.stagnant = 0
        self.batches = 0
        self.order = 0
        self.done = False
        self.nondeterministic = False
        self.queue: list[tuple] = []
        self.given: list[str] = []
        for source in examples:
            self.given.append(source)
        self.guess = guess
        self.queue += doctest_calls(seed)
        if guess:
            self.queue += self._guesses()

    # candidates
    def _guesses(self) -> list[tuple]:
        names = self.sig.names
        if not names:
            return [()]
        best = tuple(self.values[n][0] for n in names)
        out = [best]
        for i, name in enumerate(names):
            for value in self.values[name][1:]:
                out.append(best[:i] + (value,) + best[i + 1:])
        for kind in GRID_ORDER:
            for value in GRID[kind][:2]:
                out.append(tuple(value for _ in names))
        return out

    def _random_guess(self) -> tuple:
        return tuple(self.rng.choice(self.values[n]) for n in self.sig.names)

    def _take(self, values: tuple, batch: list[str], external: bool) -> None:
        if len(values) < self.sig.n_min or len(values) > self.sig.n_max:
            self._reject("bad_args")
            return
        source = args_source(values)
        if source in self.tried or source in batch:
            if external:
                self._reject("duplicate")
            return
        problem = next((p for p in map(value_problem, values) if p), None)
        if problem is None and len(source) >= MAX_REPR:
            problem = "too_large"
        if problem:
            self.tried.add(source)
            self._reject(problem)
            return
        batch.append(source)

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def next_batch(self) -> list[str]:
        """The next candidates (empty: the search is over)."""
        if self.done or len(self.tried) >= self.max_tries:
            self.done = True
            return []
        size = min(self.batch_size, self.max_tries - len(self.tried))
        batch: list[str] = []
        while self.given and len(batch) < size:
            source = self.given.pop(0)
            try:
                self._take(parse_args(source), batch, True)
            except ValueError:
                self._reject("bad_args")
        use_teacher = self.propose is not None and self.pool and self.batches % 2 == 1
        if use_teacher and len(batch) < size:
            assert self.propose is not None
            for source in self.propose(self.seed, [k[1] for k in self.kept]):
                try:
                    self._take(parse_args(source), batch, True)
                except ValueError:
                    self._reject("bad_args")
                if len(batch) >= size:
                    break
        attempts = 0
        while len(batch) < size and attempts < 20 * size:
            attempts += 1
            if self.queue and (not self.pool or attempts % 4 == 0 or self.batches == 0):
                self._take(self.queue.pop(0), batch, False)
            elif self.pool:
                parent = self.rng.choice(self.pool)
                self._take(mutate_args(parent, self.rng, self.kinds, self.hints), batch, False)
            elif self.sig.names and self.guess:
                self._take(self._random_guess(), batch, False)
            else:
                break
        if not batch:
            self.done = True
        self.tried.update(batch)
        self.batches += bool(batch)
        return batch

    # results
    def screen(self, batch: list[str], results: list[Trace | TraceFailure]) -> list[tuple[str, Trace]]:
        """The candidates of a batch worth a second run (valid, and new coverage or a new output/path)."""
        chosen: list[tuple[str, Trace]] = []
        lines, branches = set(self.lines), set(self.branches)
        signatures = set(self.signatures)
        for source, result in zip(batch, results):
            if isinstance(result, TraceFailure):
                self._reject(result.reason)
                continue
            if result.raised is not None:
                self._reject("raised:" + result.raised.split(":")[0].strip())
                continue
            if result.truncated or result.output is None:
                self._reject("truncated")
                continue
            problem = output_problem(result.output)
            if problem:
                self._reject(problem)
                continue
            self.pool.append(parse_args(source))
            new_cover = bool(set(result.lines) - lines or set(result.branches) - branches)
            signature = (result.output, tuple(s.line for s in result.steps))
            if not new_cover and (signature in signatures or self._full_extras()):
                self._reject("redundant")
                continue
            lines.update(result.lines)
            branches.update(result.branches)
            signatures.add(signature)
            chosen.append((source, result))
        return chosen

    def _full_extras(self) -> bool:
        return len(self.kept) >= self.max_inputs

    def confirm(self, chosen: list[tuple[str, Trace]], reruns: list[Trace | TraceFailure]) -> None:
        """Keep the chosen candidates whose second run agrees; update coverage and the stopping state."""
        grew = False
        for (source, first), second in zip(chosen, reruns):
            if not isinstance(second, Trace) or (second.output, second.raised, second.steps, second.truncated) != \
                    (first.output, first.raised, first.steps, first.truncated):
                # the call depends on earlier calls or on chance: no input of this seed can be trusted
                self._reject("nondeterministic")
                self.rejected["nondeterministic"] += len(self.kept)
                self.kept = []
                self.nondeterministic = self.done = True
                return
            adds = bool(set(first.lines) - self.lines or set(first.branches) - self.branches)
            signature = (first.output, tuple(s.line for s in first.steps))
            if not adds and signature in self.signatures:
                self._reject("redundant")
                continue
            self.lines.update(first.lines)
            self.branches.update(first.branches)
            self.signatures.add(signature)
            self.kept.append((self.order, source, first, adds))
            self.order += 1
            grew = grew or adds
        # patience runs from the first input that ran: until then the guesses go on (up to max_tries)
        self.stagnant = 0 if grew or not self.pool else self.stagnant + 1
        covering = sum(1 for k in self.kept if k[3])
        full = self.static.lines <= self.lines and self.static.branches <= self.branches and bool(self.static.lines)
        if covering >= self.max_inputs or (full and len(self.kept) >= self.max_inputs) \
                or self.stagnant >= self.patience:
            self.done = True

    def result(self) -> InputsResult:
        covering = [k for k in self.kept if k[3]]
        extras = [k for k in self.kept if not k[3]]
        chosen = sorted(covering[:self.max_inputs] + extras[:max(0, self.max_inputs - len(covering))],
                        key=lambda k: k[0])
        rejected = dict(self.rejected)
        if len(self.kept) > len(chosen):
            rejected["redundant"] = rejected.get("redundant", 0) + len(self.kept) - len(chosen)
        traces = [t for _, _, t, _ in chosen]
        lines = {line for t in traces for line in t.lines}
        branches = {b for t in traces for b in t.branches}
        static = self.static
        line_cov = len(lines & static.lines) / len(static.lines) if static.lines else 0.0
        branch_cov = len(branches & static.branches) / len(static.branches) if static.branches else \
            (1.0 if static.lines else 0.0)
        return InputsResult(inputs=[s for _, s, _, _ in chosen], traces=traces, line_coverage=line_cov,
                            branch_coverage=branch_cov, rejected=dict(sorted(rejected.items())),
                            tried=len(self.tried), batches=self.batches, nondeterministic=self.nondeterministic)


def generate_inputs_many(sandbox: Sandbox, seeds: Sequence[Seed], *,
                         examples: Sequence[Sequence[str]] | None = None, rng_seed: int = 0, max_inputs: int = 8,
                         patience: int = 3, max_tries: int = 160, batch_size: int = 16,
                         propose: Propose | None = None, guess: bool = True, max_steps: int = DEFAULT_MAX_STEPS,
                         max_repr: int = DEFAULT_MAX_REPR, timeout_s: float = DEFAULT_TIMEOUT_S,
                         verify_sandbox: Sandbox | None = None) -> list[InputsResult]:
    """``generate_inputs`` for many seeds at once: each round runs one batch of every unfinished seed, all in
    one ``Sandbox.map`` (then their second runs in another), so the workers stay busy.  ``verify_sandbox`` runs
    the second runs (give it another ``hash_seed`` than ``sandbox``, and output that hangs on string hashing is
    caught every time); default: ``sandbox``."""
    searches = [_Search(seed, (examples[i] if examples else ()), rng_seed, max_inputs, patience, max_tries,
                        batch_size, propose, guess) for i, seed in enumerate(seeds)]
    options = {"max_steps": max_steps, "max_repr": max_repr, "timeout_s": timeout_s}
    while True:
        batches = [(s, s.next_batch()) for s in searches if not s.done]
        batches = [(s, b) for s, b in batches if b]
        if not batches:
            break
        firsts = trace_many(sandbox, [(s.seed, b) for s, b in batches], **options)
        chosen = [(s, s.screen(b, r)) for (s, b), r in zip(batches, firsts)]
        reruns = trace_many(verify_sandbox or sandbox, [(s.seed, [src for src, _ in c]) for s, c in chosen],
                            fresh=True, **options)
        for (s, c), r in zip(chosen, reruns):
            s.confirm(c, r)
    return [s.result() for s in searches]


def generate_inputs(sandbox: Sandbox, seed: Seed, *, examples: Sequence[str] = (), rng_seed: int = 0,
                    max_inputs: int = 8, patience: int = 3, max_tries: int = 160, batch_size: int = 16,
                    propose: Propose | None = None, guess: bool = True, max_steps: int = DEFAULT_MAX_STEPS,
                    max_repr: int = DEFAULT_MAX_REPR, timeout_s: float = DEFAULT_TIMEOUT_S,
                    verify_sandbox: Sandbox | None = None) -> InputsResult:
    """Inputs for ``seed``: at most ``max_inputs`` argument strings that run, are deterministic and small, chosen
    for line and branch coverage (see the module docstring), with their traces and the rejection counts.
    ``guess=False`` skips the signature guesses and the type grid: only ``examples``, doctests, ``propose`` and
    mutation of what ran."""
    return generate_inputs_many(sandbox, [seed], examples=[list(examples)], rng_seed=rng_seed,
                                max_inputs=max_inputs, patience=patience, max_tries=max_tries,
                                batch_size=batch_size, propose=propose, guess=guess, max_steps=max_steps,
                                max_repr=max_repr, timeout_s=timeout_s, verify_sandbox=verify_sandbox)[0]
