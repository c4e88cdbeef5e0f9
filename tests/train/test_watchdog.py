"""A multi-process run whose peer is gone or waits elsewhere stops with one line naming the step and the peer."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest

from semcoder_jax.train.watchdog import Progress, Watchdog, diagnose

T = 60.0


def at(process, step, phase, since, seen):
    return Progress(process=process, step=step, phase=phase, since=since, seen=seen)


def test_waiting_on_live_peers_in_the_same_phase_is_a_slow_collective_not_an_error():
    me = at(0, 40, "eval", since=0, seen=500)
    assert diagnose(me, [me, at(1, 40, "eval", since=1, seen=499)], 2, now=500, timeout_s=T) is None


def test_nothing_is_judged_before_the_timeout():
    me = at(0, 40, "eval", since=480, seen=500)
    assert diagnose(me, [me, at(1, 7, "train", since=0, seen=0)], 2, now=500, timeout_s=T) is None


def test_a_silent_peer_is_named_as_gone_with_where_it_was_last():
    me = at(0, 40, "train", since=400, seen=500)
    message = diagnose(me, [me, at(1, 39, "save", since=380, seen=430)], 2, now=500, timeout_s=T)
    assert message == ("step 40 (train): waited 100 s for process 1, not heard from for 70 s "
                       "(last at step 39, save): it is gone or stopped")


def test_a_live_peer_that_sits_in_another_collective_is_named_as_a_deadlock():
    """The hang this exists for: process 0 left the eval loop and waits in the checkpoint's collective while
    process 1 still waits in an eval step."""
    me = at(0, 40, "save", since=400, seen=500)
    peer = at(1, 40, "eval", since=420, seen=499)
    message = diagnose(me, [me, peer], 2, now=500, timeout_s=T)
    assert message == ("step 40 (save): waited 100 s for process 1, which has been at step 40 (eval) for 80 s: "
                       "the processes wait in different collectives")


def test_a_peer_that_moves_on_is_not_blamed_for_being_elsewhere():
    me = at(0, 40, "eval", since=400, seen=500)
    assert diagnose(me, [me, at(1, 40, "train", since=495, seen=500)], 2, now=500, timeout_s=T) is None


@pytest.mark.parametrize("phase", ["restore", "save", "export"])
def test_a_live_peer_long_in_restore_save_or_export_may_be_slow_and_is_not_blamed(phase):
    """Its shard of a 6.7B checkpoint on a slow store can take minutes while the others already wait."""
    me = at(0, 40, "train", since=100, seen=500)
    assert diagnose(me, [me, at(1, 39, phase, since=0, seen=499)], 2, now=500, timeout_s=T) is None


def test_a_process_that_never_reported_is_named():
    me = at(0, 1, "train", since=0, seen=100)
    assert "process 2, which never reported" in diagnose(me, [me, at(1, 1, "train", 0, 100)], 3, now=100,
                                                         timeout_s=T)


@pytest.fixture
def coordination():
    """A real ``jax.distributed`` coordination service on 127.0.0.1 and two connected clients."""
    import socket

    from jax._src.lib import _jax

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    service = _jax.get_distributed_runtime_service(address, 2)
    clients = [_jax.get_distributed_runtime_client(address, i, shutdown_on_destruction=False) for i in range(2)]
    threads = [threading.Thread(target=c.connect) for c in clients]  # connect waits for every client
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    yield clients
    threads = [threading.Thread(target=c.shutdown) for c in clients]  # shutdown, too, waits for every client
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    service.shutdown()


def test_a_peer_that_stops_beating_is_named_through_the_real_key_value_store(coordination):
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    dogs = [Watchdog(c, process=i, processes=2, timeout_s=T, on_stuck=None, clock=clock)
            for i, c in enumerate(coordination)]
    for dog in dogs:
        dog.enter(7, "train")
    assert [dog.check() for dog in dogs] == [None, None]
    now[0] += 30
    dogs[0].enter(8, "train")
    assert [dog.check() for dog in dogs] == [None, None]  # process 1 still beats
    now[0] += 70  # process 1 falls silent: only process 0 publishes from here on
    assert dogs[0].check() == ("step 8 (train): waited 70 s for process 1, not heard from for 70 s "
                               "(last at step 7, train): it is gone or stopped")


def _lose_peer(th, tmp_path, how: signal.Signals) -> tuple[int, str, float]:
    """Two trainers with an 8 s watchdog; at step 3 process 1 gets ``how``.  Returns process 0's status,
    its stderr and the seconds it took to stop."""
    run_dir = str(tmp_path / "run")
    port = th.free_port()
    procs = [th.start_train(run_dir, "train.steps=400", "checkpoint.every=1000", "distributed.peer_timeout_s=8",
                            devices=1, extra=["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                              "--process-id", str(i)]) for i in range(2)]
    try:
        th.wait_for_step(run_dir, 3, procs[0], timeout=300)
        procs[1].send_signal(how)
        lost = time.monotonic()
        try:
            _, err = procs[0].communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"process 0 still waits 90 s after its peer got {how.name}")
        return procs[0].returncode, err, time.monotonic() - lost
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


def test_a_killed_peer_ends_the_other_process_within_the_timeout_with_one_line(th, tmp_path):
    status, err, waited = _lose_peer(th, tmp_path, signal.SIGKILL)
    assert status == 1, err[-3000:]
    assert waited < 40, f"process 0 took {waited:.0f} s to stop"
    last = err.strip().splitlines()[-1]
    assert last.startswith("semcoder train: step ") and "for process 1, not heard from for" in last, err[-3000:]
    assert last.endswith("it is gone or stopped; stopping")


@pytest.mark.slow  # two more processes
def test_a_stopped_peer_is_named_too(th, tmp_path):
    """SIGSTOP: the peer is alive for the kernel but beats no more — the hang a heartbeat check exists for."""
    status, err, waited = _lose_peer(th, tmp_path, signal.SIGSTOP)
    assert status == 1 and waited < 40, err[-3000:]
    assert "for process 1, not heard from" in err.strip().splitlines()[-1]
