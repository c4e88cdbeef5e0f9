"""The continuous-batching engine: greedy equals ``generate_ids`` and transformers, slots refill, forks
share one prefill, samples do not depend on slots or order, stop strings cut as ``Generator`` does."""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from semcoder_jax.convert import load_hf_params
from semcoder_jax.engine import Engine, Request, sample_rows
from semcoder_jax.errors import UserError
from semcoder_jax.generate import Generator, generate_ids


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, hf_model):
    """(config, params, HF model): a random LLaMA with a clear argmax, converted from HF."""
    root = tmp_path_factory.mktemp("engine")
    model = hf_model(vocab_size=400, initializer_range=0.3)
    model.save_pretrained(root / "hf")
    config, params = load_hf_params(str(root / "hf"))
    return config, jax.tree.map(jnp.asarray, params), model


def _prompts(lengths, seed=0):
    rs = np.random.RandomState(seed)
    return [rs.randint(3, 400, n).tolist() for n in lengths]


def test_greedy_equals_generate_ids_with_slots_refilled_across_the_ring(tiny):
    config, params, _ = tiny
    prompts = _prompts([4, 17, 9, 20, 2, 11, 5, 20, 1, 13])
    limits = [12, 5, 20, 8, 30, 3, 17, 9, 25, 14]
    free = generate_ids(params, config, prompts, max_new_tokens=limits, eos_id=2, chunk=8)
    eos = free[4][0][13]  # a token the model does produce: several rows end on it
    expected = generate_ids(params, config, prompts, max_new_tokens=limits, eos_id=eos, chunk=8)
    assert {r for _, r in expected} == {"eos", "length"}
    engine = Engine(params, config, slots=3, max_len=32, eos_id=eos, chunk=4)
    results = engine.generate_all([Request(p, m) for p, m in zip(prompts, limits)])
    assert [(r.token_ids, r.finish_reason) for r in results] == expected
    assert [r.id for r in results] == list(range(len(prompts)))
    assert engine.stats.decode_steps > engine.max_len  # the ring wrapped while slots were refilled
    assert engine.stats.prefills == len(prompts) and engine.stats.tokens == sum(len(ids) for ids, _ in expected)
    # Streaming, from another ring offset: results come as they finish, the 3-token request early.
    streamed = list(engine.generate(Request(p, m, id=f"r{i}") for i, (p, m) in enumerate(zip(prompts, limits))))
    assert {r.id: (r.token_ids, r.finish_reason) for r in streamed} == {f"r{i}": e for i, e in enumerate(expected)}
    order = [r.id for r in streamed]
    assert order.index("r5") < order.index("r4")


def test_greedy_equals_transformers_generate(tiny):
    config, params, model = tiny
    prompts = [[1] + p for p in _prompts([6, 15, 3], seed=1)]
    engine = Engine(params, config, slots=2, max_len=64, eos_id=2, chunk=8)
    results = engine.generate_all([Request(p, 24) for p in prompts])
    for prompt, result in zip(prompts, results):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=2,
                                 pad_token_id=0)
        assert result.token_ids == out[0, len(prompt):].tolist()


def test_samples_of_one_prompt_prefill_once(tiny):
    config, params, _ = tiny
    a, b = _prompts([7, 12], seed=2)
    requests = [Request(a, 10, id=f"a{i}") for i in range(4)] + [Request(b, 6, id=f"b{i}") for i in range(3)]
    engine = Engine(params, config, slots=3, max_len=32, eos_id=2, chunk=4)
    results = engine.generate_all(requests)
    assert engine.stats.prefills == 2 and engine.stats.prefills_saved == 5
    assert all(r.token_ids == results[0].token_ids for r in results[:4])
    assert all(r.token_ids == results[4].token_ids for r in results[4:])
    assert results[0].token_ids == generate_ids(params, config, [a], max_new_tokens=10, eos_id=2)[0][0]


