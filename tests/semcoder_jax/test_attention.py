"""Every attention implementation agrees with the reference einsum path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from semcoder_jax import attention as attn
from semcoder_jax import sharding as shd
from semcoder_jax.attention import attention, attention_mask, splash_attention, xla_attention
from semcoder_jax.config import ModelConfig
from semcoder_jax.model import forward, init_params


def _inputs(seed=0, batch=1, length=256, heads=4, kv_heads=2, head_dim=128):
    r = np.random.RandomState(seed)
    q = jnp.asarray(r.randn(batch, length, heads, head_dim).astype(np.float32))
    k = jnp.asarray(r.randn(batch, length, kv_heads, head_dim).astype(np.float32))
    v = jnp.asarray(r.randn(batch, length, kv_heads, head_dim).astype(np.float32))
    segments = jnp.asarray(np.array([[1] * 100 + [2] * 120 + [0] * (length - 220)] * batch, np.int32))
    slots = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    return q, k, v, segments, slots


def test_mask_is_causal_within_segments_only():
    seg = jnp.asarray([[1, 1, 2, 2, 0]])
    slot = jnp.arange(5)[None]
    mask = np.asarray(attention_mask(seg, slot, seg, slot))[0]
    expected = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]], bool)
    assert (mask == expected).all()


@pytest.mark.parametrize("blocks", [2, 8])
def test_causal_query_blocks_compute_the_dense_result(blocks):
    """Block i of the queries sees keys up to its own end only; the keys it skips are masked anyway."""
    q, k, v, seg, slot = _inputs(head_dim=16)

    def loss(q, k, v, query_blocks):
        out = xla_attention(q, k, v, seg, slot, seg, slot, query_blocks=query_blocks)
        return jnp.sum(out**2), out

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
    (ours, ours_out), (ref, ref_out) = grad(q, k, v, blocks), grad(q, k, v, 1)
    np.testing.assert_allclose(np.asarray(ours_out), np.asarray(ref_out), atol=1e-6)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_query_blocks_refuse_a_row_they_do_not_divide_or_a_kv_cache():
    q, k, v, seg, slot = _inputs(head_dim=16)
    with pytest.raises(ValueError, match="query_blocks=3"):
        xla_attention(q, k, v, seg, slot, seg, slot, query_blocks=3)
    with pytest.raises(ValueError, match="64 keys"):
        xla_attention(q, k[:, :64], v[:, :64], seg, slot, seg[:, :64], slot[:, :64], query_blocks=2)


def test_splash_kernel_matches_reference_on_packed_segments():
    q, k, v, seg, slot = _inputs()
    ours = splash_attention(q, k, v, seg, slot, seg, slot, interpret=True)
    ref = xla_attention(q, k, v, seg, slot, seg, slot)
    np.testing.assert_allclose(np.asarray(ours)[:, :220], np.asarray(ref)[:, :220], atol=1e-5)


@pytest.mark.slow  # Pallas interpret mode on CPU: ~35 s
def test_decoder_with_splash_attention_equals_xla():
    config = ModelConfig(vocab_size=64, hidden_size=256, intermediate_size=128, num_layers=1, num_heads=2,
                         num_kv_heads=1, max_position_embeddings=512, rope_scaling_factor=1.0)
    params = init_params(config, jax.random.key(0))
    ids = jnp.asarray(np.random.RandomState(1).randint(0, 64, (1, 256)))
    ref = forward(params, config, ids)
    ours = forward(params, config.replace(attention_impl="splash"), ids)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-4)


def _sharded_attention(impl, mesh, q, k, v, seg, slot):
    """Attention and its input gradients, jitted with the batch split over (data, fsdp) as in training."""
    batch = NamedSharding(mesh, P(("data", "fsdp")))

    def loss(q, k, v):
        with shd.activation_sharding(mesh):
            out = attention(q, k, v, seg, slot, seg, slot, impl=impl)
        return jnp.sum(jnp.where((seg > 0)[:, :, None, None], out, 0.0) ** 2), out

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True), in_shardings=(batch, batch, batch))
    return fn, fn(q, k, v)


@pytest.mark.parametrize("kv_heads", [2, 1], ids=["heads split", "heads whole"])
def test_the_cpu_kernel_runs_on_each_devices_own_rows_and_heads(kv_heads):
    """Under a data 2 x fsdp 2 x tensor 2 mesh the kernel sees [B/4, T, H/2, D] (H whole when the
    tensor axis does not divide the kv heads) and nothing is gathered; values and gradients are the
    reference's."""
    mesh = shd.build_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    q, k, v, seg, slot = _inputs(batch=8, heads=4, kv_heads=kv_heads, head_dim=16)
    fn, ((_, ours), ours_grads) = _sharded_attention("cpu", mesh, q, k, v, seg, slot)
    _, ((_, ref), ref_grads) = _sharded_attention("xla", mesh, q, k, v, seg, slot)
    np.testing.assert_allclose(np.asarray(ours)[:, :220], np.asarray(ref)[:, :220], atol=1e-5)
    for a, b in zip(ours_grads, ref_grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)
    hlo = fn.lower(q, k, v).compile().as_text()
    local_heads = 2 if kv_heads == 2 else 4
    kernels = [line for line in hlo.splitlines() if 'custom_call_target="semcoder' in line]
    assert len(kernels) == 2  # forward and backward
    assert all(f"f32[2,256,{local_heads},16]" in line for line in kernels)
    assert "all-gather" not in hlo


