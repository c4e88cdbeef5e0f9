"""Plain data in a canonical, type-tagged JSON form: the only way values leave a sandboxed candidate.

A candidate's results are *data*, never objects: a value crosses from the candidate's process to the
harness as JSON text in which every type is explicit, and the harness rebuilds it from builtin types
only.  An object whose ``__eq__`` always returns True, a subclass of ``int`` or ``list`` with methods of
its own, a generator, an exception: none of them is plain data, so none can reach a comparison.  No
pickle anywhere.

The form (``encode``/``decode``):

- ``None``, ``bool``, ``int``, ``float`` (``NaN``/``Infinity`` as Python's ``json`` writes them), ``str`` and
  ``list`` are the JSON values themselves;
- everything else is a one-key object naming its type: ``{"int": "-0x1f"}`` (an int too long for a JSON
  number, in hex, which no digit limit applies to), ``{"tuple": [...]}``, ``{"set": [...]}`` and
  ``{"frozenset": [...]}`` (elements in the order of their encodings, so equal sets encode identically),
  ``{"dict": [[k, v], ...]}`` (insertion order; keys may be any plain hashable value), ``{"bytes": base64}``,
  ``{"bytearray": base64}``, ``{"complex": [re, im]}``, ``{"range": [start, stop, step]}``, the
  ``collections`` types ``OrderedDict``, ``defaultdict`` (without its factory), ``Counter`` and
  ``{"deque": [items, maxlen]}``, ``{"Decimal": str}``, ``{"Fraction": [n, d]}``, and when numpy is
  importable its scalars ``{"numpy": [dtype, value]}`` and numeric arrays ``{"ndarray": [dtype, shape,
  flat values]}``.

Types are matched exactly (``type(x) is T``), never with ``isinstance``; numpy's are those of the numpy
the program has loaded (this module never imports it for encoding).  Nesting deeper than
``MAX_DEPTH``, self-containing containers and more than ``MAX_NODES`` values are refused.  Lists and
tuples of scalars are handed to json's C encoder whole, and decoding is json's C parser with a hook for
the tagged objects, so the bulk of a large value never runs Python code per element.  Standard library
only (numpy optional): the sandbox worker loads this file by path, before any candidate code exists.
"""

from __future__ import annotations

import base64
import collections
import decimal
import fractions
import gc as _gc
import hashlib
import itertools
import json
import marshal
import math
import struct
import sys
from array import array as _array
from typing import Any

MAX_DEPTH = 100
MAX_NODES = 10_000_000
MAX_INT_BITS = 13_000            # about 3,900 digits: below the interpreter's int-to-str limit
MAX_INT_HEX_DIGITS = 1_000_000
INLINE_MAX_NODES = 250_000       # a returned value larger than this travels as a digest (``result_record``)
INLINE_MAX_BYTES = 1024**2
DIGEST_CHUNK = 4096              # list/tuple elements marshalled per hash update


# Names bound at import: a candidate that rebinds builtins changes nothing here.
_type, _len, _id, _sorted, _enumerate, _hex, _set, _map, _range, _sum = (
    type, len, id, sorted, enumerate, hex, set, map, range, sum)
_chain = itertools.chain.from_iterable
_modules = sys.modules
_NONE, _BOOL, _INT, _FLOAT, _STR, _LIST = type(None), bool, int, float, str, list
_TUPLE, _DICT, _SET, _FROZENSET, _BYTES, _BYTEARRAY, _COMPLEX, _RANGE = (
    tuple, dict, set, frozenset, bytes, bytearray, complex, range)
_ODICT, _DDICT, _COUNTER, _DEQUE = (collections.OrderedDict, collections.defaultdict, collections.Counter,
                                    collections.deque)
_DECIMAL, _FRACTION = decimal.Decimal, fractions.Fraction
_SCALARS = frozenset((_NONE, _BOOL, _INT, _FLOAT, _STR))
_NUMBERS = frozenset((_BOOL, _INT, _FLOAT))
_EXACT = 2**53  # every int within this is exactly a float64
_loads = json.loads
_b64encode, _b64decode = base64.b64encode, base64.b64decode
_blake2b, _marshal_dumps, _pack = hashlib.blake2b, marshal.dumps, struct.pack
# json's C encoder, called directly: ``json.dumps`` runs Python-level isinstance checks a candidate could
# rebind in its own process.  Tagged values have no cycles, so no circular-reference markers are needed.
_c_encoder = json.encoder.c_make_encoder(None, None, json.encoder.encode_basestring_ascii, None, ":", ",",
                                         False, False, True)

