"""The ``eval`` and ``roofline`` workloads of ``benchmarks/generate.py``.

``eval``: what a SemCoder evaluation asks of the sampler, on one random model, three ways in one run:
  - the real prompts: HumanEval (``--humaneval`` of 164) x ``--samples`` (10) at temperature 0.8, top-p
    0.95, one seed per sample; CRUXEval-O monologue prompts (``--cruxeval`` of 800), greedy, stop
    ``[/ANSWER]``.  ``--fraction`` takes that share of both (CPU runs);
  - token ids from a byte-level BPE trained here on those prompts with the model's vocabulary size (a
    tiny vocabulary makes prompts longer than deepseek-coder's tokenizer would);
  - completion lengths drawn once (seeded) from log-normal distributions, HumanEval median 150 capped at
    512, CRUXEval-O median 250 capped at 512; EOS is never produced (its id is -1), so every sampler
    generates exactly those tokens and tokens/s compare like for like; stop strings are checked as in
    an evaluation (a random model does not write ``[/ANSWER]``);
  - (a) the continuous-batching engine (``semcoder_jax.engine``, ``--batch`` slots, every request at
    once), (b) the batched sampler as ``Generator`` used it before the engine (``generate_ids``: prompts
    sorted by length, ``--batch`` rows, each row padded to its batch's longest and run until its
    slowest finishes, each sample prefilled on its own), (c) transformers ``generate`` the same way (a
    row stops at its own limit through a stopping criterion; the batch runs until its slowest row);
  - greedy CRUXEval-O rows compared token by token across the three.

``roofline``: the engine's decode step at ``--batches`` slots over a ring of ``--context`` (+ 2 chunks) columns,
against (weights + the whole ring cache) bytes / ``--hbm-gbps``; one decode step reads both once (the
ring's every column, whatever it holds: so the figure is the step at a full context).
"""

from __future__ import annotations

import argparse
import math
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import record

from semcoder_jax.config import ModelConfig, get_preset
from semcoder_jax.engine import Engine, Request
from semcoder_jax.generate import _cut_at_stop, generate_ids
from semcoder_jax.model import init_params

STOP = ("[/ANSWER]",)
HBM_GBPS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0}  # SXM parts; --hbm-gbps for anything else


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("eval and roofline workloads")
    group.add_argument("--data-dir", help="benchmark data (default: $SEMCODER_DATA_DIR, else ../shared/data)")
    group.add_argument("--humaneval", type=int, default=164, help="HumanEval prompts (of 164)")
    group.add_argument("--samples", type=int, default=10, help="samples per HumanEval prompt")
    group.add_argument("--cruxeval", type=int, default=800, help="CRUXEval-O prompts (of 800)")
    group.add_argument("--fraction", type=float, default=1.0, help="take this share of both prompt sets")
    group.add_argument("--max-new", type=int, default=512, help="cap of the completion lengths")
    group.add_argument("--samplers", default="engine,batched,transformers",
                       help="which of engine, batched, transformers to run")
    group.add_argument("--batches", default="1,16,64,256", help="roofline: slot counts")
    group.add_argument("--context", type=int, default=1024, help="roofline: the ring's columns per slot")
    group.add_argument("--hbm-gbps", type=float, help="roofline: memory bandwidth (default: by GPU name)")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.record and re.sub(r"[^A-Za-z0-9_.-]", "-", args.record) != args.record:
        parser.error(f"--record {args.record!r}: use letters, digits, '.', '_' and '-' only")
    overrides = {"num_layers": args.layers} if args.layers else {}
    config = get_preset(args.preset, dtype=args.dtype, param_dtype=args.dtype, initializer_range=0.5, **overrides)
    started = record.machine()
    params = init_params(config, jax.random.key(0))
    if args.workload == "eval":
        repeats, name = eval_workload(args, parser, config, params)
    else:
        repeats, name = roofline(args, parser, config, params)
    if args.record is not None:
        print(f"recorded: {record.write(args.record or name, repeats, started=started)}")