def test_sampled_outputs_do_not_depend_on_slots_or_order(tiny):
    config, params, _ = tiny
    prompts = _prompts([5, 9, 14, 3, 9], seed=3)
    requests = [Request(p, 12, temperature=0.8, top_p=0.9, seed=100 + i, id=i) for i, p in enumerate(prompts)]
    requests += [Request(prompts[1], 12, temperature=0.8, top_p=0.9, seed=7, id="fork"),
                 Request(prompts[2], 10, temperature=1.0, top_k=5, seed=8, id="topk"),
                 Request(prompts[0], 8, id="greedy")]
    runs = []
    for slots, order_seed in ((1, None), (3, 1), (8, 2)):
        order = list(requests)
        if order_seed is not None:
            random.Random(order_seed).shuffle(order)
        engine = Engine(params, config, slots=slots, max_len=32, eos_id=2, chunk=4)
        runs.append({r.id: r.token_ids for r in engine.generate_all(order)})
    assert runs[0] == runs[1] == runs[2]
    assert runs[0][1] != runs[0]["fork"]  # one prompt, two seeds
    assert runs[0]["greedy"] == generate_ids(params, config, [prompts[0]], max_new_tokens=8, eos_id=2)[0][0]


def test_sampled_outputs_equal_the_current_samplers_for_the_same_seeds(tiny):
    """A request's stream is generate_ids's per-row stream for its seed, so switching samplers keeps samples."""
    config, params, _ = tiny
    prompts = _prompts([5, 9, 14, 3], seed=4)
    seeds = [11, 12, 13, 14]
    expected = generate_ids(params, config, prompts, max_new_tokens=10, eos_id=2, temperature=0.8, top_p=0.9,
                            seeds=seeds)
    engine = Engine(params, config, slots=3, max_len=32, eos_id=2, chunk=4)
    results = engine.generate_all([Request(p, 10, temperature=0.8, top_p=0.9, seed=s) for p, s in zip(prompts, seeds)])
    assert [(r.token_ids, r.finish_reason) for r in results] == expected


def test_sample_rows_applies_each_rows_own_parameters():
    logits = jnp.asarray(np.random.RandomState(0).randn(4, 50).astype(np.float32) * 3)
    greedy = np.asarray(logits).argmax(-1)
    keys = jax.vmap(jax.random.key)(jnp.arange(4, dtype=jnp.uint32))

    def draw(temperature, top_p, top_k, keys=keys):
        return np.asarray(sample_rows(logits, keys, jnp.asarray(temperature, jnp.float32),
                                      jnp.asarray(top_p, jnp.float32), jnp.asarray(top_k, jnp.int32)))

    # Row 0 greedy, row 1 top-k 1, row 2 a tiny nucleus: all the argmax; row 3 samples freely.
    assert (draw([0, 1, 1, 5], [1, 1, 1e-6, 1], [0, 1, 0, 0])[:3] == greedy[:3]).all()
    many = {tuple(draw([5] * 4, [1] * 4, [3] * 4, jax.vmap(jax.random.key)(jnp.arange(4, dtype=jnp.uint32) + 4 * s)))
            for s in range(30)}
    assert len(many) > 1
    top3 = np.argsort(-np.asarray(logits), axis=-1)[:, :3]
    assert all(t in top3[row] for draws in many for row, t in enumerate(draws))


class _CharTokenizer:
    """Token id = ord(char), as in test_generate: a decode we can steer stop strings with."""

    bos_id, eos_id, pad_id = 1, 2, 0

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if i > 2)


def test_stop_strings_cut_as_the_generator_does(tiny):
    config, params, _ = tiny
    tok = _CharTokenizer()
    gen = Generator(config, params, tok)
    texts = ["ab", "xyz", "def f", "q"]
    free = gen.generate(texts, max_new_tokens=30, chunk=4)
    stops = [free[0].text[5:7], free[2].text[3:4]]
    expected = gen.generate(texts, max_new_tokens=30, stop=stops, chunk=4)
    assert expected[0].finish_reason == "stop"
    engine = Engine(params, config, slots=2, max_len=40, eos_id=2, chunk=3, decode=tok.decode)
    results = engine.generate_all([Request(gen.encode(t), 30, stop=stops) for t in texts])
    assert [(r.text, r.token_ids, r.finish_reason) for r in results] == [
        (g.text, g.token_ids, g.finish_reason) for g in expected]


