"""How long a split's examples are, and what a ``seq_len`` cuts off.

An example longer than ``seq_len`` loses its tail, which for a monologue is its ``[ANSWER]``: the
model then learns cut-off reasoning.  Training measures a seeded sample of records at start and
says, per task, how many the configured ``seq_len`` truncates and which ``seq_len`` keeps 99 %.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from data_pipeline import order as order_lib
from data_pipeline.examples import build_examples
from data_pipeline.prompts import TASK_NAMES

_UNBOUNDED = 1 << 40


@dataclasses.dataclass(frozen=True)
class LengthReport:
    """Example lengths (tokens, bos and eos included) of ``measured`` of ``total`` records, by task."""

    seq_len: int
    measured: int
    total: int
    lengths: dict[str, np.ndarray]

    def truncated(self, task: str | None = None) -> int:
        """Records (measured) whose example is longer than ``seq_len``; of one task, or of all."""
        tasks = [task] if task else list(self.lengths)
        return int(sum((self.lengths[t] > self.seq_len).sum() for t in tasks))

    @property
    def examples(self) -> int:
        return int(sum(len(v) for v in self.lengths.values()))

    @property
    def truncated_share(self) -> float:
        return self.truncated() / self.examples if self.examples else 0.0

    def seq_len_keeping(self, share: float = 0.99) -> int:
        """The shortest ``seq_len`` that truncates at most ``1 - share`` of the measured records."""
        every = np.sort(np.concatenate(list(self.lengths.values()) or [np.zeros(0, np.int64)]))
        if not len(every):
            return 0
        return int(every[max(0, math.ceil(share * len(every)) - 1)])

    def describe(self) -> str:
        """One line: what ``seq_len`` truncates, per task, and the ``seq_len`` that keeps 99 %."""
        of = f"{self.measured:,} sampled of {self.total:,} records" if self.measured < self.total else \
            f"{self.total:,} records"
        per_task = ", ".join(f"{t} {self.truncated(t)}/{len(v)}" for t, v in self.lengths.items() if len(v))
        return (f"data.seq_len={self.seq_len} truncates {self.truncated():,} of {of} "
                f"({100 * self.truncated_share:.1f} %: {per_task}); "
                f"data.seq_len={self.seq_len_keeping():,} would keep 99 %")

    def to_json(self) -> dict:
        return {"seq_len": self.seq_len, "measured": self.measured, "total": self.total,
                "truncated": {t: self.truncated(t) for t in self.lengths},
                "examples": {t: len(v) for t, v in self.lengths.items()},
                "seq_len_for_99": self.seq_len_keeping()}


def measure_lengths(iterator, sample: int = 4096, seed: int = 0) -> LengthReport:
    """The length report of ``sample`` records (0 = all) drawn with ``seed`` from a ``BatchIterator``'s
    split (bad and task-filtered records are left out; the iterator counts those itself)."""
    total = len(iterator.index)
    ids = np.arange(total, dtype=np.int64)
    if sample and sample < total:
        ids = np.sort(np.random.default_rng(order_lib.seed_for(seed, 103)).choice(total, sample, replace=False))
    lengths: dict[str, list[int]] = {t: [] for t in TASK_NAMES}
    for start in range(0, len(ids), 1024):
        records, _, _, _ = iterator.processor.records(ids[start:start + 1024])
        for e in build_examples(records, iterator.tokenizer, _UNBOUNDED):
            lengths[e.task].append(len(e.tokens))
    return LengthReport(iterator.config.seq_len, len(ids), total,
                        {t: np.asarray(v, np.int64) for t, v in lengths.items() if v})
