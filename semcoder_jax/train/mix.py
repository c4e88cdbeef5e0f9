"""What a training config will feed the model: the task mix of its loss tokens, overall and per batch.

A run's loss is a token-weighted mean over tasks, so the share of loss tokens each task holds is what
the optimizer actually balances.  ``mix_report`` replays the first epoch exactly as training would
read it (same ``seq_len``, ``global_batch``, ``mode``, seed and number of hosts), assembling each
global batch from every host's batch, and reports per task its overall share and its lowest and
highest share in one batch, with the truncation report of the same ``seq_len``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipeline.prompts import TASK_NAMES
from semcoder_jax.train.config import TrainRunConfig
from semcoder_jax.train.data import DataConfigError, pipeline_setup


@dataclasses.dataclass(frozen=True)
class MixReport:
    """Loss tokens per task per global batch of the first epoch ([batches, tasks]) and the records."""

    loss_tokens: np.ndarray
    records: dict[str, int]
    rows: int
    hosts: int
    lengths: object

    @property
    def shares(self) -> np.ndarray:
        """Per batch, each task's share of the batch's loss tokens (batches without loss left out)."""
        totals = self.loss_tokens.sum(axis=1, keepdims=True)
        keep = totals[:, 0] > 0
        return self.loss_tokens[keep] / totals[keep]

    def table(self) -> list[str]:
        overall = self.loss_tokens.sum(axis=0) / max(self.loss_tokens.sum(), 1)
        shares = self.shares
        lines = [f"{'task':9s} {'records':>8s} {'loss tokens':>12s} {'share':>7s} {'batch min':>10s} {'batch max':>10s}"]
        for k, task in enumerate(TASK_NAMES):
            if not self.records.get(task):
                continue
            lines.append(f"{task:9s} {self.records[task]:8,d} {int(self.loss_tokens[:, k].sum()):12,d} "
                         f"{100 * overall[k]:6.1f}% {100 * shares[:, k].min():9.1f}% {100 * shares[:, k].max():9.1f}%")
        return lines


def mix_report(config: TrainRunConfig, hosts: int = 1) -> MixReport:
    """Replays the first epoch of ``config``'s training data on ``hosts`` hosts (all in this process)."""
    from data_pipeline import pipeline as dp
    from data_pipeline.lengths import measure_lengths

    if config.data.source != "pyx":
        raise DataConfigError("data stats --config: the config's data.source is not pyx")
    if hosts <= 0 or config.train.global_batch % hosts:
        raise DataConfigError(f"--hosts {hosts}: train.global_batch={config.train.global_batch} must divide into "
                              "that many hosts")
    iterators = []
    try:
        for host in range(hosts):
            fields, tokenizer, _ = pipeline_setup(config.data, global_batch=config.train.global_batch,
                                                  vocab_size=None, seed=config.train.seed, process_index=host,
                                                  process_count=hosts)
            iterators.append(dp.build_batches(dp.PipelineConfig(**fields, epochs=1), tokenizer, process_index=host,
                                              process_count=hosts))
        lengths = measure_lengths(iterators[0], config.data.length_sample, config.train.seed)
        per_batch, rows = [], 0
        while True:
            batches = [next(it, None) for it in iterators]
            if all(b is None for b in batches):
                break
            counts = np.zeros(len(TASK_NAMES), np.int64)
            for b in batches:
                if b is not None:
                    counts += np.bincount(b["task_ids"][b["loss_mask"] > 0], minlength=len(TASK_NAMES))
                    rows += int((b["segment_ids"] > 0).any(axis=1).sum())
            per_batch.append(counts)
        records = {t: sum(it.stats.by_task[t] for it in iterators) for t in TASK_NAMES}
    finally:
        for it in iterators:
            it.close()
            it.index.close()
    return MixReport(np.asarray(per_batch, np.int64).reshape(-1, len(TASK_NAMES)), records, rows, hosts, lengths)


def describe(config: TrainRunConfig, report: MixReport) -> list[str]:
    """The report as the lines ``semcoder data stats --config`` prints."""
    d, t = config.data, config.train
    head = (f"first epoch as trained: data.seq_len={d.seq_len}, data.mode={d.mode}, train.global_batch={t.global_batch} "
            f"on {report.hosts} host(s): {len(report.loss_tokens)} global batches, {report.rows:,} non-empty rows, "
            f"{sum(report.records.values()):,} records")
    return [head, report.lengths.describe(), *report.table()]
