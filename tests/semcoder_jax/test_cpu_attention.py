"""The fused CPU attention kernel (``attention_impl: cpu``) computes the reference attention and its gradients."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semcoder_jax import cpu_attention as kernel
from semcoder_jax.attention import xla_attention
from semcoder_jax.config import ConfigError, get_preset


def _inputs(batch, length, heads, kv_heads, head_dim, seed=0):
    """Packed rows: two segments, padding (segment 0) at the end of the last row."""
    r = np.random.RandomState(seed)
    q, k, v = (jnp.asarray(r.randn(batch, length, h, head_dim).astype(np.float32)) for h in (heads, kv_heads, kv_heads))
    seg = np.ones((batch, length), np.int32)
    seg[0, length // 3:] = 2
    seg[-1, length - 5:] = 0
    return q, k, v, jnp.asarray(seg)


def _values_and_grads(fn, q, k, v):
    """fn(q, k, v) and the gradients of a random projection of it (every output element matters)."""
    w = jnp.asarray(np.random.RandomState(9).randn(*q.shape).astype(np.float32))
    out = jax.jit(fn)(q, k, v)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * w), argnums=(0, 1, 2)))(q, k, v)
    return (out, *grads)


@pytest.mark.parametrize("batch, length, heads, kv_heads, head_dim", [
    (2, 37, 4, 2, 16),    # length not a multiple of the 8-row tile or the 16-key vector
    (3, 64, 4, 4, 64),
    (1, 130, 2, 1, 128),  # multi-query
    (2, 19, 4, 1, 256),
], ids=str)
def test_kernel_equals_the_reference_attention_values_and_gradients(batch, length, heads, kv_heads, head_dim):
    q, k, v, seg = _inputs(batch, length, heads, kv_heads, head_dim)
    slot = jnp.broadcast_to(jnp.arange(length), (batch, length))
    ours = _values_and_grads(lambda q, k, v: kernel.cpu_attention(q, k, v, seg, seg), q, k, v)
    ref = _values_and_grads(lambda q, k, v: xla_attention(q, k, v, seg, slot, seg, slot), q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5, err_msg=name)


def test_many_short_segments_per_row_skip_earlier_keys_and_keep_the_reference_values():
    """Tiles start at their earliest segment's first key; segments that straddle tiles, repeat an
    id later in the row, or hold padding give the reference's values and gradients."""
    batch, length = 3, 100
    r = np.random.RandomState(4)
    seg = np.zeros((batch, length), np.int32)
    for b in range(batch):
        at, sid = 0, 1
        while at < length:
            n = int(r.randint(1, 21))
            seg[b, at:at + n] = sid
            at, sid = at + n, sid + 1
    seg[1, 60:] = 1       # a later run of segment 1: it sees the keys of the first run too
    seg[2, 90:] = 0       # padding at the end
    q, k, v = (jnp.asarray(r.randn(batch, length, 4, 32).astype(np.float32)) for _ in range(3))
    seg = jnp.asarray(seg)
    slot = jnp.broadcast_to(jnp.arange(length), (batch, length))
    ours = _values_and_grads(lambda q, k, v: kernel.cpu_attention(q, k, v, seg, seg), q, k, v)
    ref = _values_and_grads(lambda q, k, v: xla_attention(q, k, v, seg, slot, seg, slot), q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("head_dim", [16, 64])
def test_rope_inside_the_kernel_equals_rope_then_attention(head_dim):
    """Given the tables, the kernel rotates q and k itself; gradients reach q and k before RoPE."""
    from semcoder_jax.model import apply_rope, rope_cos_sin

    q, k, v, seg = _inputs(2, 45, 4, 2, head_dim, seed=3)
    positions = jnp.asarray(np.concatenate([np.arange(15), np.arange(30)])[None].repeat(2, 0))
    cos, sin = rope_cos_sin(positions, head_dim, 10000.0, 4.0, jnp.float32)
    slot = jnp.broadcast_to(jnp.arange(45), (2, 45))
    ours = _values_and_grads(lambda q, k, v: kernel.cpu_attention(q, k, v, seg, seg, rope=(cos, sin)), q, k, v)
    ref = _values_and_grads(lambda q, k, v: xla_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v,
                                                          seg, slot, seg, slot), q, k, v)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-5, err_msg=name)


