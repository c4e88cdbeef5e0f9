"""A continuous-batching generation engine: fixed slots over a ring-buffer KV cache.

Why: ``generate.generate_ids`` pads a fixed batch to its longest member, prefills each of n samples
of a prompt separately and waits for its slowest row.  Here a fixed number of slots (batch rows)
decode together; a slot whose request finishes is refilled with the next waiting request between
chunks of decode steps, with no recompilation.

Design:
- The cache has ``max_len`` columns used as a ring: decode step ``t`` writes column ``t % max_len``
  for every slot.  Keys are stored after RoPE with the slot's own positions, so column order does
  not matter; a decoding token attends to every valid column of its row (``Decoder(...,
  attend_all_valid=True)``).  A request needs ``len(prompt) + max_new_tokens <= max_len``, so its
  writes never reach its own prompt.
- A prompt is prefilled on its own (batched with other new prompts, lengths bucketed to powers of
  two) and its KV copied into the slot's columns just before the next write column, the slot's
  valid mask reset to exactly those columns.  Requests with identical prompt ids prefill once and
  each copies the result (copy-on-fork); the queue is grouped by prompt for that.
- Each request has its own random stream, the one ``generate_ids(seeds=...)`` gives a row: ``key(seed)``,
  split once per token it samples.  So samples do not depend on batch composition, slot or order (up to
  float rounding of the batched matmuls), and equal the current sampler's for the same seeds.
- Stop strings are checked on the host once per chunk (on the new tokens' text), EOS and length
  limits on the device; finish semantics are those of ``generate_ids`` and ``Generator._finish``.
- The host works while the device decodes: after dispatching a chunk it checks the previous
  chunk's stop strings, decodes finished texts and yields results (a consumer that scores each
  result, e.g. in the sandbox, runs then too).  A slot a stop string finishes decodes one chunk
  more, dropped; slots EOS or a limit frees are refilled before the next chunk.
- Compiled shapes: one decode chunk, and prefill/insert per (prompt bucket, prefill batch bucket).
  ``Engine.stats`` counts compilations (jit cache misses), prefills, decode steps and tokens.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from semcoder_jax import sharding as shd
from semcoder_jax.config import ModelConfig
from semcoder_jax.errors import UserError
from semcoder_jax.generate import FinishReason, Generator, _cut_at_stop
from semcoder_jax.model import Decoder, KVCache

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Request:
    """One generation: a prompt (token ids, bos included if wanted) and its own sampling parameters.

    ``temperature`` 0 is greedy; ``top_k`` 0 is off; ``stop`` strings need the engine's ``decode``.
    ``id`` defaults to the request's index in the list given to ``generate``.
    """

    prompt_ids: Sequence[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: Sequence[str] = ()
    id: Any = None


@dataclasses.dataclass(frozen=True)
class Result:
    """``token_ids``: generated ids (an EOS included, reason "eos"); ``text`` when the engine can decode."""

    id: Any
    token_ids: list[int]
    finish_reason: FinishReason
    text: str | None = None


@dataclasses.dataclass
class EngineStats:
    """Cumulative over the engine's life; ``prefills_saved`` counts requests served by another's prefill."""

    compilations: int = 0
    prefills: int = 0
    prefills_saved: int = 0
    prompt_tokens: int = 0
    prefix_tokens_reused: int = 0
    decode_steps: int = 0
    chunks: int = 0
    tokens: int = 0
    requests: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class _Counted:
    """Calls a jitted function and counts its compilations (cache misses) into ``stats``."""

    def __init__(self, fn, stats: EngineStats):
        self.fn, self.stats = fn, stats

    def __call__(self, *args):
        before = self.fn._cache_size()
        out = self.fn(*args)
        self.stats.compilations += self.fn._cache_size() - before
        return out


# ---- device functions (pure) -------------------------------------------------------------------

def sample_rows(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array,
                top_k: jax.Array) -> jax.Array:
    """Next tokens [S] from logits [S, V] with per-row parameters and keys.

    Rows with temperature 0 take the argmax.  Others: top-k, then nucleus (top-p over the
    renormalised top-k), then a draw with the row's key; ties at a threshold are kept.
    """
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def sampled():
        vocab = logits.shape[-1]
        x = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
        sorted_x = -jnp.sort(-x, axis=-1)
        k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
        keep = jnp.arange(vocab)[None] < k[:, None]
        probs = jax.nn.softmax(jnp.where(keep, sorted_x, -jnp.inf), axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs
        keep = keep & (before < top_p[:, None])
        threshold = jnp.min(jnp.where(keep, sorted_x, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x >= threshold, x, -jnp.inf)
        drawn = jax.vmap(jax.random.categorical)(keys, x).astype(jnp.int32)
        return jnp.where(temperature > 0, drawn, greedy)

    return jax.lax.cond(jnp.any(temperature > 0), sampled, lambda: greedy)


def _constrain_kv(x: jax.Array, rows: str | None = "batch") -> jax.Array:
    """Keys/values [layers, rows, columns, kv_heads, head_dim]: KV heads split like the attention weights,
    rows (slots) like a batch; the prefix pool's rows (blocks) are replicated (``rows`` None)."""
    return nn.with_logical_constraint(x, ("layers", rows, "length", "kv_heads", "head_dim"))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _prefill(config: ModelConfig, keep: int, params, pool_k, pool_v, table, prefix_len, ids, valid):
    """Prompts' keys/values and next-token logits, reusing cached prefix blocks.

    ``table`` [B, nb]: each row's cached prefix blocks in the pool (left-padded; ``prefix_len`` [B]
    tokens of them are real), ``ids``/``valid`` [B, S]: the rest of each prompt, left-padded.  The
    new tokens attend to the prefix and causally to each other.  Returns k/v [L, B, keep, ...] and
    valid [B, keep] with each row's prompt right-aligned and contiguous (``keep`` >= every prompt),
    and logits [B, V] float32.
    """
    layers, _, block, kv_heads, head_dim = pool_k.shape
    batch, length = ids.shape
    width = table.shape[1] * block

    def gather(pool):
        prefix = pool[:, table].reshape(layers, batch, width, kv_heads, head_dim)
        return _constrain_kv(jnp.concatenate([prefix, jnp.zeros((layers, batch, length, kv_heads, head_dim),
                                                                 pool.dtype)], axis=2))

    prefix_valid = (jnp.arange(width)[None] >= width - prefix_len[:, None]).astype(jnp.int32)
    cache = KVCache(k=gather(pool_k), v=gather(pool_v),
                    valid=jnp.concatenate([prefix_valid, jnp.zeros((batch, length), jnp.int32)], axis=1),
                    index=jnp.asarray(width, jnp.int32))
    positions = prefix_len[:, None] + jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    logits, cache = Decoder(config).apply({"params": params}, ids, positions, valid, cache=cache)
    # Right-align each row's tokens (prefix, gap of suffix padding, suffix -> padding, prompt).
    order = jnp.argsort(cache.valid, axis=1, stable=True)[:, -keep:]
    take = functools.partial(jnp.take_along_axis, indices=order[None, :, :, None, None], axis=2)
    return (_constrain_kv(take(cache.k)), _constrain_kv(take(cache.v)),
            jnp.take_along_axis(cache.valid, order, axis=1), logits[:, -1].astype(jnp.float32))


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _store_blocks(pool_k, pool_v, k, v, rows, starts, dst):
    """Copies ``block`` columns from prefill row ``rows[e]`` at column ``starts[e]`` into pool block ``dst[e]``
    (index ``num_blocks`` = unused entry, dropped)."""
    block = pool_k.shape[2]

    def blocks(kv):
        one = lambda row, start: jax.lax.dynamic_slice_in_dim(kv[:, row], start, block, axis=1)  # noqa: E731
        return jnp.moveaxis(jax.vmap(one)(rows, starts), 0, 1).astype(pool_k.dtype)  # [L, E, block, ...]

    return (_constrain_kv(pool_k.at[:, dst].set(blocks(k), mode="drop"), rows=None),
            _constrain_kv(pool_v.at[:, dst].set(blocks(v), mode="drop"), rows=None))


