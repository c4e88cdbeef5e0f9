"""The input pipeline: the records of a split to fixed-shape training batches, per host, resumable.

Flow (tf.data schedules the windows and runs them in parallel; numpy does the work):

  files --(index: one scan; the held-out split by a hash of each record)--> records 0..N-1
  --(epoch: a seeded permutation of all N)--> windows of ``window_size`` records, dealt to hosts
  --(parallel map: read, validate, tokenize, pack or pad, permute the rows)--> rows --> prefetch --> batches

``data_pipeline.order`` decides which window is read where and when.  A host's position is its
*plans*: per epoch, the windows it has left and the rows already consumed of the one it is in.
Those are global facts (which records of which epoch are used), so a run resumes them exactly on
the same hosts, and on another number of hosts or another batch size by dealing out what is left
(``BatchIterator.restore``).  A window's rows depend only on its records, the seed and the
layout, so a resumed window is re-packed into the same rows and the same next batch.
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
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np

from data_pipeline import order as order_lib
from data_pipeline import packing, remote
from data_pipeline.errors import UserError
from data_pipeline.examples import build_examples
from data_pipeline.index import RecordIndex
from data_pipeline.prompts import TASK_IDS, TASK_NAMES
from data_pipeline.records import (
    DEFAULT_MAX_RECORD_BYTES,
    BadRecord,
    BadRecordLog,
    Record,
    default_sidecar,
    parse_example_proto,
    parse_json_line,
)
from data_pipeline.tokenizer import Tokenizer

log = logging.getLogger(__name__)

STATE_VERSION = 2
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
    Every epoch is a seeded permutation of the whole split (``shuffle``; eval data is read in file
    order), cut into windows of ``window_size`` records that are packed on their own and whose rows
    leave in a seeded random order (``row_order="packed"`` keeps the packer's longest-first order, a
    length curriculum, for comparison only).  ``epochs=None`` streams forever.  ``mode="pad"`` is the release's layout (one example per row,
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
    epochs: int | None = 1
    on_bad_record: Literal["error", "skip"] = "error"
    bad_records_file: str | None = None
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    window_size: int = 1024
    row_order: Literal["random", "packed"] = "random"
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
        for name in ("seq_len", "batch_size", "window_size", "max_record_bytes", "prefetch"):
            if int(getattr(self, name)) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.seq_len < 2:
            problems.append("seq_len must be at least 2")
        if self.mode not in ("pad", "pack"):
            problems.append(f"mode must be 'pad' or 'pack', got {self.mode!r}")
        if self.row_order not in ("random", "packed"):
            problems.append(f"row_order must be 'random' or 'packed', got {self.row_order!r}")
        if self.on_bad_record not in ("error", "skip"):
            problems.append(f"on_bad_record must be 'error' or 'skip', got {self.on_bad_record!r}")
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
        for key in set(data) & set(REMOVED_KEYS):
            raise UserError(f"{source}: {key}: {REMOVED_KEYS[key]}")
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{source}: unknown key(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


# What a restored position may differ in: the rows of a window in progress change, so it is read again.
LAYOUT_KEYS = ("seq_len", "mode", "row_order")
# Keys earlier versions accepted, and why they are gone (a config naming one is told, not ignored).
REMOVED_KEYS = {
    "shuffle_buffer": "removed: every epoch is a seeded permutation of the whole split now",
    "shard_by": "removed: hosts read windows of one global permutation now (equal, representative shares)",
}


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
    """Globs and directories to a sorted list of data files; a pattern matching nothing is an error.

    Object-store URLs (``gs://BUCKET/pyx/*.jsonl.gz``) expand the same way, through fsspec; a missing
    bucket, missing credentials or a missing permission is one line naming the pattern."""
    out: list[str] = []
    for pattern in patterns:
        p = pathlib.Path(pattern)
        if remote.is_remote(pattern):
            matches = remote.expand(pattern, in_directory=lambda name: _file_kind(name, strict=False) is not None)
        elif p.is_dir():
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


# --------------------------------------------------------------------------------------------------
# The per-window work (runs inside tf.data's parallel map)


class _WindowProcessor:
    """Read, validate, tokenize and lay out one window as rows (a pure function of epoch and window)."""

    def __init__(self, config: PipelineConfig, tokenizer: Tokenizer, index: RecordIndex, shuffle: bool):
        self.config, self.tokenizer, self.index, self.shuffle = config, tokenizer, index, shuffle
        self.tasks = set(config.tasks) if config.tasks is not None else None
        self._orders: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The epoch's record permutation (the last two epochs' are kept: hosts straddle epochs)."""
        with self._lock:
            order = self._orders.get(epoch)
            if order is None:
                order = order_lib.epoch_permutation(len(self.index), self.config.seed, epoch, self.shuffle)
                self._orders[epoch] = order
                for old in sorted(self._orders)[:-2]:
                    del self._orders[old]
            return order

    def record_ids(self, epoch: int, window: int) -> np.ndarray:
        return order_lib.window_records(self.epoch_order(epoch), window, self.config.window_size)

    def records(self, ids: np.ndarray) -> tuple[list[Record], list[int], list[BadRecord], int]:
        """The valid records of ``ids`` (with their ids), the bad ones, and how many the task filter dropped."""
        good, good_ids, bad, filtered = [], [], [], 0
        limit = self.config.max_record_bytes
        for rid, raw in zip(ids.tolist(), self.index.read(ids)):
            path, line = self.index.where(rid)
            try:
                if self.index.kinds[int(self.index.file_idx[rid])] == "jsonl":
                    record = parse_json_line(raw, path, line, limit)
                else:
                    record = parse_example_proto(raw, path, line, limit)
            except BadRecord as e:
                bad.append(e)
                continue
            if self.tasks is not None and record.task not in self.tasks:
                filtered += 1
                continue
            good.append(record)
            good_ids.append(rid)
        return good, good_ids, bad, filtered

    def __call__(self, epoch: int, window: int):
        cfg = self.config
        ids = self.record_ids(epoch, window)
        good, good_ids, bad, filtered = self.records(ids)
        examples = build_examples(good, self.tokenizer, cfg.seq_len)
        if cfg.mode == "pack":
            groups = [sorted(g) for g in packing.best_fit_decreasing([len(e.tokens) for e in examples], cfg.seq_len)]
        else:
            groups = [[i] for i in range(len(examples))]
        shuffle_rows = self.shuffle and cfg.row_order == "random"
        groups = [groups[i] for i in order_lib.row_order(len(groups), cfg.seed, epoch, window, shuffle_rows)]
        rows = packing.rows_from_groups(examples, groups, cfg.seq_len, self.tokenizer.pad_id)
        stats = dict.fromkeys(_STATS, 0)
        stats.update(records=len(good), filtered=filtered, truncated=sum(e.truncated for e in examples),
                     examples_len=sum(len(e.tokens) for e in examples),
                     real_tokens=int((rows["segment_ids"] > 0).sum()), loss_tokens=int(rows["loss_mask"].sum()),
                     slots=int(rows["segment_ids"].size), rows=len(groups))
        for e in examples:
            stats[f"task_{e.task}"] += 1
        bad_json = np.array([json.dumps([b.path, b.line, b.reason, b.detail, b.field]).encode() for b in bad],
                            dtype=object).reshape(-1)
        row_records = np.array([good_ids[i] for g in groups for i in g], np.int64)
        row_splits = np.concatenate([[0], np.cumsum([len(g) for g in groups], dtype=np.int64)]).astype(np.int64)
        return (*(rows[name] for name in packing.FIELDS), np.array([stats[s] for s in _STATS], np.int64),
                bad_json, row_records, row_splits)


# --------------------------------------------------------------------------------------------------
# The iterator


class DataPositionError(UserError):
    """A saved data position that this run cannot continue (another file list, tokenizer or seed)."""


@dataclasses.dataclass
class _Window:
    """The rows of one window being handed out, and which records each row holds."""

    epoch: int
    window: int
    rows: dict[str, np.ndarray]
    records: np.ndarray
    splits: np.ndarray
    at: int = 0

    @property
    def num_rows(self) -> int:
        return len(self.rows["input_ids"])


class BatchIterator:
    """Fixed-shape numpy batches for one host, with a JSON-serialisable position (``get_state``).

    Each batch is ``{input_ids, targets, loss_mask, segment_ids, positions, task_ids}``, int32
    [batch_size, seq_len] (narrower only in pad mode with ``pad_to_multiple_of``).  A finite run's last
    batch is completed with empty rows (segment 0, no loss).  ``last_batch_records`` lists the record
    ids (indices into the split) each row of the last batch holds.
    """

    def __init__(self, config: PipelineConfig, tokenizer: Tokenizer, *, process_index: int = 0,
                 process_count: int = 1, split: Literal["train", "eval"] = "train",
                 state: dict | None = None):
        if not 0 <= process_index < process_count:
            raise UserError(f"process_index {process_index} is not in [0, {process_count})")
        self.config, self.tokenizer, self.split = config, tokenizer, split
        self.process_index, self.process_count = process_index, process_count
        self.files, heldout = self._resolve_source()
        sidecar = config.bad_records_file or (default_sidecar(process_index) if config.on_bad_record == "skip" else None)
        self.bad_records = BadRecordLog(sidecar)
        self.index = RecordIndex(self.files, [_file_kind(f)[0] for f in self.files],
                                 [_file_kind(f)[1] for f in self.files], heldout=heldout,
                                 eval_fraction=config.eval_fraction)
        for damaged in self.index.damaged:
            if config.on_bad_record == "error":
                self.index.close()
                raise damaged
            self.bad_records.add(damaged)
        if not len(self.index):
            self.index.close()
            side = f" ({heldout} side of eval_fraction={config.eval_fraction})" if heldout else ""
            raise UserError(f"no records in the {split} data{side}: {', '.join(self.files)}")
        self.stats = PipelineStats(blank=self.index.blank)
        self.windows = order_lib.num_windows(len(self.index), config.window_size)
        self._epochs = 1 if split == "eval" else config.epochs
        self.processor = _WindowProcessor(config, tokenizer, self.index, config.shuffle and split == "train")
        self.identity = self._identity()
        self._set_position(order_lib.HostPosition(
            (order_lib.normal_plan(0, self.windows, process_index, process_count),), process_count, process_index), 0)
        self.last_batch_records: list[list[int]] = []
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

    def _identity(self) -> dict[str, Any]:
        """What a saved position depends on: the records (files and counts), their order, the tokenizer,
        and the row layout (``LAYOUT_KEYS``: another layout restarts partly read windows)."""
        tok = self.tokenizer
        probe = tok.encode("def f(x):\n    return [x, 'ü', 1.5]  # probe")
        tokenizer = hashlib.blake2b(json.dumps([tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, probe]).encode(),
                                    digest_size=8).hexdigest()
        counts = self.index.records_per_file().tolist()
        return {"split": self.split, "files": [[os.path.basename(f), int(n)] for f, n in zip(self.files, counts)],
                "tokenizer": tokenizer, "seed": self.config.seed, "shuffle": self.config.shuffle,
                "window_size": self.config.window_size, "tasks": list(self.config.tasks or []),
                "eval_fraction": self.config.eval_fraction, "seq_len": self.config.seq_len, "mode": self.config.mode,
                "row_order": self.config.row_order}

    # -- tf.data ------------------------------------------------------------------------------------

    def _plan_dataset(self, plan: order_lib.EpochPlan):
        """The processed windows of ``plan``, in order, computed ``num_parallel_calls`` at a time."""
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
        cfg, epoch = self.config, plan.epoch
        out_types = [tf.int32] * len(packing.FIELDS) + [tf.int64, tf.string, tf.int64, tf.int64]

        def run(window):
            return self.processor(epoch, int(window))

        def process(window):
            outs = tf.numpy_function(run, [window], out_types, stateful=False)
            for t in outs[:len(packing.FIELDS)]:
                t.set_shape([None, cfg.seq_len])
            outs[-4].set_shape([len(_STATS)])
            for t in outs[-3:]:
                t.set_shape([None])
            return tuple(outs)

        ds = tf.data.Dataset.from_tensor_slices(np.asarray(plan.windows, np.int64))
        ds = ds.map(process, num_parallel_calls=cfg.num_parallel_calls or tf.data.AUTOTUNE, deterministic=True)
        options = tf.data.Options()
        options.deterministic = True
        return ds.prefetch(cfg.prefetch).with_options(options)

    # -- position -----------------------------------------------------------------------------------

    def _set_position(self, position: order_lib.HostPosition, batches: int) -> None:
        self._plans = [p for p in position.plans if p.windows]
        self._next = 0  # index into self._plans[0].windows of the next window to load
        self._origin = (position.hosts, position.host)  # whose normal plans later epochs continue
        self._last_epoch = max(p.epoch for p in position.plans)
        self._batches = batches
        self._iter: Iterator | None = None
        self._cur: _Window | None = None
        self._plan_rows = 0
        self._done = False

    def _position(self) -> order_lib.HostPosition:
        plans = []
        if self._plans:
            first = self._plans[0]
            start = self._next - 1 if self._cur is not None else self._next
            rest = first.windows[start:]
            skip = {w: r for w, r in first.skip_rows.items() if w in rest}
            if self._cur is not None:
                skip[self._cur.window] = self._cur.at
            plans = [order_lib.EpochPlan(first.epoch, rest, skip), *self._plans[1:]]
        plans = [p for p in plans if p.windows]
        if not plans:
            plans = [order_lib.EpochPlan(self._last_epoch + 1, ())] if self._done else [self._upcoming_plan()]
        return order_lib.HostPosition(tuple(plans), self.process_count, self.process_index)

    def _upcoming_plan(self) -> order_lib.EpochPlan:
        """This host's normal plan for the epoch after the last one planned (the first with windows)."""
        epoch = self._last_epoch + 1
        while True:
            plan = order_lib.normal_plan(epoch, self.windows, self.process_index, self.process_count)
            if plan.windows:
                return plan
            epoch += 1

    def get_state(self) -> dict:
        """The position of the next row to yield, as JSON-serialisable data (a few numbers)."""
        position = self._position()
        return {"version": STATE_VERSION, "identity": self.identity, "hosts": position.hosts, "host": position.host,
                "batch_size": self.config.batch_size, "batches": self._batches,
                "plans": [p.to_json() for p in position.plans]}

    def set_state(self, state: dict) -> None:
        """Continue exactly from a position this host saved (same host count); see ``restore`` otherwise."""
        self.restore([state] * self.process_count if self.process_count > 1 else [state], exact_host=True)

    def restore(self, states: Sequence[dict], *, exact_host: bool = False) -> str:
        """Continue from the positions every host of a run saved (``states``, one per saved host).

        Same hosts and layout: this host's own position, exactly.  Another number of hosts: the
        windows the old hosts had left (partly read ones keeping their consumed rows) are dealt
        anew, so nothing is repeated or skipped.  Another ``seq_len`` or ``mode``: partly read
        windows start again (at most one window per old host is read twice).  Another file list,
        tokenizer, seed, window size, task filter or held-out fraction: ``DataPositionError`` naming it.
        Returns one line saying what changed ('' when nothing did).
        """
        parsed = [self._parse(s) for s in states]
        saved_hosts = parsed[0][0].hosts
        if len(parsed) != saved_hosts or sorted(p.host for p, _, _ in parsed) != list(range(saved_hosts)):
            if not exact_host:
                raise DataPositionError(f"data position: {len(parsed)} saved positions for a run of {saved_hosts} "
                                        "hosts; every host's position is needed")
        layout_keys = [k for k in LAYOUT_KEYS if parsed[0][1].get(k) != self.identity[k]]
        same_hosts = saved_hosts == self.process_count
        if exact_host:
            mine = [p for p in parsed if p[0].host == self.process_index] if same_hosts else []
            if not mine:
                raise DataPositionError(f"data position: saved by host {parsed[0][0].host} of {saved_hosts}, this is "
                                        f"host {self.process_index} of {self.process_count}; pass every host's "
                                        "saved position to restore()")
            parsed = mine
        positions = [p for p, _, _ in parsed]
        if layout_keys:  # rows of a partly read window differ under another layout: read it again whole
            positions = [order_lib.HostPosition(tuple(order_lib.EpochPlan(pl.epoch, pl.windows) for pl in p.plans),
                                                p.hosts, p.host) for p in positions]
        if same_hosts and not layout_keys:
            position = next(p for p in positions if p.host == self.process_index)
        else:
            plans = order_lib.resume_plans(positions, self.windows, self.process_index, self.process_count)
            position = order_lib.HostPosition(plans, self.process_count, self.process_index)
        batches = max(b for _, _, b in parsed)
        self.close()
        self._set_position(position, batches)
        return self._describe_change(parsed, saved_hosts, layout_keys)

    def _parse(self, state: dict) -> tuple[order_lib.HostPosition, dict, int]:
        try:
            version = state["version"]
            if version != STATE_VERSION:
                raise DataPositionError(f"data position: version {version}, this code reads {STATE_VERSION} "
                                        "(saved by an older pipeline)")
            identity = state["identity"]
            position = order_lib.HostPosition(tuple(order_lib.EpochPlan.from_json(p) for p in state["plans"]),
                                              int(state["hosts"]), int(state["host"]))
            batches, batch_size = int(state["batches"]), int(state["batch_size"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataPositionError(f"data position: malformed ({e!r}); expected the dict of get_state()") from e
        changed = [k for k in self.identity if k not in LAYOUT_KEYS and identity.get(k) != self.identity[k]]
        if changed:
            raise DataPositionError("data position: saved for other data, so it cannot be continued: "
                                    + "; ".join(_describe_identity_change(k, identity.get(k), self.identity[k])
                                                for k in changed))
        return position, {**identity, "batch_size": batch_size}, batches

    def _describe_change(self, parsed, saved_hosts: int, layout_keys: list[str]) -> str:
        saved = parsed[0][1]
        parts = []
        if saved_hosts != self.process_count:
            parts.append(f"{saved_hosts} -> {self.process_count} hosts, the windows left are dealt anew")
        if saved["batch_size"] != self.config.batch_size:
            parts.append(f"{saved['batch_size']} -> {self.config.batch_size} rows per host per step")
        for k in layout_keys:
            parts.append(f"{k} {saved.get(k)} -> {self.identity[k]} (partly read windows start again)")
        if not parts:
            return ""
        epoch = min(p.epoch for p, _, _ in parsed)
        return f"data position: continuing epoch {epoch} with {'; '.join(parts)}"

    # -- iteration ----------------------------------------------------------------------------------

    def _load_next_window(self) -> bool:
        """Make the next window current; False at the end of the last epoch."""
        while True:
            if not self._plans:
                if self._epochs is not None and self._last_epoch + 1 >= self._epochs:
                    self._done = True
                    self._cur = None
                    log.info("data pipeline finished: %s", self.bad_records.summary())
                    return False
                plan = self._upcoming_plan()
                if self._epochs is not None and plan.epoch >= self._epochs:
                    self._last_epoch = plan.epoch - 1
                    continue
                self._plans, self._last_epoch = [plan], plan.epoch
            plan = self._plans[0]
            if self._iter is None:
                self._iter = self._plan_dataset(
                    order_lib.EpochPlan(plan.epoch, plan.windows[self._next:])).as_numpy_iterator()
                self._plan_rows, self._whole_plan = 0, self._next == 0
            try:
                *fields, stats, bad, records, splits = next(self._iter)
            except StopIteration:
                if self._plan_rows == 0 and self._whole_plan and not plan.skip_rows:
                    raise UserError(f"host {self.process_index}: epoch {plan.epoch} produced no examples from "
                                    f"its {len(plan.windows)} windows ({self.bad_records.summary()}; "
                                    f"{self.stats.filtered} filtered by task)") from None
                self._plans.pop(0)
                self._iter, self._next, self._cur = None, 0, None
                continue
            window = plan.windows[self._next]
            self._next += 1
            self._handle_bad(bad)
            self.stats.add(stats)
            self._plan_rows += len(fields[0])
            self._cur = _Window(plan.epoch, window, dict(zip(packing.FIELDS, fields)), records, splits,
                                at=plan.skip_rows.get(window, 0))
            return True

    def _handle_bad(self, bad: np.ndarray) -> None:
        if not len(bad):
            return
        records = [BadRecord(path, line, reason, detail, field)
                   for path, line, reason, detail, field in (json.loads(b) for b in bad)]
        if self.config.on_bad_record == "error":
            first = records[0]
            more = f" (and {len(records) - 1} more in the same window)" if len(records) > 1 else ""
            raise BadRecord(first.path, first.line, first.reason, first.detail + more, first.field)
        for r in records:
            self.bad_records.add(r)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._done:
            raise StopIteration
        cfg = self.config
        parts: list[dict[str, np.ndarray]] = []
        which: list[list[int]] = []
        have = 0
        while have < cfg.batch_size:
            cur = self._cur
            if cur is None or cur.at >= cur.num_rows:
                if not self._load_next_window():
                    break
                continue
            take = min(cfg.batch_size - have, cur.num_rows - cur.at)
            parts.append({k: v[cur.at:cur.at + take] for k, v in cur.rows.items()})
            which.extend(cur.records[cur.splits[r]:cur.splits[r + 1]].tolist() for r in range(cur.at, cur.at + take))
            cur.at += take
            have += take
        if not have:
            raise StopIteration
        if have < cfg.batch_size:
            parts.append(packing.empty_rows(cfg.batch_size - have, cfg.seq_len, self.tokenizer.pad_id))
            which.extend([] for _ in range(cfg.batch_size - have))
        batch = {k: np.concatenate([p[k] for p in parts]) for k in packing.FIELDS}
        if cfg.mode == "pad" and cfg.pad_to_multiple_of:
            longest = int((batch["segment_ids"] > 0).sum(axis=1).max())
            m = cfg.pad_to_multiple_of
            width = min(cfg.seq_len, max(m, -(-longest // m) * m))
            batch = {k: np.ascontiguousarray(v[:, :width]) for k, v in batch.items()}
        self._batches += 1
        self.last_batch_records = which
        return batch

    @property
    def batches_yielded(self) -> int:
        return self._batches

    def epoch_rows(self, epoch: int = 0) -> int:
        """Rows this host's normal plan for ``epoch`` yields (packs them; the iterator's position is kept)."""
        plan = order_lib.normal_plan(epoch, self.windows, self.process_index, self.process_count)
        if not plan.windows:
            return 0
        it = self._plan_dataset(plan).as_numpy_iterator()
        try:
            return sum(len(out[0]) for out in it)
        finally:
            del it

    def close(self) -> None:
        """Stop the tf.data workers (they call back into Python, so they must end before the interpreter)."""
        self._iter = None
        self._cur = None

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        self.index.close()


def _describe_identity_change(key: str, saved: Any, now: Any) -> str:
    if key == "files":
        def show(files):
            return ", ".join(f"{name} ({n} records)" for name, n in files or []) or "none"
        return f"the file list (saved: {show(saved)}; now: {show(now)})"
    if key == "tokenizer":
        return "the tokenizer (another vocabulary or encoding)"
    if key == "seed":
        return f"the data seed ({saved} -> {now})"
    return f"{key} ({saved} -> {now})"


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
    """One pass over the eval data in file order, windows dealt across hosts like training data."""
    return BatchIterator(config, tokenizer, process_index=process_index, process_count=process_count,
                         split="eval")