def test_the_splash_kernel_runs_per_device_on_a_sharded_batch():
    """Pallas interpret mode stands in for the TPU: per-device splash equals the reference, and no
    device gathers another's rows (run as one partitioned call, the compiled step all-gathers)."""
    mesh = shd.build_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    q, k, v, seg, slot = _inputs(batch=4)

    def fn(q, k, v):
        with shd.activation_sharding(mesh):
            return attention(q, k, v, seg, slot, seg, slot, impl="splash")

    jitted = jax.jit(fn, in_shardings=(NamedSharding(mesh, P(("data", "fsdp"))),) * 3)
    ours = jitted(q, k, v)
    ref = xla_attention(q, k, v, seg, slot, seg, slot)
    np.testing.assert_allclose(np.asarray(ours)[:, :220], np.asarray(ref)[:, :220], atol=1e-5)
    assert ours.sharding.spec[0] == ("data", "fsdp")
    assert "all-gather" not in jitted.lower(q, k, v).compile().as_text()


def test_only_the_cpu_kernel_takes_unrotated_queries():
    q, k, v, seg, slot = _inputs(head_dim=16)
    rope = (jnp.ones((1, 256, 16)), jnp.zeros((1, 256, 16)))
    with pytest.raises(ValueError, match="only the cpu kernel"):
        attention(q, k, v, seg, slot, seg, slot, impl="xla", rope=rope)


def _rows(*rows):
    return jnp.asarray(np.array(rows, np.int32))


def test_segment_runs_describe_each_row_in_cudnns_packed_layout():
    seg = _rows([1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1], [4, 4, 5, 5, 5, 5, 5, 0])
    offsets, lengths, count = attn.segment_runs(seg, 4)
    assert np.asarray(offsets).tolist() == [[0, 3, 5, 6, -1], [0, -1, -1, -1, -1], [0, 2, 7, -1, -1]]
    assert np.asarray(lengths).tolist() == [[3, 2, 1, 2], [8, -1, -1, -1], [2, 5, 1, -1]]
    assert np.asarray(count).tolist() == [4, 1, 3]
    # a row with more runs than described is reported through its count
    assert np.asarray(attn.segment_runs(seg, 2)[2]).tolist() == [4, 1, 3]


def test_runs_as_causal_sequences_give_the_segment_mask_of_packed_rows():
    """Each run attending causally within itself is exactly the reference mask for packer-made rows
    (contiguous segments, padding at the end), so no query of any run is left without keys."""
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(16):
        lengths = rng.integers(1, 12, size=rng.integers(1, 6))
        ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)])[:48]
        rows.append(np.concatenate([ids, np.zeros(48 - len(ids), int)]))
    seg = jnp.asarray(np.stack(rows).astype(np.int32))
    slot = jnp.broadcast_to(jnp.arange(48, dtype=jnp.int32), seg.shape)
    offsets, lengths, count = attn.segment_runs(seg, 8)
    assert int(jnp.max(count)) <= 8
    run_of = np.zeros(seg.shape, int)
    for b in range(seg.shape[0]):
        for r in range(int(count[b])):
            start, n = int(offsets[b, r]), int(lengths[b, r])
            run_of[b, start:start + n] = r
        assert int(np.sum(np.asarray(lengths[b])[: int(count[b])])) == 48
    causal = np.tril(np.ones((48, 48), bool))
    from_runs = (run_of[:, :, None] == run_of[:, None, :]) & causal
    assert (from_runs == np.asarray(attention_mask(seg, slot, seg, slot))).all()