def _dtype_tag(dtype: str) -> str:
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dtype, dtype)


def kv_bytes_per_token(config: ModelConfig) -> int:
    return 2 * config.num_layers * config.num_kv_heads * config.resolved_head_dim * jnp.dtype(config.dtype).itemsize


# ---- the eval workload ---------------------------------------------------------------------------------

def _prompts(args, parser) -> tuple[list[str], list[str]]:
    import os
    from pathlib import Path

    from eval.benchmarks import get_benchmark

    data_dir = args.data_dir or os.environ.get("SEMCODER_DATA_DIR")
    if data_dir is None:
        shared = Path(__file__).resolve().parents[2] / "shared" / "data"
        data_dir = str(shared) if shared.is_dir() else None
    take = lambda n: max(1, round(n * args.fraction))  # noqa: E731
    humaneval = get_benchmark("humaneval").load(data_dir, take(args.humaneval))
    cruxeval = get_benchmark("cruxeval-o", mode="monologue").load(data_dir, take(args.cruxeval))
    return [p.prompt for p in humaneval], [p.prompt for p in cruxeval]


def _tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE with <pad> 0, <s> 1, </s> 2, trained on the workload's own prompts."""
    from data_pipeline.sample.generate import train_byte_level_bpe

    return train_byte_level_bpe(texts, vocab_size)


def _workload(args, parser, config):
    """(requests, the tokenizer): HumanEval samples first, then CRUXEval-O, each with its own length."""
    humaneval, cruxeval = _prompts(args, parser)
    tok = _tokenizer(humaneval + cruxeval, config.vocab_size)
    rng = np.random.default_rng(0)

    def lengths(n, median):
        return np.clip(np.round(rng.lognormal(math.log(median), 0.6, n)), 8, args.max_new).astype(int).tolist()

    requests = []
    he_lengths = lengths(len(humaneval) * args.samples, 150)
    for i, text in enumerate(humaneval):
        ids = [1] + tok.encode(text).ids
        for j in range(args.samples):
            requests.append(Request(ids, he_lengths[i * args.samples + j], temperature=0.8, top_p=0.95,
                                    seed=1000 * i + j, id=("humaneval", i, j)))
    for i, (text, n) in enumerate(zip(cruxeval, lengths(len(cruxeval), 250))):
        requests.append(Request([1] + tok.encode(text).ids, n, stop=STOP, id=("cruxeval-o", i)))
    return requests, tok


def _run_engine(requests, config, params, args, tok) -> tuple[dict, dict]:
    max_len = 1 << (max(len(r.prompt_ids) + r.max_new_tokens for r in requests) - 1).bit_length()
    engine = Engine(params, config, slots=args.batch, max_len=max_len, eos_id=-1, decode=tok.decode)
    engine.generate_all(requests[: 2 * args.batch] + requests[-2 * args.batch:])  # compile the common shapes
    before = engine.stats.compilations, engine.stats.prefills, engine.stats.prefix_tokens_reused
    prompt_before = engine.stats.prompt_tokens
    start = time.perf_counter()
    results = engine.generate_all(requests)
    seconds = time.perf_counter() - start
    info = {"compilations": engine.stats.compilations - before[0], "prefills": engine.stats.prefills - before[1],
            "prompt_tokens_prefilled": engine.stats.prompt_tokens - prompt_before,
            "prompt_tokens_from_prefix_cache": engine.stats.prefix_tokens_reused - before[2],
            "kv_cache_bytes": engine.kv_cache_bytes, "max_len": max_len}
    return {r.id: r.token_ids for r in results}, {"seconds": seconds, **info}


