"""Which records go where, and when (pure functions of the seed, the epoch and the host count).

An epoch is a seeded permutation of every record of the split; its consecutive ``window_size`` slices
are the epoch's *windows*, dealt to hosts round-robin in one sequence across epochs (window ``w`` of
epoch ``e`` is number ``e * windows + w`` and belongs to host ``number % hosts``).  So:

- every record is in exactly one window per epoch, and the shuffle spans the whole epoch (a file
  ordered by task still gives every window the corpus's mix);
- hosts' shares differ by at most one window, and each host's task mix is the whole's;
- a window packs the same way whatever the host count (its records depend only on seed and epoch),
  and its rows leave in a seeded random order (``row_order``), so a batch's make-up does not depend
  on where in the window it falls.

A host's *plan* for an epoch is the list of windows it still has to read, with how many rows of each
were already consumed.  Normally that is every ``hosts``-th window (``normal_plan``); after a resize it is the
new host's share of what the old hosts left (``resume_plans``), and from the next epoch on it is
normal again.  Plans are stored as ranges so a saved position stays a few numbers long.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def seed_for(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes, platforms and numpy versions)."""
    digest = hashlib.blake2b(json.dumps(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def epoch_permutation(num_records: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order of the split's records in ``epoch`` (int64 record indices)."""
    if not shuffle:
        return np.arange(num_records, dtype=np.int64)
    return np.random.default_rng(seed_for(seed, epoch, 101)).permutation(num_records).astype(np.int64)


def num_windows(num_records: int, window_size: int) -> int:
    return -(-num_records // window_size)


def window_records(order: np.ndarray, window: int, window_size: int) -> np.ndarray:
    """Record indices of global window ``window`` of an epoch whose order is ``order``."""
    return order[window * window_size:(window + 1) * window_size]


def row_order(num_rows: int, seed: int, epoch: int, window: int, shuffle: bool = True) -> np.ndarray:
    """The order in which a window's packed rows leave it (a permutation of ``range(num_rows)``)."""
    if not shuffle:
        return np.arange(num_rows)
    return np.random.default_rng(seed_for(seed, epoch, window, 102)).permutation(num_rows)


# --------------------------------------------------------------------------------------------------
# Plans


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """The windows one host still reads in ``epoch`` (in order), and rows already consumed of some."""

    epoch: int
    windows: tuple[int, ...]
    skip_rows: dict[int, int] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "windows": encode_ranges(self.windows),
                "skip_rows": [[w, r] for w, r in sorted(self.skip_rows.items())]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EpochPlan:
        return cls(int(data["epoch"]), tuple(decode_ranges(data["windows"])),
                   {int(w): int(r) for w, r in data.get("skip_rows", [])})


def normal_plan(epoch: int, windows: int, host: int, hosts: int) -> EpochPlan:
    """Windows are dealt round-robin in one sequence across epochs (window ``w`` of ``epoch`` is number
    ``epoch * windows + w``), so hosts stay within a window of each other however many epochs pass."""
    first = (host - epoch * windows) % hosts
    return EpochPlan(epoch, tuple(range(first, windows, hosts)))


def encode_ranges(values: Sequence[int]) -> list[list[int]]:
    """``values`` as ``[start, stop, step]`` runs (a host's normal plan is one run)."""
    out: list[list[int]] = []
    i = 0
    while i < len(values):
        start = values[i]
        if i + 1 == len(values):
            out.append([start, start + 1, 1])
            break
        step = values[i + 1] - start
        j = i + 1
        while j + 1 < len(values) and values[j + 1] - values[j] == step:
            j += 1
        if step <= 0:  # not increasing: a run of one
            out.append([start, start + 1, 1])
            i += 1
            continue
        out.append([start, values[j] + 1, step])
        i = j + 1
    return out


def decode_ranges(runs: Iterable[Sequence[int]]) -> list[int]:
    return [v for start, stop, step in runs for v in range(int(start), int(stop), int(step))]


@dataclasses.dataclass(frozen=True)
class HostPosition:
    """Where one host stands: its remaining plans (current epoch first) and the next normal epoch.

    ``plans[0].windows[0]`` is the window being read, of which ``plans[0].skip_rows`` says how many
    rows are consumed.  Epochs after the listed ones follow the normal plan for the host count then."""

    plans: tuple[EpochPlan, ...]
    hosts: int
    host: int

    @property
    def epoch(self) -> int:
        return self.plans[0].epoch


def remaining_of(position: HostPosition, epoch: int, windows: int) -> EpochPlan:
    """What ``position``'s host still had to read of ``epoch`` (its whole plan for an epoch not begun)."""
    for plan in position.plans:
        if plan.epoch == epoch:
            return plan
    if epoch < position.epoch:
        return EpochPlan(epoch, ())
    if position.plans and epoch <= position.plans[-1].epoch:
        return EpochPlan(epoch, ())  # a listed epoch range skipped this one: nothing left
    return normal_plan(epoch, windows, position.host, position.hosts)


def resume_plans(positions: Sequence[HostPosition], windows: int, host: int, hosts: int) -> tuple[EpochPlan, ...]:
    """``host``'s plans (of ``hosts``) that finish, between them, exactly what ``positions`` left.

    For every epoch from the earliest host's to the latest's, the windows some old host had not
    finished (its partly read window first, keeping its consumed rows) are dealt out round-robin in
    window order.  Nothing is read twice and nothing is skipped.
    """
    first = min(p.epoch for p in positions)
    last = max(max(plan.epoch for plan in p.plans) for p in positions)
    plans = []
    for epoch in range(first, last + 1):
        left: dict[int, int] = {}
        for p in positions:
            plan = remaining_of(p, epoch, windows)
            for w in plan.windows:
                left[w] = plan.skip_rows.get(w, 0)
        mine = sorted(left)[host::hosts]
        if mine:
            plans.append(EpochPlan(epoch, tuple(mine), {w: left[w] for w in mine if left[w]}))
    if not plans:  # everything left went to other hosts: start the next epoch normally
        plans.append(normal_plan(last + 1, windows, host, hosts))
    return tuple(plans)
