"""Batch sources for training: the PyX pipeline (``data_pipeline``) or synthetic packed rows.

Every source yields this process's rows of the global batch as a dict of numpy arrays
[per_process_batch, seq_len] (``input_ids``, ``targets``, ``loss_mask``, ``segment_ids``,
``positions``) and exposes ``get_state()`` / ``set_state()`` (JSON-serialisable) so that a resumed run
continues with exactly the next batch.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import os
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

    def restore(self, states: list[dict[str, Any]]) -> str:
        """Continue from the states every process saved: batches are addressed by step, so any number
        of processes or batch size continues from the same step."""
        for state in states:
            self.set_state(state)
        return ""

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
    """The training iterator, the held-out batches (or None) and facts about the data.

    ``eval_batches(cap)`` returns this process's held-out batches: all of its share of the split,
    or at most ``cap``; they are built once and kept (the split does not change during a run).
    ``epoch_rows`` is this process's rows in epoch 0 (the loop sums them over processes).
    ``lengths`` is the truncation report of the training split (None for synthetic data).
    """

    train: Any
    eval_batches: Any | None
    epoch_rows: int | None
    tokenizer: Any | None
    tokenizer_dir: str | None
    lengths: Any | None = None
    batch_keys: tuple[str, ...] = ("input_ids", "targets", "loss_mask", "segment_ids", "positions")


def build_sources(data: DataSection, *, global_batch: int, vocab_size: int, seed: int,
                  process_index: int, process_count: int, count_epoch: bool = False,
                  run_dir: str | None = None) -> DataSources:
    """Builds this process's batch sources from the data section.

    ``count_epoch`` packs this process's share of one epoch to count its rows (needed when the run's
    length is given in epochs).
    """
    if global_batch % process_count:
        raise DataConfigError(f"train.global_batch={global_batch} is not divisible by the {process_count} processes")
    if data.source == "synthetic":
        if data.pipeline or data.path or data.eval_path:
            raise DataConfigError("data.path / data.eval_path / data.pipeline: not used by data.source=synthetic")
        kw = dict(global_batch=global_batch, seq_len=data.seq_len, vocab_size=vocab_size,
                  process_index=process_index, process_count=process_count)

        def eval_batches(cap: int | None) -> list[dict[str, np.ndarray]]:
            # a disjoint stream (different seed) stands in for a held-out split of SYNTHETIC_EVAL_BATCHES
            held_out = SyntheticBatches(seed=seed + 1_000_003, **kw)
            return [held_out.batch(i) for i in range(min(cap or SYNTHETIC_EVAL_BATCHES, SYNTHETIC_EVAL_BATCHES))]

        return DataSources(train=SyntheticBatches(seed=seed, **kw), eval_batches=eval_batches, epoch_rows=None,
                           tokenizer=None, tokenizer_dir=None)
    return _pipeline_sources(data, global_batch=global_batch, vocab_size=vocab_size, seed=seed,
                             process_index=process_index, process_count=process_count, count_epoch=count_epoch,
                             run_dir=run_dir)


SYNTHETIC_EVAL_BATCHES = 4


def pipeline_setup(data: DataSection, *, global_batch: int, vocab_size: int | None, seed: int, process_index: int,
                   process_count: int, run_dir: str | None = None) -> tuple[dict[str, Any], Any, str]:
    """(``PipelineConfig`` fields without ``epochs``, the tokenizer, its directory) for a pyx data section;
    the tokenizer must fit ``vocab_size`` (None: no model to fit)."""
    try:
        from data_pipeline import pipeline as dp
        from data_pipeline.tokenizer import load_tokenizer
    except ImportError as e:
        raise DataConfigError(f"data.source=pyx needs the data_pipeline package ({e}); "
                              "use data.source=synthetic meanwhile") from None
    from semcoder_jax import locations

    path, tokenizer_dir = data.path, data.tokenizer
    if path is None or tokenizer_dir is None:
        from data_pipeline import sample as dsample

        path = path or str(dsample.sample_data_dir())
        tokenizer_dir = tokenizer_dir or str(dsample.sample_tokenizer_dir())
    for key, value in (("data.path", path), ("data.eval_path", data.eval_path), ("data.tokenizer", tokenizer_dir)):
        if locations.is_remote(value):  # gs:// data is read through fsspec (data_pipeline.remote)
            locations.check(key + ":", value)
            locations.configure_environment()
    try:
        tokenizer = load_tokenizer(tokenizer_dir)
    except UserError as e:
        if not locations.is_remote(tokenizer_dir):
            raise
        raise DataConfigError(f"data.tokenizer: {e}") from None
    if vocab_size is not None and tokenizer.vocab_size > vocab_size:
        raise DataConfigError(f"data.tokenizer: {tokenizer_dir} has {tokenizer.vocab_size} tokens but the model's "
                              f"vocabulary has {vocab_size} rows (set model.vocab_size or use a matching preset)")
    fields = {f.name for f in dataclasses.fields(dp.PipelineConfig)}
    reserved = {"files", "seq_len", "batch_size", "mode", "seed", "epochs", "eval_files", "eval_fraction"}
    for key in data.pipeline:
        if key in reserved:
            raise DataConfigError(f"data.pipeline.{key}: set through the data/train sections instead")
        if key in dp.REMOVED_KEYS:
            raise DataConfigError(f"data.pipeline.{key}: {dp.REMOVED_KEYS[key]}")
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields - reserved), n=3)
            hint = f"; did you mean {', '.join('data.pipeline.' + c for c in close)}?" if close else ""
            raise DataConfigError(f"unknown config key 'data.pipeline.{key}'{hint}")
    pipeline = dict(data.pipeline)
    if run_dir is not None and "bad_records_file" not in pipeline and not locations.is_remote(run_dir):
        # the run's skipped records stay with the run (a gs:// run keeps them in the local default file: an
        # object cannot be appended to)
        pipeline["bad_records_file"] = os.path.join(run_dir, f"bad_records.p{process_index}.jsonl")
    fields_in = dict(pipeline, files=(path,), seq_len=data.seq_len,
                     batch_size=global_batch // process_count, mode=data.mode, seed=seed,
                     eval_files=(data.eval_path,) if data.eval_path else (), eval_fraction=data.eval_fraction)
    return fields_in, tokenizer, tokenizer_dir


def _pipeline_sources(data: DataSection, *, global_batch: int, vocab_size: int, seed: int, process_index: int,
                      process_count: int, count_epoch: bool, run_dir: str | None = None) -> DataSources:
    from data_pipeline import packing
    from data_pipeline import pipeline as dp
    from data_pipeline.lengths import measure_lengths

    fields_in, tokenizer, tokenizer_dir = pipeline_setup(
        data, global_batch=global_batch, vocab_size=vocab_size, seed=seed, process_index=process_index,
        process_count=process_count, run_dir=run_dir)
    train_cfg = dp.PipelineConfig(**fields_in, epochs=None)
    train = dp.build_batches(train_cfg, tokenizer, process_index=process_index, process_count=process_count)
    lengths = measure_lengths(train, data.length_sample, seed)
    eval_batches = None
    if data.eval_path or data.eval_fraction > 0:
        eval_cfg = dp.PipelineConfig(**fields_in, epochs=1)
        cache: dict[int | None, list] = {}

        def eval_batches(cap: int | None) -> list[dict[str, np.ndarray]]:
            if cap not in cache:
                with dp.build_eval_batches(eval_cfg, tokenizer, process_index=process_index,
                                           process_count=process_count) as it:
                    cache[cap] = [b for _, b in zip(range(cap) if cap else itertools.count(), it)]
            return cache[cap]

    epoch_rows = train.epoch_rows(0) if count_epoch else None
    return DataSources(train=train, eval_batches=eval_batches, epoch_rows=epoch_rows, tokenizer=tokenizer,
                       tokenizer_dir=tokenizer_dir, lengths=lengths, batch_keys=packing.FIELDS)
