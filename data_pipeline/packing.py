"""Examples to fixed-width rows (pure numpy): one example per row (``pad``) or several (``pack``).

Packing is *best-fit decreasing* over a window of examples: examples are placed longest first, each
into the open row with the least room that still fits it, else into a new row.  Every row carries
``segment_ids`` (1..k, 0 = padding) and per-example ``positions``; the model attends only within a
segment, and ``targets``/``loss_mask`` are shifted inside each example, so neither attention nor
the loss ever crosses from one example into another.

Row fields (the training batch contract), all int32 [rows, seq_len]:
  input_ids   tokens (pad id on padding)
  targets     the next token of the same example, 0 where there is none
  loss_mask   1 where the target is a completion token (response or eos)
  segment_ids 1..k per example in the row, 0 on padding
  positions   0-based position inside the example
  task_ids    the example's task (``prompts.TASK_IDS``), 0 on padding: per-task loss and token counts
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from data_pipeline.examples import Example
from data_pipeline.prompts import TASK_IDS

FIELDS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions", "task_ids")


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins of total length <= ``capacity`` (deterministic best-fit decreasing)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    # Open bins sorted by (room left, bin index); bisect finds the tightest bin that fits.
    rooms: list[tuple[int, int]] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"item {i} has length {n} > capacity {capacity}")
        pos = bisect.bisect_left(rooms, (n, -1))
        if pos < len(rooms):
            room, b = rooms.pop(pos)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - n > 0:
            bisect.insort(rooms, (room - n, b))
    return bins


def empty_rows(num_rows: int, seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Rows holding no example: pad ids, segment 0, no loss (fill for a last partial batch)."""
    rows = {name: np.zeros((num_rows, seq_len), np.int32) for name in FIELDS}
    rows["input_ids"][:] = pad_id
    return rows


def _place(rows: dict[str, np.ndarray], r: int, start: int, segment: int, ex: Example) -> int:
    n = len(ex.tokens)
    end = start + n
    rows["input_ids"][r, start:end] = ex.tokens
    rows["targets"][r, start:end - 1] = ex.tokens[1:]
    rows["loss_mask"][r, start:end - 1] = ex.label_mask[1:]
    rows["segment_ids"][r, start:end] = segment
    rows["positions"][r, start:end] = np.arange(n, dtype=np.int32)
    rows["task_ids"][r, start:end] = TASK_IDS[ex.task]
    return end


def rows_from_groups(examples: Sequence[Example], groups: Sequence[Sequence[int]], seq_len: int,
                     pad_id: int) -> dict[str, np.ndarray]:
    """Lay out ``groups`` (lists of example indices) as rows; examples keep the order given."""
    rows = empty_rows(len(groups), seq_len, pad_id)
    for r, group in enumerate(groups):
        start = 0
        for segment, i in enumerate(group, start=1):
            start = _place(rows, r, start, segment, examples[i])
        if start > seq_len:
            raise ValueError(f"row {r} holds {start} tokens > seq_len {seq_len}")
    return rows


def pack_examples(examples: Sequence[Example], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Pack examples (each at most ``seq_len`` tokens) into rows by best-fit decreasing."""
    groups = best_fit_decreasing([len(e.tokens) for e in examples], seq_len)
    # Within a row, examples appear in window order (stable and easy to read in previews).
    return rows_from_groups(examples, [sorted(g) for g in groups], seq_len, pad_id)


def pad_examples(examples: Sequence[Example], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """One example per row, right-padded to ``seq_len`` (the release's layout)."""
    return rows_from_groups(examples, [[i] for i in range(len(examples))], seq_len, pad_id)


def utilisation(rows: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of all slots that hold real tokens, and that carry loss."""
    total = rows["segment_ids"].size
    if not total:
        return {"real": 0.0, "loss": 0.0}
    return {"real": float((rows["segment_ids"] > 0).sum() / total), "loss": float(rows["loss_mask"].sum() / total)}