@functools.partial(jax.jit, donate_argnums=(0,))
def _insert(state: dict, k, v, valid, logits, lengths, dst, src, limit, temperature, top_p, top_k, seed):
    """Copies prefilled rows ``src`` into slots ``dst`` (index ``slots`` = unused entry, dropped).

    The P prompt columns land just before the next write column, wrapping; the slot's valid mask
    becomes exactly the prompt's tokens, its counters and sampling parameters the request's.
    """
    slots, max_len = state["valid"].shape
    width = k.shape[2]
    cols = (state["step"] % max_len - width + jnp.arange(width)) % max_len
    put = dict(mode="drop")
    new = dict(state)
    new["k"] = _constrain_kv(state["k"].at[:, dst[:, None], cols[None]].set(k[:, src].astype(state["k"].dtype), **put))
    new["v"] = _constrain_kv(state["v"].at[:, dst[:, None], cols[None]].set(v[:, src].astype(state["v"].dtype), **put))
    rows_valid = jnp.zeros((dst.shape[0], max_len), jnp.int32).at[:, cols].set(valid[src])
    new["valid"] = state["valid"].at[dst].set(rows_valid, **put)
    new["logits"] = state["logits"].at[dst].set(logits[src], **put)
    new["pos"] = state["pos"].at[dst].set(lengths[src], **put)
    new["count"] = state["count"].at[dst].set(0, **put)
    new["rng"] = state["rng"].at[dst].set(jax.vmap(lambda x: jax.random.key_data(jax.random.key(x)))(seed), **put)
    new["done"] = state["done"].at[dst].set(False, **put)
    for name, value in (("limit", limit), ("temperature", temperature), ("top_p", top_p), ("top_k", top_k)):
        new[name] = state[name].at[dst].set(value, **put)
    return new


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(3,))
def _decode_chunk(config: ModelConfig, chunk: int, params, state: dict, eos_id, refill):
    """Up to ``chunk`` decode steps for every slot; returns (state, tokens [S, chunk] (-1: none), steps run).

    Stops early when every slot is done, or (``refill``) when a slot finishes and requests wait.
    """
    model = Decoder(config)
    slots, max_len = state["valid"].shape
    done_at_start = state["done"]

    def cond(carry):
        i, s, _ = carry
        finished = jnp.any(s["done"] & ~done_at_start)
        return (i < chunk) & ~jnp.all(s["done"]) & ~(refill & finished)

    def body(carry):
        i, s, out = carry
        keys = jax.vmap(jax.random.split)(s["rng"])  # [S, 2, 2]: (carried, this token's) per slot
        token = sample_rows(s["logits"], keys[:, 1], s["temperature"], s["top_p"], s["top_k"])
        live = ~s["done"]
        out = out.at[:, i].set(jnp.where(live, token, -1))
        count = s["count"] + live.astype(jnp.int32)
        done = s["done"] | (token == eos_id) | (count >= s["limit"])
        feed = ~done  # rows that need the next logits
        cache = KVCache(k=s["k"], v=s["v"], valid=s["valid"], index=s["step"] % max_len)
        logits, cache = model.apply({"params": params}, token[:, None], s["pos"][:, None],
                                    feed[:, None].astype(jnp.int32), cache=cache, attend_all_valid=True)
        s = dict(s, k=_constrain_kv(cache.k), v=_constrain_kv(cache.v), valid=cache.valid, logits=logits[:, -1].astype(jnp.float32),
                 pos=s["pos"] + feed.astype(jnp.int32), count=count, done=done, step=s["step"] + 1,
                 rng=jnp.where(live[:, None], keys[:, 0], s["rng"]))
        return i + 1, s, out

    out = jnp.full((slots, chunk), -1, jnp.int32)
    steps, state, out = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state, out))
    return state, out, steps