NUMPY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "float16", "float32", "float64", "complex64", "complex128")
_numpy_types: dict[int, tuple[dict[type, str], type]] = {}


def _numpy_types_of(module: Any) -> tuple[dict[type, str], type]:
    """numpy's scalar types (by dtype name) and ndarray.  numpy is never imported here: values of its types
    can only exist once the program has imported it, so the encoder looks at what is loaded."""
    key = _id(module)
    if key not in _numpy_types:
        try:
            _numpy_types[key] = ({_type(module.dtype(n).type(0)): n for n in NUMPY_DTYPES}, module.ndarray)
        except (AttributeError, TypeError):
            # Half imported (another thread is running ``import numpy`` in the harness) or not numpy at all:
            # no value of its types can have come from it yet.  Not cached: the next encoder looks again.
            return {}, None
    return _numpy_types[key]


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


def _dumps(tagged: Any) -> str:
    """Compact ASCII JSON of a tagged value (NaN and infinities as Python's json writes them)."""
    return "".join(_c_encoder(tagged, 0))


# ---- encoding (inside the candidate's process) ------------------------------------------------------------

class _Encoder:
    def __init__(self, max_nodes: int = MAX_NODES, budget: bool = False, fast: bool = True) -> None:
        self.nodes, self.max_nodes, self.fast = 0, max_nodes, fast
        self.error = _TooLarge if budget else PlainDataError
        self.path: set[int] = set()
        numpy = _modules.get("numpy")
        self.np_scalars, self.np_array = _numpy_types_of(numpy) if numpy is not None else ({}, None)

    def count(self, n: int) -> None:
        self.nodes += n
        if self.nodes > self.max_nodes:
            raise self.error(f"more than {self.max_nodes:,} values")

    def encode(self, x: Any, depth: int) -> Any:
        self.count(1)
        if depth > MAX_DEPTH:
            raise PlainDataError(f"nested deeper than {MAX_DEPTH} levels")
        t = _type(x)
        if t is _NONE or t is _BOOL or t is _STR or t is _FLOAT:
            return x
        if t is _INT:
            return x if x.bit_length() <= MAX_INT_BITS else {"int": _hex(x)}
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
        if t in self.np_scalars:
            value = x.item()
            if _type(value) is _COMPLEX:
                value = [value.real, value.imag]
            elif _type(value) is _INT:
                value = self.encode(value, depth + 1)
            return {"numpy": [self.np_scalars[t], value]}
        key = _id(x)  # containers: guard against self-reference
        if key in self.path:
            raise PlainDataError(f"a {type_name(x)} that contains itself")
        self.path.add(key)
        try:
            return self._container(x, t, depth)
        finally:
            self.path.discard(key)

    def _items(self, x: Any, depth: int) -> list:
        """The elements of a list or tuple, encoded.  Fast paths: scalars only (handed to the C encoder as
        they are), and rows of scalars, all lists or all tuples (a matrix, a list of pairs)."""
        if self.fast:
            kinds = _set(_map(_type, x))
            if kinds <= _SCALARS:  # (json's C encoder writes a tuple as an array, as a list)
                self.count(_len(x))
                return x
            if (kinds == {_TUPLE} or kinds == {_LIST}) and depth < MAX_DEPTH - 1 \
                    and _set(_map(_type, _chain(x))) <= _SCALARS:
                self.count(_len(x) + _sum(_map(_len, x)))
                return x if kinds == {_LIST} else [{"tuple": row} for row in x]
        d = depth + 1
        scalars, encode = _SCALARS, self.encode
        return [v if _type(v) in scalars and (_type(v) is not _INT or v.bit_length() <= MAX_INT_BITS)
                else encode(v, d) for v in x]

    def _container(self, x: Any, t: type, depth: int) -> Any:
        d = depth + 1
        if t is _LIST:
            return self._items(x, depth)
        if t is _TUPLE:
            return {"tuple": self._items(x, depth)}
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
        if self.np_array is not None and t is self.np_array:
            dtype = _STR(x.dtype)
            if dtype not in NUMPY_DTYPES:
                raise PlainDataError(f"a numpy array of dtype {dtype}")
            flat = x.ravel().tolist()
            if dtype.startswith("complex"):
                flat = [[v.real, v.imag] for v in flat]
            self.count(_len(flat))
            return {"ndarray": [dtype, [_INT(n) for n in x.shape], flat]}
        raise PlainDataError(f"a {type_name(x)} object, not plain data")