def _run_batched(requests, config, params, args, tok) -> tuple[dict, dict]:
    """As ``Generator.generate`` ran every request before the engine: sorted by length, fixed batches."""
    def run(subset):
        out = {}
        for group in _groups(subset, args.batch):
            def should_stop(row, ids, group=group):
                return _cut_at_stop(tok.decode(ids), list(group[row].stop))[1]

            sampled = group[0].temperature > 0
            rows = generate_ids(params, config, [r.prompt_ids for r in group],
                                max_new_tokens=[r.max_new_tokens for r in group], eos_id=-1,
                                temperature=group[0].temperature, top_p=group[0].top_p,
                                seeds=[r.seed for r in group] if sampled else None,
                                should_stop=should_stop if any(r.stop for r in group) else None)
            out.update({r.id: ids for r, (ids, _) in zip(group, rows)})
        return out

    run(requests[: args.batch] + requests[-args.batch:])  # warm-up
    start = time.perf_counter()
    out = run(requests)
    return out, {"seconds": time.perf_counter() - start}


def _groups(requests, batch):
    """Batches of one benchmark each (its own sampling settings), prompts sorted by length within it."""
    for kind in ("humaneval", "cruxeval-o"):
        part = sorted((r for r in requests if r.id[0] == kind), key=lambda r: len(r.prompt_ids))
        for start in range(0, len(part), batch):
            yield part[start: start + batch]