def test_bad_requests_are_refused_with_clear_errors(tiny):
    config, params, _ = tiny
    engine = Engine(params, config, slots=2, max_len=32, eos_id=2)
    with pytest.raises(UserError, match=r"request long: prompt \(30 tokens\) \+ max_new_tokens \(8\) = 38 "
                                        r"exceeds the engine's max_len \(32\)"):
        engine.generate([Request([5] * 30, 8, id="long")])
    with pytest.raises(UserError, match="stop strings need the engine's decode"):
        engine.generate_all([Request([5], 4, stop=["x"])])
    with pytest.raises(UserError, match="max_new_tokens must be positive"):
        engine.generate_all([Request([5], 0)])
    # A stream abandoned half-way leaves the engine usable.
    requests = [Request([5, 6], 20, id="x"), Request([7], 30, id="y")]
    stream = engine.generate(requests)
    first = next(stream)
    stream.close()
    again = {r.id: r for r in engine.generate_all(requests)}
    assert again[first.id] == first


def test_compilations_stay_bounded(tiny):
    config, params, _ = tiny
    lengths = [3, 20, 7, 12, 30, 5]
    engine = Engine(params, config, slots=3, max_len=48, eos_id=2, chunk=4)

    def workload(copies):
        prompts = _prompts(lengths * copies, seed=4)
        return [Request(p, 6 + i % 11, temperature=0.8 * (i % 2), seed=i) for i, p in enumerate(prompts)]

    engine.generate_all(workload(2))
    warm = engine.stats.compilations
    # One decode chunk; prefill and insert per (prompt bucket 16/32, batch bucket 1/2/3).
    assert warm <= 1 + 2 * 2 * 3
    engine.generate_all(workload(2))
    engine.generate_all(workload(6))
    assert engine.stats.compilations == warm


def test_prompts_sharing_a_prefix_reuse_its_cached_blocks(tiny):
    """A few-shot header is prefilled once, then read from the prefix pool; so is an earlier round's prompt."""
    config, params, _ = tiny
    header = _prompts([45], seed=5)[0]  # two full 16-token blocks and a partial one
    bodies = _prompts([3, 9, 14, 6, 11], seed=6)
    prompts = [header + b for b in bodies]
    limits = [9, 4, 12, 7, 10]
    expected = generate_ids(params, config, prompts, max_new_tokens=limits, eos_id=2)
    engine = Engine(params, config, slots=2, max_len=96, eos_id=2, chunk=4, prefix_block=16, prefix_cache_tokens=256)
    results = engine.generate_all([Request(p, m) for p, m in zip(prompts, limits)])
    assert [(r.token_ids, r.finish_reason) for r in results] == expected
    # The first prefill (two prompts) computes the header; the three after it reuse its 32 tokens.
    assert engine.stats.prefix_tokens_reused == 3 * 32
    assert engine.stats.prompt_tokens == sum(map(len, prompts))
    # A refine round: the earlier prompt, its answer and feedback; all full blocks of it come cached.
    second = prompts[2] + results[2].token_ids + _prompts([5], seed=7)[0]
    before = engine.stats.prefix_tokens_reused
    again = engine.generate_all([Request(second, 8)])
    assert again[0].token_ids == generate_ids(params, config, [second], max_new_tokens=8, eos_id=2)[0][0]
    assert engine.stats.prefix_tokens_reused - before == 48  # header + body of prompt 2: 59 tokens, 3 blocks


