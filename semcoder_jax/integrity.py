"""Content digests of arrays, for checkpoint manifests, and finiteness checks.

A checkpoint's manifest records, per array, its shape, dtype and a 64-bit digest of its contents, under
one of two algorithms (the manifest names which):

- ``fmix32x2-sum``: a sum, modulo 2^32 in each of two lanes, of a mixing function (MurmurHash3's 32-bit
  finaliser) of every element's bits and its flat position.  Because it is a sum, any partition of an
  array gives partial digests that add up to the whole: a sharded array is digested where it lives (XLA
  reduces the shards, across hosts too) and a checkpoint restored onto another mesh digests to the same
  value.  Because each term depends on the position, moving a value (or swapping two) changes it; a random
  change to any number of elements goes unnoticed with probability about 2^-64.  Cheap on accelerators,
  used whenever the arrays do not all live in this process's host memory.
- ``xxh3-64``: XXH3 of the array's bytes in C order.  Used when every array is whole in this process's
  host memory (a single-process CPU run), where it runs at memory speed and the sum would not.

Both are corruption detection, not cryptographic commitments.  ``tree_digests`` digests a whole tree;
``BlockDigest`` digests an array given as leading-axis blocks in order (the converter and the verifier
stream checkpoints that way).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import xxhash

SUM = "fmix32x2-sum"
XXH3 = "xxh3-64"
ALGORITHMS = (SUM, XXH3)
_BITS = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _fmix(h: jax.Array) -> jax.Array:
    h = h ^ (h >> 16)
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _as_words(x: jax.Array) -> jax.Array:
    """The array's bits as uint32 words (one per element; 8-byte elements are split into two)."""
    itemsize = jnp.dtype(x.dtype).itemsize
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if itemsize == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., 2]
    if itemsize not in _BITS:
        raise TypeError(f"cannot digest dtype {x.dtype}")
    words = jax.lax.bitcast_convert_type(x, _BITS[itemsize])
    return words.astype(jnp.uint32)


def _lanes(x: jax.Array, start: jax.Array) -> jax.Array:
    """[2] uint32: the two digest lanes of ``x`` whose first element sits at flat position ``start``."""
    words = _as_words(x)
    shape = words.shape
    index = jnp.zeros(shape, jnp.uint32) + start
    stride = 1
    for axis in range(len(shape) - 1, -1, -1):  # the flat position, modulo 2^32, without a giant iota
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride % 2**32)
        stride *= shape[axis]
    a = _fmix(words ^ _fmix(index * np.uint32(0x9E3779B1) + np.uint32(0x7F4A7C15)))
    b = _fmix((words + np.uint32(0x165667B1)) * np.uint32(0x27D4EB2F) ^ _fmix(index + np.uint32(0x61C88647)))
    return jnp.stack([jnp.sum(a, dtype=jnp.uint32), jnp.sum(b, dtype=jnp.uint32)])


_NUMPY_BLOCK = 1 << 16
_CACHE_BLOCK_BYTES = 1 << 20  # what one thread hashes and checks for finiteness in one pass through the cache


def _sum_lanes_numpy(words: np.ndarray, start: int) -> np.ndarray:
    """``_lanes`` of a flat array on the host, in cache-sized blocks (numpy is several times faster than
    XLA:CPU at this)."""
    bits = _as_words_numpy(words)
    a = b = 0
    n = _NUMPY_BLOCK
    j = np.arange(min(n, bits.size), dtype=np.uint32)
    x = np.empty(j.size, np.uint32)
    y = np.empty(j.size, np.uint32)
    with np.errstate(over="ignore"):
        for at in range(0, bits.size, n):
            w = bits[at:at + n]
            k = w.size
            index = (j[:k] + np.uint32((start + at) % 2**32)).astype(np.uint32)
            xv, yv = x[:k], y[:k]
            np.multiply(index, np.uint32(0x9E3779B1), out=xv)
            np.add(xv, np.uint32(0x7F4A7C15), out=xv)
            _fmix_numpy(xv, yv)
            np.bitwise_xor(xv, w, out=xv)
            _fmix_numpy(xv, yv)
            a += int(xv.sum(dtype=np.uint64))
            np.add(index, np.uint32(0x61C88647), out=yv)
            _fmix_numpy(yv, xv)
            np.add(w, np.uint32(0x165667B1), out=xv)
            np.multiply(xv, np.uint32(0x27D4EB2F), out=xv)
            np.bitwise_xor(xv, yv, out=xv)
            _fmix_numpy(xv, yv)
            b += int(xv.sum(dtype=np.uint64))
    return np.array([a % 2**32, b % 2**32], np.uint32)


