"""The input pipeline: files (or a TFDS dataset) to fixed-shape training batches, per host, resumable.

Flow, per host and epoch (tf.data up to the windows, numpy after):

  files --(host shard: files or records)--> (file, line, payload) records, round-robin over files
  --(held-out filter: Fingerprint64 of the payload)--> seeded shuffle --> windows of ``window_size``
  records --(parallel map: validate, tokenize, pack or pad)--> rows --> prefetch --> batches

A window is packed on its own, so the rows a window yields depend only on its records.  The
iterator's position is therefore three numbers -- (epoch, window, row): restoring rebuilds the
epoch's stream, skips ``window`` windows *before* the tokenize map (only reading and shuffling the
raw lines of the skipped records, no parsing or tokenization), re-packs that one window and drops
its first ``row`` rows.  The next batch is exactly the one an uninterrupted run would yield.
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import glob
import hashlib
import json
import logging
import os
import pathlib
import weakref
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from data_pipeline import packing
from data_pipeline.errors import UserError
from data_pipeline.examples import build_examples
from data_pipeline.prompts import TASK_IDS, TASK_NAMES
from data_pipeline.records import (
    DEFAULT_MAX_RECORD_BYTES,
    BadRecord,
    BadRecordLog,
    Record,
    check_compressed,
    default_sidecar,
    parse_example_proto,
    parse_json_line,
)
from data_pipeline.tokenizer import Tokenizer

log = logging.getLogger(__name__)

STATE_VERSION = 1
_HASH_BUCKETS = 1_000_000
# Layout of the per-window statistics vector returned by the tokenize map.
_STATS = ("records", "blank", "filtered", "truncated", "examples_len", "real_tokens", "loss_tokens",
          "slots", "rows") + tuple(f"task_{t}" for t in TASK_NAMES)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Where the data is and how it becomes batches (validated on construction).

    Sources: ``files`` (JSON Lines, ``.jsonl.gz``, TFRecord shards of ``tf.train.Example``; globs and
    directories expand) or a TFDS dataset ``tfds_name`` under ``tfds_data_dir``.
    Eval data: ``eval_files``, or the TFDS ``tfds_eval_split``, or ``eval_fraction`` of ``files``
    held out by a hash of each record (the same records on every host and run).
    ``epochs=None`` streams forever.  ``mode="pad"`` is the release's layout (one example per row,
    right padding; ``pad_to_multiple_of`` trims each batch to its longest row, rounded up).
    """

    files: tuple[str, ...] = ()
    tfds_name: str | None = None
    tfds_data_dir: str | None = None
    tfds_split: str = "train"
    tfds_eval_split: str = "validation"
    eval_files: tuple[str, ...] = ()
    eval_fraction: float = 0.0
    tasks: tuple[str, ...] | None = None
    seq_len: int = 2048
    batch_size: int = 8
    mode: Literal["pad", "pack"] = "pack"
    pad_to_multiple_of: int | None = None
    seed: int = 0
    shuffle: bool = True
    shuffle_buffer: int = 10_000
    epochs: int | None = 1
    on_bad_record: Literal["error", "skip"] = "error"
    bad_records_file: str | None = None
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    window_size: int = 1024
    shard_by: Literal["auto", "file", "record"] = "auto"
    num_parallel_calls: int = 0  # 0 = tf.data.AUTOTUNE
    prefetch: int = 4

    def __post_init__(self) -> None:
        for name in ("files", "eval_files"):
            value = getattr(self, name)
            if isinstance(value, str | os.PathLike):
                value = (value,)
            object.__setattr__(self, name, tuple(str(v) for v in value))
        if self.tasks is not None:
            object.__setattr__(self, "tasks", tuple(self.tasks))
        problems = []
        if bool(self.files) == bool(self.tfds_name):
            problems.append("give exactly one source: files or tfds_name")
        if self.tasks is not None:
            unknown = [t for t in self.tasks if t not in TASK_IDS]
            if unknown:
                problems.append(f"tasks: unknown {unknown}; known: {', '.join(TASK_NAMES)}")
        for name in ("seq_len", "batch_size", "window_size", "shuffle_buffer", "max_record_bytes", "prefetch"):
            if int(getattr(self, name)) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.seq_len < 2:
            problems.append("seq_len must be at least 2")
        if self.mode not in ("pad", "pack"):
            problems.append(f"mode must be 'pad' or 'pack', got {self.mode!r}")
        if self.on_bad_record not in ("error", "skip"):
            problems.append(f"on_bad_record must be 'error' or 'skip', got {self.on_bad_record!r}")
        if self.shard_by not in ("auto", "file", "record"):
            problems.append(f"shard_by must be 'auto', 'file' or 'record', got {self.shard_by!r}")
        if self.epochs is not None and self.epochs <= 0:
            problems.append(f"epochs must be positive or None (endless), got {self.epochs}")
        if not 0.0 <= self.eval_fraction < 1.0:
            problems.append(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of <= 0:
            problems.append(f"pad_to_multiple_of must be positive, got {self.pad_to_multiple_of}")
        if problems:
            raise UserError("PipelineConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "data config") -> PipelineConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys are an error naming the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{source}: unknown key(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class PipelineStats:
    """What the pipeline has read so far (per host): records by task, truncation, token utilisation."""

    records: int = 0
    blank: int = 0
    filtered: int = 0
    truncated: int = 0
    examples_len: int = 0
    real_tokens: int = 0
    loss_tokens: int = 0
    slots: int = 0
    rows: int = 0
    by_task: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(TASK_NAMES, 0))

    def add(self, vector: np.ndarray) -> None:
        values = dict(zip(_STATS, (int(v) for v in vector)))
        for name in _STATS[:9]:
            setattr(self, name, getattr(self, name) + values[name])
        for task in TASK_NAMES:
            self.by_task[task] += values[f"task_{task}"]

    @property
    def utilisation(self) -> float:
        """Real tokens / all slots of the rows produced."""
        return self.real_tokens / self.slots if self.slots else 0.0

    @property
    def loss_utilisation(self) -> float:
        """Loss-bearing positions / all slots."""
        return self.loss_tokens / self.slots if self.slots else 0.0


# --------------------------------------------------------------------------------------------------
# Files and hosts


def expand_files(patterns: tuple[str, ...]) -> list[str]:
    """Globs and directories to a sorted list of data files; a pattern matching nothing is an error."""
    out: list[str] = []
    for pattern in patterns:
        p = pathlib.Path(pattern)
        if p.is_dir():
            matches = sorted(str(f) for f in p.iterdir() if f.is_file() and _file_kind(str(f), strict=False))
        else:
            matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else (
                [pattern] if p.is_file() else [])
        if not matches:
            raise UserError(f"{pattern}: no data files found")
        out.extend(matches)
    for f in out:
        _file_kind(f)
    return sorted(dict.fromkeys(out))


def _file_kind(path: str, strict: bool = True) -> tuple[str, str] | None:
    """(kind, compression) of a data file from its name: ('jsonl'|'tfrecord', ''|'GZIP')."""
    name = os.path.basename(path)
    compression = "GZIP" if name.endswith(".gz") else ""
    if ".tfrecord" in name:
        return ("tfrecord", compression)
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        return ("jsonl", compression)
    if strict:
        raise UserError(f"{path}: unknown data file type (expected .jsonl, .jsonl.gz or a .tfrecord shard)")
    return None


def tfds_files(name: str, data_dir: str | None, split: str) -> list[str]:
    """The TFRecord shards of a prepared TFDS split (registers the ``pyx`` builder first)."""
    import tensorflow_datasets as tfds

    import data_pipeline.tfds_pyx  # noqa: F401  (registers the builder)

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several unrelated types for unknown or unprepared datasets
        raise UserError(f"tfds dataset {name!r} under {data_dir}: {e}") from e
    if not builder.is_prepared():
        raise UserError(f"tfds dataset {name!r} is not prepared under {data_dir}; run "
                        f"`semcoder data prepare-tfds --manual-dir DIR --data-dir {data_dir}`")
    if split not in builder.info.splits:
        raise UserError(f"tfds dataset {name!r}: no split {split!r}; has {sorted(builder.info.splits)}")
    return sorted(str(p) for p in builder.info.splits[split].filepaths)


def _seed_for(*parts: int) -> int:
    digest = hashlib.blake2b(json.dumps(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------------------------------
# The per-window work (runs inside tf.data's parallel map)


class _WindowProcessor:
    """Validate, tokenize and lay out one window of raw records as rows (pure given its inputs)."""

    def __init__(self, config: PipelineConfig, tokenizer: Tokenizer, files: list[str]):
        self.config, self.tokenizer, self.files = config, tokenizer, files
        self.kinds = [_file_kind(f)[0] for f in files]
        self.tasks = set(config.tasks) if config.tasks is not None else None

    def records(self, file_idx: np.ndarray, line_no: np.ndarray, payload: np.ndarray
                ) -> tuple[list[Record], list[BadRecord], int, int]:
        good, bad, blank, filtered = [], [], 0, 0
        limit = self.config.max_record_bytes
        for f, n, raw in zip(file_idx.tolist(), line_no.tolist(), payload.tolist()):
            path = self.files[f]
            try:
                if self.kinds[f] == "jsonl":
                    if not raw.strip():
                        blank += 1
                        continue
                    record = parse_json_line(raw.rstrip(b"\r"), path, n, limit)
                else:
                    record = parse_example_proto(raw, path, n, limit)
            except BadRecord as e:
                bad.append(e)
                continue
            if self.tasks is not None and record.task not in self.tasks:
                filtered += 1
                continue
            good.append(record)
        return good, bad, blank, filtered

    def __call__(self, file_idx, line_no, payload):
        cfg = self.config
        good, bad, blank, filtered = self.records(file_idx, line_no, payload)
        examples = build_examples(good, self.tokenizer, cfg.seq_len)
        layout = packing.pack_examples if cfg.mode == "pack" else packing.pad_examples
        rows = layout(examples, cfg.seq_len, self.tokenizer.pad_id)
        stats = dict.fromkeys(_STATS, 0)
        stats.update(records=len(good), blank=blank, filtered=filtered,
                     truncated=sum(e.truncated for e in examples),
                     examples_len=sum(len(e.tokens) for e in examples),
                     real_tokens=int((rows["segment_ids"] > 0).sum()), loss_tokens=int(rows["loss_mask"].sum()),
                     slots=int(rows["segment_ids"].size), rows=len(rows["segment_ids"]))
        for e in examples:
            stats[f"task_{e.task}"] += 1
        bad_json = np.array([json.dumps([b.path, b.line, b.reason, b.detail, b.field]).encode() for b in bad],
                            dtype=object).reshape(-1)
        return (*(rows[name] for name in packing.FIELDS),
                np.array([stats[s] for s in _STATS], np.int64), bad_json)


# --------------------------------------------------------------------------------------------------
# The iterator


class BatchIterator:
    """Fixed-shape numpy batches for one host, with a JSON-serialisable position (``get_state``).

    Each batch is ``{input_ids, targets, loss_mask, segment_ids, positions}``, int32
    [batch_size, seq_len] (narrower only in pad mode with ``pad_to_multiple_of``).  A finite run's last
    batch is completed with empty rows (segment 0, no loss).
    """

    def __init__(self, config: PipelineConfig, tokenizer: Tokenizer, *, process_index: int = 0,
                 process_count: int = 1, split: Literal["train", "eval"] = "train",
                 state: dict | None = None):
        if not 0 <= process_index < process_count:
            raise UserError(f"process_index {process_index} is not in [0, {process_count})")
        self.config, self.tokenizer, self.split = config, tokenizer, split
        self.process_index, self.process_count = process_index, process_count
        self.files, self._heldout = self._resolve_source()
        self.shard_by = self._resolve_shard_by()
        self._processor = _WindowProcessor(config, tokenizer, self.files)
        sidecar = config.bad_records_file or (default_sidecar(process_index) if config.on_bad_record == "skip" else None)
        self.bad_records = BadRecordLog(sidecar)
        self.stats = PipelineStats()
        self._epochs = 1 if split == "eval" else config.epochs
        self._shuffle = config.shuffle and split == "train"
        self._fingerprint = self._make_fingerprint()
        self._reset(epoch=0, window=0, row=0, batches=0)
        if state is not None:
            self.set_state(state)
        _LIVE.add(self)

    # -- source -------------------------------------------------------------------------------------

    def _resolve_source(self) -> tuple[list[str], str]:
        """Files of this split, and which hash side of ``eval_fraction`` to keep ('', 'train', 'eval')."""
        cfg = self.config
        if cfg.tfds_name:
            split = cfg.tfds_split if self.split == "train" else cfg.tfds_eval_split
            return tfds_files(cfg.tfds_name, cfg.tfds_data_dir, split), ""
        if self.split == "train":
            return expand_files(cfg.files), ("train" if cfg.eval_fraction > 0 else "")
        if cfg.eval_files:
            return expand_files(cfg.eval_files), ""
        if cfg.eval_fraction > 0:
            return expand_files(cfg.files), "eval"
        raise UserError("PipelineConfig: no eval data; set eval_files, eval_fraction or tfds_name")

    def _resolve_shard_by(self) -> str:
        if self.config.shard_by != "auto":
            return self.config.shard_by
        n = len(self.files)
        return "file" if n >= self.process_count and n % self.process_count == 0 else "record"

    def _make_fingerprint(self) -> str:
        cfg = self.config.to_dict()
        for k in ("num_parallel_calls", "prefetch", "bad_records_file", "tfds_data_dir"):
            cfg.pop(k)
        ident = {"config": cfg, "split": self.split, "files": [os.path.basename(f) for f in self.files],
                 "host": [self.process_index, self.process_count],
                 "tokenizer": [self.tokenizer.vocab_size, self.tokenizer.bos_id, self.tokenizer.eos_id,
                               self.tokenizer.pad_id]}
        return hashlib.blake2b(json.dumps(ident, sort_keys=True).encode(), digest_size=12).hexdigest()

    # -- tf.data ------------------------------------------------------------------------------------

    def _raw_records(self, tf, epoch: int):
        """(file index, line number, payload) of this host's records, round-robin over its files."""
        cfg = self.config
        indices = list(range(len(self.files)))
        if self.shard_by == "file":
            indices = indices[self.process_index::self.process_count]
        if self._shuffle:
            # Record sharding needs the same stream on every host; file sharding may differ per host.
            host = self.process_index if self.shard_by == "file" else -1
            rng = np.random.default_rng(_seed_for(cfg.seed, epoch, host, 1))
            indices = [indices[i] for i in rng.permutation(len(indices))]
        streams = []
        for kind in ("jsonl", "tfrecord"):
            chosen = [i for i in indices if _file_kind(self.files[i])[0] == kind]
            if not chosen:
                continue
            comps = [_file_kind(self.files[i])[1] for i in chosen]
            reader = tf.data.TextLineDataset if kind == "jsonl" else tf.data.TFRecordDataset
            files_ds = tf.data.Dataset.from_tensor_slices(
                (tf.constant(chosen, tf.int32), [self.files[i] for i in chosen], comps))

            def read(i, path, comp, reader=reader):
                return reader(path, compression_type=comp).enumerate(start=1).map(
                    lambda n, payload: (i, n, payload))

            streams.append(files_ds.interleave(read, cycle_length=min(len(chosen), 16), block_length=1,
                                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
        if not streams:
            raise UserError(f"host {self.process_index}/{self.process_count} has no data files "
                            f"({len(self.files)} files, shard_by={self.shard_by})")
        ds = streams[0]
        for extra in streams[1:]:
            ds = ds.concatenate(extra)
        if self.shard_by == "record":
            ds = ds.shard(self.process_count, self.process_index)
        if self._heldout:
            cut = int(round(cfg.eval_fraction * _HASH_BUCKETS))
            keep_eval = self._heldout == "eval"

            def keep(i, n, payload):
                in_eval = tf.strings.to_hash_bucket_fast(payload, _HASH_BUCKETS) < cut
                return in_eval if keep_eval else tf.logical_not(in_eval)

            ds = ds.filter(keep)
        return ds

    def _epoch_dataset(self, epoch: int, skip_windows: int):
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
        cfg = self.config
        ds = self._raw_records(tf, epoch)
        if self._shuffle:
            ds = ds.shuffle(cfg.shuffle_buffer, seed=_seed_for(cfg.seed, epoch, self.process_index, 2) % (2**31),
                            reshuffle_each_iteration=False)
        ds = ds.batch(cfg.window_size).skip(skip_windows)
        out_types = [tf.int32] * len(packing.FIELDS) + [tf.int64, tf.string]

        def process(i, n, payload):
            outs = tf.numpy_function(self._processor, [i, n, payload], out_types, stateful=False)
            for t in outs[:len(packing.FIELDS)]:
                t.set_shape([None, cfg.seq_len])
            outs[-2].set_shape([len(_STATS)])
            outs[-1].set_shape([None])
            return tuple(outs)

        parallel = cfg.num_parallel_calls or tf.data.AUTOTUNE
        ds = ds.map(process, num_parallel_calls=parallel, deterministic=True).prefetch(cfg.prefetch)
        options = tf.data.Options()
        options.deterministic = True
        return ds.with_options(options)

    # -- position -----------------------------------------------------------------------------------

    def _reset(self, epoch: int, window: int, row: int, batches: int) -> None:
        self._epoch, self._batches = epoch, batches
        self._next_window, self._rows_to_drop = window, row
        self._iter: Iterator | None = None
        self._cur: dict[str, np.ndarray] | None = None
        self._cur_window, self._cur_row = window, row
        self._epoch_rows, self._epoch_start_window = 0, window
        self._done = False

    def get_state(self) -> dict:
        """The position of the next row to yield, as JSON-serialisable data."""
        return {"version": STATE_VERSION, "epoch": self._epoch, "window": self._cur_window, "row": self._cur_row,
                "batches": self._batches, "fingerprint": self._fingerprint}

    def set_state(self, state: dict) -> None:
        """Continue from a position saved by ``get_state`` (same config, data files and host)."""
        try:
            version, fingerprint = state["version"], state["fingerprint"]
            epoch, window, row, batches = (int(state[k]) for k in ("epoch", "window", "row", "batches"))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"data pipeline state: malformed ({e!r}); expected the dict of get_state()") from e
        if version != STATE_VERSION:
            raise UserError(f"data pipeline state: version {version}, this code reads {STATE_VERSION}")
        if fingerprint != self._fingerprint:
            raise UserError("data pipeline state: saved with a different config, file list, host or tokenizer "
                            f"(fingerprint {fingerprint} != {self._fingerprint})")
        self._reset(epoch, window, row, batches)

    # -- iteration ----------------------------------------------------------------------------------

    def _load_next_window(self) -> bool:
        """Make the next window current; False at the end of the last epoch."""
        import tensorflow as tf  # already loaded: the dataset was built with it

        while True:
            if self._iter is None:
                self._iter = self._epoch_dataset(self._epoch, self._next_window).as_numpy_iterator()
            try:
                *fields, stats, bad = next(self._iter)
            except tf.errors.DataLossError as e:  # a .gz file that ends early or is damaged
                raise self._damaged_file(e) from None
            except StopIteration:
                if self._epoch_rows == 0 and self._epoch_start_window == 0:
                    raise UserError(f"host {self.process_index}: epoch {self._epoch} produced no examples "
                                    f"({self.bad_records.summary()}; {self.stats.filtered} filtered by task)") from None
                if self._epochs is not None and self._epoch + 1 >= self._epochs:
                    self._done = True
                    log.info("data pipeline finished: %s", self.bad_records.summary())
                    return False
                self._epoch += 1
                self._iter, self._next_window, self._epoch_rows, self._epoch_start_window = None, 0, 0, 0
                continue
            self._handle_bad(bad)
            self.stats.add(stats)
            self._cur = dict(zip(packing.FIELDS, fields))
            self._cur_window, self._cur_row = self._next_window, self._rows_to_drop
            self._next_window, self._rows_to_drop = self._next_window + 1, 0
            self._epoch_rows += len(fields[0])
            return True

    def _damaged_file(self, error: Exception) -> UserError:
        """One line for a compressed file tf.data could not read to its end: which file, and how much of it
        was read (found by reading this host's .gz files again; tf.data's error does not say)."""
        for path in self.files:
            if path.endswith(".gz") and _file_kind(path)[0] == "jsonl":
                bad = check_compressed(path)
                if bad is not None:
                    return bad
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return UserError(f"a data file could not be read to its end ({first}); files: {', '.join(self.files)}")

    def _handle_bad(self, bad: np.ndarray) -> None:
        if not len(bad):
            return
        records = [BadRecord(path, line, reason, detail, field)
                   for path, line, reason, detail, field in (json.loads(b) for b in bad)]
        if self.config.on_bad_record == "error":
            first = records[0]
            if first.path.endswith(".gz") and first.reason in ("invalid_json", "invalid_utf8"):
                damaged = check_compressed(first.path)  # a cut-off stream ends in a cut-off line
                if damaged is not None:
                    raise damaged
            more = f" (and {len(records) - 1} more in the same window)" if len(records) > 1 else ""
            raise BadRecord(records[0].path, records[0].line, records[0].reason, records[0].detail + more,
                            records[0].field)
        for r in records:
            self.bad_records.add(r)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._done:
            raise StopIteration
        cfg = self.config
        parts: list[dict[str, np.ndarray]] = []
        have = 0
        while have < cfg.batch_size:
            if self._cur is None or self._cur_row >= len(self._cur["input_ids"]):
                if not self._load_next_window():
                    break
                continue
            take = min(cfg.batch_size - have, len(self._cur["input_ids"]) - self._cur_row)
            parts.append({k: v[self._cur_row:self._cur_row + take] for k, v in self._cur.items()})
            self._cur_row += take
            have += take
        if not have:
            raise StopIteration
        if have < cfg.batch_size:
            parts.append(packing.empty_rows(cfg.batch_size - have, cfg.seq_len, self.tokenizer.pad_id))
        batch = {k: np.concatenate([p[k] for p in parts]) for k in packing.FIELDS}
        if cfg.mode == "pad" and cfg.pad_to_multiple_of:
            longest = int((batch["segment_ids"] > 0).sum(axis=1).max())
            m = cfg.pad_to_multiple_of
            width = min(cfg.seq_len, max(m, -(-longest // m) * m))
            batch = {k: np.ascontiguousarray(v[:, :width]) for k, v in batch.items()}
        self._batches += 1
        return batch

    @property
    def batches_yielded(self) -> int:
        return self._batches

    def close(self) -> None:
        """Stop the tf.data workers (they call back into Python, so they must end before the interpreter)."""
        self._iter = None
        self._cur = None

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# tf.data threads running a numpy_function deadlock against interpreter shutdown if their iterator is
# still alive then; close every live BatchIterator first.
_LIVE: weakref.WeakSet[BatchIterator] = weakref.WeakSet()


@atexit.register
def _close_live_iterators() -> None:
    for it in list(_LIVE):
        it.close()
    gc.collect()


def build_batches(config: PipelineConfig, tokenizer: Tokenizer, *, process_index: int = 0,
                  process_count: int = 1, state: dict | None = None) -> BatchIterator:
    """The training batch iterator of one host (``process_index`` of ``process_count``)."""
    return BatchIterator(config, tokenizer, process_index=process_index, process_count=process_count,
                         split="train", state=state)


def build_eval_batches(config: PipelineConfig, tokenizer: Tokenizer, *, process_index: int = 0,
                       process_count: int = 1) -> BatchIterator:
    """One pass over the eval data (no shuffle), split across hosts like training data."""
    return BatchIterator(config, tokenizer, process_index=process_index, process_count=process_count,
                         split="eval")
