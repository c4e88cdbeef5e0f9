"""Plain data in a canonical, type-tagged JSON form: the only way values leave a sandboxed candidate.

A candidate's results are *data*, never objects: a value crosses from the candidate's process to the
harness as JSON text in which every type is explicit, and the harness rebuilds it from builtin types
only.  An object whose ``__eq__`` always returns True, a subclass of ``int`` or ``list`` with methods of
its own, a generator, an exception: none of them is plain data, so none can reach a comparison.  No
pickle anywhere.

The form (``encode``/``decode``):

- ``None``, ``bool``, ``str``, ``float`` (``NaN``/``Infinity`` as Python's ``json`` writes them), ``list``
  and ``int`` with fewer than 16 digits are the JSON values themselves;
- everything else is a one-key object naming its type: ``{"int": "-0x1f"}`` (larger ints, in hex, which
  no digit limit applies to), ``{"tuple": [...]}``, ``{"set": [...]}`` and ``{"frozenset": [...]}``
  (elements in the order of their encodings, so equal sets encode identically), ``{"dict": [[k, v],
  ...]}`` (insertion order; keys may be any plain hashable value), ``{"bytes": base64}``,
  ``{"bytearray": base64}``, ``{"complex": [re, im]}``, ``{"range": [start, stop, step]}``, the
  ``collections`` types ``OrderedDict``, ``defaultdict`` (without its factory), ``Counter`` and
  ``{"deque": [items, maxlen]}``, ``{"Decimal": str}``, ``{"Fraction": [n, d]}``, and when numpy is
  importable its scalars ``{"numpy": [dtype, value]}`` and numeric arrays ``{"ndarray": [dtype, shape,
  flat values]}``.

Types are matched exactly (``type(x) is T``), never with ``isinstance``.  Nesting deeper than
``MAX_DEPTH``, self-containing containers and more than ``MAX_NODES`` values are refused.  Standard library
only (numpy optional): the sandbox worker loads this file by path, before any candidate code exists.
"""

from __future__ import annotations

import base64
import collections
import decimal
import fractions
import hashlib
import json
import marshal
import math
from typing import Any

MAX_DEPTH = 100
MAX_NODES = 10_000_000
MAX_INT_HEX_DIGITS = 1_000_000
INLINE_MAX_NODES = 250_000      # a returned value larger than this travels as a digest (``result_record``)
INLINE_MAX_BYTES = 4 * 1024**2
_SMALL_INT = 10**15

try:  # bound once, so a later change to sys.modules['numpy'] cannot change what is recognised
    import numpy as _np
except ImportError:  # pragma: no cover - numpy is a dependency of the project, optional here
    _np = None

# Names bound at import: a candidate that rebinds builtins changes nothing here.
_type, _len, _id, _sorted, _enumerate, _hex = type, len, id, sorted, enumerate, hex
_NONE, _BOOL, _INT, _FLOAT, _STR, _LIST = type(None), bool, int, float, str, list
_TUPLE, _DICT, _SET, _FROZENSET, _BYTES, _BYTEARRAY, _COMPLEX, _RANGE = (
    tuple, dict, set, frozenset, bytes, bytearray, complex, range)
_ODICT, _DDICT, _COUNTER, _DEQUE = (collections.OrderedDict, collections.defaultdict, collections.Counter,
                                    collections.deque)
_DECIMAL, _FRACTION = decimal.Decimal, fractions.Fraction
_loads = json.loads
# json's C encoder, called directly: ``json.dumps`` runs Python-level isinstance checks a candidate could
# rebind in its own process.  Tagged values have no cycles, so no circular-reference markers are needed.
_c_encoder = json.encoder.c_make_encoder(None, None, json.encoder.encode_basestring_ascii, None, ":", ",",
                                         False, False, True)


def _dumps(tagged: Any, separators: Any = None) -> str:
    """Compact ASCII JSON of a tagged value (NaN and infinities as Python's json writes them)."""
    return "".join(_c_encoder(tagged, 0))
_b64encode, _b64decode = base64.b64encode, base64.b64decode

NUMPY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "float16", "float32", "float64", "complex64", "complex128")
_NP_SCALARS: dict[type, str] = {}
_NP_NDARRAY: type | None = None
if _np is not None:
    _NP_SCALARS = {_type(_np.dtype(name).type(0)): name for name in NUMPY_DTYPES}
    _NP_NDARRAY = _np.ndarray


class PlainDataError(ValueError):
    """A value is not plain data (encoding), or a text is not a valid encoding (decoding)."""