# ---- host side -------------------------------------------------------------------------------

def state_layout(config: ModelConfig, slots: int, max_len: int) -> dict[str, tuple[tuple[int, ...], Any, tuple, Any]]:
    """The decode state: name -> (shape, dtype, logical axes, initial value)."""
    s, row = slots, ("batch",)
    kv = ((config.num_layers, s, max_len, config.num_kv_heads, config.resolved_head_dim), jnp.dtype(config.dtype),
          ("layers", "batch", "length", "kv_heads", "head_dim"), 0)
    return dict(k=kv, v=kv, valid=((s, max_len), np.int32, ("batch", "length"), 0),
                logits=((s, config.vocab_size), np.float32, ("batch", None), 0),
                pos=((s,), np.int32, row, 0), count=((s,), np.int32, row, 0), limit=((s,), np.int32, row, 1),
                done=((s,), bool, row, True), temperature=((s,), np.float32, row, 0),
                top_p=((s,), np.float32, row, 1), top_k=((s,), np.int32, row, 0),
                rng=((s, 2), np.uint32, ("batch", None), 0), step=((), np.int32, (), 0))


def compile_decode(config: ModelConfig, *, slots: int, max_len: int, mesh: Mesh, chunk: int = 16,
                   rules: Mapping[str, str | tuple[str, ...] | None] = shd.LOGICAL_AXIS_RULES):
    """The engine's decode chunk compiled ahead of time for abstract parameters and cache laid out on
    ``mesh`` (nothing allocated): whether a model serves on these chips, and its per-device memory
    (``.memory_analysis()``) for any size, e.g. 6.7B on 8 chips checked from a laptop."""
    from semcoder_jax.model import abstract_params, logical_axes

    abstract = nn.meta.unbox(abstract_params(config))
    shardings = shd.param_shardings(abstract, logical_axes(config), mesh, rules)
    params = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), abstract, shardings)

    def spec(shape, dtype, axes):
        sharding = NamedSharding(mesh, shd.logical_to_mesh_spec(axes, shape, mesh, rules))
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    state = {name: spec(shape, dtype, axes) for name, (shape, dtype, axes, _) in
             state_layout(config, slots, max_len).items()}
    scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=NamedSharding(mesh, PartitionSpec()))  # noqa: E731
    with shd.activation_sharding(mesh, rules):
        return _decode_chunk.lower(config, chunk, params, state, scalar(jnp.int32), scalar(jnp.bool_)).compile()


