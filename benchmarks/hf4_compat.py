"""transformers 4.x reads our HF export as the same model that transformers 5 and the JAX decoder compute.

Exports random bf16 parameters of the ``tiny`` preset with SemCoder-6.7B's RoPE (theta 100000, linear
scaling x4) through ``save_hf`` -- what ``semcoder train --export-hf`` and ``convert orbax-to-hf`` write
-- with a tokenizer saved by transformers 5's ``save_pretrained``, then:
  1. runs one probe (below) under the transformers 4.x interpreter (``--python``) and under this one
     (transformers 5) on the export: ``AutoConfig`` (RoPE theta, scaling, dtype as the library reads
     them), the loaded model's rotary ``inv_freq``, ``AutoModelForCausalLM`` with the config's dtype
     ("auto") and in float32, float32 and bf16 logits for fixed ids, ``GenerationConfig`` and
     ``AutoTokenizer`` (class, special ids, the ids of a fixed text);
  2. computes the JAX decoder's float32 logits from the same parameters, and reads the export back
     with our importer (``load_hf_config``);
  3. runs the 4.x probe on a copy whose ``config.json`` has transformers 5's keys only (as exports were
     written before issue 24): how far off that model is, i.e. that this check can fail;
  4. reads ``config.json`` of every preset's export (no weights) under 4.x and 5.
Asserts the same config semantics everywhere (theta, linear factor, dtype, special ids, token ids,
inv_freq) and float32 logits within 1e-4 of each other; prints a JSON report (``--json FILE`` too).

    .venv/bin/python benchmarks/hf4_compat.py [--python .venv-hf4/bin/python] [--json report.json]

The transformers 4.x environment (once; ~30 s, 1.1 GB, torch from the local CPU wheel):
    python3 -m venv .venv-hf4
    .venv-hf4/bin/pip install 'transformers==4.46.3' 'torch==2.13.0+cpu' safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_PYTHON = REPO / ".venv-hf4" / "bin" / "python"
SETUP = ("python3 -m venv .venv-hf4 && .venv-hf4/bin/pip install 'transformers==4.46.3' "
         "'torch==2.13.0+cpu' safetensors")
TOLERANCE = 1e-4  # float32 logits, as tests/semcoder_jax/test_parity.py
TEXT = "def f(x):\n    return x + 1\nassert f(1) == 2\n"
LEGACY_KEYS = ("rope_theta", "rope_scaling", "torch_dtype")  # what pre-issue-24 exports lacked

# Runs under either transformers major version; imports nothing from this repository.
PROBE = r'''
import json, sys
import numpy as np, torch, transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

job = json.loads(sys.argv[1])
v5 = int(transformers.__version__.split(".")[0]) >= 5
out = {"transformers": transformers.__version__, "torch": torch.__version__, "models": {}}

def rope(cfg):
    """RoPE as this version applies it: 4.x reads rope_theta/rope_scaling, 5 reads rope_parameters."""
    if v5:
        scaling = dict(cfg.rope_parameters or {})
        theta = scaling.get("rope_theta")
    else:
        scaling, theta = dict(cfg.rope_scaling or {}), cfg.rope_theta
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    return {"theta": float(theta), "type": kind, "factor": float(scaling.get("factor", 1.0)) if kind != "default" else 1.0}

def load(path, dtype):
    return AutoModelForCausalLM.from_pretrained(path, **{"dtype" if v5 else "torch_dtype": dtype}).eval()

for name, spec in job["models"].items():
    path = spec["path"]
    cfg = AutoConfig.from_pretrained(path)
    dtype = cfg.dtype if v5 else cfg.torch_dtype
    entry = {"rope": rope(cfg), "config_dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
             "rope_scaling_attr": getattr(cfg, "rope_scaling", None)}
    if spec.get("weights"):
        ids = torch.tensor(job["ids"])
        auto = load(path, "auto")
        entry["auto_dtype"] = str(auto.dtype).replace("torch.", "")
        with torch.no_grad():
            np.save(spec["out"] + ".auto.npy", auto(ids).logits.float().numpy())
            f32 = load(path, torch.float32)
            np.save(spec["out"] + ".f32.npy", f32(ids).logits.numpy())
        entry["inv_freq"] = f32.model.rotary_emb.inv_freq.float().tolist()
        entry["attention_scaling"] = float(getattr(f32.model.rotary_emb, "attention_scaling", 1.0))
        gen = GenerationConfig.from_pretrained(path)
        entry["generation"] = {k: getattr(gen, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        tok = AutoTokenizer.from_pretrained(path)
        entry["tokenizer"] = {"class": type(tok).__name__, "bos": tok.bos_token_id, "eos": tok.eos_token_id,
                              "pad": tok.pad_token_id, "ids": tok.encode(job["text"], add_special_tokens=False)}
    out["models"][name] = entry
print(json.dumps(out))
'''


def run_probe(python: str, job: dict) -> dict:
    proc = subprocess.run([python, "-c", PROBE, json.dumps(job)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{python}: the probe failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_tokenizer(directory: pathlib.Path) -> pathlib.Path:
    """A small byte-level BPE (<pad>=0, <s>=1, </s>=2) saved by transformers 5's save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT, "for i in range(10):\n    print(i * i)\n"] * 20, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>").save_pretrained(directory)
    return directory