def _tag(value: Any, **options: Any) -> tuple[Any, str]:
    """(tagged form, its JSON text).  The fast path hands scalar-only lists to the C encoder, which refuses
    an int too long for a JSON number; such a value is then encoded element by element (ints in hex)."""
    collecting = _gc.isenabled()
    _gc.disable()  # a large value is many new objects at once: collections would only rescan them
    try:
        tagged = _Encoder(**options).encode(value, 0)
        try:
            return tagged, _dumps(tagged)
        except ValueError:
            tagged = _Encoder(**options, fast=False).encode(value, 0)
            return tagged, _dumps(tagged)
    except RecursionError:
        raise PlainDataError(f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        if collecting:
            _gc.enable()


def to_json_value(value: Any) -> Any:
    """The tagged JSON-able form of ``value`` (raises ``PlainDataError`` if it is not plain data)."""
    return _tag(value)[0]


def dumps_tagged(tagged: Any) -> bytes:
    """Bytes of a tagged value (``to_json_value`` or ``result_record`` output)."""
    return _dumps(tagged).encode("ascii")


def encode(value: Any) -> bytes:
    """``value`` as canonical JSON bytes (compact, ASCII)."""
    return _tag(value)[1].encode("ascii")


def digest(value: Any) -> str:
    """A content digest of a large value, computed at C speed: BLAKE2b over ``marshal`` (version 2, which has
    no back-references) of a top-level list or tuple in chunks of ``DIGEST_CHUNK`` elements, or of the value.

    ``marshal`` accepts only exact builtin types (never a subclass or a custom object), so equal digests
    mean equal types and values.  A list or tuple of numbers only (each exactly a float64) is hashed as
    float64s instead, so ``[2, 3]`` and ``[2.0, 3.0]``, equal under ``==``, digest alike.  Elsewhere, unlike
    ``==``, it tells 1 from 1.0, and dicts and sets are taken in iteration order; ``result_record`` uses it
    only for values too large to send whole.
    """
    h = _blake2b(digest_size=32)
    t = _type(value)
    try:
        if (t is _LIST or t is _TUPLE) and value and _set(_map(_type, value)) <= _NUMBERS \
                and -_EXACT <= min(value) and max(value) <= _EXACT:
            # numbers only, each exactly a float64: hashed as float64s, so 2 and 2.0 (and True and 1), equal
            # under ==, digest alike (NaN, unequal to itself, is the one value this makes "equal")
            h.update(b"l" if t is _LIST else b"t")
            h.update(_pack(">Q", _len(value)))
            h.update(_array("d", value).tobytes())
        elif t is _LIST or t is _TUPLE:
            h.update(b"L" if t is _LIST else b"T")
            h.update(_pack(">Q", _len(value)))
            for start in _range(0, _len(value), DIGEST_CHUNK):
                h.update(_marshal_dumps(value[start:start + DIGEST_CHUNK], 2))
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
        tagged, text = _tag(value, max_nodes=INLINE_MAX_NODES, budget=True)
    except _TooLarge:
        pass
    else:
        if _len(text) <= INLINE_MAX_BYTES:
            return ["value", tagged]
    return ["digest", to_json_value({"blake2b": digest(value), "type": type_name(value)})]


# ---- decoding (in the harness) ----------------------------------------------------------------------------

def _payload_list(payload: Any, n: int | None = None) -> list:
    if _type(payload) is not _LIST or (n is not None and _len(payload) != n):
        raise PlainDataError("malformed tagged value")
    return payload


def _int_of(value: Any) -> int:
    if _type(value) is _INT:
        return value
    raise PlainDataError("expected an integer")


def _float_of(value: Any) -> float:
    if _type(value) is _FLOAT:
        return value
    if _type(value) is _INT:
        return _FLOAT(value)
    raise PlainDataError("expected a number")


def _tagged(pairs: list[tuple[str, Any]]) -> Any:
    """json's object hook: a one-key tagged object (its payload already decoded) -> the Python value."""
    if _len(pairs) != 1:
        raise PlainDataError("malformed tagged value")
    ((tag, payload),) = pairs
    try:
        builder = _BUILDERS[tag]
    except KeyError:
        raise PlainDataError(f"unknown type tag {tag!r}") from None
    try:
        return builder(payload)
    except (TypeError, ValueError, OverflowError, decimal.InvalidOperation) as e:
        if isinstance(e, PlainDataError):
            raise
        raise PlainDataError(f"malformed {tag} ({type(e).__name__})") from None


def _big_int(payload: Any) -> int:
    if _type(payload) is not _STR or _len(payload) > MAX_INT_HEX_DIGITS + 3:
        raise PlainDataError("malformed int")
    return _INT(payload, 16)


def _hashables(payload: Any, build: type) -> Any:
    return build(_payload_list(payload))  # TypeError (unhashable element) -> malformed


def _mapping(build: type):
    def make(payload: Any) -> Any:
        out = build()
        for pair in _payload_list(payload):
            key, value = _payload_list(pair, 2)
            out[key] = value
        return out
    return make


def _binary(build: type):
    def make(payload: Any) -> Any:
        if _type(payload) is not _STR:
            raise PlainDataError("malformed bytes")
        data = _b64decode(payload.encode("ascii"), validate=True)
        return data if build is _BYTES else _BYTEARRAY(data)
    return make


def _make_range(payload: Any) -> range:
    start, stop, step = (_int_of(v) for v in _payload_list(payload, 3))
    if step == 0:
        raise PlainDataError("range step 0")
    return _RANGE(start, stop, step)


def _make_deque(payload: Any) -> collections.deque:
    items, maxlen = _payload_list(payload, 2)
    if maxlen is not None and (_type(maxlen) is not _INT or maxlen < 0):
        raise PlainDataError("malformed deque")
    return _DEQUE(_payload_list(items), maxlen)


def _make_decimal(payload: Any) -> decimal.Decimal:
    if _type(payload) is not _STR or _len(payload) > 100_000:
        raise PlainDataError("malformed Decimal")
    return _DECIMAL(payload)


def _make_fraction(payload: Any) -> fractions.Fraction:
    n, d = (_int_of(v) for v in _payload_list(payload, 2))
    if d <= 0:
        raise PlainDataError("malformed Fraction")
    return _FRACTION(n, d)


def _numpy_module():
    try:
        import numpy
    except ImportError:
        raise PlainDataError("a numpy value, but numpy is not installed") from None
    return numpy


def _make_numpy_scalar(payload: Any) -> Any:
    np = _numpy_module()
    dtype, value = _payload_list(payload, 2)
    if dtype not in NUMPY_DTYPES:
        raise PlainDataError(f"unknown numpy dtype {dtype!r}")
    if dtype.startswith("complex"):
        re, im = _payload_list(value, 2)
        value = _COMPLEX(_float_of(re), _float_of(im))
    elif dtype == "bool":
        if _type(value) is not _BOOL:
            raise PlainDataError("malformed numpy bool")
    elif dtype.startswith(("int", "uint")):
        value = _int_of(value)
    else:
        value = _float_of(value)
    return np.dtype(dtype).type(value)


def _make_ndarray(payload: Any) -> Any:
    np = _numpy_module()
    dtype, shape, flat = _payload_list(payload, 3)
    if dtype not in NUMPY_DTYPES:
        raise PlainDataError(f"unknown numpy dtype {dtype!r}")
    shape, flat = _payload_list(shape), _payload_list(flat)
    if not all(_type(n) is _INT and n >= 0 for n in shape) or _len(shape) > 32 or math.prod(shape) != _len(flat):
        raise PlainDataError("malformed ndarray")
    if dtype.startswith("complex"):
        flat = [_COMPLEX(*(_float_of(p) for p in _payload_list(v, 2))) for v in flat]
    elif not _set(_map(_type, flat)) <= {_BOOL, _INT, _FLOAT}:
        raise PlainDataError("malformed ndarray values")
    return np.array(flat, dtype=dtype).reshape(shape)


_BUILDERS = {
    "int": _big_int,
    "tuple": lambda p: _TUPLE(_payload_list(p)),
    "set": lambda p: _hashables(p, _SET),
    "frozenset": lambda p: _hashables(p, _FROZENSET),
    "dict": _mapping(_DICT), "OrderedDict": _mapping(_ODICT), "defaultdict": _mapping(_DDICT),
    "Counter": _mapping(_COUNTER),
    "bytes": _binary(_BYTES), "bytearray": _binary(_BYTEARRAY),
    "complex": lambda p: _COMPLEX(*(_float_of(v) for v in _payload_list(p, 2))),
    "range": _make_range, "deque": _make_deque, "Decimal": _make_decimal, "Fraction": _make_fraction,
    "numpy": _make_numpy_scalar, "ndarray": _make_ndarray,
}


def decode(data: bytes | str) -> Any:
    """The value encoded by ``encode``; anything else raises ``PlainDataError``."""
    collecting = _gc.isenabled()
    _gc.disable()
    try:
        return _loads(data, object_pairs_hook=_tagged)
    except PlainDataError:
        raise
    except RecursionError:
        raise PlainDataError("nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise PlainDataError(f"not valid JSON ({e})") from None
    finally:
        if collecting:
            _gc.enable()


def from_json_value(value: Any) -> Any:
    """The Python value of a tagged JSON-able form (as ``to_json_value`` makes it)."""
    return decode(_dumps(value))