def _pow2_bucket(n: int, low: int, high: int) -> int:
    size = low
    while size < n:
        size *= 2
    return min(size, high)


class _PrefixIndex:
    """Which pool block holds the keys/values of which prompt prefix (host side, LRU).

    A block holds ``block`` tokens; its key is (the identity of the block before it, its tokens), so
    a lookup walks a prompt block by block from its start.  A block's identity is (index,
    generation): evicting a block bumps its generation, so blocks chained after it no longer match
    and age out in turn.
    """

    def __init__(self, num_blocks: int, block: int):
        self.block = block
        self.num_blocks = num_blocks
        self._index: collections.OrderedDict[tuple, int] = collections.OrderedDict()
        self._generation = [0] * num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))

    def _ident(self, block_id: int) -> tuple[int, int]:
        return block_id, self._generation[block_id]

    def lookup(self, prompt: tuple[int, ...]) -> list[int]:
        """The pool blocks of the longest cached prefix, leaving at least one token to prefill."""
        found: list[int] = []
        parent = None
        for j in range((len(prompt) - 1) // self.block):
            key = (parent, prompt[j * self.block: (j + 1) * self.block])
            block_id = self._index.get(key)
            if block_id is None:
                break
            self._index.move_to_end(key)
            found.append(block_id)
            parent = self._ident(block_id)
        return found

    def allocate(self, prompt: tuple[int, ...], cached: list[int], taken: set[int]) -> list[tuple[int, int]]:
        """(block number in the prompt, pool block) for each full block of ``prompt`` after ``cached``.

        Evicts least recently used blocks, never one in ``taken`` (to be read by a pending prefill, or
        written by the same store call: blocks touched since any other); stops when only those are left.
        """
        out = []
        parent = self._ident(cached[-1]) if cached else None
        for j in range(len(cached), len(prompt) // self.block):
            key = (parent, prompt[j * self.block: (j + 1) * self.block])
            if key in self._index:  # stored meanwhile (an identical prefix earlier in this batch)
                block_id = self._index[key]
                self._index.move_to_end(key)
                parent = self._ident(block_id)
                continue
            if self._free:
                block_id = self._free.pop()
            else:
                oldest = next(iter(self._index), None)
                if oldest is None or self._index[oldest] in taken:
                    break
                block_id = self._index.pop(oldest)
                self._generation[block_id] += 1
            self._index[key] = block_id
            taken.add(block_id)
            out.append((j, block_id))
            parent = self._ident(block_id)
        return out


class _DecodeOnly:
    """What ``Generator._finish`` needs of a generator: ``tokenizer.decode``."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self.tokenizer = self
        self.decode = decode


@dataclasses.dataclass
class _Prefilled:
    """One prefill call's device outputs; rows are looked up by prompt."""

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    logits: jax.Array
    lengths: jax.Array


class Engine:
    """Continuous batching over ``slots`` rows and a ``max_len``-column ring KV cache.

    ``decode(ids) -> str`` (a tokenizer's decode) is needed for stop strings and fills ``Result.text``.
    ``prefix_cache_tokens``: room for prompt-prefix keys/values kept between prefills, in blocks of
    ``prefix_block`` tokens (default: a quarter of the ring cache's tokens; 0 turns it off).
    ``mesh``: decode on a device mesh: weights, KV heads and the prefix pool split over ``tensor``
    and slots over ``data``/``fsdp`` by ``rules`` (the training table); ``params`` are placed accordingly.
    Not thread-safe; one ``generate`` at a time.
    """

    def __init__(self, params, config: ModelConfig, *, slots: int, max_len: int, eos_id: int, chunk: int = 16,
                 decode: Callable[[list[int]], str] | None = None, min_prompt_bucket: int = 16,
                 prefix_block: int = 16, prefix_cache_tokens: int | None = None, mesh: Mesh | None = None,
                 rules: Mapping[str, str | tuple[str, ...] | None] = shd.LOGICAL_AXIS_RULES):
        if slots < 1 or chunk < 1 or max_len < 2 or prefix_block < 1:
            raise UserError(f"engine needs slots >= 1, chunk >= 1, max_len >= 2, prefix_block >= 1 "
                            f"(got {slots}, {chunk}, {max_len}, {prefix_block})")
        if max_len > config.max_position_embeddings:
            raise UserError(f"max_len {max_len} exceeds the model's max_position_embeddings "
                            f"({config.max_position_embeddings})")
        self.mesh, self.rules = mesh, dict(rules)
        self._batch_shards = 1 if mesh is None else shd.batch_shards(mesh)
        if slots % self._batch_shards:
            raise UserError(f"engine: {slots} slots do not split over the mesh's {self._batch_shards} data shards")
        if mesh is not None:
            from semcoder_jax.model import logical_axes

            abstract = jax.eval_shape(lambda: params)
            params = jax.device_put(params, shd.param_shardings(abstract, logical_axes(config), mesh, self.rules))
        self.params, self.config = params, config
        self.slots, self.max_len, self.eos_id, self.chunk = slots, max_len, int(eos_id), chunk
        self.decode = decode
        self.min_prompt_bucket = min_prompt_bucket
        if prefix_cache_tokens is None:
            prefix_cache_tokens = slots * max_len // 4
        self.prefix_block = prefix_block
        self._prefix_index = _PrefixIndex(prefix_cache_tokens // prefix_block, prefix_block)
        self.stats = EngineStats()
        self._prefill = _Counted(_prefill, self.stats)
        self._store_blocks = _Counted(_store_blocks, self.stats)
        self._insert = _Counted(_insert, self.stats)
        self._decode_chunk = _Counted(_decode_chunk, self.stats)
        self._state: dict | None = None
        self._pool: tuple[jax.Array, jax.Array] | None = None
        self._running = False

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys and values of one token over all layers, in the cache's dtype."""
        cfg = self.config
        return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.resolved_head_dim * jnp.dtype(cfg.dtype).itemsize

    @property
    def kv_cache_bytes(self) -> dict[str, int]:
        """Device memory of the ring cache (slots x max_len) and the prefix pool, whole (all devices)."""
        return {"ring": self.slots * self.max_len * self.kv_bytes_per_token,
                "prefix_pool": self._prefix_index.num_blocks * self.prefix_block * self.kv_bytes_per_token}

    def _sharded(self):
        """Binds the mesh and rules while jitted functions trace (a no-op without a mesh)."""
        return shd.activation_sharding(self.mesh, self.rules)

    def _put(self, x, logical: tuple[str | None, ...]):
        if self.mesh is None:
            return jnp.asarray(x)
        spec = shd.logical_to_mesh_spec(logical, np.shape(x), self.mesh, self.rules)
        return jax.device_put(x, NamedSharding(self.mesh, spec))

    # -- state ---------------------------------------------------------------------------------
    def _init_state(self) -> dict:
        # Distinct buffers throughout: the state is donated, and one buffer may not be donated twice.
        return {name: self._put(np.full(shape, fill, dtype), axes)
                for name, (shape, dtype, axes, fill) in state_layout(self.config, self.slots, self.max_len).items()}

    def _init_pool(self) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        shape = (cfg.num_layers, self._prefix_index.num_blocks, self.prefix_block, cfg.num_kv_heads,
                 cfg.resolved_head_dim)
        axes = ("layers", None, "length", "kv_heads", "head_dim")
        return (self._put(np.zeros(shape, cfg.dtype), axes), self._put(np.zeros(shape, cfg.dtype), axes))

    def _check(self, i: int, r: Request) -> None:
        n = len(r.prompt_ids)
        name = f"request {r.id if r.id is not None else i}"
        if n == 0:
            raise UserError(f"{name}: the prompt has no tokens")
        if r.max_new_tokens < 1:
            raise UserError(f"{name}: max_new_tokens must be positive, got {r.max_new_tokens}")
        if n + r.max_new_tokens > self.max_len:
            raise UserError(f"{name}: prompt ({n} tokens) + max_new_tokens ({r.max_new_tokens}) = "
                            f"{n + r.max_new_tokens} exceeds the engine's max_len ({self.max_len})")
        if r.temperature < 0 or not 0 < r.top_p <= 1 or r.top_k < 0:
            raise UserError(f"{name}: needs temperature >= 0, 0 < top_p <= 1, top_k >= 0 "
                            f"(got {r.temperature}, {r.top_p}, {r.top_k})")
        if any(r.stop) and self.decode is None:
            raise UserError(f"{name}: stop strings need the engine's decode function")

    # -- prefill and insertion -----------------------------------------------------------------
    def _batch_bucket(self, n: int) -> int:
        return _pow2_bucket(max(n, self._batch_shards), self._batch_shards, self.slots)

    def _prefill_prompts(self, prompts: list[tuple[int, ...]]) -> dict[tuple[int, ...], tuple[_Prefilled, int]]:
        """Prefills distinct prompts after their longest cached prefix, one call per shape bucket, and
        stores their new full blocks; returns prompt -> (outputs, row)."""
        found: dict[tuple[int, ...], tuple[_Prefilled, int]] = {}
        block = self.prefix_block
        groups: dict[tuple[int, int], list[tuple[tuple[int, ...], list[int]]]] = collections.defaultdict(list)
        pinned: set[int] = set()  # blocks a later group will read: a store in between must not evict them
        for p in prompts:
            cached = self._prefix_index.lookup(p)
            pinned.update(cached)
            blocks = _pow2_bucket(len(cached), 1, 1 << 30) if cached else 0
            rest = _pow2_bucket(len(p) - len(cached) * block, self.min_prompt_bucket, self.max_len)
            groups[(blocks, rest)].append((p, cached))
        if self._pool is None:
            self._pool = self._init_pool()
        for (blocks, width), group in groups.items():
            keep = min(blocks * block + width, self.max_len)
            for start in range(0, len(group), self.slots):
                part = group[start: start + self.slots]
                batch = self._batch_bucket(len(part))
                ids = np.zeros((batch, width), np.int32)
                valid = np.zeros((batch, width), np.int32)
                valid[:, -1] = 1  # filler rows: one token, so that no row is empty
                table = np.zeros((batch, blocks), np.int32)
                prefix_len = np.zeros(batch, np.int32)
                for row, (p, cached) in enumerate(part):
                    rest = p[len(cached) * block:]
                    ids[row, width - len(rest):] = rest
                    valid[row, width - len(rest):] = 1
                    table[row, blocks - len(cached):] = cached
                    prefix_len[row] = len(cached) * block
                with self._sharded():
                    k, v, out_valid, logits = self._prefill(self.config, keep, self.params, *self._pool, table,
                                                            prefix_len, ids, valid)
                lengths = prefix_len + valid.sum(axis=1, dtype=np.int32)
                out = _Prefilled(k, v, out_valid, logits, jnp.asarray(lengths))
                self.stats.prefills += len(part)
                self.stats.prefix_tokens_reused += int(prefix_len[: len(part)].sum())
                self.stats.prompt_tokens += sum(len(p) for p, _ in part)
                for row, (p, _) in enumerate(part):
                    found[p] = (out, row)
                self._store_new_blocks(part, out, keep, pinned)
        return found

    def _store_new_blocks(self, part: list[tuple[tuple[int, ...], list[int]]], out: _Prefilled, keep: int,
                          pinned: set[int]) -> None:
        """Copies the full blocks of these prompts that the pool lacks into it (one call, bucketed),
        evicting none of ``pinned``."""
        if self._prefix_index.num_blocks == 0:
            return
        taken = set(pinned)
        entries = []
        for row, (p, cached) in enumerate(part):
            for j, block_id in self._prefix_index.allocate(p, cached, taken):
                entries.append((row, keep - len(p) + j * self.prefix_block, block_id))
        if not entries:
            return
        size = _pow2_bucket(len(entries), 8, 1 << 30)
        rows, starts = np.zeros(size, np.int32), np.zeros(size, np.int32)
        dst = np.full(size, self._prefix_index.num_blocks, np.int32)
        for e, (row, col, block_id) in enumerate(entries):
            rows[e], starts[e], dst[e] = row, col, block_id
        with self._sharded():
            self._pool = self._store_blocks(*self._pool, out.k, out.v, rows, starts, dst)

    def _fill(self, state: dict, assignments: list[tuple[int, Request, tuple[int, ...]]],
              prefilled: dict[tuple[int, ...], tuple[_Prefilled, int]]) -> dict:
        """Inserts each (slot, request, prompt) from its prompt's prefill; one call per prefill output."""
        groups: dict[int, list[tuple[int, Request, int]]] = collections.defaultdict(list)
        sources: dict[int, _Prefilled] = {}
        for slot, req, prompt in assignments:
            out, row = prefilled[prompt]
            sources[id(out)] = out
            groups[id(out)].append((slot, req, row))
        s = self.slots
        for key, items in groups.items():
            out = sources[key]
            dst = np.full(s, s, np.int32)  # index s: an unused entry, dropped
            src = np.zeros(s, np.int32)
            limit, top_k = np.ones(s, np.int32), np.zeros(s, np.int32)
            temperature, top_p = np.zeros(s, np.float32), np.ones(s, np.float32)
            seed = np.zeros(s, np.uint32)
            for j, (slot, req, row) in enumerate(items):
                dst[j], src[j], limit[j], top_k[j] = slot, row, req.max_new_tokens, req.top_k
                temperature[j], top_p[j], seed[j] = req.temperature, req.top_p, req.seed % 2**32
            with self._sharded():
                state = self._insert(state, out.k, out.v, out.valid, out.logits, out.lengths, dst, src, limit,
                                     temperature, top_p, top_k, seed)
        return state

    # -- the loop ------------------------------------------------------------------------------
    def generate(self, requests: Iterable[Request]) -> Iterator[Result]:
        """Yields a ``Result`` per request as it finishes (not in input order); checks requests first."""
        requests = list(requests)
        for i, r in enumerate(requests):
            self._check(i, r)
        return (result for _, result in self._run_indexed(requests))

    def generate_all(self, requests: Iterable[Request]) -> list[Result]:
        """All results, in input order."""
        requests = list(requests)
        for i, r in enumerate(requests):
            self._check(i, r)
        results = dict(self._run_indexed(requests))
        return [results[i] for i in range(len(requests))]

    def _run_indexed(self, requests: list[Request]) -> Iterator[tuple[int, Result]]:
        if self._running:
            raise RuntimeError("Engine.generate is already running")
        self._running = True
        try:
            yield from self._loop(requests)
        finally:
            self._running = False

    def _loop(self, requests: list[Request]) -> Iterator[tuple[int, Result]]:
        t0 = time.perf_counter()
        stats0 = dataclasses.replace(self.stats)
        prompts = [tuple(int(t) for t in r.prompt_ids) for r in requests]
        # Group identical prompts (in first-occurrence order) so that forks of one prefill are adjacent.
        first: dict[tuple[int, ...], int] = {}
        for i, p in enumerate(prompts):
            first.setdefault(p, i)
        queue = collections.deque(sorted(range(len(requests)), key=lambda i: first[prompts[i]]))
        remaining = collections.Counter(prompts)
        retained: dict[tuple[int, ...], tuple[_Prefilled, int]] = {}
        state = self._state if self._state is not None else self._init_state()
        self._state = None  # donated below; restored when the loop ends
        state["done"] = jnp.ones((self.slots,), bool)
        slot_req: list[int | None] = [None] * self.slots
        slot_ids: list[list[int]] = [[] for _ in range(self.slots)]
        # Host work of the last chunk, done while the next one runs: requests the device finished
        # (slot already freed) and slots whose new tokens may complete a stop string.
        to_finish: list[tuple[int, list[int], FinishReason]] = []
        to_check: list[tuple[int, int]] = []  # (slot, tokens new in the last chunk)
        try:
            while queue or to_finish or to_check or any(r is not None for r in slot_req):
                free = [s for s in range(self.slots) if slot_req[s] is None]
                if free and queue:
                    assignments = []
                    for slot in free[: len(queue)]:
                        i = queue.popleft()
                        assignments.append((slot, requests[i], prompts[i]))
                        slot_req[slot], slot_ids[slot] = i, []
                    new = list(dict.fromkeys(p for _, _, p in assignments if p not in retained))
                    retained.update(self._prefill_prompts(new))
                    state = self._fill(state, assignments, retained)
                    self.stats.prefills_saved += len(assignments) - len(new)
                    for _, _, p in assignments:
                        remaining[p] -= 1
                        if remaining[p] == 0:
                            del retained[p]
                running = any(r is not None for r in slot_req)
                if running:  # dispatched, not waited for: the host work below overlaps it
                    with self._sharded():
                        state, out, steps = self._decode_chunk(self.config, self.chunk, self.params, state,
                                                               jnp.int32(self.eos_id), jnp.bool_(bool(queue)))
                stopped = []
                for slot, new_count in to_check:
                    i = slot_req[slot]
                    stop = [x for x in requests[i].stop if x]
                    if self._hits_stop(slot_ids[slot], new_count, stop):
                        stopped.append(slot)
                        slot_req[slot] = None
                        to_finish.append((i, slot_ids[slot], "stop"))
                if stopped:  # they ran one more chunk meanwhile; its tokens are dropped below
                    state["done"] = state["done"].at[np.asarray(stopped)].set(True)
                finished, to_finish, to_check = to_finish, [], []
                for i, ids, reason in finished:
                    req = requests[i]
                    result = self._finish(i, req, ids, reason, [x for x in req.stop if x])
                    self.stats.tokens += len(ids)
                    self.stats.requests += 1
                    yield i, result
                if not running:
                    continue
                out, done = np.asarray(out), np.asarray(state["done"])
                self.stats.decode_steps += int(steps)
                self.stats.chunks += 1
                for slot, i in enumerate(slot_req):
                    if i is None:
                        continue
                    new_ids = out[slot][out[slot] >= 0].tolist()
                    slot_ids[slot].extend(new_ids)
                    ids = slot_ids[slot]
                    if done[slot]:
                        slot_req[slot] = None
                        to_finish.append((i, ids, "eos" if ids and ids[-1] == self.eos_id else "length"))
                    elif new_ids and any(requests[i].stop):
                        to_check.append((slot, len(new_ids)))
        finally:
            # An exception inside a call that donated ``state`` leaves deleted buffers: start afresh then.
            deleted = any(x.is_deleted() for x in jax.tree.leaves(state))
            self._state = None if deleted else state
            if self._pool is not None and any(x.is_deleted() for x in self._pool):
                self._pool = None
                self._prefix_index = _PrefixIndex(self._prefix_index.num_blocks, self.prefix_block)
            self.stats.seconds += time.perf_counter() - t0
            d = {f.name: getattr(self.stats, f.name) - getattr(stats0, f.name) for f in dataclasses.fields(self.stats)}
            log.info("engine: %d requests, %d tokens in %.2fs, %d prefills (%d saved, %d of %d prompt tokens from "
                     "the prefix cache), %d decode steps, %d compilations", d["requests"], d["tokens"], d["seconds"],
                     d["prefills"], d["prefills_saved"], d["prefix_tokens_reused"], d["prompt_tokens"],
                     d["decode_steps"], d["compilations"])

    def _hits_stop(self, ids: list[int], new_count: int, stop: list[str]) -> bool:
        """Whether the last ``new_count`` tokens complete a stop string.

        Decodes only the new tokens and enough before them to hold the longest stop string (a
        token is at least one character), so a long generation costs O(new) per chunk, not O(length);
        a hit is confirmed on the whole text.
        """
        window = new_count + max(map(len, stop)) + 8
        if len(ids) > window and not _cut_at_stop(self.decode(ids[-window:]), stop)[1]:
            return False
        return _cut_at_stop(self.decode(ids), stop)[1]

    def _finish(self, index: int, req: Request, ids: list[int], reason: FinishReason, stop: list[str]) -> Result:
        rid = req.id if req.id is not None else index
        if self.decode is None:
            return Result(rid, list(ids), reason)
        gen = Generator._finish(_DecodeOnly(self.decode), list(ids), reason, stop)
        return Result(rid, gen.token_ids, gen.finish_reason, gen.text)