def hf_model(config: ModelConfig, params, dtype: str, device: str):
    """``LlamaForCausalLM`` holding ``params`` (the native layout mapped to HF's), in eval mode on ``device``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from semcoder_jax.convert import mappings, numpy_to_torch

    fields = config.to_hf_dict()
    fields.pop("model_type")
    hf = LlamaForCausalLM(LlamaConfig(**fields)).to(getattr(torch, dtype))
    host = jax.tree.map(np.asarray, params)
    state = {}
    for m in mappings(config):
        leaf = host
        for key in m.leaf:
            leaf = leaf[key]
        for i, name in enumerate(m.hf_names(config.num_layers)):
            state[name] = numpy_to_torch((leaf[i] if m.per_layer else leaf).reshape(m.hf_shape))
    hf.load_state_dict(state, strict=False)
    return hf.to(device).eval()


def _run_transformers(requests, config, params, args, tok) -> tuple[dict, dict]:
    import torch
    from transformers import (
        PreTrainedTokenizerFast,
        StoppingCriteria,
        StoppingCriteriaList,
        StopStringCriteria,
    )


    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf = hf_model(config, params, args.dtype, device)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")

    class RowLimits(StoppingCriteria):
        def __init__(self, width, limits):
            self.width, self.limits = width, torch.tensor(limits, device=device)

        def __call__(self, input_ids, scores, **kwargs):
            return (input_ids.shape[1] - self.width) >= self.limits

    def run(groups):
        out = {}
        for group in groups:
            width = max(len(r.prompt_ids) for r in group)
            ids = torch.zeros((len(group), width), dtype=torch.long, device=device)
            mask = torch.zeros_like(ids)
            for row, r in enumerate(group):
                ids[row, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
                mask[row, width - len(r.prompt_ids):] = 1
            criteria = [RowLimits(width, [r.max_new_tokens for r in group])]
            if any(r.stop for r in group):
                criteria.append(StopStringCriteria(fast, list(STOP)))
            sampled = group[0].temperature > 0
            if sampled:
                torch.manual_seed(group[0].seed)
            with torch.no_grad():
                gen = hf.generate(ids, attention_mask=mask, max_new_tokens=max(r.max_new_tokens for r in group),
                                  do_sample=sampled, temperature=group[0].temperature if sampled else None,
                                  top_p=group[0].top_p if sampled else None, top_k=None,
                                  stopping_criteria=StoppingCriteriaList(criteria), pad_token_id=0,
                                  eos_token_id=None)
            for row, r in enumerate(group):
                out[r.id] = gen[row, width: width + r.max_new_tokens].tolist()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    groups = list(_groups(requests, args.batch))
    run(groups[:1] + groups[-1:])  # warm-up
    start = time.perf_counter()
    out = run(groups)
    return out, {"seconds": time.perf_counter() - start}


def eval_workload(args, parser, config, params) -> tuple[list[dict], str]:
    samplers = [s for s in args.samplers.split(",") if s]
    unknown = set(samplers) - {"engine", "batched", "transformers"}
    if unknown or "engine" not in samplers:
        parser.error(f"--samplers: the engine and any of batched, transformers; got {args.samplers!r}")
    requests, tok = _workload(args, parser, config)
    tokens = sum(r.max_new_tokens for r in requests)
    n_he = sum(r.id[0] == "humaneval" for r in requests)
    prompt_tokens = [len(r.prompt_ids) for r in requests]
    print(f"{jax.devices()[0].device_kind}; preset {args.preset} ({config.num_layers} layers, "
          f"{config.num_params() / 1e6:.0f}M params) {args.dtype}; {args.batch} slots/rows")
    print(f"workload: {n_he // args.samples} HumanEval x {args.samples} samples (T 0.8) + "
          f"{len(requests) - n_he} CRUXEval-O (greedy, stop [/ANSWER]); prompts {min(prompt_tokens)}-"
          f"{max(prompt_tokens)} tokens (median {int(np.median(prompt_tokens))}); {tokens} new tokens")
    print(f"KV cache: {kv_bytes_per_token(config)} bytes per token here; "
          + ", ".join(f"{name} {kv_bytes_per_token(get_preset(name, dtype='bfloat16')) // 1024} KiB bf16"
                      for name in ("deepseek-coder-1.3b", "deepseek-coder-6.7b")))
    tag = (f"generate_eval_{args.preset}_l{config.num_layers}_b{args.batch}_he{n_he // args.samples}x{args.samples}"
           f"_cx{len(requests) - n_he}_{_dtype_tag(args.dtype)}_{jax.default_backend()}")
    claim = (f"eval-shaped decoding, {args.preset} ({config.num_layers} layers, random weights) "
             f"{_dtype_tag(args.dtype)}, {n_he // args.samples} HumanEval x {args.samples} (T 0.8) + "
             f"{len(requests) - n_he} CRUXEval-O greedy, {args.batch} slots")
    run = {"engine": _run_engine, "batched": _run_batched, "transformers": _run_transformers}
    repeats = []
    for rep in range(args.repeats):
        order = samplers if rep % 2 == 0 else samplers[::-1]
        outputs, info = {}, {}
        for name in order:
            outputs[name], info[name] = run[name](requests, config, params, args, tok)
        if args.repeats > 1:
            print(f"--- repeat {rep + 1}/{args.repeats}")
        print(f"{'sampler':<28}{'seconds':>9}{'tokens/s':>11}{'vs transformers':>17}")
        label = {"engine": "semcoder-jax engine", "batched": "batched sampler (before)",
                 "transformers": "transformers generate"}
        for name in samplers:
            s = info[name]["seconds"]
            ratio = (f"{info['transformers']['seconds'] / s:.2f}x" if "transformers" in info else "")
            print(f"{label[name]:<28}{s:>9.1f}{tokens / s:>11.0f}{ratio:>17}")
        e = info["engine"]
        print(f"engine: {e['compilations']} compilations in the timed run, {e['prefills']} prefills for "
              f"{len(requests)} requests, {e['prompt_tokens_from_prefix_cache']} of "
              f"{e['prompt_tokens_prefilled']} prompt tokens from the prefix cache; KV ring "
              f"{e['kv_cache_bytes']['ring'] / 2**20:.1f} MiB + prefix pool "
              f"{e['kv_cache_bytes']['prefix_pool'] / 2**20:.1f} MiB")
        greedy = [r.id for r in requests if r.temperature == 0]
        agree = {}
        for name in samplers:
            if name != "engine":
                agree[name] = float(np.mean([outputs[name][i] == outputs["engine"][i] for i in greedy]))
                print(f"greedy CRUXEval-O rows identical, engine vs {label[name]}: {agree[name]:.0%}")
        exact = all(len(outputs["engine"][r.id]) == r.max_new_tokens for r in requests)
        print(f"engine produced every request's exact length: {exact}")
        rows = []
        for name, base_label, suffix in (("transformers", "transformers `generate`", ""),
                                         ("batched", "batched sampler (before the engine)",
                                          ", against the batched sampler it replaces")):
            if name in info:
                rows.append(record.row(claim + suffix, {"tokens/s": tokens / e["seconds"], "seconds": e["seconds"],
                                               f"identical greedy rows vs {name} %": 100 * agree[name]},
                                       baseline={"tokens/s": tokens / info[name]["seconds"],
                                                 "seconds": info[name]["seconds"]},
                                       baseline_label=base_label, compare="tokens/s"))
        repeats.append({"tokens": tokens, "requests": len(requests), "seconds": {n: i["seconds"] for n, i in info.items()},
                        "engine": {k: v for k, v in e.items() if k != "seconds"}, "agree": agree, "rows": rows})
        if args.record is not None:
            record.write(args.record or tag, repeats, started=record.machine())
    return repeats, tag


# ---- the roofline ---------------------------------------------------------------------------------------

class _Timed:
    """A jitted function, each call waited for and timed: ``calls`` holds (seconds, steps run)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []
        self._cache_size = fn._cache_size

    def __call__(self, *args):
        start = time.perf_counter()
        out = jax.block_until_ready(self.fn(*args))
        self.calls.append((time.perf_counter() - start, int(out[2])))
        return out


