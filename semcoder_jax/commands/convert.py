"""``semcoder convert``: HF <-> native (Orbax) checkpoints, on local disk or ``gs://`` (``semcoder_jax.convert``
says what each direction stages on local disk there)."""

from __future__ import annotations

import argparse
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("convert", help="convert checkpoints between HF and native (Orbax) format",
                                   description="Convert checkpoints between Hugging Face and native Orbax format. "
                                               "Every location may be a local path or gs://BUCKET/PATH.")
    sub = parser.add_subparsers(dest="direction", metavar="DIRECTION", required=True)

    to_native = sub.add_parser("hf-to-orbax", help="HF directory -> native Orbax checkpoint")
    to_native.add_argument("--hf", required=True, help="HF model directory (config.json + safetensors or .bin); gs:// is read by byte range")
    to_native.add_argument("--out", required=True,
                           help="output checkpoint directory (gs://: its params/ is staged on local disk, then uploaded)")
    to_native.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                           help="storage dtype (default: keep the source dtype)")
    to_native.add_argument("--tokenizer", help="tokenizer directory to bundle (default: the HF directory's)")
    to_native.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    to_native.add_argument("--allow-nonfinite", action="store_true",
                           help="convert weights holding NaN/inf instead of refusing them (forensics)")
    to_native.set_defaults(func=_hf_to_orbax)

    to_hf = sub.add_parser("orbax-to-hf", help="native checkpoint (or training run) -> HF directory")
    to_hf.add_argument("--ckpt", required=True, help="native checkpoint, training run or step directory")
    to_hf.add_argument("--out", required=True,
                       help="output HF directory (gs://: one shard at a time on local disk, the index uploaded last)")
    to_hf.add_argument("--tokenizer", help="tokenizer directory to copy (default: the checkpoint's)")
    to_hf.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                       help="tensor dtype (default: the checkpoint's)")
    to_hf.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    to_hf.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    to_hf.add_argument("--allow-nonfinite", action="store_true",
                       help="convert weights holding NaN/inf instead of refusing them (forensics)")
    to_hf.set_defaults(func=_orbax_to_hf)


def _hf_to_orbax(args: argparse.Namespace) -> int:
    from semcoder_jax.convert import convert_hf_to_native

    start = time.perf_counter()
    config = convert_hf_to_native(args.hf, args.out, dtype=args.dtype, overwrite=args.overwrite,
                                  tokenizer_dir=args.tokenizer, allow_nonfinite=args.allow_nonfinite)
    print(f"wrote {args.out} ({config.num_params() / 1e6:.1f}M parameters, {config.param_dtype}) "
          f"in {time.perf_counter() - start:.1f}s")
    return 0


def _orbax_to_hf(args: argparse.Namespace) -> int:
    from semcoder_jax.convert import convert_native_to_hf

    start = time.perf_counter()
    config = convert_native_to_hf(args.ckpt, args.out, dtype=args.dtype, tokenizer_dir=args.tokenizer,
                                  max_shard_size=args.max_shard_size, overwrite=args.overwrite,
                                  allow_nonfinite=args.allow_nonfinite)
    print(f"wrote {args.out} ({config.num_params() / 1e6:.1f}M parameters) in {time.perf_counter() - start:.1f}s")
    return 0