def expected_inv_freq(config) -> np.ndarray:
    d = config.resolved_head_dim
    return 1.0 / config.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d) / config.rope_scaling_factor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", default=str(DEFAULT_PYTHON), help="interpreter with transformers 4.x")
    parser.add_argument("--workdir", help="keep the exports here (default: a temporary directory, removed)")
    parser.add_argument("--json", help="also write the report to this file")
    parser.add_argument("--length", type=int, default=200, help="tokens per row of the logits check")
    args = parser.parse_args(argv)
    if not os.path.exists(args.python):
        raise SystemExit(f"{args.python}: not found; create the transformers 4.x environment with:\n  {SETUP}")
    start = time.perf_counter()
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="hf4-compat-"))
    try:
        report = check(work, args.python, args.length)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        pathlib.Path(args.json).write_text(text + "\n")
    return 0


def check(work: pathlib.Path, python: str, length: int) -> dict:
    import jax
    import jax.numpy as jnp
    import ml_dtypes

    from semcoder_jax.config import PRESETS, get_preset, load_hf_config
    from semcoder_jax.convert import _hf_config_json, save_hf
    from semcoder_jax.model import forward, init_params

    work.mkdir(parents=True, exist_ok=True)
    config = get_preset("tiny", rope_theta=100000.0, rope_scaling_factor=4.0, pad_token_id=0,
                        initializer_range=0.1)  # a wider init than 0.02: attention that depends on position
    bf16 = jax.tree.map(lambda a: np.asarray(a).astype(ml_dtypes.bfloat16),
                        init_params(config, jax.random.key(0)))
    export, legacy = work / "export", work / "v5-keys-only"
    save_hf(bf16, config, str(export), tokenizer_dir=str(make_tokenizer(work / "tokenizer")), dtype="bfloat16",
            overwrite=True)
    shutil.rmtree(legacy, ignore_errors=True)
    shutil.copytree(export, legacy)
    cfg = json.loads((legacy / "config.json").read_text())
    for key in LEGACY_KEYS:
        cfg.pop(key)
    (legacy / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    presets = {}
    for name in PRESETS:
        (work / "presets" / name).mkdir(parents=True, exist_ok=True)
        (work / "presets" / name / "config.json").write_text(
            _hf_config_json(get_preset(name), np.dtype(ml_dtypes.bfloat16)))
        presets[name] = {"path": str(work / "presets" / name)}

    ids = np.random.RandomState(0).randint(3, config.vocab_size, (2, length))
    models = {"export": {"path": str(export), "weights": True, "out": str(work / "logits-export")}, **presets}
    job = {"ids": ids.tolist(), "text": TEXT}
    v4 = run_probe(python, {**job, "models": {**models, "v5-keys-only": {
        "path": str(legacy), "weights": True, "out": str(work / "logits-legacy")}}})
    for spec in models.values():
        if "out" in spec:
            spec["out"] += "-v5"
    v5 = run_probe(sys.executable, {**job, "models": models})
    if not v4["transformers"].startswith("4."):
        raise SystemExit(f"{python}: has transformers {v4['transformers']}, expected 4.x")

    f32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), bf16)
    ours = np.asarray(forward(f32, config.replace(dtype="float32"), jnp.asarray(ids)))
    read_back = load_hf_config(export)
    logits = {name: np.load(work / f"logits-{name}.f32.npy") for name in ("export", "legacy", "export-v5")}
    auto = {name: np.load(work / f"logits-{name}.auto.npy") for name in ("export", "export-v5")}

    def gap(a, b) -> float:
        return float(np.abs(a - b).max())

    want_rope = {"theta": config.rope_theta, "type": "linear", "factor": config.rope_scaling_factor}
    e4, e5 = v4["models"]["export"], v5["models"]["export"]
    report = {
        "transformers_4": v4["transformers"], "transformers_5": v5["transformers"], "torch_4": v4["torch"],
        "torch_5": v5["torch"],
        "config_json": json.loads((export / "config.json").read_text()),
        "read_by_4": {k: e4[k] for k in ("rope", "config_dtype", "rope_scaling_attr", "auto_dtype", "generation",
                                         "tokenizer", "attention_scaling")},
        "read_by_5": {k: e5[k] for k in ("rope", "config_dtype", "auto_dtype", "generation", "tokenizer",
                                         "attention_scaling")},
        "read_by_ours": {"rope_theta": read_back.rope_theta, "rope_scaling_factor": read_back.rope_scaling_factor,
                         "same_model_config": read_back == config},
        "inv_freq_max_rel_gap_4": float(np.max(np.abs(np.array(e4["inv_freq"]) / expected_inv_freq(config) - 1))),
        "inv_freq_max_rel_gap_5": float(np.max(np.abs(np.array(e5["inv_freq"]) / expected_inv_freq(config) - 1))),
        "logits_shape": list(ours.shape),
        "logits_max_abs": float(np.abs(ours).max()),
        "f32_logits_max_abs_diff": {"4_vs_5": gap(logits["export"], logits["export-v5"]),
                                    "4_vs_jax": gap(logits["export"], ours), "5_vs_jax": gap(logits["export-v5"], ours)},
        "bf16_auto_logits_max_abs_diff": {"4_vs_5": gap(auto["export"], auto["export-v5"]),
                                          "4_vs_jax_f32": gap(auto["export"], ours)},
        "argmax_agreement_4_vs_jax": float((logits["export"].argmax(-1) == ours.argmax(-1)).mean()),
        "before_fix_v5_keys_only_read_by_4": {
            **{k: v4["models"]["v5-keys-only"][k] for k in ("rope", "config_dtype", "auto_dtype")},
            "f32_logits_max_abs_diff_vs_jax": gap(logits["legacy"], ours),
            "argmax_agreement_vs_jax": float((logits["legacy"].argmax(-1) == ours.argmax(-1)).mean())},
        "presets_read_by_4": {n: v4["models"][n]["rope"] | {"dtype": v4["models"][n]["config_dtype"]} for n in presets},
    }

    problems = []
    for who, entry in (("4", e4), ("5", e5)):
        if entry["rope"] != want_rope:
            problems.append(f"transformers {who} reads RoPE {entry['rope']}, expected {want_rope}")
        if (entry["config_dtype"], entry["auto_dtype"]) != ("bfloat16", "bfloat16"):
            problems.append(f"transformers {who} reads dtype {entry['config_dtype']}, loads {entry['auto_dtype']}")
        if report[f"inv_freq_max_rel_gap_{who}"] > 1e-6:
            problems.append(f"transformers {who}'s rotary inv_freq is not theta {config.rope_theta} / {config.rope_scaling_factor}")
    if e4["generation"] != e5["generation"] or e4["generation"] != {"bos_token_id": 1, "eos_token_id": 2,
                                                                      "pad_token_id": 0}:
        problems.append(f"generation config: 4 reads {e4['generation']}, 5 reads {e5['generation']}")
    tok4, tok5 = e4["tokenizer"], e5["tokenizer"]
    if [tok4[k] for k in ("bos", "eos", "pad", "ids")] != [tok5[k] for k in ("bos", "eos", "pad", "ids")]:
        problems.append(f"tokenizer: 4 reads {tok4}, 5 reads {tok5}")
    if not report["read_by_ours"]["same_model_config"]:
        problems.append(f"our importer reads {read_back}, exported {config}")
    for pair, value in report["f32_logits_max_abs_diff"].items():
        if value > TOLERANCE:
            problems.append(f"float32 logits {pair}: max abs diff {value:.3g} > {TOLERANCE}")
    if report["before_fix_v5_keys_only_read_by_4"]["f32_logits_max_abs_diff_vs_jax"] <= 100 * TOLERANCE:
        problems.append("the v5-keys-only export is not told apart: this check could not catch issue 24")
    for name in presets:
        p = get_preset(name)
        want = {"theta": p.rope_theta, "type": "linear" if p.rope_scaling_factor != 1.0 else "default",
                "factor": p.rope_scaling_factor, "dtype": "bfloat16"}
        for who, out in (("4", v4), ("5", v5)):
            got = out["models"][name]["rope"] | {"dtype": out["models"][name]["config_dtype"]}
            if got != want:
                problems.append(f"preset {name}: transformers {who} reads {got}, expected {want}")
    report["problems"] = problems
    report["ok"] = not problems
    if problems:
        print(json.dumps(report, indent=1), file=sys.stderr)
        raise SystemExit("hf4_compat: " + "; ".join(problems))
    return report


if __name__ == "__main__":
    sys.exit(main())
