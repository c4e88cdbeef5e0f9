"""glibc settings that let XLA:CPU reuse each execution's temporary buffer instead of faulting it in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from semcoder_jax import host_memory

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc settings")

# A jitted function with a 64 MB temporary (above glibc's 32 MB mmap ceiling): prints the median
# minor page faults per call once warm.  With the settings the heap settles within ~50 calls
# (measured: no faults from call 50 to 200, RSS 350 -> 660-790 MB); without them every call faults
# 64 MB in.  The median, not the mean: one late call that still grows the heap (seen once: a mean of
# 820 faults per call) says nothing about the steady state.
PROBE = """
import resource, statistics
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.sin(x) @ x[:2048, :16]))
x = jnp.ones((8192, 2048))
for _ in range(60):
    f(x).block_until_ready()
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(int(statistics.median(faults)))
"""


def _faults_per_call(env) -> int:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


@glibc_only
@pytest.mark.parametrize("attempt", range(2))  # the settings take effect every time, not by chance
def test_kept_buffers_remove_the_page_faults_of_every_execution(attempt):
    env = {k: v for k, v in os.environ.items() if k != host_memory.ENV} | {"JAX_PLATFORMS": "cpu"}
    system = _faults_per_call(env)
    kept = _faults_per_call(host_memory.with_kept_buffers(env))
    assert system > 10_000  # 64 MB of fresh pages per call
    assert kept < system // 20


def test_settings_merge_into_existing_tunables_and_are_detected():
    env = host_memory.with_kept_buffers({host_memory.ENV: "glibc.malloc.arena_max=4:glibc.pthread.rseq=0"})
    parts = env[host_memory.ENV].split(":")
    assert "glibc.pthread.rseq=0" in parts and "glibc.malloc.arena_max=4" not in parts
    assert host_memory.active(env) and not host_memory.active({})


def test_only_a_cpu_platform_counts():
    assert not host_memory.cpu_is_the_platform("tpu") and not host_memory.cpu_is_the_platform("cuda,cpu")
    assert host_memory.cpu_is_the_platform("cpu")
    assert host_memory.cpu_is_the_platform("")  # unset: this machine has no accelerator plugin


@glibc_only
def test_semcoder_train_restarts_itself_with_the_settings_unless_told_not_to(tmp_path):
    """--print-config exits before the restart; the smallest real run shows the restart's notice."""
    repo = os.path.join(os.path.dirname(__file__), "..", "..")
    config = os.path.join(repo, "launch", "configs", "tiny_cpu.yaml")
    base = [sys.executable, "-m", "semcoder_jax.cli", "train", "--config", config, "--run-dir", str(tmp_path / "r"),
            "train.steps=1", "optimizer.warmup_steps=0", "train.global_batch=2", "data.seq_len=32",
            "train.eval_every=0", "run.progress=false",
            "run.tensorboard=false", "model.attention_impl=xla"]
    env = {k: v for k, v in os.environ.items() if k not in (host_memory.ENV, "XLA_FLAGS")} | {"JAX_PLATFORMS": "cpu"}
    kept = subprocess.run(base, capture_output=True, text=True, timeout=300, env=env)
    assert kept.returncode == 0, kept.stderr
    assert "host malloc keeps freed buffers" in kept.stderr
    plain = subprocess.run([*base, "run.keep_host_buffers=false", "--overwrite"], capture_output=True, text=True,
                           timeout=300, env=env)
    assert plain.returncode == 0, plain.stderr
    assert "host malloc" not in plain.stderr