def test_the_cudnn_call_is_chosen_by_what_the_rows_hold():
    slot = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (2, 6))
    whole = _rows([1] * 6, [3] * 6)
    packed = _rows([1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1])
    many = _rows([1, 2, 3, 4, 5, 0], [1] * 6)
    assert int(attn.cudnn_path(whole, slot, whole, 0)) == 1  # causal kernel, no mask
    assert int(attn.cudnn_path(packed, slot, packed, 0)) == 0  # the mask, as a bias
    assert int(attn.cudnn_path(packed, slot, packed, 4)) == 2  # packed runs
    assert int(attn.cudnn_path(many, slot, many, 4)) == 0  # 6 runs do not fit in 4
    assert int(attn.cudnn_path(whole, slot[:, ::-1], whole, 4)) == 0  # slots not in order


def _cudnn_stand_ins(monkeypatch, calls):
    """XLA stand-ins with the documented semantics of the two cuDNN entry points, recording which ran.

    cuDNN itself needs a GPU; these check the plumbing around it (the choice of call, the packed
    layout's offsets and lengths, gradients through ``lax.switch`` inside the sharded, rematerialised
    layer scan) against the reference attention.
    """
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    xla_sdpa = jax.nn.dot_product_attention

    def sdpa(q, k, v, bias=None, mask=None, *, implementation=None, **options):
        assert implementation == "cudnn"
        calls.append("causal" if options.get("is_causal") else "mask")
        return xla_sdpa(q, k, v, bias, mask, implementation="xla", **options)

    def packed(q, k, v, q_seqlen=None, kv_seqlen=None, q_offsets=None, kv_offsets=None, *, scale, mask_type):
        assert mask_type == cudnn.MaskType.PADDING_CAUSAL and q_offsets.shape[1] == q_seqlen.shape[1] + 1
        calls.append("packed")
        position = jnp.arange(q.shape[1])[None, :, None]
        start, length = q_offsets[:, None, :-1], q_seqlen[:, None, :]
        inside = (position >= start) & (position < start + length) & (length > 0)  # [B, T, runs]
        run = jnp.argmax(inside, axis=-1)
        mask = (run[:, :, None] == run[:, None, :]) & jnp.tril(jnp.ones((q.shape[1],) * 2, bool))
        return xla_sdpa(q, k, v, mask=mask[:, None], scale=scale, implementation="xla")

    monkeypatch.setattr(jax.nn, "dot_product_attention", sdpa)
    monkeypatch.setattr(cudnn, "dot_product_attention", packed)


@pytest.mark.parametrize("rows,packed_runs,expected", [("whole", 0, "causal"), ("packed", 0, "mask"),
                                                       ("packed", 4, "packed"), ("packed", 2, "mask")])
def test_cudnn_calls_compose_with_the_sharded_rematerialised_decoder(monkeypatch, rows, packed_runs, expected):
    calls = []
    _cudnn_stand_ins(monkeypatch, calls)
    config = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                         num_kv_heads=2, max_position_embeddings=64, remat_policy="minimal")
    params = init_params(config, jax.random.key(0))
    rng = np.random.RandomState(0)
    ids = jnp.asarray(rng.randint(0, 128, (8, 32)))
    one = [1] * 32
    segments = jnp.asarray(np.array([one if rows == "whole" else [1] * 10 + [2] * 15 + [0] * 7] * 8, np.int32))
    positions = jnp.asarray(np.array([list(range(32)) if rows == "whole" else
                                      list(range(10)) + list(range(15)) + list(range(7))] * 8, np.int32))
    mesh = shd.build_mesh({"data": 2, "fsdp": 2, "tensor": 2})

    def loss(params, impl):
        cfg = config.replace(attention_impl=impl, cudnn_packed_runs=packed_runs if impl == "cudnn" else 0)
        with shd.activation_sharding(mesh):
            logits = forward(params, cfg, ids, positions, segments)
        return jnp.sum(jnp.where((segments > 0)[..., None], logits, 0.0) ** 2)

    ours, ours_grads = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, "cudnn")
    ref, ref_grads = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, "xla")
    np.testing.assert_allclose(float(ours), float(ref), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ours_grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    # every branch is traced; the one the data chose is the one whose result was used
    assert set(calls) >= {"mask", "causal"} | ({"packed"} if packed_runs else set())
    chosen = int(attn.cudnn_path(segments[:2], jnp.broadcast_to(jnp.arange(32), (2, 32)), segments[:2], packed_runs))
    assert ["mask", "causal", "packed"][chosen] == expected
