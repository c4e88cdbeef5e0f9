"""KV-cache sampler throughput beside transformers' ``generate`` on the same random model.

Builds a random LLaMA model from a preset (``--layers`` to shrink it), then in one run measures
greedy generation of ``--new-tokens`` tokens for ``--batch`` prompts with (a) our jitted sampler and
(b) ``LlamaForCausalLM.generate`` (torch, same dtype, same device kind), after one warm-up each,
and reports generated tokens per second and whether the greedy tokens agree.

    python benchmarks/generate.py [--preset tiny] [--layers N] [--batch 8] [--prompt-len 128] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from semcoder_jax.config import get_preset
from semcoder_jax.convert import numpy_to_torch
from semcoder_jax.generate import generate_ids
from semcoder_jax.model import init_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="float32" if jax.default_backend() == "cpu" else "bfloat16")
    args = parser.parse_args()
    overrides = {"num_layers": args.layers} if args.layers else {}
    config = get_preset(args.preset, dtype=args.dtype, param_dtype=args.dtype, initializer_range=0.5, **overrides)
    params = init_params(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, config.vocab_size, args.prompt_len).tolist() for _ in range(args.batch)]
    eos = -1  # never emitted: every row generates exactly --new-tokens

    def ours():
        return generate_ids(params, config, prompts, max_new_tokens=args.new_tokens, eos_id=eos)

    ours()
    start = time.perf_counter()
    ours_out = ours()
    ours_s = time.perf_counter() - start

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from semcoder_jax.convert import mappings

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = getattr(torch, args.dtype)
    fields = config.to_hf_dict()
    fields.pop("model_type")
    hf = LlamaForCausalLM(LlamaConfig(**fields)).to(torch_dtype)
    state = {}
    host = jax.tree.map(np.asarray, params)
    for m in mappings(config):
        leaf = host
        for key in m.leaf:
            leaf = leaf[key]
        for i, name in enumerate(m.hf_names(config.num_layers)):
            state[name] = numpy_to_torch((leaf[i] if m.per_layer else leaf).reshape(m.hf_shape))
    hf.load_state_dict(state, strict=False)
    hf = hf.to(device).eval()
    ids = torch.tensor(prompts, device=device)

    def theirs():
        with torch.no_grad():
            return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                               min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    theirs()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    theirs_out = theirs()
    if device == "cuda":
        torch.cuda.synchronize()
    theirs_s = time.perf_counter() - start
    theirs_ids = theirs_out[:, args.prompt_len:].cpu().tolist()
    agree = np.mean([a == b for (a, _), b in zip(ours_out, theirs_ids)])
    tokens = args.batch * args.new_tokens
    print(f"{jax.devices()[0].device_kind}; preset {args.preset} ({config.num_layers} layers, "
          f"{config.num_params() / 1e6:.0f}M params) {args.dtype}; batch {args.batch}, prompt {args.prompt_len}, "
          f"new {args.new_tokens}")
    print(f"{'sampler':<26}{'seconds':>9}{'tokens/s':>11}")
    print(f"{'semcoder-jax (KV cache)':<26}{ours_s:>9.2f}{tokens / ours_s:>11.0f}")
    print(f"{'transformers generate':<26}{theirs_s:>9.2f}{tokens / theirs_s:>11.0f}")
    print(f"speed ratio {theirs_s / ours_s:.2f}x; identical greedy rows: {agree:.0%}")


if __name__ == "__main__":
    main()