class _TooLarge(PlainDataError):
    """The node budget of an inline encoding ran out (``result_record`` then sends a digest)."""


def type_name(value: Any) -> str:
    """``module.QualName`` of a value's class, for messages (never calls the value's own methods)."""
    cls = _type(value)
    module = getattr(cls, "__module__", "?")
    name = getattr(cls, "__qualname__", "?")
    return name if module == "builtins" else f"{module}.{name}"


class _Encoder:
    def __init__(self, max_nodes: int = MAX_NODES, budget: bool = False) -> None:
        self.nodes, self.max_nodes = 0, max_nodes
        self.error = _TooLarge if budget else PlainDataError
        self.path: set[int] = set()

    def encode(self, x: Any, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise self.error(f"more than {self.max_nodes:,} values")
        if depth > MAX_DEPTH:
            raise PlainDataError(f"nested deeper than {MAX_DEPTH} levels")
        t = _type(x)
        if t is _NONE or t is _BOOL or t is _STR or t is _FLOAT:
            return x
        if t is _INT:
            return x if -_SMALL_INT < x < _SMALL_INT else {"int": _hex(x)}
        if t is _COMPLEX:
            return {"complex": [x.real, x.imag]}
        if t is _BYTES:
            return {"bytes": _b64encode(x).decode("ascii")}
        if t is _BYTEARRAY:
            return {"bytearray": _b64encode(_BYTES(x)).decode("ascii")}
        if t is _RANGE:
            return {"range": [self.encode(x.start, depth + 1), self.encode(x.stop, depth + 1),
                              self.encode(x.step, depth + 1)]}
        if t is _DECIMAL:
            return {"Decimal": _STR(x)}
        if t is _FRACTION:
            return {"Fraction": [self.encode(x.numerator, depth + 1), self.encode(x.denominator, depth + 1)]}
        if t in _NP_SCALARS:
            value = x.item()
            if _type(value) is _COMPLEX:
                value = [value.real, value.imag]
            elif _type(value) is _INT:
                value = self.encode(value, depth + 1)
            return {"numpy": [_NP_SCALARS[t], value]}
        # containers: guard against self-reference
        key = _id(x)
        if key in self.path:
            raise PlainDataError(f"a {type_name(x)} that contains itself")
        self.path.add(key)
        try:
            return self._container(x, t, depth)
        finally:
            self.path.discard(key)

    def _container(self, x: Any, t: type, depth: int) -> Any:
        d = depth + 1
        if t is _LIST:
            return [self.encode(v, d) for v in _LIST.__iter__(x)]
        if t is _TUPLE:
            return {"tuple": [self.encode(v, d) for v in _TUPLE.__iter__(x)]}
        if t is _SET or t is _FROZENSET:
            items = [self.encode(v, d) for v in x]
            if _len(items) > 1:  # canonical: equal sets encode identically, whatever the hash seed
                order = _sorted((_dumps(v), i) for i, v in _enumerate(items))
                items = [items[i] for _, i in order]
            return {"set" if t is _SET else "frozenset": items}
        if t is _DICT or t is _ODICT or t is _DDICT or t is _COUNTER:
            tag = {_DICT: "dict", _ODICT: "OrderedDict", _DDICT: "defaultdict", _COUNTER: "Counter"}[t]
            return {tag: [[self.encode(k, d), self.encode(v, d)] for k, v in x.items()]}
        if t is _DEQUE:
            return {"deque": [[self.encode(v, d) for v in x], x.maxlen]}
        if _NP_NDARRAY is not None and t is _NP_NDARRAY:
            dtype = _STR(x.dtype)
            if dtype not in NUMPY_DTYPES:
                raise PlainDataError(f"a numpy array of dtype {dtype}")
            flat = x.ravel().tolist()
            if dtype.startswith("complex"):
                flat = [[v.real, v.imag] for v in flat]
            self.nodes += _len(flat)
            if self.nodes > self.max_nodes:
                raise self.error(f"more than {self.max_nodes:,} values")
            return {"ndarray": [dtype, [_INT(n) for n in x.shape], flat]}
        raise PlainDataError(f"a {type_name(x)} object, not plain data")


def to_json_value(value: Any) -> Any:
    """The tagged JSON-able form of ``value`` (raises ``PlainDataError`` if it is not plain data)."""
    try:
        return _Encoder().encode(value, 0)
    except RecursionError:
        raise PlainDataError(f"nested deeper than {MAX_DEPTH} levels") from None


def encode(value: Any) -> bytes:
    """``value`` as canonical JSON bytes (compact, ASCII)."""
    return _dumps(to_json_value(value)).encode("ascii")


def dumps_tagged(tagged: Any) -> bytes:
    """Bytes of an already tagged value (``result_record``'s output)."""
    return _dumps(tagged).encode("ascii")


_blake2b, _marshal_dumps, _pack = hashlib.blake2b, marshal.dumps, __import__("struct").pack


def digest(value: Any) -> str:
    """A content digest of a large value, computed at C speed: BLAKE2b over ``marshal`` (version 2, which has
    no back-references) of each element of a top-level list or tuple, or of the whole value.

    ``marshal`` accepts only exact builtin types (never a subclass or a custom object), so equal digests
    mean equal types and values.  Unlike ``==`` it tells 1 from 1.0, and dicts and sets are taken in
    iteration order; ``result_record`` uses it only for values too large to send whole.
    """
    h = _blake2b(digest_size=32)
    t = _type(value)
    try:
        if t is _LIST or t is _TUPLE:
            h.update(b"L" if t is _LIST else b"T")
            h.update(_pack(">Q", _len(value)))
            for item in value:
                h.update(_marshal_dumps(item, 2))
        else:
            h.update(b"V")
            h.update(_marshal_dumps(value, 2))
    except ValueError:
        raise PlainDataError(f"a {type_name(value)} holding something that is not plain data") from None
    return h.hexdigest()


def result_record(value: Any) -> list:
    """The tagged form of what a driver sends for a returned value: ``["value", value]`` when it encodes
    within ``INLINE_MAX_NODES`` values and ``INLINE_MAX_BYTES``, else ``["digest", {"blake2b": ..., "type":
    ...}]`` (``digest``).  Raises ``PlainDataError`` for anything that is not plain data."""
    try:
        tagged = _Encoder(INLINE_MAX_NODES, budget=True).encode(value, 0)
    except _TooLarge:
        pass
    except RecursionError:
        raise PlainDataError(f"nested deeper than {MAX_DEPTH} levels") from None
    else:
        if _len(_dumps(tagged)) <= INLINE_MAX_BYTES:
            return ["value", tagged]
    return ["digest", to_json_value({"blake2b": digest(value), "type": type_name(value)})]


# ---- decoding (harness side) -----------------------------------------------------------------------------

def _tag_list(payload: Any, n: int | None = None) -> list:
    if _type(payload) is not _LIST or (n is not None and _len(payload) != n):
        raise PlainDataError("malformed tagged value")
    return payload


def _int_from(value: Any) -> int:
    if _type(value) is _INT:
        return value
    if _type(value) is _DICT and _len(value) == 1 and _type(value.get("int")) is _STR:
        text = value["int"]
        if _len(text) > MAX_INT_HEX_DIGITS + 3:
            raise PlainDataError("integer too large")
        try:
            return _INT(text, 16)
        except ValueError:
            raise PlainDataError("malformed integer") from None
    raise PlainDataError("expected an integer")


def _float_from(value: Any) -> float:
    if _type(value) is _FLOAT:
        return value
    if _type(value) is _INT:
        return _FLOAT(value)
    raise PlainDataError("expected a number")


class _Decoder:
    def __init__(self) -> None:
        self.nodes = 0

    def decode(self, v: Any, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise PlainDataError(f"more than {MAX_NODES:,} values")
        if depth > MAX_DEPTH:
            raise PlainDataError(f"nested deeper than {MAX_DEPTH} levels")
        t = _type(v)
        if t is _NONE or t is _BOOL or t is _STR or t is _FLOAT or t is _INT:
            return v
        if t is _LIST:
            return [self.decode(item, depth + 1) for item in v]
        if t is not _DICT or _len(v) != 1:
            raise PlainDataError("malformed tagged value")
        ((tag, payload),) = v.items()
        d = depth + 1
        if tag == "int":
            return _int_from(v)
        if tag == "tuple":
            return _TUPLE(self.decode(item, d) for item in _tag_list(payload))
        if tag in ("set", "frozenset"):
            items = [self.decode(item, d) for item in _tag_list(payload)]
            try:
                return _SET(items) if tag == "set" else _FROZENSET(items)
            except TypeError:
                raise PlainDataError(f"unhashable element in a {tag}") from None
        if tag in ("dict", "OrderedDict", "defaultdict", "Counter"):
            pairs = [_tag_list(pair, 2) for pair in _tag_list(payload)]
            out = {"dict": _DICT, "OrderedDict": _ODICT, "defaultdict": _DDICT, "Counter": _COUNTER}[tag]()
            for key, value in pairs:
                try:
                    out[self.decode(key, d)] = self.decode(value, d)
                except TypeError:
                    raise PlainDataError("unhashable dict key") from None
            return out
        if tag in ("bytes", "bytearray"):
            if _type(payload) is not _STR:
                raise PlainDataError(f"malformed {tag}")
            try:
                data = _b64decode(payload.encode("ascii"), validate=True)
            except (ValueError, UnicodeError):
                raise PlainDataError(f"malformed {tag}") from None
            return data if tag == "bytes" else _BYTEARRAY(data)
        if tag == "complex":
            re, im = _tag_list(payload, 2)
            return _COMPLEX(_float_from(re), _float_from(im))
        if tag == "range":
            start, stop, step = (_int_from(self.decode(x, d)) for x in _tag_list(payload, 3))
            if step == 0:
                raise PlainDataError("range step 0")
            return _RANGE(start, stop, step)
        if tag == "deque":
            items, maxlen = _tag_list(payload, 2)
            if maxlen is not None and (_type(maxlen) is not _INT or maxlen < 0):
                raise PlainDataError("malformed deque")
            return _DEQUE((self.decode(item, d) for item in _tag_list(items)), maxlen)
        if tag == "Decimal":
            if _type(payload) is not _STR or _len(payload) > 100_000:
                raise PlainDataError("malformed Decimal")
            try:
                return _DECIMAL(payload)
            except decimal.InvalidOperation:
                raise PlainDataError("malformed Decimal") from None
        if tag == "Fraction":
            n, den = (_int_from(self.decode(x, d)) for x in _tag_list(payload, 2))
            if den <= 0:
                raise PlainDataError("malformed Fraction")
            return _FRACTION(n, den)
        if tag == "numpy":
            return _numpy_scalar(*_tag_list(payload, 2), self, d)
        if tag == "ndarray":
            return _numpy_array(*_tag_list(payload, 3), self)
        raise PlainDataError(f"unknown type tag {tag!r}")


def _numpy_module():
    if _np is None:
        raise PlainDataError("a numpy value, but numpy is not installed")
    return _np


def _numpy_scalar(dtype: Any, value: Any, decoder: _Decoder, depth: int) -> Any:
    np = _numpy_module()
    if dtype not in NUMPY_DTYPES:
        raise PlainDataError(f"unknown numpy dtype {dtype!r}")
    if dtype.startswith("complex"):
        re, im = _tag_list(value, 2)
        value = _COMPLEX(_float_from(re), _float_from(im))
    elif dtype == "bool":
        if _type(value) is not _BOOL:
            raise PlainDataError("malformed numpy bool")
    elif dtype.startswith(("int", "uint")):
        value = _int_from(decoder.decode(value, depth))
    else:
        value = _float_from(value)
    try:
        return np.dtype(dtype).type(value)
    except (OverflowError, ValueError, TypeError):
        raise PlainDataError(f"malformed numpy {dtype}") from None


def _numpy_array(dtype: Any, shape: Any, flat: Any, decoder: _Decoder) -> Any:
    np = _numpy_module()
    if dtype not in NUMPY_DTYPES:
        raise PlainDataError(f"unknown numpy dtype {dtype!r}")
    shape = _tag_list(shape)
    if not all(_type(n) is _INT and n >= 0 for n in shape) or _len(shape) > 32:
        raise PlainDataError("malformed ndarray shape")
    flat = _tag_list(flat)
    decoder.nodes += _len(flat)
    if decoder.nodes > MAX_NODES or math.prod(shape) != _len(flat):
        raise PlainDataError("malformed ndarray")
    if dtype.startswith("complex"):
        flat = [_COMPLEX(*(_float_from(p) for p in _tag_list(v, 2))) for v in flat]
    elif any(_type(v) not in (_BOOL, _INT, _FLOAT) for v in flat):
        raise PlainDataError("malformed ndarray values")
    try:
        return np.array(flat, dtype=dtype).reshape(shape)
    except (OverflowError, ValueError, TypeError):
        raise PlainDataError("malformed ndarray values") from None


def from_json_value(value: Any) -> Any:
    """The Python value of a tagged JSON-able form (raises ``PlainDataError`` if malformed)."""
    try:
        return _Decoder().decode(value, 0)
    except RecursionError:
        raise PlainDataError(f"nested deeper than {MAX_DEPTH} levels") from None


def decode(data: bytes | str) -> Any:
    """The value encoded by ``encode``; anything else raises ``PlainDataError``."""
    try:
        parsed = _loads(data)
    except RecursionError:
        raise PlainDataError(f"nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise PlainDataError(f"not valid JSON ({e})") from None
    return from_json_value(parsed)

