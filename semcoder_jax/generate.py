"""Batched KV-cache sampling for the decoder, and a text-level ``Generator``.

The device side is two jitted pure functions: ``prefill`` (left-padded prompts -> cache + the
first next-token logits) and ``decode_chunk`` (up to ``chunk`` sampling steps in one
``lax.while_loop``, stopping early when every row has produced EOS).  Between chunks the host
checks stop strings, so long generations that end at e.g. ``[/ANSWER]`` do not run to
``max_new_tokens``.  Shapes are bucketed (prompt length and cache size rounded up) to bound the
number of compilations.

Conventions shared with the eval harness's HF backend: the prompt is encoded without special
tokens and the bos token is prepended; greedy decoding when ``temperature == 0``; ``text`` is cut
just before the first stop string (vLLM semantics) and excludes EOS; ``token_ids`` are the tokens
generated up to and including the EOS or the token that completed a stop string.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from semcoder_jax.config import ModelConfig
from semcoder_jax.errors import UserError
from semcoder_jax.model import Decoder, KVCache

FinishReason = Literal["eos", "stop", "length"]


@dataclasses.dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason


def _bucket(n: int, multiple: int) -> int:
    return max(multiple, int(math.ceil(n / multiple)) * multiple)


# ---- sampling (pure) -------------------------------------------------------------------------

def sample_tokens(logits: jax.Array, rng: jax.Array, temperature: jax.Array, top_p: jax.Array, greedy: bool) -> jax.Array:
    """Next tokens [B] from logits [B, V]: argmax, or nucleus sampling at ``temperature``.

    ``rng`` is one key for the whole batch, or a [B] array of keys, one per row (a row's draw then
    depends on its own key only, not on the other rows of the batch).
    """
    logits = logits.astype(jnp.float32)
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass strictly above each token
    keep_sorted = before < top_p
    # The smallest kept logit is the threshold; ties at the threshold are kept.
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits >= threshold, logits, -jnp.inf)
    if rng.shape:
        return jax.vmap(lambda key, row: jax.random.categorical(key, row))(rng, logits).astype(jnp.int32)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class _Settings:
    """Static settings of the compiled functions."""

    config: ModelConfig
    greedy: bool
    chunk: int


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(4,))
def prefill(settings: _Settings, params, input_ids, valid, cache: KVCache):
    """Runs left-padded prompts [B, P] through the model; returns (last logits [B, V], cache, next positions)."""
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    logits, cache = Decoder(settings.config).apply({"params": params}, input_ids, positions, valid, cache=cache)
    return logits[:, -1].astype(jnp.float32), cache, jnp.sum(valid, axis=1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(2,))
def decode_chunk(settings: _Settings, params, state: dict, temperature, top_p, eos_id, stop_at):
    """Up to ``settings.chunk`` steps: sample, record, feed back; stops early when all rows are done.

    ``state``: logits [B, V], cache, positions [B], out [B, max_new] tokens, done [B] bool,
    step (scalar), rng (one key, or [B] keys: one per row), limit [B] (each row's max_new_tokens).
    ``stop_at`` caps the step count (the largest limit).
    """
    model = Decoder(settings.config)
    end = jnp.minimum(state["step"] + settings.chunk, stop_at)

    def cond(s):
        return (s["step"] < end) & ~jnp.all(s["done"])

    def body(s):
        if s["rng"].shape:  # one key per row: each row's stream is its own
            keys = jax.vmap(jax.random.split)(s["rng"])
            rng, step_rng = keys[:, 0], keys[:, 1]
        else:
            rng, step_rng = jax.random.split(s["rng"])
        token = sample_tokens(s["logits"], step_rng, temperature, top_p, settings.greedy)
        token = jnp.where(s["done"], eos_id, token)
        out = jax.lax.dynamic_update_slice(s["out"], token[:, None], (0, s["step"]))
        done = s["done"] | (token == eos_id) | (s["step"] + 1 >= s["limit"])
        live = (~s["done"]).astype(jnp.int32)[:, None]
        logits, cache = model.apply({"params": params}, token[:, None], s["positions"][:, None], live,
                                    cache=s["cache"])
        return dict(logits=logits[:, -1].astype(jnp.float32), cache=cache, positions=s["positions"] + 1,
                    out=out, done=done, step=s["step"] + 1, rng=rng, limit=s["limit"])

    return jax.lax.while_loop(cond, body, state)


def generate_ids(params, config: ModelConfig, prompts: Sequence[Sequence[int]], *,
                 max_new_tokens: int | Sequence[int], eos_id: int, pad_id: int = 0, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, seeds: Sequence[int] | None = None, chunk: int = 64,
                 should_stop=None) -> list[tuple[list[int], FinishReason]]:
    """Generates for one batch of token-id prompts; returns (new ids, finish reason) per prompt.

    ``max_new_tokens``: one limit, or one per prompt.  ``seeds``: one sampling seed per prompt, so that a
    row's tokens do not depend on which rows share its batch; without them the batch draws from one key
    made from ``seed``.  ``should_stop(row, ids) -> bool`` is called between chunks for unfinished rows
    (stop strings).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt must have at least one token")
    batch = len(prompts)
    limits = np.broadcast_to(np.asarray(max_new_tokens, np.int64), (batch,))
    if (limits <= 0).any():
        raise UserError(f"max_new_tokens must be positive, got {int(limits.min())}")
    if seeds is not None and len(seeds) != batch:
        raise UserError(f"{len(seeds)} seeds for {batch} prompts")
    max_new_tokens = int(limits.max())
    prompt_len = _bucket(max(len(p) for p in prompts), 16)
    max_new = _bucket(max_new_tokens, 16)
    if prompt_len + max_new > config.max_position_embeddings:
        raise UserError(f"prompt ({prompt_len} tokens, bucketed) + max_new_tokens exceeds the model's "
                        f"max_position_embeddings ({config.max_position_embeddings})")
    ids = np.full((batch, prompt_len), pad_id, np.int32)
    valid = np.zeros((batch, prompt_len), np.int32)
    for row, p in enumerate(prompts):
        ids[row, prompt_len - len(p):] = p
        valid[row, prompt_len - len(p):] = 1
    greedy = temperature <= 0.0
    settings = _Settings(config, greedy, chunk)
    cache = KVCache.init(config, batch, prompt_len + max_new)
    logits, cache, positions = prefill(settings, params, jnp.asarray(ids), jnp.asarray(valid), cache)
    rng = (jax.vmap(jax.random.key)(jnp.asarray(np.asarray(seeds, np.int64) % 2**32, jnp.uint32))
           if seeds is not None else jax.random.key(seed))
    state = dict(logits=logits, cache=cache, positions=positions, out=jnp.full((batch, max_new), eos_id, jnp.int32),
                 done=jnp.zeros((batch,), bool), step=jnp.zeros((), jnp.int32), rng=rng,
                 limit=jnp.asarray(limits, jnp.int32))
    stopped_at = np.full(batch, -1)  # step at which a row's stop condition was seen (host side)
    temp = jnp.float32(max(temperature, 1e-6))
    while True:
        state = decode_chunk(settings, params, state, temp, jnp.float32(top_p), jnp.int32(eos_id),
                             jnp.int32(max_new_tokens))
        step = int(state["step"])
        done = np.asarray(state["done"])
        if should_stop is not None:
            out = np.asarray(state["out"])
            for row in np.flatnonzero(~done & (stopped_at < 0)):
                if should_stop(row, out[row, :step].tolist()):
                    stopped_at[row] = step
            if (stopped_at >= 0).any():
                state["done"] = jnp.asarray(done | (stopped_at >= 0))
        if step >= max_new_tokens or bool(np.asarray(state["done"]).all()):
            break
    out = np.asarray(state["out"])[:, :step]
    results = []
    for row in range(batch):
        # A row stopped by the host or by its own limit stops there: later slots hold filler, not output.
        end = min(int(limits[row]), int(stopped_at[row])) if stopped_at[row] >= 0 else int(limits[row])
        tokens = out[row, :end].tolist()
        if eos_id in tokens:
            results.append((tokens[: tokens.index(eos_id) + 1], "eos"))
        else:
            results.append((tokens, "stop" if stopped_at[row] >= 0 else "length"))
    return results


# ---- text level ------------------------------------------------------------------------------

def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class Generator:
    """A model plus its tokenizer, generating text for batches of prompts."""

    def __init__(self, config: ModelConfig, params, tokenizer, *, add_bos: bool = True, engine: bool = True):
        self.config = config
        self.engine = engine  # False: every request on the batched sampler (``generate_ids``), as before the engine
        self.params = params
        self.tokenizer = tokenizer
        self.add_bos = add_bos
        self.eos_id = tokenizer.eos_id if tokenizer.eos_id is not None else config.eos_token_id
        if self.eos_id is None:
            raise UserError("neither the tokenizer nor the model config defines an eos token")
        self.bos_id = tokenizer.bos_id if tokenizer.bos_id is not None else config.bos_token_id

    def encode(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt)
        return ([self.bos_id] if self.add_bos and self.bos_id is not None else []) + ids

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int | Sequence[int], temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, seeds: Sequence[int] | None = None, stop: Sequence[str] = (),
                 batch_size: int = 8, chunk: int = 64) -> list[Generation]:
        """``max_new_tokens`` and ``seeds``: one each, or one per prompt (see ``generate_ids``).

        Greedy decoding, or sampling with one seed per prompt, runs on the continuous-batching engine
        (``semcoder_jax.engine``, ``batch_size`` slots): the same tokens as ``generate_ids`` (per-row random
        streams), without waiting for a batch's slowest row and with one prefill per distinct prompt.
        Sampling from one shared ``seed`` keeps the batched sampler, whose draws depend on the batch.
        """
        encoded = [self.encode(p) for p in prompts]
        limits = np.broadcast_to(np.asarray(max_new_tokens, np.int64), (len(prompts),))
        if encoded and self.engine and (temperature <= 0.0 or seeds is not None):
            return self._generate_on_engine(encoded, limits, temperature, top_p, seeds, stop, batch_size)
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # less padding per batch
        results: list[Generation | None] = [None] * len(prompts)
        stop = [s for s in stop if s]
        for start in range(0, len(order), batch_size):
            rows = order[start: start + batch_size]

            def should_stop(row: int, ids: list[int]) -> bool:
                return _cut_at_stop(self.tokenizer.decode(ids), stop)[1]

            outputs = generate_ids(
                self.params, self.config, [encoded[i] for i in rows], max_new_tokens=[int(limits[i]) for i in rows],
                eos_id=self.eos_id, pad_id=self.tokenizer.pad_id or 0, temperature=temperature, top_p=top_p,
                seed=seed + start, seeds=None if seeds is None else [seeds[i] for i in rows], chunk=chunk,
                should_stop=should_stop if stop else None)
            for i, (ids, reason) in zip(rows, outputs):
                results[i] = self._finish(ids, reason, stop)
        return results  # type: ignore[return-value]

    def _generate_on_engine(self, encoded: list[list[int]], limits: np.ndarray, temperature: float, top_p: float,
                            seeds: Sequence[int] | None, stop: Sequence[str], slots: int) -> list[Generation]:
        from semcoder_jax.engine import Engine, Request

        if any(len(p) == 0 for p in encoded):
            raise UserError("every prompt must have at least one token")
        longest = max(len(p) + int(n) for p, n in zip(encoded, limits))
        max_len = max(256, 1 << (longest - 1).bit_length())  # a power of two: few compiled shapes
        if longest > self.config.max_position_embeddings:
            raise UserError(f"prompt + max_new_tokens ({longest} tokens) exceeds the model's "
                            f"max_position_embeddings ({self.config.max_position_embeddings})")
        max_len = min(max_len, self.config.max_position_embeddings)
        key = (max(1, slots), max_len)
        engines = self.__dict__.setdefault("_engines", {})
        if key not in engines:
            engines[key] = Engine(self.params, self.config, slots=key[0], max_len=max_len, eos_id=self.eos_id,
                                  decode=self.tokenizer.decode)
        stop = [s for s in stop if s]
        requests = [Request(p, int(n), temperature=max(temperature, 0.0), top_p=top_p,
                            seed=0 if seeds is None else int(seeds[i]), stop=tuple(stop), id=i)
                    for i, (p, n) in enumerate(zip(encoded, limits))]
        return [Generation(text=r.text, token_ids=list(r.token_ids), finish_reason=r.finish_reason)
                for r in engines[key].generate_all(requests)]

    def decoding_summary(self) -> str | None:
        """One line over every engine this generator used (None if none did): requests, tokens, prefills,
        prefix-cache reuse, decode steps and compilations, e.g. for a CLI to print when it is done."""
        engines = list(self.__dict__.get("_engines", {}).values())
        if not engines:
            return None
        total = {f: sum(getattr(e.stats, f) for e in engines) for f in
                 ("requests", "tokens", "seconds", "prefills", "prefills_saved", "prompt_tokens",
                  "prefix_tokens_reused", "decode_steps", "compilations")}
        return (f"decoding (jax engine): {total['requests']} requests, {total['tokens']} tokens in "
                f"{total['seconds']:.1f} s; {total['prefills']} prefills ({total['prefills_saved']} requests shared "
                f"another's), {total['prefix_tokens_reused']} of {total['prompt_tokens']} prompt tokens from the "
                f"prefix cache; {total['decode_steps']} decode steps; {total['compilations']} compilations")

    def _finish(self, ids: list[int], reason: FinishReason, stop: Sequence[str]) -> Generation:
        body = ids[:-1] if reason == "eos" else ids
        text, hit = _cut_at_stop(self.tokenizer.decode(body), stop)
        if hit and reason != "eos":
            # Keep tokens only up to the one that completed the stop string.
            for n in range(1, len(body) + 1):
                if _cut_at_stop(self.tokenizer.decode(body[:n]), stop)[1]:
                    ids = body[:n]
                    break
            reason = "stop"
        elif hit:
            reason = "stop"
        return Generation(text=text, token_ids=list(ids), finish_reason=reason)


