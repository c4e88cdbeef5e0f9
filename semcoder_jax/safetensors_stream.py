"""Reading and writing safetensors files one tensor at a time, with bounded memory.

Why not ``safetensors``' own API: ``safe_open`` memory-maps whole files, so every tensor touched
stays resident (a 6.7B conversion would grow to the full model size), and ``save_file`` assembles a
shard in memory before writing it.  The format is a little-endian u64 header length, a JSON header
``{name: {dtype, shape, data_offsets}}`` and the raw bytes; this module reads a tensor with one
positioned read into a fresh buffer and writes a shard by streaming each tensor after the header.
Files written here are read back by ``safetensors.safe_open`` and ``transformers`` in the tests.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from semcoder_jax.errors import UserError

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_CODES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(UserError):
    """A safetensors file that cannot be read as one."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    file: str
    start: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: str, read: Callable[[int, int], bytes] | None = None, size: int | None = None
                ) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Tensor table and ``__metadata__`` of one file.

    ``read(start, end)`` and ``size`` read a file that is not local (an object's byte ranges); by default
    the local file ``path`` is read."""
    if read is None:
        def read(start: int, end: int) -> bytes:
            with open(path, "rb") as f:
                f.seek(start)
                return f.read(end - start)
    try:
        raw = read(0, 8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER:
            raise SafetensorsError(f"{path}: header length {n} is implausible (not a safetensors file?)")
        header = json.loads(read(8, 8 + n))
        size = os.path.getsize(path) if size is None else size
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        if isinstance(e, FileNotFoundError):
            raise SafetensorsError(f"{path}: file not found") from None
        raise SafetensorsError(f"{path}: unreadable safetensors header ({e})") from None
    metadata = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, entry in header.items():
        code = entry.get("dtype")
        if code not in _DTYPES:
            raise SafetensorsError(f"{path}: tensor {name} has unsupported dtype {code!r}")
        begin, end = entry["data_offsets"]
        shape = tuple(int(s) for s in entry["shape"])
        dtype = _DTYPES[code]
        if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or 8 + n + end > size:
            raise SafetensorsError(f"{path}: tensor {name} has inconsistent offsets (truncated file?)")
        tensors[name] = TensorInfo(name, dtype, shape, path, 8 + n + begin, end - begin)
    return tensors, metadata


def read_tensor(info: TensorInfo) -> np.ndarray:
    """Loads one tensor into a new array (no memory map)."""
    out = np.empty(info.shape, info.dtype)
    read_tensor_into(info, out)
    return out


def read_tensor_into(info: TensorInfo, out: np.ndarray) -> None:
    """Reads one tensor's bytes straight into ``out`` (C-contiguous, same dtype and element count).

    ``out`` may have another shape with the same elements (e.g. a slice of a stacked array), so
    assembling a larger array costs no extra copy.
    """
    if out.dtype != info.dtype or out.size * out.itemsize != info.nbytes or not out.flags.c_contiguous:
        raise ValueError(f"{info.name}: cannot read {info.shape} {info.dtype} into {out.shape} {out.dtype}")
    with open(info.file, "rb") as f:
        f.seek(info.start)
        got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
    if got != info.nbytes:
        raise SafetensorsError(f"{info.file}: tensor {info.name} is truncated ({got} of {info.nbytes} bytes)")


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to be written: its name, shape, dtype and where its data comes from."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def plan_shards(specs: Iterable[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Greedy assignment in order: a new shard starts when the next tensor would overflow."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def write_file(path: str, specs: list[TensorSpec], get: Callable[[TensorSpec], np.ndarray],
               metadata: dict[str, str] | None = None) -> None:
    """Writes the header for ``specs``, then each tensor's bytes as ``get`` produces it."""
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for spec in specs:
        header[spec.name] = {"dtype": _CODES[np.dtype(spec.dtype)], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for spec in specs:
            array = np.ascontiguousarray(get(spec))
            if array.shape != spec.shape or array.dtype != np.dtype(spec.dtype):
                raise AssertionError(f"{spec.name}: produced {array.shape} {array.dtype}, planned {spec.shape} {spec.dtype}")
            f.write(memoryview(array.reshape(-1).view(np.uint8)))
            del array


def parse_size(text: str) -> int:
    """'5GB' / '500MB' / '1GiB' / bytes -> bytes (decimal units as in transformers)."""
    units = {"GIB": 2**30, "MIB": 2**20, "KIB": 2**10, "GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}
    t = text.strip().upper()
    unit = next((u for u in units if t.endswith(u)), "")
    number, factor = (t[: -len(unit)].strip(), units[unit]) if unit else (t, 1)
    try:
        value = float(number)
    except ValueError:
        raise UserError(f"invalid size {text!r} (expected e.g. 5GB, 500MB)") from None
    if value <= 0:
        raise UserError(f"invalid size {text!r} (must be positive)")
    return int(value * factor)