def test_a_query_that_sees_no_key_averages_all_values_like_the_reference():
    """Distinct key segments (a cache's validity mask) can leave a query nothing to attend to."""
    q, k, v, seg = _inputs(2, 50, 8, 2, 32)
    kv_seg = seg.at[0, :3].set(7)  # queries 0..2 of row 0 see no key of their segment
    slot = jnp.broadcast_to(jnp.arange(50), (2, 50))
    ours = _values_and_grads(lambda q, k, v: kernel.cpu_attention(q, k, v, seg, kv_seg), q, k, v)
    ref = _values_and_grads(lambda q, k, v: xla_attention(q, k, v, seg, slot, kv_seg, slot), q, k, v)
    uniform = np.repeat(np.asarray(v)[0].mean(axis=0), 4, axis=0)  # [8 heads, 32]: each kv head's mean value
    np.testing.assert_allclose(np.asarray(ours[0])[0, :3], np.broadcast_to(uniform, (3, 8, 32)), atol=1e-5)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5, err_msg=name)


def test_bfloat16_inputs_are_computed_in_float32_and_returned_in_bfloat16():
    q, k, v, seg = _inputs(1, 40, 2, 2, 16)
    out = kernel.cpu_attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), seg, seg)
    slot = jnp.arange(40)[None]
    ref = xla_attention(q, k, v, seg, slot, seg, slot)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=0.05)


def test_unsupported_shapes_are_refused_before_compiling():
    q, k, v, seg = _inputs(1, 32, 2, 2, 16)
    with pytest.raises(ValueError, match="16 keys for 32 queries"):
        kernel.cpu_attention(q, k[:, :16], v[:, :16], seg, seg[:, :16])
    with pytest.raises(ValueError, match="cos/sin must be"):
        kernel.cpu_attention(q, k, v, seg, seg, rope=(jnp.ones((1, 32, 8)), jnp.zeros((1, 32, 8))))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jax, "default_backend", lambda: "gpu")
        with pytest.raises(ValueError, match="CPU kernel; this process runs on 'gpu'"):
            kernel.cpu_attention(q, k, v, seg, seg)
    q24 = jnp.zeros((1, 32, 2, 24))
    with pytest.raises(ValueError, match="head_dim 24"):
        kernel.cpu_attention(q24, q24, q24, seg, seg)
    with pytest.raises(ConfigError, match="attention_impl 'cpu' supports head_dim"):
        get_preset("tiny", hidden_size=48, num_heads=2, num_kv_heads=2, attention_impl="cpu")


def test_a_missing_compiler_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(kernel.KernelBuildError, match="no-such-compiler-xyz.*model.attention_impl=xla"):
        kernel.build()


def test_builds_are_cached_by_source_and_a_failed_build_leaves_no_library(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMCODER_KERNEL_CACHE", str(tmp_path / "cache"))
    source = kernel.SOURCE.read_text()
    broken = tmp_path / "broken.cc"
    broken.write_text(source + "\nthis is not C++;\n")
    monkeypatch.setattr(kernel, "SOURCE", broken)
    with pytest.raises(kernel.KernelBuildError, match="broken.cc"):
        kernel.build()
    assert list((tmp_path / "cache").iterdir()) == []
    good = tmp_path / "good.cc"
    good.write_text(source)
    monkeypatch.setattr(kernel, "SOURCE", good)
    first = kernel.build()
    stamp = os.stat(first).st_mtime_ns
    assert kernel.build() == first and os.stat(first).st_mtime_ns == stamp  # reused, not rebuilt
