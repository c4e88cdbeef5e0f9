"""`semcoder launch local`: P processes x D CPU devices train like one process with P*D devices; a
failing process takes the others down; launching again resumes from the checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from launch.local import LaunchError, build_processes
from semcoder_jax.train.config import load_config
from semcoder_jax.train.loop import train

REPO = Path(__file__).resolve().parents[2]
CACHE = tempfile.mkdtemp(prefix="semcoder-launch-tests-jaxcache-")

TRAIN = [
    "model.preset=tiny", "model.dtype=float32", "model.param_dtype=float32",
    "data.source=synthetic", "data.seq_len=32", "train.global_batch=8", "train.log_every=1",
    "optimizer.learning_rate=3e-3", "optimizer.warmup_steps=2", "optimizer.schedule=cosine_with_min_lr",
    "checkpoint.every=5", "checkpoint.keep=10", "checkpoint.async_save=false",
    "run.tensorboard=false", "run.progress=false", "mesh.data=2", "mesh.fsdp=2",
]


def start_launcher(run_dir: Path, *overrides: str, grace: float = 5) -> subprocess.Popen:
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    argv = [sys.executable, "-m", "semcoder_jax.cli", "launch", "local", "--processes", "2",
            "--devices-per-process", "2", "--grace", str(grace), "--", "--run-dir", str(run_dir), *TRAIN, *overrides]
    return subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.jsonl") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def reference_losses(tmp_path: Path, steps: int) -> dict[int, float]:
    """The same run in this process on 4 of the 8 test devices."""
    config = load_config(None, TRAIN + [f"train.steps={steps}"])
    train(config, run_dir=str(tmp_path / "reference"), devices=jax.devices()[:4])
    return losses(tmp_path / "reference")


class Watched:
    """A running launcher: its stderr lines (read in the background) and its processes' pids by index."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.pids, self.lines = proc, {}, []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith("semcoder launch local: process") and " pid " in line:
                words = line.split()
                self.pids[int(words[4])] = int(words[6])

    def wait_for_step(self, run_dir: Path, step: int, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while not ((run_dir / "metrics.jsonl").exists() and max(losses(run_dir), default=0) >= step):
            if self.proc.poll() is not None or time.time() > deadline:
                self.proc.kill()
                pytest.fail(f"no step {step}: " + "".join(self.lines)[-3000:])
            time.sleep(0.005)

    def finish(self, timeout: float) -> None:
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)


def test_dry_run_prints_one_train_command_per_process_with_coordinator_and_forced_devices():
    specs = build_processes(3, 2, ["--", "--config", "c.yaml", "a=1"][1:], port=4321, python="python")
    assert [s.shell() for s in specs] == [
        "JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m semcoder_jax.cli train "
        f"--coordinator 127.0.0.1:4321 --num-processes 3 --process-id {i} --config c.yaml a=1" for i in range(3)]
    out = subprocess.run([sys.executable, "-m", "semcoder_jax.cli", "launch", "local", "--processes", "2",
                          "--devices-per-process", "4", "--port", "9999", "--dry-run", "--", "a=1"],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout.splitlines()
    assert len(out) == 2 and all("--coordinator 127.0.0.1:9999" in line and "device_count=4" in line for line in out)


def test_launcher_refuses_flags_it_sets_itself_and_bad_counts():
    with pytest.raises(LaunchError, match="--process-id"):
        build_processes(2, 1, ["--process-id", "0"], port=1)
    with pytest.raises(LaunchError, match="--processes 0"):
        build_processes(0, 1, [], port=1)


def test_two_processes_of_two_devices_train_like_one_four_device_process(tmp_path):
    proc = start_launcher(tmp_path / "two", "train.steps=4")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:] + out[-3000:]
    assert "[p0] " in out and "[p1] " in out  # both processes' output, prefixed
    two = losses(tmp_path / "two")
    one = reference_losses(tmp_path, 4)
    assert sorted(two) == [1, 2, 3, 4]
    np.testing.assert_allclose([two[s] for s in range(1, 5)], [one[s] for s in range(1, 5)], rtol=1e-5)


@pytest.mark.slow
def test_killing_one_process_stops_the_other_and_the_next_launch_resumes_from_the_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    watched = Watched(start_launcher(run_dir, "train.steps=40"))
    watched.wait_for_step(run_dir, 6)
    os.kill(watched.pids[1], signal.SIGKILL)
    watched.finish(timeout=60)
    assert watched.proc.returncode == 128 + signal.SIGKILL
    assert any("process 1 exited with status -9" in line for line in watched.lines)
    with pytest.raises(ProcessLookupError):
        os.kill(watched.pids[0], 0)  # the other process was stopped and reaped
    killed_at = max(losses(run_dir))
    assert killed_at < 40, "the run finished before it was killed"

    again = start_launcher(run_dir, "train.steps=40")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:] + out[-3000:]
    resumed = [line for line in out.splitlines() if "resuming" in line]
    assert resumed, out[-3000:]
    step = int(resumed[0].rsplit("from step", 1)[1].split()[0])
    assert step % 5 == 0 and 5 <= step <= killed_at  # the latest checkpoint before the kill
    final = losses(run_dir)
    assert sorted(final) == list(range(1, 41))
    reference = reference_losses(tmp_path, 40)
    np.testing.assert_allclose([final[s] for s in range(1, 41)], [reference[s] for s in range(1, 41)], rtol=1e-5)


def test_a_signalled_launcher_stops_every_process_after_it_saves_and_leaves_none_behind(tmp_path):
    """``timeout 150 semcoder launch local ...`` (SIGTERM to the launcher only) must not orphan the trainers."""
    run_dir = tmp_path / "run"
    watched = Watched(start_launcher(run_dir, "train.steps=100000", "checkpoint.every=100000", grace=90))
    watched.wait_for_step(run_dir, 3)
    watched.proc.send_signal(signal.SIGTERM)
    watched.finish(timeout=120)
    assert watched.proc.returncode == 128 + signal.SIGTERM, "".join(watched.lines)[-3000:]
    assert any("SIGTERM received; stopping every process" in line for line in watched.lines)
    for pid in watched.pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    saved = [int(n) for n in os.listdir(run_dir / "checkpoints") if n.isdigit()]
    assert saved and max(saved) >= 3  # the trainers saved the step they were on before exiting


@pytest.mark.slow  # the bundled main job on two processes: a few minutes on 2 cores
def test_two_processes_run_the_bundled_config_with_its_eval_schedule_to_the_end(tmp_path):
    """Every eval takes the same number of collective steps on both processes, even though the held-out
    split (one window) belongs to process 0 alone: the run must not hang at its first eval."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    run_dir = tmp_path / "mh"
    argv = [sys.executable, "-m", "semcoder_jax.cli", "launch", "local", "--processes", "2",
            "--devices-per-process", "2", "--", "--config", str(REPO / "launch" / "configs" / "tiny_cpu.yaml"),
            "--run-dir", str(run_dir), "run.progress=false", "run.tensorboard=false"]
    proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    with open(run_dir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records if "eval_loss" in r] == [50, 100, 150]
    assert max(r["step"] for r in records) == 150
