"""Values leave a candidate only as plain data: exact builtin types round-trip, nothing else gets through."""

from __future__ import annotations

import collections
import decimal
import fractions
import math

import numpy as np
import pytest

from sandbox import codec
from sandbox.codec import PlainDataError

PLAIN = [
    None, True, False, 0, -7, 10**15, -(2**200), 1.5, -0.0, float("inf"), "", "tab\tand\u00e9\ud800",
    [1, [2, [3]]], (1, (2,)), (), [1, 2**20000, -(2**20000)], (2**20000,), {"a": 1, 2: "b", (3, 4): [5], None: frozenset({1})}, {3, 1, 2}, frozenset(),
    b"\x00\xff", bytearray(b"ab"), 1 - 2j, range(3, 30, 4), collections.OrderedDict(b=1, a=2),
    collections.defaultdict(list, {"k": [1]}), collections.Counter("hello"), collections.deque([1, 2], maxlen=5),
    decimal.Decimal("-1.25E+3"), fractions.Fraction(-3, 7), np.float32(0.1), np.int64(-3), np.uint8(255),
    np.bool_(True), np.complex128(1 + 2j),
]


@pytest.mark.parametrize("value", PLAIN, ids=lambda v: type(v).__name__)
def test_plain_values_round_trip_with_their_exact_type(value):
    back = codec.decode(codec.encode(value))
    assert type(back) is type(value)
    assert back == value
    if isinstance(value, collections.OrderedDict):
        assert list(back) == list(value)


def test_nan_and_numpy_arrays_round_trip():
    assert math.isnan(codec.decode(codec.encode(float("nan"))))
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    back = codec.decode(codec.encode(array))
    assert back.dtype == np.float32 and back.shape == (2, 3) and (back == array).all()


def test_equal_sets_encode_identically_whatever_their_history():
    a, b = set(range(1000)), set(range(999, -1, -1))
    a.add("x")
    b.add("x")
    assert codec.encode(a) == codec.encode(b)


class AlwaysEqual:
    def __eq__(self, other):
        return True

    __hash__ = object.__hash__


class Int(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


class Str(str):
    pass


def generator():
    yield 1


@pytest.mark.parametrize("value", [
    AlwaysEqual(), [1, AlwaysEqual()], {"a": AlwaysEqual()}, {AlwaysEqual(): 1}, ({AlwaysEqual()},),
    Int(3), [Int(3)], Str("x"), generator(), ValueError("x"), len, object(), type, np.array(["s"]),
], ids=lambda v: type(v).__name__)
def test_anything_that_is_not_plain_data_is_refused_with_its_type(value):
    with pytest.raises(PlainDataError, match="not plain data|dtype"):
        codec.encode(value)


def test_self_containing_and_too_deep_values_are_refused():
    loop: list = []
    loop.append(loop)
    with pytest.raises(PlainDataError, match="contains itself"):
        codec.encode(loop)
    deep: list = []
    for _ in range(codec.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(PlainDataError, match="nested deeper"):
        codec.encode(deep)


@pytest.mark.parametrize("text", [
    b'{"eq": 1}', b'{"set": [[1]]}', b'{"dict": [[[1], 2]]}', b'{"bytes": "!!"}', b'{"tuple": 1}',
    b'{"int": "12g"}', b'{"range": [1, 2, 0]}', b'{"numpy": ["object", 1]}', b'{"a": 1, "b": 2}',
    b"[" * 5000 + b"]" * 5000, b"1" * 5000, b"not json", b'{"ndarray": ["float64", [2], [1.0]]}',
])
def test_malformed_encodings_are_refused_never_executed(text):
    with pytest.raises(PlainDataError):
        codec.decode(text)


def test_large_values_travel_as_a_digest_that_tells_types_apart():
    small, big = list(range(10)), list(range(codec.INLINE_MAX_NODES + 1))
    assert codec.result_record(small) == ["value", small]
    kind, body = codec.result_record(big)
    assert kind == "digest" and dict(body["dict"])["blake2b"] == codec.digest(big)
    assert codec.digest(big) != codec.digest(tuple(big))
    assert codec.digest([1, 2.0, True] * 10) == codec.digest([1.0, 2, 1] * 10)  # numbers: as == sees them
    assert codec.digest([2**60 + 1]) != codec.digest([float(2**60)])            # (beyond float64, exact)
    assert codec.digest([1, "a"]) != codec.digest([1.0, "a"])                   # elsewhere types count
    with pytest.raises(PlainDataError):
        codec.digest([AlwaysEqual()] * (codec.INLINE_MAX_NODES + 1))


def test_a_half_imported_numpy_in_the_harness_does_not_break_encoding(monkeypatch):
    """While one harness thread runs ``import numpy``, sys.modules already holds the half-made module; another
    thread encoding a payload must treat it as absent (no numpy value can exist yet), not crash on it."""
    import sys
    import types

    half = types.ModuleType("numpy")  # what ``import numpy`` has put in sys.modules before its body ran
    monkeypatch.setitem(sys.modules, "numpy", half)
    assert codec.decode(codec.encode({"a": [1, 2.5, "x"]})) == {"a": [1, 2.5, "x"]}