def roofline(args, parser, config, params) -> tuple[list[dict], str]:
    kind = jax.devices()[0].device_kind
    gbps = args.hbm_gbps or next((v for k, v in HBM_GBPS.items() if k in kind), None)
    if gbps is None:
        parser.error(f"--hbm-gbps: no known memory bandwidth for {kind!r}; pass it")
    batches = [int(b) for b in args.batches.split(",")]
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    per_token = kv_bytes_per_token(config)
    steps = args.new_tokens
    # The ring's width, a multiple of 128.  A decode step attends over every column whatever the slots hold,
    # so one-token prompts time the same step as full contexts and skip a prefill as large as the cache.
    max_len = -(-(args.context + 2 * steps) // 128) * 128
    print(f"{kind}; preset {args.preset} ({config.num_layers} layers) {args.dtype}; weights "
          f"{weight_bytes / 2**30:.2f} GiB, KV {per_token // 1024} KiB per token, {gbps:.0f} GB/s; "
          f"ring {max_len} columns per slot")
    print(f"{'slots':>6}{'step ms':>10}{'roofline ms':>13}{'x roofline':>12}{'tokens/s':>11}")
    repeats = []
    for _ in range(args.repeats):
        rows, figures = [], {}
        for batch in batches:
            engine = Engine(params, config, slots=batch, max_len=max_len, eos_id=-1, chunk=steps,
                            prefix_cache_tokens=0)
            # Time the second decode chunk of the batch's requests (the first compiles); every slot busy.
            requests = [Request([3 + i % 1000], 2 * steps, id=i) for i in range(batch)]
            timed = engine._decode_chunk.fn = _Timed(engine._decode_chunk.fn)
            engine.generate_all(requests)
            seconds, ran = timed.calls[-1]
            step = seconds / ran
            bytes_read = weight_bytes + batch * max_len * per_token
            ideal = bytes_read / (gbps * 1e9)
            figures[batch] = {"step_ms": 1e3 * step, "roofline_ms": 1e3 * ideal}
            print(f"{batch:>6}{1e3 * step:>10.2f}{1e3 * ideal:>13.2f}{step / ideal:>12.2f}{batch / step:>11.0f}")
            rows.append(record.row(f"decode step, {args.preset} {_dtype_tag(args.dtype)}, {batch} slots x "
                                   f"{max_len}-column ring",
                                   {"ms": 1e3 * step}, baseline={"ms": 1e3 * ideal},
                                   baseline_label=f"weights + KV bytes at {gbps:.0f} GB/s", compare="ms",
                                   higher_is_better=False))
        repeats.append({"figures": figures, "rows": rows})
    tag = f"generate_roofline_{args.preset}_l{config.num_layers}_c{args.context}_{_dtype_tag(args.dtype)}_{jax.default_backend()}"
    return repeats, tag
