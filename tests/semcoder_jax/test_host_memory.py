"""glibc settings that let XLA:CPU reuse each execution's temporary buffer instead of faulting it in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc settings")

# Runs a jitted function whose temporaries (~130 MB) exceed glibc's 32 MB mmap ceiling, and prints
# the minor page faults of one call after warm-up.
PROBE = """
import resource, sys
import jax, jax.numpy as jnp
from semcoder_jax.host_memory import keep_freed_host_memory
if sys.argv[1] == "keep":
    print(keep_freed_host_memory())
f = jax.jit(lambda x: jnp.sum(jnp.sin(x) @ jnp.cos(x)))
x = jnp.ones((4096, 4096))
for _ in range(3):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    f(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5)
if sys.argv[1] == "keep":
    print(keep_freed_host_memory())
"""


def _probe(mode: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_kept_memory_removes_the_page_faults_of_every_execution():
    system_faults = int(_probe("system")[-1])
    applied, kept_faults, too_late = _probe("keep")
    assert applied.startswith("host malloc: one heap")
    assert system_faults > 20_000  # ~130 MB of fresh pages per call
    assert int(kept_faults) < system_faults // 10
    assert "already run" in too_late  # a second call after JAX started changes nothing


def test_only_a_cpu_platform_counts():
    from semcoder_jax.host_memory import cpu_is_the_platform

    assert not cpu_is_the_platform("tpu") and not cpu_is_the_platform("cuda,cpu")
    assert cpu_is_the_platform("cpu")
    assert cpu_is_the_platform("")  # unset: this machine has no accelerator plugin