def test_a_full_prefix_pool_evicts_and_stays_exact(tiny):
    config, params, _ = tiny
    heads = _prompts([20, 33, 18], seed=8)
    prompts = [heads[i % 3] + b for i, b in enumerate(_prompts([4, 7, 2, 9, 5, 8, 3, 6, 1], seed=9))]
    expected = generate_ids(params, config, prompts, max_new_tokens=6, eos_id=2)
    # Room for 3 blocks of 8: the three headers' 2 + 4 + 2 blocks do not all fit.
    engine = Engine(params, config, slots=2, max_len=64, eos_id=2, chunk=4, prefix_block=8, prefix_cache_tokens=24)
    for _ in range(2):
        results = engine.generate_all([Request(p, 6) for p in prompts])
        assert [(r.token_ids, r.finish_reason) for r in results] == expected
    assert engine.stats.prefix_tokens_reused > 0
    off = Engine(params, config, slots=2, max_len=64, eos_id=2, chunk=4, prefix_cache_tokens=0)
    assert [r.token_ids for r in off.generate_all([Request(p, 6) for p in prompts])] == [e[0] for e in expected]
    assert off.stats.prefix_tokens_reused == 0


def test_decoding_on_a_tensor_and_data_parallel_mesh_equals_one_device(tiny):
    from semcoder_jax.sharding import build_mesh

    config, params, _ = tiny
    assert config.num_kv_heads % 2 == 0 and len(jax.devices()) >= 4
    mesh = build_mesh({"data": 2, "tensor": 2}, jax.devices()[:4])
    header = _prompts([20], seed=10)[0]
    prompts = [header + b for b in _prompts([3, 12, 7, 5, 9], seed=11)]
    requests = [Request(p, 10, temperature=0.7 * (i % 2), seed=i) for i, p in enumerate(prompts)]
    single = Engine(params, config, slots=4, max_len=64, eos_id=2, chunk=4, prefix_block=8)
    sharded = Engine(params, config, slots=4, max_len=64, eos_id=2, chunk=4, prefix_block=8, mesh=mesh)
    assert [r.token_ids for r in sharded.generate_all(requests)] == [r.token_ids for r in single.generate_all(requests)]
    # Weights and KV heads split over tensor, slots over data; the prefix pool's heads over tensor.
    def spec(x):
        return tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))

    assert spec(sharded.params["layers"]["attention"]["q_proj"]) == (None, "tensor", None, None)
    assert spec(sharded._state["k"]) == (None, "data", None, "tensor", None)
    assert spec(sharded._pool[0]) == (None, None, None, "tensor", None)
    assert sharded.stats.prefix_tokens_reused > 0
    with pytest.raises(UserError, match="3 slots do not split over the mesh's 2 data shards"):
        Engine(params, config, slots=3, max_len=64, eos_id=2, mesh=mesh)


def test_kv_memory_is_reported_per_token_and_per_cache(tiny):
    config, params, _ = tiny
    engine = Engine(params, config, slots=4, max_len=64, eos_id=2, prefix_block=16)
    per_token = 2 * config.num_layers * config.num_kv_heads * config.resolved_head_dim * 4  # float32
    assert engine.kv_bytes_per_token == per_token
    assert engine.kv_cache_bytes == {"ring": 4 * 64 * per_token, "prefix_pool": 64 * per_token}


def test_the_6_7b_decode_compiles_on_eight_chips_with_the_cache_updated_in_place():
    """Shapes only: deepseek-coder-6.7b, 16 slots x 2048 columns, tensor-parallel over 8 devices.  Each device
    holds an eighth of the weights and of the KV cache, and a decode chunk needs almost no memory beside them
    (a layer scan that stacked per-layer caches as outputs needed a second copy of the cache)."""
    from semcoder_jax.config import get_preset
    from semcoder_jax.engine import compile_decode
    from semcoder_jax.sharding import build_mesh

    config = get_preset("deepseek-coder-6.7b", dtype="float32", param_dtype="float32")
    memory = compile_decode(config, slots=16, max_len=2048, mesh=build_mesh({"tensor": 8})).memory_analysis()
    weights = config.num_params() * 4 / 8
    kv = 16 * 2048 * (2 * 32 * 32 * 128 * 4) / 8  # slots x columns x (k and v, layers, kv heads, head_dim, fp32)
    assert memory.argument_size_in_bytes == pytest.approx(weights + kv, rel=0.01)
    assert memory.temp_size_in_bytes < 0.1 * kv
