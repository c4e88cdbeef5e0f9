"""Helpers for the training tests: a tiny synthetic run config and subprocess runs of ``semcoder train``."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import jax
import pytest

from semcoder_jax.train.config import load_config

# One persistent compilation cache for this test session, shared with the subprocess runs: the same
# tiny programs are compiled by many tests (and by `semcoder train` subprocesses), and XLA's CPU
# compile of them dominates the tests' time.  The cache is transparent: a hit runs the same executable.
# SEMCODER_TEST_JAX_CACHE=DIR keeps it between sessions (repeated local runs skip most compiles).
COMPILATION_CACHE = os.environ.get("SEMCODER_TEST_JAX_CACHE") or tempfile.mkdtemp(prefix="semcoder-train-tests-jaxcache-")
if not os.environ.get("SEMCODER_TEST_JAX_CACHE"):
    atexit.register(shutil.rmtree, COMPILATION_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BASE = [
    "model.preset=tiny", "model.dtype=float32", "model.param_dtype=float32",
    "data.source=synthetic", "data.seq_len=32",
    "train.global_batch=8", "train.log_every=1", "train.seed=0",
    "optimizer.learning_rate=3e-3", "optimizer.warmup_steps=2", "optimizer.schedule=cosine_with_min_lr",
    "optimizer.weight_decay=0.01",
    "checkpoint.every=5", "checkpoint.keep=10", "checkpoint.async_save=false",
    "run.tensorboard=false", "run.progress=false",
]


def tiny_config(*overrides: str):
    """The tiny model on synthetic packed rows, float32, every step logged."""
    return load_config(None, BASE + list(overrides))


@pytest.fixture(scope="session")
def th():
    """These helpers as a namespace (test modules cannot import conftest under importlib mode)."""
    return sys.modules[__name__]


def cli_args(run_dir: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "semcoder_jax.cli", "train", "--run-dir", run_dir, *BASE, *overrides]


def subprocess_env(devices: int = 8) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = COMPILATION_CACHE
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_train(run_dir: str, *overrides: str, devices: int = 8, extra: list[str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(cli_args(run_dir, *overrides) + (extra or []), env=subprocess_env(devices), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(run_dir: str, step: int, proc: subprocess.Popen, timeout: float = 120.0) -> int:
    """Polls metrics.jsonl until a record with ``step`` >= the given one appears; returns the last step."""
    import json

    path = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"training exited early ({proc.returncode}):\n{err[-3000:]}")
        if os.path.exists(path):
            with open(path) as f:
                steps = [json.loads(line)["step"] for line in f if line.endswith("\n")]  # whole lines only
            if steps and steps[-1] >= step:
                return steps[-1]
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"no step {step} within {timeout}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_metrics(run_dir: str) -> list[dict]:
    import json

    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def train_losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if "loss" in r}