def _fmix_numpy(h: np.ndarray, scratch: np.ndarray) -> None:
    """MurmurHash3's finaliser in place on uint32 ``h``."""
    np.right_shift(h, 16, out=scratch)
    np.bitwise_xor(h, scratch, out=h)
    np.multiply(h, np.uint32(0x85EBCA6B), out=h)
    np.right_shift(h, 13, out=scratch)
    np.bitwise_xor(h, scratch, out=h)
    np.multiply(h, np.uint32(0xC2B2AE35), out=h)
    np.right_shift(h, 16, out=scratch)
    np.bitwise_xor(h, scratch, out=h)


def _as_words_numpy(x: np.ndarray) -> np.ndarray:
    """``_as_words`` on the host: one uint32 per element (the caller has split 8-byte ones)."""
    if x.dtype == np.bool_:
        return x.astype(np.uint32)
    itemsize = x.dtype.itemsize
    if itemsize == 4:
        return x.view(np.uint32)
    if itemsize == 2:
        return x.view(np.uint16).astype(np.uint32)
    if itemsize == 1:
        return x.view(np.uint8).astype(np.uint32)
    raise TypeError(f"cannot digest dtype {x.dtype}")


def _finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)


@jax.jit
def _tree_lanes_and_finite(tree: Any) -> tuple[Any, jax.Array]:
    leaves = jax.tree.leaves(tree)
    lanes = jax.tree.map(lambda x: _lanes(x, jnp.uint32(0)), tree)
    finite = jnp.all(jnp.stack([_finite(x) for x in leaves])) if leaves else jnp.bool_(True)
    return lanes, finite


def _hex(lanes: Any) -> str:
    a, b = (int(v) for v in np.asarray(lanes, dtype=np.uint32))
    return f"{a:08x}{b:08x}"


def leaf_name(path: tuple) -> str:
    """A tree path as the manifest names it: keys joined with ``/``."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _host_resident(tree: Any) -> bool:
    """Whether every leaf is whole in this process's host memory (numpy, or jax on a single CPU process)."""
    if jax.process_count() != 1:
        return False
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and (not leaf.is_fully_addressable
                                            or any(d.platform != "cpu" for d in leaf.devices())):
            return False
    return True


