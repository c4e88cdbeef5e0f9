"""HF exports are one model to every reader: transformers 5's config keys beside the released checkpoints'
(which transformers 4.x reads), a tokenizer transformers 4.x can load, and our importer reading either."""

import json
import os
import pathlib
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from semcoder_jax.config import get_preset, load_hf_config
from semcoder_jax.convert import mappings, save_hf

REPO = pathlib.Path(__file__).resolve().parents[2]
HF4_PYTHON = pathlib.Path(os.environ.get("SEMCODER_HF4_PYTHON", REPO / ".venv-hf4" / "bin" / "python"))
HF4_SETUP = ("python3 -m venv .venv-hf4 && .venv-hf4/bin/pip install 'transformers==4.46.3' "
             "'torch==2.13.0+cpu' safetensors")
SCALED = dict(rope_theta=100000.0, rope_scaling_factor=4.0, pad_token_id=0)  # SemCoder-6.7B's RoPE


def _random_params(config, seed=0):
    rng = np.random.default_rng(seed)
    params: dict = {}
    for m in mappings(config):
        shape = ((config.num_layers,) + m.native_shape) if m.per_layer else m.native_shape
        node = params
        for key in m.leaf[:-1]:
            node = node.setdefault(key, {})
        node[m.leaf[-1]] = rng.normal(0, 0.05, shape).astype(ml_dtypes.bfloat16)
    return params


def _export(tmp_path, config, name="hf", **kwargs):
    out = tmp_path / name
    save_hf(_random_params(config), config, str(out), dtype="bfloat16", **kwargs)
    return out


def _without(directory, keys, tmp_path, name):
    data = json.loads((directory / "config.json").read_text())
    for key in keys:
        data.pop(key)
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps(data))
    return tmp_path / name


def test_rope_scaled_export_writes_the_release_keys_beside_transformers_5s(tmp_path):
    config = get_preset("tiny", **SCALED)
    cfg = json.loads((_export(tmp_path, config) / "config.json").read_text())
    # the release's keys, exactly as deepseek-coder-6.7b's config.json has them (transformers <= 4.42
    # refuses a rope_scaling with a third key; 4.43+ and 5 add rope_type themselves)
    assert cfg["rope_theta"] == 100000.0
    assert cfg["rope_scaling"] == {"type": "linear", "factor": 4.0}
    assert cfg["torch_dtype"] == "bfloat16"
    # transformers 5's, with the same values
    assert cfg["rope_parameters"] == {"rope_type": "linear", "factor": 4.0, "rope_theta": 100000.0}
    assert cfg["dtype"] == "bfloat16"
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 0)


def test_unscaled_export_writes_null_rope_scaling(tmp_path):
    cfg = json.loads((_export(tmp_path, get_preset("tiny")) / "config.json").read_text())
    assert (cfg["rope_theta"], cfg["rope_scaling"], cfg["torch_dtype"]) == (10000.0, None, "bfloat16")
    assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}


@pytest.mark.parametrize("overrides", [SCALED, {}])
def test_our_importer_reads_the_same_config_from_either_set_of_keys(tmp_path, overrides):
    config = get_preset("tiny", **overrides)
    out = _export(tmp_path, config)
    assert load_hf_config(out) == config
    v5_only = _without(out, ("rope_theta", "rope_scaling", "torch_dtype"), tmp_path, "v5-only")
    release_only = _without(out, ("rope_parameters", "dtype"), tmp_path, "release-only")
    assert load_hf_config(v5_only) == config
    assert load_hf_config(release_only) == config


def test_transformers_5_reads_the_same_rope_and_dtype_without_warnings(tmp_path, caplog):
    import logging
    import warnings

    import torch
    from transformers import AutoConfig

    out = _export(tmp_path, get_preset("tiny", **SCALED))
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error")
        cfg = AutoConfig.from_pretrained(out)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert cfg.rope_parameters["rope_type"] == "linear"
    assert (cfg.rope_parameters["factor"], cfg.rope_parameters["rope_theta"]) == (4.0, 100000.0)
    assert cfg.dtype == torch.bfloat16


def test_a_tokenizer_saved_by_transformers_5_is_exported_under_a_class_transformers_4_knows(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    assert json.loads((tokenizer_dir / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"
    out = _export(tmp_path, get_preset("tiny", **SCALED), tokenizer_dir=str(tokenizer_dir))
    exported = json.loads((out / "tokenizer_config.json").read_text())
    source = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    assert exported == {**source, "tokenizer_class": "PreTrainedTokenizerFast"}  # nothing else changes
    assert (out / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()
    text = "def f(x):\n    return x + 1\n"
    ours, theirs = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(tokenizer_dir)
    assert ours.encode(text) == theirs.encode(text)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (1, 2, 0)
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (1, 2, 0)


@pytest.mark.slow
def test_transformers_4_loads_the_export_as_the_same_model(tmp_path):
    """benchmarks/hf4_compat.py under transformers 4.x: same RoPE, dtype, ids and float32 logits (<= 1e-4)."""
    if not HF4_PYTHON.exists():
        pytest.skip(f"no transformers 4.x environment at {HF4_PYTHON}; create it from the repository root with: "
                    f"{HF4_SETUP}")
    report_file = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "hf4_compat.py"), "--python", str(HF4_PYTHON),
                           "--json", str(report_file)], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(report_file.read_text())
    assert report["ok"] and report["transformers_4"].startswith("4.")
    assert report["read_by_4"]["rope"] == {"theta": 100000.0, "type": "linear", "factor": 4.0}
    assert report["read_by_4"]["config_dtype"] == report["read_by_4"]["auto_dtype"] == "bfloat16"
    assert max(report["f32_logits_max_abs_diff"].values()) <= 1e-4
    # what exports were before: transformers 4.x computed another model from them
    assert report["before_fix_v5_keys_only_read_by_4"]["rope"]["theta"] == 10000.0
