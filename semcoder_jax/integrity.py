"""Content digests of arrays that do not depend on how the arrays are sharded, and finiteness checks.

A checkpoint's manifest records, per array, its shape, dtype and a 64-bit digest of its contents.  The
digest is a sum, modulo 2^32 in each of two lanes, of a mixing function (MurmurHash3's 32-bit finaliser)
of every element's bits and its flat position.  Because it is a sum, any partition of an array gives
partial digests that add up to the whole: a sharded array is digested where it lives (XLA reduces the
shards, across hosts too), a checkpoint restored onto another mesh digests to the same value, and the
converter can digest a leaf block by block as it streams it.  Because each term depends on the position,
moving a value (or swapping two) changes the digest, and a random change to any number of elements goes
unnoticed with probability about 2^-64.  This is corruption detection, not a cryptographic commitment.

``tree_digests`` digests a whole tree in one compiled pass (on the arrays' devices);
``BlockDigest`` accumulates leading-axis blocks of numpy arrays (on the CPU).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ALGORITHM = "fmix32x2-sum-v1"
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


def tree_digests(tree: Any) -> tuple[dict[str, dict[str, Any]], bool]:
    """({leaf name: {"shape", "dtype", "digest"}}, whether every float leaf is finite), in one pass."""
    lanes, finite = _tree_lanes_and_finite(tree)
    lanes, finite = jax.device_get((lanes, finite))
    out = {}
    for (path, leaf), (_, value) in zip(jax.tree_util.tree_leaves_with_path(tree),
                                        jax.tree_util.tree_leaves_with_path(lanes)):
        out[leaf_name(path)] = {"shape": list(leaf.shape), "dtype": str(jnp.dtype(leaf.dtype)), "digest": _hex(value)}
    return out, bool(finite)


_block_lanes = jax.jit(_lanes)


class BlockDigest:
    """The digest of an array given as consecutive leading-axis blocks (numpy, on the CPU)."""

    def __init__(self) -> None:
        self.total = np.zeros(2, np.uint32)
        self.position = 0

    def add(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block)
        words_per_item = 2 if block.dtype.itemsize == 8 else 1
        if words_per_item == 2:  # 64-bit values exist only on the host (jax runs without x64): split them here
            block = block.view(np.uint32).reshape(block.shape + (2,)) if block.ndim else block.view(np.uint32)
        start = np.uint32((self.position * words_per_item) % 2**32)
        with jax.default_device(jax.devices("cpu")[0]):
            lanes = np.asarray(_block_lanes(block, start), dtype=np.uint32)
        self.total = (self.total + lanes).astype(np.uint32)
        self.position += block.size // words_per_item

    def hexdigest(self) -> str:
        return _hex(self.total)


def digest_array(array: np.ndarray) -> str:
    """The digest of one numpy array (what ``tree_digests`` gives for it on any device)."""
    block = BlockDigest()
    block.add(array)
    return block.hexdigest()


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