def tree_digests(tree: Any, algorithm: str | None = None) -> tuple[dict[str, dict[str, Any]], bool, str]:
    """({leaf name: {"shape", "dtype", "digest"}}, whether every float leaf is finite, the algorithm).

    ``algorithm`` None picks ``xxh3-64`` when every leaf is in host memory, else ``fmix32x2-sum``."""
    algorithm = algorithm or (XXH3 if _host_resident(tree) else SUM)
    named = [(leaf_name(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]
    out: dict[str, dict[str, Any]] = {}
    if algorithm == SUM:
        lanes, finite = _tree_lanes_and_finite(tree)
        lanes, finite = jax.device_get((lanes, finite))
        for (name, leaf), value in zip(named, jax.tree.leaves(lanes)):
            out[name] = {"shape": list(leaf.shape), "dtype": str(jnp.dtype(leaf.dtype)), "digest": _hex(value)}
        return out, bool(finite), algorithm
    if algorithm != XXH3:
        raise ValueError(f"unknown digest algorithm {algorithm!r}")
    from concurrent.futures import ThreadPoolExecutor

    def one(item: tuple[str, Any]) -> tuple[str, dict[str, Any], bool]:
        name, leaf = item
        array = np.asarray(leaf)
        block, finite = BlockDigest(XXH3), True
        flat = np.ascontiguousarray(array).reshape(-1)
        step = max(1, _CACHE_BLOCK_BYTES // max(1, array.dtype.itemsize))
        for start in range(0, flat.size, step) if flat.size else [0]:  # hash and check each block while cached
            part = flat[start:start + step]
            block.add(part)
            finite = finite and nonfinite_count(part) == 0
        return name, {"shape": list(array.shape), "dtype": str(array.dtype), "digest": block.hexdigest()}, finite

    finite = True
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # xxhash and numpy release the GIL
        for name, entry, ok in pool.map(one, named):
            out[name] = entry
            finite = finite and ok
    return out, finite, algorithm


class BlockDigest:
    """The digest of an array given as consecutive leading-axis blocks, in order (numpy, on the host)."""

    def __init__(self, algorithm: str = SUM) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown digest algorithm {algorithm!r}")
        self.algorithm = algorithm
        self.total = np.zeros(2, np.uint32)
        self.position = 0
        self._xxh3 = xxhash.xxh3_64() if algorithm == XXH3 else None

    def add(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block)
        if self._xxh3 is not None:
            self._xxh3.update(memoryview(block.reshape(-1).view(np.uint8)) if block.size else b"")
            return
        words_per_item = 2 if block.dtype.itemsize == 8 else 1
        if words_per_item == 2:  # 64-bit values exist only on the host (jax runs without x64): split them here
            block = block.view(np.uint32).reshape(block.shape + (2,)) if block.ndim else block.view(np.uint32)
        start = np.uint32((self.position * words_per_item) % 2**32)
        self.total = (self.total + _sum_lanes_numpy(block.reshape(-1), int(start))).astype(np.uint32)
        self.position += block.size // words_per_item

    def hexdigest(self) -> str:
        return self._xxh3.hexdigest() if self._xxh3 is not None else _hex(self.total)


def digest_array(array: np.ndarray, algorithm: str = SUM) -> str:
    """The digest of one numpy array (what ``tree_digests`` gives for it under ``algorithm``)."""
    block = BlockDigest(algorithm)
    block.add(array)
    return block.hexdigest()


def nonfinite_count(array: np.ndarray) -> int:
    """How many NaN or infinite values an array holds (bfloat16 by its exponent bits: numpy's isfinite is
    slow on it); 0 for non-float arrays."""
    array = np.asarray(array)
    if array.dtype == np.dtype(ml_dtypes.bfloat16):
        mask = np.uint16(0x7F80)
        return int(np.count_nonzero((array.view(np.uint16) & mask) == mask))
    if array.dtype.kind != "f":
        return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def json_digest(value: Any) -> str:
    """SHA-256 of a JSON value in canonical form (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def compare(recorded: dict[str, dict[str, Any]], found: dict[str, dict[str, Any]],
            names: Iterable[str] | None = None) -> list[str]:
    """What differs between two manifests' array entries (all of them, or ``names``), in words."""
    problems = []
    for name in sorted(names if names is not None else set(recorded) | set(found)):
        want, got = recorded.get(name), found.get(name)
        if want is None:
            problems.append(f"{name}: not in the manifest")
        elif got is None:
            problems.append(f"{name}: missing")
        elif want["shape"] != got["shape"] or want["dtype"] != got["dtype"]:
            problems.append(f"{name}: {got['dtype']}{got['shape']}, the manifest says {want['dtype']}{want['shape']}")
        elif want["digest"] != got["digest"]:
            problems.append(f"{name}: content digest {got['digest']} != {want['digest']} in the manifest")
    return problems
