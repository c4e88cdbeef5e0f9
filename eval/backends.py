"""Generation backends behind one interface: ``hf`` (transformers + torch), ``jax`` (the project's KV-cache
sampler) — and, for scoring existing generations, none at all.

Both follow the same conventions so greedy text is identical on the same model: the prompt is encoded
without special tokens and the bos token is prepended; prompts are left-padded in a batch; greedy when
``temperature == 0``; ``text`` excludes EOS and is cut just before the first stop string (vLLM semantics).
``max_new_tokens`` is one limit or one per prompt; ``seeds`` gives each prompt its own sampling stream, so
a sampled continuation depends on its prompt and seed only, not on the batch it shares or the order.
Heavy imports (torch, transformers, jax) happen inside the functions.

``model_fingerprint`` identifies a model by content (every file the loaders read, hashed in full), so an
evaluation can tell a re-exported model in the same directory from the one it started with.

``--model`` may be an object-store URL (``gs://BUCKET/...``): ``local_model`` copies the files the loaders
read (an HF directory's top-level files; a native checkpoint's or training step's parameters, config and
tokenizer, not the rest of a run) to a temporary directory once per process, which the fingerprint and
both backends then read (transformers and the tokenizers load local files only).  Peak local disk: the
model's files; the copy is removed when the process exits.  A copy fingerprints as the original does.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from semcoder_jax import locations
from semcoder_jax.errors import UserError

DTYPES = ("bfloat16", "float16", "float32")
FINGERPRINT_ALGORITHM = "xxh3-128"
# Orbax writes a creation time into these: two exports of the same weights differ only there.
_VOLATILE_FILES = ("_CHECKPOINT_METADATA", "commit_success.txt")


@dataclass(frozen=True)
class Generation:
    """One generated continuation (same fields as ``semcoder_jax.generate.Generation``)."""

    text: str
    token_ids: list[int]
    finish_reason: Literal["eos", "stop", "length"]


class Backend(Protocol):
    def encode(self, prompt: str) -> list[int]: ...

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int | Sequence[int], temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, seeds: Sequence[int] | None = None, stop: Sequence[str] = (),
                 batch_size: int = 8) -> list[Generation]: ...


def sample_seed(seed: int, *key: Any) -> int:
    """A 31-bit sampling seed that is a function of ``seed`` and ``key`` only (e.g. task id, sample index,
    refine round): the same sample gets the same stream whatever its batch, position or resume."""
    text = "\x1f".join(map(str, (seed, *key)))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & 0x7FFFFFFF


def _per_row(value: int | Sequence[int], n: int, what: str) -> list[int]:
    rows = [int(value)] * n if isinstance(value, int) else [int(v) for v in value]
    if len(rows) != n:
        raise UserError(f"{len(rows)} {what} for {n} prompts")
    return rows


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut just before the earliest stop string, and whether one occurred."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class HFBackend:
    """transformers ``AutoModelForCausalLM`` on a local HF directory (CPU or CUDA)."""

    def __init__(self, path: str | os.PathLike, dtype: str | None = None, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        from data_pipeline.tokenizer import load_tokenizer

        shown = os.fspath(path)
        path = local_model(shown)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise UserError(f"--model {shown}: not an HF model directory (no config.json); use --backend jax "
                            "for a native checkpoint or convert it with `semcoder convert orbax-to-hf`")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("float32" if self.device == "cpu" else "bfloat16")
        if dtype not in DTYPES:
            raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        self.dtype = dtype
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(self.device)
        self.model.eval()
        self.tokenizer = load_tokenizer(path)
        self.eos_id = self.tokenizer.eos_id if self.tokenizer.eos_id is not None else self.model.config.eos_token_id
        self.bos_id = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.model.config.bos_token_id
        self.pad_id = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else self.eos_id

    def encode(self, prompt: str) -> list[int]:
        ids = list(self.tokenizer.encode(prompt))
        return ([self.bos_id] if self.bos_id is not None else []) + ids

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int | Sequence[int], temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, seeds: Sequence[int] | None = None, stop: Sequence[str] = (),
                 batch_size: int = 8) -> list[Generation]:
        """Without ``seeds`` prompt ``i`` samples with ``sample_seed(seed, i)``."""
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        torch = self.torch
        stop = [s for s in stop if s]
        encoded = [self.encode(p) for p in prompts]
        limits = _per_row(max_new_tokens, len(prompts), "max_new_tokens")
        if any(n < 1 for n in limits):
            raise UserError(f"max_new_tokens must be positive, got {min(limits)}")
        seeds = _per_row(seeds, len(prompts), "seeds") if seeds is not None else [
            sample_seed(seed, i) for i in range(len(prompts))]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        results: list[Generation | None] = [None] * len(prompts)
        tokenizer, eos_id = self.tokenizer, self.eos_id

        # A stop string of L characters spans at most 4L byte-level tokens, so checking a tail that long
        # at every step finds each occurrence when it completes; _finish then cuts the full text exactly.
        window = 4 * max((len(s) for s in stop), default=0) + 2

        class RowStops(StoppingCriteria):
            """Per row: a stop string in the tail, or the row's own token limit reached."""

            def __init__(self, width: int, row_limits: list[int]):
                self.width, self.row_limits = width, torch.tensor(row_limits)

            def __call__(self, input_ids, scores, **kwargs):
                done = (input_ids.shape[1] - self.width) >= self.row_limits
                if stop:
                    for r, row in enumerate(input_ids[:, self.width:].tolist()):
                        if eos_id in row:
                            row = row[: row.index(eos_id)]
                        if cut_at_stop(tokenizer.decode(row[-window:]), stop)[1]:
                            done[r] = True
                return done.to(input_ids.device)

        for start in range(0, len(order), batch_size):
            rows = order[start: start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[r, width - len(encoded[i]):] = 1
            row_limits = [limits[i] for i in rows]
            processors = LogitsProcessorList()
            if temperature > 0:
                processors.append(row_sampler(torch, [seeds[i] for i in rows], temperature, top_p))
            with torch.no_grad():
                # Sampling is done by the processor (noise added to the scores), so generate picks the argmax.
                out = self.model.generate(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                    max_new_tokens=max(row_limits), eos_token_id=eos_id, pad_token_id=self.pad_id,
                    do_sample=False, logits_processor=processors,
                    stopping_criteria=StoppingCriteriaList([RowStops(width, row_limits)]))
            for r, i in enumerate(rows):
                results[i] = self._finish(out[r, width: width + limits[i]].tolist(), stop)
        return results  # type: ignore[return-value]

    def _finish(self, new_ids: list[int], stop: Sequence[str]) -> Generation:
        reason: Literal["eos", "stop", "length"] = "length"
        if self.eos_id in new_ids:
            new_ids = new_ids[: new_ids.index(self.eos_id) + 1]
            reason = "eos"
        body = new_ids[:-1] if reason == "eos" else new_ids
        text, hit = cut_at_stop(self.tokenizer.decode(body), stop)
        if hit:
            reason = "stop"
        return Generation(text, new_ids, reason)


def row_sampler(torch: Any, seeds: Sequence[int], temperature: float, top_p: float) -> Any:
    """A logits processor that turns greedy decoding into sampling with one random stream per row.

    Scores are divided by ``temperature`` and cut to the nucleus of mass ``top_p`` (the rule of the jax
    sampler: keep the tokens whose higher-ranked mass is below ``top_p``, ties at the threshold kept);
    then each row adds ``-log(E)``, ``E`` i.i.d. Exp(1) drawn from its own generator.  The argmax of
    ``s + Gumbel`` is distributed as ``softmax(s)`` (the Gumbel-max trick), so argmax decoding of these
    scores is exact categorical sampling.  A row draws one vocabulary-sized vector per step from its own
    generator, so its tokens depend on its seed only.  The generators live on the scores' device (a CUDA
    generator per row on a GPU: one small kernel per row and step, no host transfer), so a seed gives
    another stream on a GPU than on the CPU, as the logits differ there anyway.
    """
    from transformers import LogitsProcessor

    class RowSampler(LogitsProcessor):
        def __init__(self) -> None:
            self.generators: list[Any] = []

        def __call__(self, input_ids, scores):
            if not self.generators:
                self.generators = [torch.Generator(device=scores.device).manual_seed(int(s)) for s in seeds]
            scores = scores.float() / temperature
            if top_p < 1.0:
                ranked = torch.sort(scores, dim=-1, descending=True).values
                probs = torch.softmax(ranked, dim=-1)
                keep = (torch.cumsum(probs, dim=-1) - probs) < top_p
                threshold = torch.where(keep, ranked, torch.inf).min(dim=-1, keepdim=True).values
                scores = scores.masked_fill(scores < threshold, -torch.inf)
            noise = torch.stack([torch.empty(scores.shape[-1], device=scores.device).exponential_(generator=g)
                                 for g in self.generators])
            return scores - noise.log()

    return RowSampler()


def resolve_dtype(kind: str, dtype: str | None) -> str:
    """The compute dtype a backend will use: ``dtype``, else its default on this machine (float32 on CPU,
    bfloat16 on an accelerator), without loading a model."""
    if dtype is not None:
        if dtype not in DTYPES:
            raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        return dtype
    if kind == "hf":
        import torch

        return "bfloat16" if torch.cuda.is_available() else "float32"
    from semcoder_jax.generate import default_compute_dtype

    return default_compute_dtype()


def backend_dtype(backend: Any) -> str | None:
    """The compute dtype a loaded backend runs in (``None`` for one that does not say)."""
    dtype = getattr(backend, "dtype", None) or getattr(getattr(backend, "config", None), "dtype", None)
    return str(dtype) if dtype is not None else None


def model_files(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(name, file) pairs of everything the loaders read for ``path``: every top-level file of an HF
    directory; for a native checkpoint or a training run, the resolved parameter directory (without
    Orbax's timestamp files), ``model_config.json`` and the tokenizer."""
    from semcoder_jax import convert

    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, "config.json")) and not os.path.exists(
            os.path.join(path, convert.MODEL_CONFIG_FILE)):
        return [(name, os.path.join(path, name)) for name in sorted(os.listdir(path))
                if not name.startswith(".") and os.path.isfile(os.path.join(path, name))]
    try:
        ckpt_dir, _, params_dir = convert.resolve_params_checkpoint(path)
    except UserError as e:
        raise UserError(f"--model {path}: not an HF model directory (no config.json), and not a native "
                        f"checkpoint: {e}") from None
    found = []
    for label, root in (("params", params_dir), ("tokenizer", os.path.join(ckpt_dir, convert.TOKENIZER_DIR))):
        for folder, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                if name not in _VOLATILE_FILES:
                    file = os.path.join(folder, name)
                    found.append((f"{label}/{os.path.relpath(file, root)}", file))
    config_file = os.path.join(ckpt_dir, convert.MODEL_CONFIG_FILE)
    if os.path.isfile(config_file):
        found.append((convert.MODEL_CONFIG_FILE, config_file))
    return found


def file_fingerprint(files: Sequence[tuple[str, str]]) -> str:
    """``xxh3-128:<hex>`` of the names, sizes and full contents of ``files`` (about 5 GB/s from the page cache)."""
    import xxhash

    digest = xxhash.xxh3_128()
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    for name, file in files:
        digest.update(f"{name}\0{os.path.getsize(file)}\0".encode())
        with open(file, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                digest.update(view[:n])
    return f"{FINGERPRINT_ALGORITHM}:{digest.hexdigest()}"


def model_fingerprint(path: str | os.PathLike) -> str:
    """A content fingerprint of the model at ``path`` (weights, config and tokenizer): it changes whenever
    any byte the loaders read changes, and not when the same weights are exported again.  A ``gs://``
    model is fingerprinted from its local copy (``local_model``), so it matches the same files on disk."""
    path = local_model(path)
    if not os.path.exists(path):
        raise UserError(f"--model {path}: no such file or directory")
    files = model_files(path)
    if not files:
        raise UserError(f"--model {path}: no model files found")
    return file_fingerprint(files)


def load_backend(kind: str, model: str | os.PathLike, dtype: str | None = None) -> Backend:
    """``hf``: transformers on an HF directory; ``jax``: ``semcoder_jax.generate.load_generator`` on a native
    checkpoint, a training export or an HF directory."""
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if not locations.is_remote(os.fspath(model)) and not os.path.exists(model):
        raise UserError(f"--model {model}: no such file or directory")
    if kind == "hf":
        return HFBackend(model, dtype)
    if kind == "jax":
        from semcoder_jax.generate import load_generator

        return load_generator(local_model(model), dtype=dtype)
    raise UserError(f"--backend {kind!r}: expected hf or jax")


# ---- models on an object store ------------------------------------------------------------------------

_LOCAL_COPIES: dict[str, tempfile.TemporaryDirectory] = {}


def local_model(path: str | os.PathLike) -> str:
    """A local directory holding what the loaders read of the model at ``path``: ``path`` itself when it is
    local; for an object-store URL a temporary copy of those files (``_copy_model``), made once per process
    and removed when it exits."""
    text = os.fspath(path)
    if not locations.is_remote(text):
        return text
    url = text.rstrip("/")
    if url not in _LOCAL_COPIES:
        copy = tempfile.TemporaryDirectory(prefix="semcoder-model-")
        try:
            _copy_model(url, copy.name)
        except BaseException:
            copy.cleanup()
            raise
        _LOCAL_COPIES[url] = copy
    return _LOCAL_COPIES[url].name


def _copy_model(url: str, local: str) -> None:
    """Copies into ``local`` the files of the model at ``url`` that ``model_files`` would name, laid out as
    they are there: an HF directory's top-level files; a native checkpoint's ``params/``,
    ``model_config.json`` and ``tokenizer/``; a training run's newest complete step (its ``params/`` and
    ``meta``, at the same relative path) and the run's ``tokenizer/``."""
    from semcoder_jax import convert

    locations.probe_readable("--model", url)
    fs = _fs(url)
    entries = {entry["name"].rstrip("/").rsplit("/", 1)[-1]: entry for entry in fs.ls(url, detail=True)}
    if "config.json" in entries and convert.MODEL_CONFIG_FILE not in entries:
        for name, entry in sorted(entries.items()):
            if entry["type"] == "file" and not name.startswith("."):
                fs.get_file(locations.join(url, name), os.path.join(local, name))
        return
    try:
        ckpt_dir, _, params_dir = convert.resolve_params_checkpoint(url)
    except UserError as e:
        raise UserError(f"--model {url}: not an HF model directory (no config.json), and not a native "
                        f"checkpoint: {e}") from None
    relative = params_dir[len(ckpt_dir):].strip("/")  # params, or checkpoints/STEP/params
    parts = [relative, convert.MODEL_CONFIG_FILE, convert.TOKENIZER_DIR]
    if relative != convert.PARAMS_DIR:  # a training step: its meta holds the model config
        parts.append(relative.rsplit("/", 1)[0] + "/meta")
    for part in parts:
        source = locations.path(locations.join(ckpt_dir, part))
        target = os.path.join(local, *part.split("/"))
        if source.is_dir():
            os.makedirs(target, exist_ok=True)
            locations.download_tree(str(source), target)
        elif source.is_file():
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fs.get_file(str(source), target)


def _fs(url: str):
    from etils.epath import backend as backend_lib

    locations.path(url)  # checks the URL and configures the environment
    return backend_lib.fsspec_backend.fs(url)
