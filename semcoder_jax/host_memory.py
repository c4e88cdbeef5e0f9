"""Keep XLA:CPU's per-step buffers mapped between steps (glibc malloc settings for CPU training).

XLA:CPU allocates an executable's temporaries as one block per execution (84 MB for the ``tiny``
train step at batch 16 x 256).  glibc serves any block above its 32 MB mmap ceiling with a fresh
``mmap`` and gives it back with ``munmap``, so every step page-faults and zeroes the whole block
again: ~24,000 minor faults per tiny step, 72 -> 57 ms per step once removed.

``TUNABLES`` give the process one malloc heap (``arena_max`` 1) that never maps blocks separately
(``mmap_max`` 0) and keeps up to 2 GiB of freed memory (``trim_threshold``), so the next step reuses
the same pages.  glibc reads them once, at process start, which is why ``semcoder train`` restarts
itself with them (``run.keep_host_buffers``) rather than calling ``mallopt`` late: by then threads
already hold their own arenas and the arena limit is fixed.  The cost is memory that stays with the
process instead of returning to the OS.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from collections.abc import Mapping

TUNABLES = ("glibc.malloc.arena_max=1", "glibc.malloc.mmap_max=0", "glibc.malloc.trim_threshold=2147483647")
ENV = "GLIBC_TUNABLES"


def cpu_is_the_platform(platforms: str | None = None) -> bool:
    """Whether JAX will run on the CPU: ``platforms`` (default: ``$JAX_PLATFORMS``) names it first,
    or, unset, no accelerator plugin is installed."""
    if platforms is None:
        platforms = os.environ.get("JAX_PLATFORMS", "")
    chosen = platforms.split(",")[0].strip()
    if chosen:
        return chosen == "cpu"
    return not any(importlib.util.find_spec(name) for name in ("jax_plugins", "libtpu"))


def applies_here() -> bool:
    """glibc on Linux, and JAX on the CPU."""
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc" and cpu_is_the_platform()


def active(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment (this process's by default) already carries the settings."""
    present = set((environ if environ is not None else os.environ).get(ENV, "").split(":"))
    return all(t in present for t in TUNABLES)


def with_kept_buffers(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``environ`` whose ``GLIBC_TUNABLES`` add the settings (any others are kept)."""
    env = dict(environ)
    current = [t for t in env.get(ENV, "").split(":") if t and t.split("=")[0] not in
               {s.split("=")[0] for s in TUNABLES}]
    env[ENV] = ":".join([*current, *TUNABLES])
    return env


def restart_with_kept_buffers(argv: list[str]) -> None:
    """Replaces this process by ``python -m semcoder_jax.cli *argv`` with the settings (never returns).

    For the ``semcoder`` command only: the caller checks ``applies_here()`` and ``not active()``.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "semcoder_jax.cli", *argv], with_kept_buffers(os.environ))
