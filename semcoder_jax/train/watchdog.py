"""A multi-process run whose peer is gone or in another collective ends with one line, not a silent hang.

Every process says where its training thread is (``enter(step, phase)``: "train", "eval", "save",
"export") and a daemon thread publishes that, with a heartbeat, in the ``jax.distributed`` key-value store
every few seconds.  When this process has been in one phase longer than ``timeout_s`` the thread looks
at its peers:

- a peer not heard from for ``timeout_s`` is gone (killed, preempted, stopped): name it and stop;
- a peer that has sat in *another* step of the train or eval loop for ``timeout_s`` waits in another
  collective than ours (a deadlock; e.g. one process left an eval loop early): name it and stop;
- peers alive in the same phase are a slow collective (compiling, a long save), not an error.

Stopping prints ``semcoder train: step 40 (eval): waited 61 s for process 1 ...`` and exits the process
with status 1 (``os._exit``: the training thread is blocked inside a collective and cannot be unwound).
JAX's coordination service ends a run whose peer stopped heart-beating after
``distributed.heartbeat_timeout_s`` too, with a long log; ``distributed.peer_timeout_s`` below that
makes this one line arrive first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from collections.abc import Callable

KEY_PREFIX = "semcoder_watchdog/"
LOOP_PHASES = frozenset({"train", "eval"})
"""Phases that are a chain of collective steps: a peer sitting in one of them while we wait elsewhere is
deadlocked.  A peer long in restore, save or export may just be slow (its shard of a big checkpoint on a
slow store), so there only its heartbeat counts."""
EXIT_PEER_LOST = 1


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where one process's training thread is: ``step``/``phase`` since ``since``; ``seen`` = last heartbeat."""

    process: int
    step: int
    phase: str
    since: float
    seen: float


def diagnose(me: Progress, peers: list[Progress], expected: int, now: float, timeout_s: float) -> str | None:
    """Why ``me`` is stuck, naming the peer, or None while waiting is still normal.

    ``expected`` is the number of processes; one that never published counts as not heard from since
    ``me`` entered its phase.
    """
    waited = now - me.since
    if waited < timeout_s:
        return None
    where = f"step {me.step} ({me.phase})"
    known = {p.process: p for p in peers if p.process != me.process}
    for process in range(expected):
        if process == me.process:
            continue
        peer = known.get(process)
        if peer is None:
            return (f"{where}: waited {waited:.0f} s for process {process}, which never reported: it did not "
                    "start or cannot reach the coordinator")
        silent = now - peer.seen
        if silent >= timeout_s:
            return (f"{where}: waited {waited:.0f} s for process {process}, not heard from for {silent:.0f} s "
                    f"(last at step {peer.step}, {peer.phase}): it is gone or stopped")
        if ((peer.step, peer.phase) != (me.step, me.phase) and peer.phase in LOOP_PHASES
                and now - peer.since >= timeout_s):
            return (f"{where}: waited {waited:.0f} s for process {process}, which has been at step {peer.step} "
                    f"({peer.phase}) for {now - peer.since:.0f} s: the processes wait in different collectives")
    return None


def _stop(message: str) -> None:
    print(f"semcoder train: {message}; stopping", file=sys.stderr, flush=True)
    os._exit(EXIT_PEER_LOST)


class Watchdog:
    """Publishes this process's progress and stops it when :func:`diagnose` finds a lost peer.

    ``store`` is ``jax.distributed``'s client (``key_value_set``/``key_value_dir_get``); a store that stops
    answering for ``timeout_s`` while this process waits means the coordinator (process 0) is gone.
    """

    def __init__(self, store, *, process: int, processes: int, timeout_s: float, tick_s: float | None = None,
                 on_stuck: Callable[[str], None] = _stop, clock: Callable[[], float] = time.time):
        self._store, self._process, self._processes = store, process, processes
        self._timeout, self._on_stuck, self._clock = timeout_s, on_stuck, clock
        self._tick = tick_s if tick_s is not None else max(0.5, min(5.0, timeout_s / 6))
        now = clock()
        self._where = (0, "start", now)
        self._store_ok = now
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="semcoder-watchdog", daemon=True)

    def enter(self, step: int, phase: str) -> None:
        """The training thread is about to run ``phase`` of ``step`` (cheap: one tuple assignment)."""
        self._where = (step, phase, self._clock())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=2 * self._tick + 1)

    def check(self) -> str | None:
        """One heartbeat: publish, read the peers, diagnose (what the thread does every tick)."""
        step, phase, since = self._where
        now = self._clock()
        me = Progress(self._process, step, phase, since, now)
        try:
            self._store.key_value_set(f"{KEY_PREFIX}{self._process}", json.dumps(dataclasses.asdict(me)),
                                      allow_overwrite=True)
            peers = [Progress(**json.loads(value)) for _, value in self._store.key_value_dir_get(KEY_PREFIX)]
            self._store_ok = now
        except Exception as e:  # the coordinator's store is unreachable
            silent = now - self._store_ok
            if now - since >= self._timeout and silent >= self._timeout:
                return (f"step {step} ({phase}): waited {now - since:.0f} s; the coordinator (process 0) has not "
                        f"answered for {silent:.0f} s ({type(e).__name__}): it is gone")
            return None
        return diagnose(me, peers, self._processes, now, self._timeout)

    def _watch(self) -> None:
        while not self._done.wait(self._tick):
            message = self.check()
            if message is not None and not self._done.is_set():
                self._on_stuck(message)
                return


def for_this_run(timeout_s: float) -> Watchdog | None:
    """The watchdog of a multi-process run (None for one process or ``timeout_s`` 0)."""
    import jax

    if timeout_s <= 0 or jax.process_count() == 1:
        return None
    from jax._src import distributed  # the client of jax.distributed.initialize: no public accessor

    client = distributed.global_state.client
    if client is None:
        return None
    return Watchdog(client, process=jax.process_index(), processes=jax.process_count(), timeout_s=timeout_s)
