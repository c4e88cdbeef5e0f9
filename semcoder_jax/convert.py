"""Hugging Face LLaMA checkpoints <-> native (Orbax) checkpoints, streamed with bounded memory.

A native checkpoint directory holds ``model_config.json`` (``ModelConfig``), ``params/`` (an Orbax
PyTree checkpoint of the decoder's parameter tree, layers stacked) and optionally ``tokenizer/``.

The native layout keeps HF's ``[out, in]`` weight order (see ``semcoder_jax.model``), so every
tensor converts by a reshape: no transposes, and values are bit-identical in the source dtype.
Vocabulary rows beyond the tokenizer are kept as they are.

- HF -> native: each stacked leaf (e.g. all 32 layers' ``q_proj``) is filled by reading every
  layer's tensor straight into its slice, then saved with Orbax partial saving (uncompressed zarr3,
  one storage chunk per layer) while a background thread fills the next leaf.  Peak memory is about
  two stacked leaves.
- native -> HF: tensors are read through TensorStore one storage chunk at a time (one layer for
  checkpoints written here) and streamed into safetensors shards in file order.
Outputs are written to a temporary sibling directory and renamed at the end.

Object stores (``gs://BUCKET/...``, through ``semcoder_jax.locations``) are read and written without
staging a model on local disk:

- An HF directory is read by byte range: each tensor is read from its shard in 16 MiB ranges, 8 at a
  time, straight into its slot, so reading takes no local disk at all (a PyTorch ``.bin`` checkpoint,
  which ``torch.load`` only reads from a file, is the exception: its files are downloaded for the read).
- Native checkpoints are read through TensorStore's ``gcs`` kvstore and Orbax, like local ones.
- An HF export is written shard by shard: each shard is written to a local scratch file, uploaded as one
  object and deleted before the next one starts (peak local disk: one shard, ``--max-shard-size``).  An
  object store has no rename, so the files go straight to the target and the one that makes the
  directory loadable goes last: the index of a sharded export (``config.json`` of a single-file one),
  after the tokenizer, ``generation_config.json`` and ``config.json``.  A native output goes the same
  way with ``model_config.json`` last, except that its ``params/`` is staged whole on local disk first
  (Orbax's partial saving renames, which an object store cannot).  A reader that finds the last file
  sees a complete output; one that does not is told what is missing.  On failure the objects written
  are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import ml_dtypes
import numpy as np

from semcoder_jax import integrity, locations
from semcoder_jax.config import ModelConfig, load_hf_config, model_config_from_dict, model_config_to_dict
from semcoder_jax.errors import UserError
from semcoder_jax.safetensors_stream import (
    SafetensorsError,
    TensorInfo,
    TensorSpec,
    parse_size,
    plan_shards,
    read_header,
    read_tensor,
    read_tensor_into,
    write_file,
)

LeafPath = tuple[str, ...]
T = TypeVar("T")
MODEL_CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
# Buffers some checkpoints carry that are recomputed from the config.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
           "float16": np.dtype(np.float16)}


class ConversionError(UserError):
    """A checkpoint that cannot be converted, described with its file and the problem."""


# ---- the name/layout mapping -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Mapping:
    """One native leaf and the HF tensor(s) it corresponds to (one per layer when ``per_layer``).

    The two shapes hold the same elements in the same order: converting is a reshape.
    """

    leaf: LeafPath
    hf_name: str  # with "{i}" for the layer index
    per_layer: bool
    hf_shape: tuple[int, ...]
    native_shape: tuple[int, ...]  # of one layer's slice when per_layer

    def hf_names(self, num_layers: int) -> list[str]:
        return [self.hf_name.format(i=i) for i in range(num_layers)] if self.per_layer else [self.hf_name]


def prefetch(items: Iterable[T], depth: int = 1, *, sizes: Sequence[int] | None = None,
             max_bytes: int | None = None) -> Iterator[T]:
    """Yields ``items`` while a background thread produces the ones after it (overlaps read and write).

    Alive items -- the one the consumer holds and those produced ahead -- number at most
    ``depth + 1``.  With ``sizes`` (each item's bytes, known up front) and ``max_bytes``, the
    producer also starts an item only when it fits in ``max_bytes`` beside the alive ones (or
    nothing is alive), which bounds peak memory when item sizes differ a lot.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue()
    cond = threading.Condition()
    alive: list[int] = []  # bytes of the items produced (or in production) and not yet released
    stopped = False
    done = object()

    def may_start(need: int) -> bool:
        if stopped:
            return True
        fits = max_bytes is None or not alive or sum(alive) + need <= max_bytes
        return len(alive) <= depth and fits

    def worker():
        try:
            iterator = iter(items)
            for index in itertools.count():
                need = sizes[index] if sizes is not None and index < len(sizes) else 0
                with cond:
                    cond.wait_for(lambda need=need: may_start(need))
                    if stopped:
                        return
                    alive.append(need)
                item = next(iterator, done)
                q.put((True, item))
                if item is done:
                    return
                del item
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put((False, e))

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
            del item
            with cond:
                alive.pop(0)
                cond.notify_all()
    finally:
        with cond:
            stopped = True
            cond.notify_all()
        thread.join()  # the producer finishes the item in hand: nothing runs on after an error


def mappings(config: ModelConfig) -> list[Mapping]:
    """The complete HF <-> native correspondence for ``config``, in HF file order."""
    d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    h, k, hd = config.num_heads, config.num_kv_heads, config.resolved_head_dim
    layer = "model.layers.{i}."
    out = [
        Mapping(("embedding",), "model.embed_tokens.weight", False, (v, d), (v, d)),
        Mapping(("layers", "attention_norm", "scale"), layer + "input_layernorm.weight", True, (d,), (d,)),
        Mapping(("layers", "attention", "q_proj"), layer + "self_attn.q_proj.weight", True, (h * hd, d), (h, hd, d)),
        Mapping(("layers", "attention", "k_proj"), layer + "self_attn.k_proj.weight", True, (k * hd, d), (k, hd, d)),
        Mapping(("layers", "attention", "v_proj"), layer + "self_attn.v_proj.weight", True, (k * hd, d), (k, hd, d)),
        Mapping(("layers", "attention", "o_proj"), layer + "self_attn.o_proj.weight", True, (d, h * hd), (d, h, hd)),
        Mapping(("layers", "mlp_norm", "scale"), layer + "post_attention_layernorm.weight", True, (d,), (d,)),
        Mapping(("layers", "mlp", "gate_proj"), layer + "mlp.gate_proj.weight", True, (f, d), (f, d)),
        Mapping(("layers", "mlp", "up_proj"), layer + "mlp.up_proj.weight", True, (f, d), (f, d)),
        Mapping(("layers", "mlp", "down_proj"), layer + "mlp.down_proj.weight", True, (d, f), (d, f)),
        Mapping(("final_norm", "scale"), "model.norm.weight", False, (d,), (d,)),
    ]
    if not config.tie_word_embeddings:
        out.append(Mapping(("lm_head",), "lm_head.weight", False, (v, d), (v, d)))
    return out


def _native_shape(m: Mapping, config: ModelConfig) -> tuple[int, ...]:
    return ((config.num_layers,) + m.native_shape) if m.per_layer else m.native_shape


def _get_leaf(tree: dict, path: LeafPath):
    for key in path:
        tree = tree[key]
    return tree


def _set_leaf(tree: dict, path: LeafPath, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _nest(path: LeafPath, value) -> dict:
    out: dict = {}
    _set_leaf(out, path, value)
    return out


# ---- reading HF directories ------------------------------------------------------------------

class HFCheckpoint:
    """The tensors of an HF model directory: single or sharded safetensors, or PyTorch ``.bin``.

    ``hf_dir`` may be an object-store URL (``gs://...``): safetensors headers and tensors are then read
    by byte range, taking no local disk; ``.bin`` files are downloaded to a temporary directory that
    lives as long as this object (``torch.load`` reads files only).
    """

    def __init__(self, hf_dir: str):
        self.remote = locations.is_remote(hf_dir)
        self.dir = hf_dir.rstrip("/") if self.remote else hf_dir
        if self.remote:
            locations.probe_readable("HF directory", self.dir)
        if not _isdir(self.dir):
            raise ConversionError(f"{hf_dir}: not a directory")
        self.tensors: dict[str, TensorInfo] = {}
        self._torch: dict[str, Any] = {}
        self._downloads: tempfile.TemporaryDirectory | None = None
        files = self._weight_files()
        for file in files:
            if file.endswith(".safetensors"):
                try:
                    table = _read_remote_header(file) if self.remote else read_header(file)[0]
                except SafetensorsError as e:
                    raise ConversionError(str(e)) from None
                self.tensors.update(table)
            else:
                self._load_torch(file)

    def _weight_files(self) -> list[str]:
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = locations.join(self.dir, index_name)
            if _exists(index):
                try:
                    weight_map = json.loads(_read_text(index))["weight_map"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ConversionError(f"{index}: not a valid index ({e!r})") from None
                files = []
                for shard in dict.fromkeys(weight_map.values()):
                    path = locations.join(self.dir, shard)
                    if not _exists(path):
                        raise ConversionError(f"{index}: shard {shard} named in the index is missing")
                    files.append(path)
                return files
        for single in ("model.safetensors", "pytorch_model.bin"):
            if _exists(locations.join(self.dir, single)):
                return [locations.join(self.dir, single)]
        raise ConversionError(f"{self.dir}: no model.safetensors, sharded safetensors index or pytorch_model.bin")

    def _load_torch(self, file: str) -> None:
        import torch

        source = file
        if self.remote:  # torch.load reads a local file (memory-mapped while the tensors are read)
            if self._downloads is None:
                self._downloads = tempfile.TemporaryDirectory(prefix="semcoder-hf-bin-")
            source = os.path.join(self._downloads.name, f"{len(os.listdir(self._downloads.name))}.bin")
            _fs(file).get_file(file, source)
        try:
            state = torch.load(source, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many kinds for a corrupt file
            raise ConversionError(f"{file}: cannot be read as a PyTorch checkpoint ({e})") from None
        for name, tensor in state.items():
            self._torch[name] = (file, tensor)

    def names(self) -> set[str]:
        return set(self.tensors) | set(self._torch)

    def source_of(self, name: str) -> str:
        return self.tensors[name].file if name in self.tensors else self._torch[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape if name in self.tensors else tuple(self._torch[name][1].shape)

    def dtype(self, name: str) -> np.dtype:
        if name in self.tensors:
            return self.tensors[name].dtype
        return _torch_to_numpy_dtype(self._torch[name][1].dtype)

    def read(self, name: str) -> np.ndarray:
        if name in self.tensors:
            if self.remote:
                info = self.tensors[name]
                out = np.empty(info.shape, info.dtype)
                _read_remote_into(info, out)
                return out
            return read_tensor(self.tensors[name])
        return torch_to_numpy(self._torch[name][1])

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Fills ``out`` (any shape with the tensor's element count) with the tensor, cast to its dtype."""
        if name in self.tensors and self.tensors[name].dtype == out.dtype:
            # no intermediate copy
            (_read_remote_into if self.remote else read_tensor_into)(self.tensors[name], out)
        else:
            out[...] = self.read(name).reshape(out.shape)


# ---- object-store locations (gs://) ----------------------------------------------------------

# A remote tensor is read in ranges of _RANGE_BYTES, _RANGES_IN_FLIGHT at a time (one GCS stream is slow;
# a few in parallel fill the link): at most 128 MiB held beside the tensor itself.
_RANGE_BYTES = 16 << 20
_RANGES_IN_FLIGHT = 8


def _isdir(path: str) -> bool:
    return locations.path(path).is_dir() if locations.is_remote(path) else os.path.isdir(path)


def _isfile(path: str) -> bool:
    return locations.path(path).is_file() if locations.is_remote(path) else os.path.isfile(path)


def _exists(path: str) -> bool:
    return locations.path(path).exists() if locations.is_remote(path) else os.path.exists(path)


def _read_text(path: str) -> str:
    if locations.is_remote(path):
        return locations.path(path).read_text(encoding="utf-8")
    with open(path, encoding="utf-8") as f:
        return f.read()


def _parent(path: str) -> str:
    """The directory holding ``path``: ``os.path.dirname`` of it made absolute, or a URL's parent."""
    if locations.is_remote(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(path))


def _fs(url: str):
    """The fsspec filesystem (gcsfs for gs://) that ``locations.path`` uses for ``url``."""
    from etils.epath import backend as backend_lib

    locations.path(url)  # checks the URL and configures the environment
    return backend_lib.fsspec_backend.fs(url)


def _kvstore(directory: str) -> dict[str, Any]:
    """A TensorStore kvstore spec for the files under ``directory``: local, or a gs:// prefix (as Orbax
    builds it, honouring ``TENSORSTORE_GCS_BACKEND``)."""
    if not locations.is_remote(directory):
        return {"driver": "file", "path": directory + "/"}
    scheme, bucket, key = locations.split(directory)
    if scheme != "gs":
        raise ConversionError(f"{directory}: TensorStore reads gs:// object stores only, not {scheme}://")
    locations.configure_environment()
    return {"driver": os.environ.get("TENSORSTORE_GCS_BACKEND", "gcs"), "bucket": bucket,
            "path": key.strip("/") + "/"}


def _read_remote_header(url: str) -> dict[str, TensorInfo]:
    """``safetensors_stream.read_header`` for an object: two ranged reads (length, then header)."""
    fs = _fs(url)
    try:
        size = fs.size(url)
    except FileNotFoundError:
        raise SafetensorsError(f"{url}: file not found") from None
    return read_header(url, lambda start, end: fs.cat_file(url, start, end) if start < size else b"", size)[0]


def _read_remote_into(info: TensorInfo, out: np.ndarray) -> None:
    """``read_tensor_into`` for an object: parallel ranged reads straight into ``out``."""
    if out.dtype != info.dtype or out.size * out.itemsize != info.nbytes or not out.flags.c_contiguous:
        raise ValueError(f"{info.name}: cannot read {info.shape} {info.dtype} into {out.shape} {out.dtype}")
    view = memoryview(out.reshape(-1).view(np.uint8))
    fs = _fs(info.file)
    pieces = [(b, min(b + _RANGE_BYTES, info.nbytes)) for b in range(0, info.nbytes, _RANGE_BYTES)]
    for first in range(0, len(pieces), _RANGES_IN_FLIGHT):
        group = pieces[first:first + _RANGES_IN_FLIGHT]
        datas = fs.cat_ranges([info.file] * len(group), [info.start + b for b, _ in group],
                              [info.start + e for _, e in group], on_error="raise")
        for (begin, end), data in zip(group, datas):
            if len(data) != end - begin:
                raise SafetensorsError(f"{info.file}: tensor {info.name} is truncated "
                                       f"({begin + len(data)} of {info.nbytes} bytes)")
            view[begin:end] = data
        del datas


def _torch_to_numpy_dtype(dtype) -> np.dtype:
    import torch

    table = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16,
             torch.float64: np.float64}
    if dtype not in table:
        raise ConversionError(f"unsupported tensor dtype {dtype}")
    return np.dtype(table[dtype])


def torch_to_numpy(tensor) -> np.ndarray:
    """A CPU tensor as a numpy array with the same bits (bf16 via a 16-bit view)."""
    import torch

    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.uint16).numpy().view(ml_dtypes.bfloat16).copy()
    return tensor.numpy().copy()


def numpy_to_torch(array: np.ndarray):
    import torch

    array = np.ascontiguousarray(array)
    if array.dtype == np.dtype(ml_dtypes.bfloat16):
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _check_hf_tensors(ckpt: HFCheckpoint, config: ModelConfig, maps: list[Mapping]) -> None:
    expected = {}
    for m in maps:
        for name in m.hf_names(config.num_layers):
            expected[name] = m.hf_shape
    available = ckpt.names()
    for name, shape in expected.items():
        if name not in available:
            raise ConversionError(f"{ckpt.dir}: tensor {name} is missing (config.json implies it)")
        if ckpt.shape(name) != shape:
            raise ConversionError(
                f"{ckpt.source_of(name)}: tensor {name} has shape {list(ckpt.shape(name))} "
                f"but config.json implies {list(shape)}")
        if ckpt.dtype(name) not in WEIGHT_DTYPES:
            raise ConversionError(f"{ckpt.source_of(name)}: tensor {name} has dtype {ckpt.dtype(name)}; a weight "
                                  f"must be a floating type ({', '.join(sorted(map(str, WEIGHT_DTYPES)))})")
    extra = sorted(n for n in available - set(expected) if not n.endswith(_IGNORED_SUFFIXES))
    if config.tie_word_embeddings and "lm_head.weight" in extra:
        extra.remove("lm_head.weight")  # a tied head saved anyway: identical to the embedding
    if extra:
        more = f" (and {len(extra) - 5} more)" if len(extra) > 5 else ""
        raise ConversionError(f"{ckpt.dir}: unexpected tensor(s) {', '.join(extra[:5])}{more} "
                              "not used by a LLaMA decoder with this config")


def _hf_leaf(ckpt: HFCheckpoint, m: Mapping, config: ModelConfig, dtype: np.dtype | None,
             allow_nonfinite: bool = False) -> np.ndarray:
    """Assembles one native leaf from HF tensors (each layer read into its slice), optionally casting;
    a tensor holding NaN or infinity is refused unless ``allow_nonfinite``."""
    names = m.hf_names(config.num_layers)
    out = np.empty(_native_shape(m, config), dtype or ckpt.dtype(names[0]))
    slots = [out[i] for i in range(len(names))] if m.per_layer else [out]
    for name, slot in zip(names, slots):
        ckpt.read_into(name, slot)
        if not allow_nonfinite:
            check_finite(slot, f"{ckpt.source_of(name)}: tensor {name}")
    return out


WEIGHT_DTYPES = frozenset(np.dtype(t) for t in (np.float32, np.float16, ml_dtypes.bfloat16, np.float64))


def check_finite(array: np.ndarray, what: str) -> None:
    """Refuses NaN/inf weights, naming them (``--allow-nonfinite`` converts them anyway, for forensics)."""
    bad = integrity.nonfinite_count(array)
    if bad:
        raise ConversionError(f"{what} holds {bad} non-finite value(s) (NaN or infinity); refusing to convert "
                              "it (pass --allow-nonfinite to convert anyway)")


def read_hf_config(hf_dir: str, **overrides: Any) -> ModelConfig:
    """``config.load_hf_config`` for a local directory or an object-store URL (``gs://.../hf``)."""
    if not locations.is_remote(hf_dir):
        return load_hf_config(hf_dir, **overrides)
    from semcoder_jax.config import ConfigError

    file = locations.join(hf_dir, "config.json")
    locations.probe_readable("HF directory", hf_dir)
    if not _isfile(file):
        raise ConfigError(f"{file}: not found (an HF model directory needs config.json)")
    try:
        data = json.loads(_read_text(file))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a JSON object")
    return ModelConfig.from_hf_dict(data, source=file, **overrides)


def load_hf_params(hf_dir: str, *, param_dtype: str | None = "float32", allow_nonfinite: bool = False,
                   **config_overrides: Any) -> tuple[ModelConfig, dict]:
    """Reads an HF directory (local or ``gs://``, read by byte range) into (config, numpy parameter tree in
    the native layout)."""
    config = read_hf_config(hf_dir, **config_overrides)
    ckpt = HFCheckpoint(hf_dir)
    maps = mappings(config)
    _check_hf_tensors(ckpt, config, maps)
    dtype = _DTYPES[param_dtype] if param_dtype else None
    params: dict = {}
    for m in maps:
        _set_leaf(params, m.leaf, _hf_leaf(ckpt, m, config, dtype, allow_nonfinite))
    return config, params


# ---- output directories ----------------------------------------------------------------------

def _prepare_output(out_dir: str, overwrite: bool) -> str:
    """Validates ``out_dir`` and returns a fresh temporary sibling to write into."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ConversionError(f"{out_dir}: exists and is not a directory")
        if os.listdir(out_dir) and not overwrite:
            raise ConversionError(f"{out_dir}: exists and is not empty (pass --overwrite to replace it)")
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        return tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    except OSError as e:
        raise ConversionError(f"{out_dir}: cannot be written ({e.strerror or e}); nothing was written") from None


def _commit_output(tmp_dir: str, out_dir: str) -> None:
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp_dir, out_dir)


class _Staging:
    """Context manager: a temp directory renamed to the target on success, removed on failure.

    Writers make every file under the directory ``__enter__`` returns and ``publish`` each one when it is
    done, a no-op here (see ``_RemoteStaging``)."""

    def __init__(self, out_dir: str, overwrite: bool):
        self.out_dir = out_dir
        self.tmp = _prepare_output(out_dir, overwrite)

    def publish(self, name: str) -> None:
        pass

    def __enter__(self) -> str:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                _commit_output(self.tmp, self.out_dir)
                return
            except OSError as e:
                exc = e
        shutil.rmtree(self.tmp, ignore_errors=True)
        reason = _write_failure(exc)
        if reason:
            raise ConversionError(f"{os.path.abspath(self.out_dir)}: could not be written ({reason}); "
                                  "nothing was left behind") from None


class _RemoteStaging:
    """``_Staging`` for an object-store prefix, which has no rename: files go straight to the target.

    Each file is made in a local scratch directory (the directory ``__enter__`` returns), uploaded by
    ``publish(name)`` as one object (an upload is atomic: the object appears only once it is complete)
    and deleted there, so local disk holds one file at a time (a directory is published file by file).
    A writer publishes the file that makes the output loadable last.

    The target must be empty; with ``overwrite`` its objects are deleted just before the first file is
    uploaded (the old output cannot stay in place until the new one is complete, but a conversion that
    fails before it has anything to upload leaves it alone).  On failure after that, every object under
    the target is removed (it held only what this writer put there).
    """

    def __init__(self, out_dir: str, overwrite: bool):
        self.out_dir = out_dir.rstrip("/")
        self.replace = _prepare_remote_output(self.out_dir, overwrite)
        self.started = False  # whether anything was uploaded (or the old output deleted)
        self.tmp = tempfile.mkdtemp(prefix="semcoder-upload-")  # the local scratch directory
        self.fs = _fs(self.out_dir)

    def publish(self, name: str) -> None:
        if not self.started:
            self.started = True
            if self.replace:
                locations.path(self.out_dir).rmtree()
        local = os.path.join(self.tmp, *name.split("/"))
        if os.path.isdir(local):
            locations.upload_tree(local, locations.join(self.out_dir, name))
            shutil.rmtree(local)
            return
        self.fs.put_file(local, locations.join(self.out_dir, name))
        os.remove(local)

    def __enter__(self) -> str:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        if exc_type is None:
            return
        left = "nothing was left behind" if self.started else "nothing was written"
        try:
            if self.started:
                with _quiet_logger("gcsfs"):
                    target = locations.path(self.out_dir)
                    if target.exists():
                        target.rmtree()
        except Exception:  # noqa: BLE001 - the write's own failure is what gets reported
            left = f"objects written so far may remain under {self.out_dir} (delete them before reusing it)"
        if isinstance(exc, OSError) and str(exc.filename or "").startswith(self.tmp):
            reason = f"local scratch space {tempfile.gettempdir()}: {exc.strerror or exc}"
        else:
            line = None if isinstance(exc, UserError) else locations.explain(exc, "output", self.out_dir)
            if line is not None:
                raise ConversionError(f"{line}; {left}") from None
            reason = _write_failure(exc)
        if reason:
            raise ConversionError(f"{self.out_dir}: could not be written ({reason}); {left}") from None


def _prepare_remote_output(out_dir: str, overwrite: bool) -> bool:
    """Checks an object-store output: writable (one line for a missing bucket, credentials or permission),
    not a file, and empty unless ``overwrite``; returns whether it holds objects to replace."""
    locations.probe_writable("output", out_dir)
    target = locations.path(out_dir)
    if target.is_file():
        raise ConversionError(f"{out_dir}: exists and is not a directory")
    if target.is_dir() and any(True for _ in target.iterdir()):
        if not overwrite:
            raise ConversionError(f"{out_dir}: exists and is not empty (pass --overwrite to replace it)")
        return True
    return False


def _staging(out_dir: str, overwrite: bool) -> _Staging | _RemoteStaging:
    return _RemoteStaging(out_dir, overwrite) if locations.is_remote(out_dir) else _Staging(out_dir, overwrite)


# TensorStore reports I/O failures as ValueError("<absl status code>: ...").
_STORAGE_ERROR_CODES = ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "UNAVAILABLE", "DATA_LOSS", "INTERNAL",
                        "UNKNOWN", "ABORTED", "OUT_OF_RANGE", "FAILED_PRECONDITION")


def _write_failure(exc: BaseException | None) -> str | None:
    """A one-line reason when ``exc`` is a failure of the output storage (disk full, file too large...)."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        # name an input file if that is what failed; temporary output paths mean nothing to the user
        return f"{exc.filename}: {reason}" if exc.filename and ".tmp-" not in str(exc.filename) else reason
    if isinstance(exc, ValueError) and str(exc).startswith(_STORAGE_ERROR_CODES):
        message = str(exc).splitlines()[0]
        system = re.search(r"\[os_error_code='?(\d+)'?\]", message)
        return os.strerror(int(system.group(1))) if system else message[:300]
    return None


def copy_tokenizer_files(src_dir: str, dst_dir: str) -> list[str]:
    """Copies the known tokenizer files of ``src_dir`` (a local directory or an object-store URL) into the
    local ``dst_dir``; returns the names copied."""
    if locations.is_remote(src_dir):
        source = locations.path(src_dir)
        present = {p.name for p in source.iterdir()} if source.is_dir() else set()
        copied = []
        for name in TOKENIZER_FILES:
            if name in present and (source / name).is_file():
                os.makedirs(dst_dir, exist_ok=True)
                _fs(src_dir).get_file(locations.join(src_dir, name), os.path.join(dst_dir, name))
                copied.append(name)
        return copied
    copied = []
    for name in TOKENIZER_FILES:
        src = os.path.join(src_dir, name)
        if os.path.isfile(src):
            os.makedirs(dst_dir, exist_ok=True)
            shutil.copy2(src, os.path.join(dst_dir, name))
            copied.append(name)
    return copied


# ---- native checkpoints ----------------------------------------------------------------------

def _orbax():
    import orbax.checkpoint as ocp

    return ocp


def _write_native_params(params_dir: str, leaves: Iterator[tuple[LeafPath, np.ndarray]]) -> None:
    """Saves leaves one at a time into one Orbax PyTree checkpoint (partial saving).

    Storage choices, all for streaming: no defensive deep copy of host arrays (our leaves are
    private to this loop, a copy would double peak memory); no zstd (bf16 weights shrink by a few
    percent at several times the conversion time); plain zarr3 files rather than OCDBT (OCDBT
    buffers a whole leaf's encoded bytes until it commits); and one storage chunk per layer of a
    stacked leaf, so readers can stream a layer at a time.  Orbax reads the format back from the
    checkpoint's metadata, so restoring needs no options.
    """
    from orbax.checkpoint.experimental import v1 as ocp_v1

    StorageOptions = ocp_v1.options.ArrayOptions.Saving.StorageOptions

    def per_layer_chunks(keypath, value):
        if keypath and getattr(keypath[0], "key", None) == "layers" and np.ndim(value) >= 2:
            return StorageOptions(chunk_byte_size=value.nbytes // value.shape[0], shard_axes=(0,))
        return None

    context = ocp_v1.Context()
    context.memory.deepcopy_host_arrays = False
    context.array.saving.use_compression = False
    context.array.saving.use_ocdbt = False
    context.array.saving.scoped_storage_options_creator = per_layer_chunks
    # A failed write is reported once, by ``_Staging``; Orbax would also log it with a traceback
    # from each of its background threads.
    with context, _quiet_logger("absl"):
        for path, value in leaves:
            ocp_v1.partial.save(params_dir, _nest(path, value))
            del value
            release_freed_memory()
        ocp_v1.partial.finalize(params_dir)


_quiet_logger = locations.quiet_logger


def release_freed_memory() -> None:
    """Returns freed heap memory to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    TensorStore encodes a leaf's chunks in many small allocations on its own threads; glibc keeps
    that memory in per-thread arenas after it is freed, so without a trim the process grows by
    about one leaf per leaf written (measured: 7.4 GB peak for the 6.7B model, 4.3 GB held at the end).
    """
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)  # the symbols already loaded in this process, libc's included
    except (OSError, AttributeError):
        pass


def _pytree_dir(params_dir: str) -> str:
    """The directory holding the PyTree's ``_METADATA`` (Orbax v1 nests it under ``state/``); a local
    path or an object-store URL."""
    if locations.is_remote(params_dir):
        params_dir = params_dir.rstrip("/")
    for candidate in (params_dir, locations.join(params_dir, "state"), locations.join(params_dir, "default")):
        if _exists(locations.join(candidate, "_METADATA")):
            return candidate
    raise ConversionError(f"{params_dir}: not an Orbax PyTree checkpoint (no _METADATA)")


def open_native_leaf(params_dir: str, path: LeafPath):
    """One leaf of a PyTree checkpoint as a TensorStore array: slices of it read only their chunks.

    Works for every layout Orbax writes (zarr3 or zarr, with or without OCDBT), which the
    checkpoint's ``_METADATA`` records; Orbax names a leaf's array by its keys joined with dots.
    ``params_dir`` may be a ``gs://`` URL: the files are then read through TensorStore's ``gcs`` kvstore.
    """
    import tensorstore as ts

    pytree_dir = _pytree_dir(params_dir)
    metadata_file = locations.join(pytree_dir, "_METADATA")
    try:
        metadata = json.loads(_read_text(metadata_file))
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"{metadata_file}: unreadable Orbax metadata ({e})") from None
    name = ".".join(path)
    if metadata.get("use_ocdbt", True):
        kvstore = {"driver": "ocdbt", "base": _kvstore(pytree_dir), "path": name}
    else:
        kvstore = _kvstore(locations.join(pytree_dir, name))
    spec = {"driver": "zarr3" if metadata.get("use_zarr3", False) else "zarr", "kvstore": kvstore}
    try:
        return ts.open(spec, open=True, read=True).result()
    except ValueError as e:
        raise ConversionError(f"{pytree_dir}: parameter {'/'.join(path)} cannot be read ({e})") from None


def iter_native_leaf(params_dir: str, path: LeafPath, block_bytes: int = 512 << 20) -> Iterator[np.ndarray]:
    """Yields ``leaf[0], leaf[1], ...``, reading whole rows of storage chunks about ``block_bytes`` at a time.

    Checkpoints written by the converter hold one chunk per layer, so memory stays at a few
    layers (one TensorStore read per layer costs about twice the time of a few layers at once); a
    leaf stored as one chunk (e.g. a training checkpoint on one device) is read once, whole.
    """
    for block in read_leaf_blocks(open_native_leaf(params_dir, path), block_bytes):
        yield from block
        del block


def read_leaf_blocks(store: Any, block_bytes: int = 512 << 20) -> Iterator[np.ndarray]:
    """Consecutive leading-axis blocks of a TensorStore array (a 0-d one whole), each whole storage
    chunks of about ``block_bytes``: a block that cut a chunk would make the next read decode it again."""
    if store.rank == 0:
        yield np.asarray(store.read().result())
        return
    chunk_rows = store.chunk_layout.read_chunk.shape[0] or store.shape[0]
    row_bytes = int(np.prod(store.shape[1:])) * store.dtype.numpy_dtype.itemsize
    rows = chunk_rows * max(1, block_bytes // max(1, row_bytes * chunk_rows))
    for start in range(0, store.shape[0], rows):
        yield store[start:min(start + rows, store.shape[0])].read().result()


def native_leaf_metadata(params_dir: str) -> dict[LeafPath, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of every leaf, from the checkpoint metadata (no array is read)."""
    ocp = _orbax()
    # Orbax v1 nests the PyTree under ``state/`` and keeps ``_CHECKPOINT_METADATA`` one level up;
    # reading the tree's metadata there logs a harmless "Metadata file does not exist" warning.
    with _quiet_logger("absl"):
        meta = ocp.PyTreeCheckpointer().metadata(_pytree_dir(params_dir))
    tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, prefix + (key,))
        else:
            out[prefix] = (tuple(node.shape), np.dtype(node.dtype))

    walk(tree, ())
    return out


def read_native_config(ckpt_dir: str) -> ModelConfig:
    file = locations.join(ckpt_dir, MODEL_CONFIG_FILE)
    if not _exists(file):
        raise ConversionError(f"{ckpt_dir}: not a native checkpoint ({MODEL_CONFIG_FILE} not found)")
    try:
        return model_config_from_dict(json.loads(_read_text(file)), source=file)
    except json.JSONDecodeError as e:
        raise ConversionError(f"{file}:{e.lineno}: invalid JSON ({e.msg})") from None


def _checked_metadata(params_dir: str, config: ModelConfig) -> dict[LeafPath, tuple[tuple[int, ...], np.dtype]]:
    """Leaf metadata, after checking every parameter the config implies is there with its shape."""
    meta = native_leaf_metadata(params_dir)
    for m in mappings(config):
        if m.leaf not in meta or meta[m.leaf][0] != _native_shape(m, config):
            got = list(meta[m.leaf][0]) if m.leaf in meta else "missing"
            raise ConversionError(f"{params_dir}: parameter {'/'.join(m.leaf)} is {got}, "
                                  f"expected {list(_native_shape(m, config))} from the model config")
    return meta


def save_native(params: dict, config: ModelConfig, out_dir: str, *, tokenizer_dir: str | None = None,
                dtype: str | None = None, overwrite: bool = False) -> None:
    """Writes an in-memory parameter tree (numpy or jax arrays) as a native checkpoint."""
    cast = _DTYPES[dtype] if dtype else None
    maps = mappings(config)

    def leaves():
        for m in maps:
            value = np.asarray(_get_leaf(params, m.leaf))
            yield m.leaf, value.astype(cast, copy=False) if cast is not None else value

    _write_native(out_dir, config, leaves(), tokenizer_dir, overwrite)


def _write_native(out_dir: str, config: ModelConfig, leaves: Iterator[tuple[LeafPath, np.ndarray]],
                  tokenizer_dir: str | None, overwrite: bool) -> None:
    """The parameters, the tokenizer, and ``model_config.json`` last: what makes the directory a native
    checkpoint.  For an object store the parameters are written locally and then uploaded: Orbax's
    partial saving, which keeps memory near two leaves, cannot write to one (it renames), so the peak
    local disk is the parameters' size there."""
    staging = _staging(out_dir, overwrite)
    with staging as tmp:
        _write_native_params(os.path.join(tmp, PARAMS_DIR), leaves)
        staging.publish(PARAMS_DIR)
        if tokenizer_dir:
            for name in copy_tokenizer_files(tokenizer_dir, os.path.join(tmp, TOKENIZER_DIR)):
                staging.publish(f"{TOKENIZER_DIR}/{name}")
        with open(os.path.join(tmp, MODEL_CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(model_config_to_dict(config), f, indent=2)
        staging.publish(MODEL_CONFIG_FILE)


def load_native(ckpt_dir: str, *, dtype: str | None = None, shardings: Any = None) -> tuple[ModelConfig, dict]:
    """Reads a native checkpoint into (config, parameter tree); see ``restore_params``."""
    config = read_native_config(ckpt_dir)
    return config, restore_params(locations.join(ckpt_dir, PARAMS_DIR), config, dtype=dtype, shardings=shardings)


def restore_params(params_dir: str, config: ModelConfig, *, dtype: str | None = None, shardings: Any = None) -> dict:
    """Restores the parameter PyTree at ``params_dir`` after checking it against ``config``.

    With ``shardings`` (a tree of ``jax.sharding.Sharding`` matching the parameters) the leaves are
    restored directly as sharded ``jax.Array``s (resharding as needed); otherwise as numpy arrays.
    ``dtype`` casts on restore.  ``params_dir`` may be a ``gs://`` URL (Orbax reads it in place).
    """
    import jax

    ocp = _orbax()
    meta = _checked_metadata(params_dir, config)
    cast = _DTYPES[dtype] if dtype else None
    abstract: dict = {}
    for m in mappings(config):
        shape, stored = meta[m.leaf]
        sharding = None if shardings is None else _get_leaf(shardings, m.leaf)
        _set_leaf(abstract, m.leaf, jax.ShapeDtypeStruct(shape, cast or stored, sharding=sharding))
    pytree_dir = _pytree_dir(params_dir)
    # On an object store Orbax takes a directory for complete only with the commit marker it writes there
    # itself; a checkpoint written locally and uploaded has none, and is complete when its name is final
    # (as locally).  Which checkpoint is complete is decided before this by model_config.json or the
    # training step's metadata.
    remote = {"atomicity_options": ocp.options.AtomicityOptions(allow_legacy_atomic_rename=True)} if (
        locations.is_remote(pytree_dir)) else None
    if shardings is not None:
        params = ocp.StandardCheckpointer(**(remote or {})).restore(pytree_dir, abstract)
    else:
        restore_args = jax.tree.map(lambda a: ocp.RestoreArgs(restore_type=np.ndarray, dtype=a.dtype), abstract)
        checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(), **remote) if remote else (
            ocp.PyTreeCheckpointer())
        params = checkpointer.restore(pytree_dir, args=ocp.args.PyTreeRestore(item=abstract,
                                                                              restore_args=restore_args))
    manifest = read_step_manifest(params_dir)
    if manifest is not None and (cast is None or all(cast == meta[m.leaf][1] for m in mappings(config))):
        algorithm = manifest["algorithm"]
        if algorithm in integrity.ALGORITHMS and not (algorithm == integrity.XXH3 and jax.process_count() > 1):
            found, _, _ = integrity.tree_digests({"params": params}, algorithm)
            _refuse_mismatch(params_dir, manifest, found)
    return params


def read_step_manifest(params_dir: str) -> dict | None:
    """The manifest of the training step that holds ``params_dir`` (None for a converted checkpoint, or a
    step written before manifests existed)."""
    path = locations.join(_parent(params_dir), "manifest", "metadata")
    if not _isfile(path):
        return None
    try:
        manifest = json.loads(_read_text(path))
        manifest["algorithm"], manifest["arrays"]  # noqa: B018 - presence check
        return manifest
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{path}: unreadable checkpoint manifest ({e})") from None


def _refuse_mismatch(params_dir: str, manifest: dict, found: dict) -> None:
    """Raises naming the first parameter whose contents differ from the step's manifest."""
    names = [name for name in found if name.startswith("params/")]
    problems = integrity.compare(manifest["arrays"], found, names=names)
    if problems:
        step_dir = _parent(params_dir)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConversionError(f"{step_dir}: {problems[0]}{more}; the checkpoint is damaged "
                              f"(`semcoder checkpoint verify` lists the steps that are intact)")


# ---- the two conversions ---------------------------------------------------------------------

def convert_hf_to_native(hf_dir: str, out_dir: str, *, dtype: str | None = None, overwrite: bool = False,
                         tokenizer_dir: str | None = None, allow_nonfinite: bool = False) -> ModelConfig:
    """HF directory -> native checkpoint; ``dtype`` None keeps the source dtype of each tensor.  Either may
    be a ``gs://`` URL (see the module docstring)."""
    config = read_hf_config(hf_dir)
    ckpt = HFCheckpoint(hf_dir)
    maps = mappings(config)
    _check_hf_tensors(ckpt, config, maps)
    cast = _DTYPES[dtype] if dtype else None
    stored = cast or ckpt.dtype(maps[0].hf_names(config.num_layers)[0])
    config = config.replace(param_dtype=str(stored) if str(stored) in _DTYPES else "float32")
    # Fill the next leaf while the current one is written, unless both would not fit in 1.5x the
    # largest leaf: peak memory stays near two of the largest leaf (it, plus Orbax's write buffers).
    sizes = [int(np.prod(_native_shape(m, config))) * np.dtype(cast or ckpt.dtype(m.hf_names(1)[0])).itemsize
             for m in maps]
    leaves = prefetch(((m.leaf, _hf_leaf(ckpt, m, config, cast, allow_nonfinite)) for m in maps), sizes=sizes,
                      max_bytes=max(sizes) * 3 // 2)
    with contextlib.closing(leaves):
        _write_native(out_dir, config, leaves, tokenizer_dir or hf_dir, overwrite)
    return config


def hf_config_dict(config: ModelConfig, dtype: np.dtype) -> dict[str, Any]:
    """The ``config.json`` of an HF export, read as the same model by transformers 4.x and 5.

    transformers 5 writes RoPE as ``rope_parameters`` and the weights' dtype as ``dtype``; transformers
    4.x (and the serving and eval stacks built on it) read only the released checkpoints' top-level
    ``rope_theta``, ``rope_scaling`` and ``torch_dtype``, and without them fall back to theta 10000, no
    scaling and float32 -- silently another model.  So both sets are written with the same values:
    transformers 5's serialization of the config, plus the release's keys (``rope_scaling`` exactly
    ``{"type": "linear", "factor": F}`` or null).  transformers 5 reads either set (``rope_scaling``
    first, then ``rope_parameters``); so does ``ModelConfig.from_hf_dict``.
    """
    from transformers import LlamaConfig

    release = config.to_hf_dict()
    rope = config.to_hf_rope_parameters()
    name = _dtype_name(dtype)
    fields = {k: v for k, v in release.items() if k not in ("model_type", "rope_theta", "rope_scaling")}
    data = json.loads(LlamaConfig(**fields, rope_parameters=dict(rope), dtype=name).to_json_string())
    data.update(rope_parameters=rope, dtype=name,  # as transformers 5 writes them
                rope_theta=release["rope_theta"], rope_scaling=release["rope_scaling"], torch_dtype=name)
    return dict(sorted(data.items()))


def _hf_config_json(config: ModelConfig, dtype: np.dtype) -> str:
    return json.dumps(hf_config_dict(config, dtype), indent=2, sort_keys=True) + "\n"


def _generation_config_json(config: ModelConfig) -> str:
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                            pad_token_id=config.pad_token_id).to_json_string()


def _dtype_name(dtype: np.dtype) -> str:
    for name, value in _DTYPES.items():
        if value == dtype:
            return name
    return str(dtype)


def write_hf(config: ModelConfig, leaf_values: Callable[[Mapping], Iterator[np.ndarray]], out_dir: str, *,
             dtype: np.dtype, tokenizer_dir: str | None = None, max_shard_size: str = "5GB",
             overwrite: bool = False, allow_nonfinite: bool = False, source: str = "",
             before_commit: Callable[[], None] | None = None) -> None:
    """Streams parameters into an HF directory (local, or a ``gs://`` URL: see ``_RemoteStaging``).

    ``leaf_values(m)`` yields the native values behind mapping ``m``: its per-layer slices in
    order, or the one array of a non-stacked leaf.  Tensors are written in mapping order, so each
    value is needed once; a background thread reads ahead while the current one is written.
    ``before_commit`` runs once every tensor is written, before the files that complete the output.
    """
    maps = mappings(config)
    specs = [TensorSpec(name, m.hf_shape, dtype) for m in maps for name in m.hf_names(config.num_layers)]
    shards = plan_shards(specs, parse_size(max_shard_size))

    def hf_tensors() -> Iterator[tuple[str, np.ndarray]]:
        for m in maps:
            names = iter(m.hf_names(config.num_layers))
            for value in leaf_values(m):
                name = next(names)
                if not allow_nonfinite:
                    check_finite(value, f"{source}parameter {'/'.join(m.leaf)} (HF tensor {name})")
                yield name, np.ascontiguousarray(value).reshape(m.hf_shape).astype(dtype, copy=False)

    tensors = prefetch(hf_tensors(), depth=4)
    with contextlib.closing(tensors):
        staging = _staging(out_dir, overwrite)
        with staging:
            _write_hf_files(staging, config, specs, shards, tensors, dtype, tokenizer_dir, before_commit)


def _write_hf_files(staging: _Staging | _RemoteStaging, config: ModelConfig, specs: list[TensorSpec],
                    shards: list[list[TensorSpec]], tensors: Iterator[tuple[str, np.ndarray]], dtype: np.dtype,
                    tokenizer_dir: str | None, before_commit: Callable[[], None] | None = None) -> None:
    """Writes the files of an HF export under ``staging``'s directory, publishing each one as it is done:
    the shards, then the tokenizer, ``generation_config.json`` and ``config.json``, and the index last (so
    on an object store, where files appear one by one, the output is loadable only once complete)."""
    tmp = staging.tmp

    def tensor(spec: TensorSpec) -> np.ndarray:
        name, value = next(tensors)
        if name != spec.name:
            raise AssertionError(f"tensor order: produced {name}, the shard plan expects {spec.name}")
        return value

    names = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    for name, shard in zip(names, shards):
        write_file(os.path.join(tmp, name), shard, tensor)
        staging.publish(name)
    if before_commit is not None:
        before_commit()
    if tokenizer_dir:
        copied = copy_tokenizer_files(tokenizer_dir, tmp)
        if not copied:
            raise ConversionError(f"{tokenizer_dir}: no tokenizer files found "
                                  f"(expected one of {', '.join(TOKENIZER_FILES[:4])}, ...)")
        _portable_tokenizer_config(tmp)
        for name in copied:
            staging.publish(name)
    with open(os.path.join(tmp, "generation_config.json"), "w", encoding="utf-8") as f:
        f.write(_generation_config_json(config))
    staging.publish("generation_config.json")
    with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
        f.write(_hf_config_json(config, dtype))
    staging.publish("config.json")
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(s.nbytes for s in specs)},
                 "weight_map": {spec.name: name for name, shard in zip(names, shards) for spec in shard}}
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=True)
        staging.publish("model.safetensors.index.json")


# tokenizer_class names that only transformers 5 knows, and the class transformers 4.x loads the same
# tokenizer.json with (transformers 5 reads that name too, as an alias).
_V5_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def _portable_tokenizer_config(directory: str) -> None:
    """Renames a transformers-5-only ``tokenizer_class`` in a copied ``tokenizer_config.json`` (a tokenizer
    saved by transformers 5's ``save_pretrained`` names ``TokenizersBackend``, which transformers 4.x
    cannot load) when ``tokenizer.json`` is there to load it from; the file is otherwise unchanged."""
    path = os.path.join(directory, "tokenizer_config.json")
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(directory, "tokenizer.json")):
        return
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return  # copied as it was; the tokenizer's own loader reports it
    if isinstance(data, dict) and data.get("tokenizer_class") in _V5_TOKENIZER_CLASSES:
        data["tokenizer_class"] = _V5_TOKENIZER_CLASSES[data["tokenizer_class"]]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")


def convert_native_to_hf(ckpt_dir: str, out_dir: str, *, dtype: str | None = None, tokenizer_dir: str | None = None,
                         max_shard_size: str = "5GB", overwrite: bool = False,
                         allow_nonfinite: bool = False) -> ModelConfig:
    """Native checkpoint (or a training run / step directory) -> HF directory, leaf by leaf; either may be
    a ``gs://`` URL (see the module docstring)."""
    ckpt_dir, config, params_dir = resolve_params_checkpoint(ckpt_dir)
    meta = _checked_metadata(params_dir, config)
    for leaf, (_, leaf_dtype) in meta.items():
        if leaf_dtype not in WEIGHT_DTYPES:
            raise ConversionError(f"{params_dir}: parameter {'/'.join(leaf)} has dtype {leaf_dtype}; a weight must be "
                                  f"a floating type ({', '.join(sorted(map(str, WEIGHT_DTYPES)))})")
    out_dtype = _DTYPES[dtype] if dtype else meta[("embedding",)][1]
    if tokenizer_dir is None:
        for candidate in (locations.join(ckpt_dir, TOKENIZER_DIR), locations.join(_parent(ckpt_dir), TOKENIZER_DIR)):
            if _isdir(candidate):
                tokenizer_dir = candidate
                break
    manifest = read_step_manifest(params_dir)
    algorithm = manifest["algorithm"] if manifest is not None else None
    digests: dict[str, integrity.BlockDigest] = {}

    def leaf_values(m: Mapping) -> Iterator[np.ndarray]:
        values = iter_native_leaf(params_dir, m.leaf) if m.per_layer else iter(
            [open_native_leaf(params_dir, m.leaf).read().result()])
        if algorithm not in integrity.ALGORITHMS:
            return values
        block = digests.setdefault("params/" + "/".join(m.leaf), integrity.BlockDigest(algorithm))
        return _digested(values, block)

    def verify() -> None:  # every parameter was read: its contents must match the step's manifest
        if algorithm in integrity.ALGORITHMS:
            found = {name: {"shape": list(meta[tuple(name.split("/")[1:])][0]),
                            "dtype": str(meta[tuple(name.split("/")[1:])][1]), "digest": block.hexdigest()}
                     for name, block in digests.items()}
            _refuse_mismatch(params_dir, manifest, found)

    # A step with a manifest was finite when committed (non-finite states never are), so its digests alone
    # decide, and a damaged one is reported as damaged rather than by the NaN a flipped bit made.
    verified = algorithm in integrity.ALGORITHMS
    write_hf(config, leaf_values, out_dir, dtype=out_dtype, tokenizer_dir=tokenizer_dir,
             max_shard_size=max_shard_size, overwrite=overwrite, allow_nonfinite=allow_nonfinite or verified,
             source=f"{params_dir}: ", before_commit=verify)
    return config


def _digested(values: Iterator[np.ndarray], block: integrity.BlockDigest) -> Iterator[np.ndarray]:
    for value in values:
        block.add(value if np.ndim(value) else np.asarray(value))
        yield value


def resolve_params_checkpoint(path: str) -> tuple[str, ModelConfig, str]:
    """(checkpoint dir, config, params dir) for a native checkpoint or a training run/step directory, local
    or on an object store (``gs://``)."""
    if locations.is_remote(path):
        path = path.rstrip("/")
        locations.probe_readable("checkpoint", path)
    else:
        path = os.path.abspath(path)
    if not _isdir(path):
        raise ConversionError(f"{path}: checkpoint directory not found")
    if _exists(locations.join(path, MODEL_CONFIG_FILE)):
        return path, read_native_config(path), locations.join(path, PARAMS_DIR)
    from semcoder_jax.train.checkpoint import latest_params_step

    # A training run, its checkpoints/ directory or one step: the run directory holds the tokenizer.
    step_dir, config = latest_params_step(path)
    run_dir = _parent(_parent(step_dir))
    return run_dir, config, locations.join(step_dir, PARAMS_DIR)


def save_hf(params: dict, config: ModelConfig, out_dir: str, *, tokenizer_dir: str | None = None,
            dtype: str = "bfloat16", max_shard_size: str = "5GB", overwrite: bool = False) -> None:
    """Writes an in-memory parameter tree as an HF directory."""
    def leaf_values(m: Mapping) -> Iterator[np.ndarray]:
        value = np.asarray(_get_leaf(params, m.leaf))
        return iter(value) if m.per_layer else iter([value])

    write_hf(config, leaf_values, out_dir, dtype=_DTYPES[dtype],
             tokenizer_dir=tokenizer_dir, max_shard_size=max_shard_size, overwrite=overwrite)