def default_compute_dtype() -> str:
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def load_model(path: str, *, dtype: str | None = None) -> tuple[ModelConfig, Any, str | None]:
    """(config, device params, tokenizer dir) from an HF directory, a native checkpoint or a training run,
    local or on gs:// (read in place: safetensors by byte range, Orbax through TensorStore)."""
    from semcoder_jax import convert, locations

    dtype = dtype or default_compute_dtype()
    path = locations.absolute(path)
    locations.probe_readable("--model", path)
    root = locations.path(path)
    if (root / "config.json").exists() and not (root / convert.MODEL_CONFIG_FILE).exists():
        config, params = convert.load_hf_params(path, param_dtype=dtype)
        tokenizer_dir = path
    else:
        ckpt_dir, config, params_dir = convert.resolve_params_checkpoint(path)
        params = convert.restore_params(params_dir, config, dtype=dtype)
        tokenizer_dir = locations.join(ckpt_dir, convert.TOKENIZER_DIR)
        if not locations.path(tokenizer_dir).is_dir():
            tokenizer_dir = None
    config = config.replace(dtype=dtype, param_dtype=dtype)
    return config, jax.tree.map(jnp.asarray, params), tokenizer_dir


def load_generator(path: str, *, dtype: str | None = None, tokenizer: str | None = None) -> Generator:
    """A ``Generator`` for an HF directory, a native checkpoint or a training run directory."""
    from data_pipeline.tokenizer import load_tokenizer

    config, params, tokenizer_dir = load_model(path, dtype=dtype)
    tokenizer_dir = tokenizer or tokenizer_dir
    if tokenizer_dir is None:
        raise UserError(f"{path}: no tokenizer found in the checkpoint; pass --tokenizer DIR")
    return Generator(config, params, load_tokenizer(tokenizer_dir))
