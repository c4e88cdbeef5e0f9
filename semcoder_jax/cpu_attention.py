"""Fused causal self-attention on CPU: an XLA FFI kernel (``kernels/cpu_attention.cc``).

XLA:CPU runs the reference attention as separate passes over [T, T] score arrays in memory; the
kernel keeps each tile of scores in cache (as torch's CPU flash kernel does) and has a hand-written
backward (recomputed probabilities from the saved log-sum-exp).  It is ``attention_impl: cpu``.
Given the RoPE tables it also applies RoPE to q and k as it loads them (and rotates their gradients
back), so the model skips its own RoPE passes.

The C++ source is compiled on first use with the system C++ compiler (``$CXX``, else ``c++``) for
this machine's CPU, and cached under ``$SEMCODER_KERNEL_CACHE`` (default
``~/.cache/semcoder_jax/kernels``), keyed by the source, jaxlib version, compiler and flags.

Scope: float32 math (other dtypes are cast), self-attention over whole rows (S == T, slot i at
position i), head_dim in {16, 32, 64, 128, 256}.  Semantics equal ``attention.xla_attention``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from semcoder_jax.config import CPU_ATTENTION_HEAD_DIMS
from semcoder_jax.errors import UserError

Array = jax.Array

SOURCE = Path(__file__).with_name("kernels") / "cpu_attention.cc"
HEAD_DIMS = CPU_ATTENTION_HEAD_DIMS
_FLAGS = ("-O3", "-march=native", "-ffast-math", "-std=c++17", "-fPIC", "-shared")
FORWARD_TARGET = "semcoder_cpu_attention_forward"  # the remat policy "minimal_attention" matches it
_FORWARD, _BACKWARD = FORWARD_TARGET, "semcoder_cpu_attention_backward"


class KernelBuildError(UserError, RuntimeError):
    """The CPU attention kernel could not be compiled or loaded (a one-line error of the CLI)."""


def _compiler() -> str:
    name = os.environ.get("CXX", "c++")
    path = shutil.which(name)
    if path is None:
        raise KernelBuildError(f"attention_impl 'cpu' needs a C++ compiler: {name!r} (from $CXX, else c++) "
                               "is not on PATH; install g++ or use model.attention_impl=xla")
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("SEMCODER_KERNEL_CACHE", Path.home() / ".cache" / "semcoder_jax" / "kernels"))


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's flags (a cache shared by different CPUs stays right)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def build(force: bool = False) -> Path:
    """Compiles the kernel library if no cached build matches; returns its path."""
    import jaxlib

    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), jaxlib.__version__, version, " ".join(_FLAGS),
                                    _cpu_signature()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"cpu_attention-{key}.so"
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [compiler, *_FLAGS, "-isystem", jax.ffi.include_dir(), str(SOURCE), "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        os.unlink(tmp)
        first = next((line for line in proc.stderr.splitlines() if "error" in line), proc.stderr.strip()[:300])
        raise KernelBuildError(f"compiling {SOURCE} with {compiler} failed: {first} (use model.attention_impl=xla "
                               "to train without the CPU kernel)")
    os.replace(tmp, target)  # atomic: concurrent builders all end with one whole file
    return target


@functools.cache
def _register() -> None:
    library = ctypes.cdll.LoadLibrary(str(build()))
    jax.ffi.register_ffi_target(_FORWARD, jax.ffi.pycapsule(library.SemcoderCpuAttentionForward), platform="cpu")
    jax.ffi.register_ffi_target(_BACKWARD, jax.ffi.pycapsule(library.SemcoderCpuAttentionBackward), platform="cpu")


def check_supported(q_shape, k_shape) -> None:
    """Raises ValueError when the kernel cannot serve these shapes (before any compile)."""
    if len(q_shape) != 4 or len(k_shape) != 4:
        raise ValueError(f"cpu attention: q and k must be [B, T, heads, head_dim], got {q_shape} and {k_shape}")
    batch, length, heads, head_dim = q_shape
    if k_shape[1] != length:
        raise ValueError(f"cpu attention is self-attention over whole rows: {k_shape[1]} keys for {length} queries")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"cpu attention: head_dim {head_dim} is not one of {HEAD_DIMS}")
    if heads % k_shape[2]:
        raise ValueError(f"cpu attention: {k_shape[2]} kv heads do not divide {heads} heads")


def _forward_call(q, k, v, q_segment, kv_segment, cos, sin):
    batch, length, heads, _ = q.shape
    return jax.ffi.ffi_call(_FORWARD, (jax.ShapeDtypeStruct(q.shape, jnp.float32),
                                       jax.ShapeDtypeStruct((batch, heads, length), jnp.float32)),
                            vmap_method="sequential")(q, k, v, q_segment, kv_segment, cos, sin)


@jax.custom_vjp
def _attention(q, k, v, q_segment, kv_segment, cos, sin):
    return _forward_call(q, k, v, q_segment, kv_segment, cos, sin)[0]


def _attention_fwd(q, k, v, q_segment, kv_segment, cos, sin):
    out, lse = _forward_call(q, k, v, q_segment, kv_segment, cos, sin)
    return out, (q, k, v, q_segment, kv_segment, cos, sin, out, lse)


def _attention_bwd(residuals, dout):
    q, k, v, q_segment, kv_segment, cos, sin, out, lse = residuals
    dq, dk, dv = jax.ffi.ffi_call(
        _BACKWARD, tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v)),
        vmap_method="sequential")(q, k, v, q_segment, kv_segment, cos, sin, out, lse, dout.astype(jnp.float32))
    return dq, dk, dv, None, None, None, None  # the tables depend on positions only


_attention.defvjp(_attention_fwd, _attention_bwd)


def cpu_attention(q: Array, k: Array, v: Array, q_segment: Array, kv_segment: Array,
                  rope: tuple[Array, Array] | None = None) -> Array:
    """Causal self-attention of q [B, T, H, D] over k/v [B, T, K, D] with segment masking.

    Equals ``xla_attention`` with slots ``arange(T)``, after ``model.apply_rope`` of q and k with
    ``rope = (cos, sin)`` ([B, T, D]) when given.  Computes in float32 and returns q's dtype.
    """
    check_supported(q.shape, k.shape)
    if jax.default_backend() != "cpu":
        raise ValueError(f"attention_impl 'cpu' is a CPU kernel; this process runs on {jax.default_backend()!r}: "
                         "use xla, cudnn (GPU) or splash (TPU)")
    _register()
    batch, length, _, head_dim = q.shape
    if rope is None:  # the identity rotation
        cos, sin = jnp.ones((batch, length, head_dim), jnp.float32), jnp.zeros((batch, length, head_dim), jnp.float32)
    else:
        cos, sin = (t.astype(jnp.float32) for t in rope)
        if cos.shape != (batch, length, head_dim) or sin.shape != cos.shape:
            raise ValueError(f"cpu attention: cos/sin must be {(batch, length, head_dim)}, got {cos.shape} and {sin.shape}")
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    out = _attention(*f32, q_segment.astype(jnp.int32), kv_segment.astype(jnp.int32), cos, sin)
    return out.astype(q.dtype)


if __name__ == "__main__":  # python -m semcoder_jax.cpu_attention: build now, print the library path
    print(build(force="--force" in sys.argv))
