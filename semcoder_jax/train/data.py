"""Batch sources for training: the PyX pipeline (``data_pipeline``) or synthetic packed rows.

Every source yields this process's rows of the global batch as a dict of numpy arrays
[per_process_batch, seq_len] (``input_ids``, ``targets``, ``loss_mask``, ``segment_ids``,
``positions``) and exposes ``get_state()`` / ``set_state()`` (JSON-serialisable) so that a resumed run
continues with exactly the next batch.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator
from typing import Any

import numpy as np

from semcoder_jax.errors import UserError
from semcoder_jax.train.config import DataSection


class DataConfigError(UserError):
    """A data section that the pipeline cannot serve."""


class SyntheticBatches:
    """Random packed rows addressed by step index: batch ``i`` depends only on (seed, i).

    Each row packs segments of random length; a segment is an arithmetic progression of token ids
    (start and stride random, modulo the vocabulary), so the next token is learnable and the loss
    falls.  The first half of each segment is "prompt" (loss_mask 0); trailing slots are padding
    (segment 0).  Process ``p`` of ``n`` gets rows ``[p*B/n, (p+1)*B/n)`` of the global batch.
    """

    def __init__(self, *, global_batch: int, seq_len: int, vocab_size: int, seed: int = 0,
                 process_index: int = 0, process_count: int = 1, max_segments: int = 3):
        if global_batch % process_count:
            raise DataConfigError(f"train.global_batch={global_batch} is not divisible by the "
                                  f"{process_count} processes")
        self.global_batch, self.seq_len, self.vocab_size = global_batch, seq_len, vocab_size
        self.seed, self.max_segments = seed, max_segments
        per = global_batch // process_count
        self.rows = slice(process_index * per, (process_index + 1) * per)
        self.index = 0

    def get_state(self) -> dict[str, Any]:
        return {"kind": "synthetic", "index": self.index, "seed": self.seed}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "synthetic" or state.get("seed") != self.seed:
            raise DataConfigError(f"data state {state} does not belong to a synthetic source with seed {self.seed}")
        self.index = int(state["index"])

    def batch(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        b, t, v = self.global_batch, self.seq_len, self.vocab_size
        out = {k: np.zeros((b, t), np.int32) for k in ("input_ids", "targets", "loss_mask", "segment_ids", "positions")}
        for row in range(b):
            n_seg = int(rng.integers(1, self.max_segments + 1))
            cuts = np.sort(rng.choice(np.arange(2, t), size=n_seg, replace=False)) if t > n_seg + 2 else [t]
            start = 0
            for seg, end in enumerate(cuts, start=1):
                length = int(end - start)
                if length < 2:
                    continue
                first, stride = rng.integers(0, v), rng.integers(1, 8)
                seq = (first + stride * np.arange(length + 1)) % v
                sl = slice(start, end)
                out["input_ids"][row, sl] = seq[:-1]
                out["targets"][row, sl] = seq[1:]
                out["segment_ids"][row, sl] = seg
                out["positions"][row, sl] = np.arange(length)
                out["loss_mask"][row, start + length // 2:end - 1] = 1
                start = int(end)
        return {k: a[self.rows] for k, a in out.items()}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch(self.index)
        self.index += 1
        return batch


@dataclasses.dataclass
class DataSources:
    """The training iterator, an eval-batch factory (or None) and facts about the data."""

    train: Any
    make_eval: Any | None
    batches_per_epoch: int | None
    tokenizer: Any | None
    tokenizer_dir: str | None


def build_sources(data: DataSection, *, global_batch: int, vocab_size: int, seed: int,
                  process_index: int, process_count: int, eval_batches: int) -> DataSources:
    """Builds this process's batch sources from the data section."""
    if data.source == "synthetic":
        if data.pipeline:
            raise DataConfigError(f"data.pipeline: not used by the synthetic source, got {sorted(data.pipeline)}")
        kw = dict(global_batch=global_batch, seq_len=data.seq_len, vocab_size=vocab_size,
                  process_index=process_index, process_count=process_count)

        def make_eval():
            # a disjoint stream (different seed) stands in for a held-out split
            return SyntheticBatches(seed=seed + 1_000_003, **kw)

        return DataSources(train=SyntheticBatches(seed=seed, **kw), make_eval=make_eval, batches_per_epoch=None,
                           tokenizer=None, tokenizer_dir=None)
    return _pipeline_sources(data, global_batch=global_batch, seed=seed, process_index=process_index,
                             process_count=process_count)


def _pipeline_sources(data: DataSection, *, global_batch: int, seed: int, process_index: int,
                      process_count: int) -> DataSources:
    try:
        from data_pipeline import pipeline as dp
        from data_pipeline import sample as dsample
        from data_pipeline.tokenizer import load_tokenizer
    except ImportError as e:
        raise DataConfigError(f"data.source=pyx needs the data_pipeline package ({e}); "
                              "use data.source=synthetic meanwhile") from None
    tokenizer_dir = data.tokenizer or str(dsample.sample_tokenizer_dir())
    tokenizer = load_tokenizer(tokenizer_dir)
    fields = {f.name for f in dataclasses.fields(dp.PipelineConfig)}
    for key in data.pipeline:
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=3)
            hint = f"; did you mean {', '.join('data.pipeline.' + c for c in close)}?" if close else ""
            raise DataConfigError(f"unknown config key 'data.pipeline.{key}'{hint}")
    base = dict(data.pipeline)
    path = data.path or str(dsample.sample_data_dir())
    base.setdefault("seed", seed)

    def config(**extra):
        kw = {**base, **extra}
        return dp.PipelineConfig(**{k: v for k, v in kw.items() if k in fields})

    train_cfg = config(**_pipeline_fields(fields, path=path, seq_len=data.seq_len, global_batch=global_batch,
                                          split="train"))
    train = dp.build_batches(train_cfg, tokenizer, process_index=process_index, process_count=process_count)
    make_eval = None
    if data.eval_split:
        eval_cfg = config(**_pipeline_fields(fields, path=path, seq_len=data.seq_len, global_batch=global_batch,
                                             split=data.eval_split), repeat=False)

        def make_eval():
            return dp.build_batches(eval_cfg, tokenizer, process_index=process_index, process_count=process_count)

    per_epoch = getattr(train, "batches_per_epoch", None)
    if callable(per_epoch):
        per_epoch = per_epoch()
    return DataSources(train=train, make_eval=make_eval, batches_per_epoch=per_epoch, tokenizer=tokenizer,
                       tokenizer_dir=tokenizer_dir)


def _pipeline_fields(fields: set[str], **values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k in fields}
