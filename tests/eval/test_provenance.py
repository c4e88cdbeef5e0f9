"""Results tied to what produced them: per-sample seeds make samples independent of batch size, order and
resumes on both backends; an output directory refuses another model (by content), dtype or backend."""

from __future__ import annotations

import json
import shutil

import pytest

from eval.backends import HFBackend, load_backend
from eval.runner import EvalConfig, run
from semcoder_jax.cli import main as semcoder
from semcoder_jax.errors import UserError


@pytest.fixture(scope="module")
def backends(tiny_hf_model, tmp_path_factory):
    from semcoder_jax.convert import convert_hf_to_native

    native = tmp_path_factory.mktemp("native") / "model"
    convert_hf_to_native(str(tiny_hf_model), str(native))
    return {"hf": (HFBackend(tiny_hf_model), str(tiny_hf_model)), "jax": (load_backend("jax", native), str(native))}


def _samples(out):
    return {(r["task_id"], r["sample"]): (r["raw"], r["seed"])
            for r in map(json.loads, (out / "cruxeval-o.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("name", ["hf", "jax"])
def test_a_resumed_sampled_run_and_another_batch_size_give_the_same_samples(name, backends, shared_data_dir,
                                                                           tmp_path):
    backend, model = backends[name]
    config = EvalConfig(benchmarks=["cruxeval-o"], limit=3, n_samples=2, temperature=0.8, top_p=0.95,
                        max_new_tokens=12, model=model, backend=name)
    common = dict(backend=backend, data_dir=shared_data_dir, progress=False)
    run(config, tmp_path / "whole", batch_size=6, **common)
    # Interrupted after two tasks, then resumed; batches of 2 (two shapes in all: two jax compilations).
    run(EvalConfig(**{**config.__dict__, "limit": 2}), tmp_path / "resumed", batch_size=2, **common)
    run(config, tmp_path / "resumed", batch_size=2, **common)
    whole, resumed = _samples(tmp_path / "whole"), _samples(tmp_path / "resumed")
    assert len(whole) == 6 and whole == resumed
    assert len({raw for raw, _ in whole.values()}) > 1  # sampled, not six copies of one text
    assert len({seed for _, seed in whole.values()}) == 6


def _tiny_llama(directory, seed):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(directory)


class _Fixed:
    """A backend that answers every prompt with one wrong answer (the records are not the point)."""

    def __init__(self, dtype="float32"):
        self.dtype = dtype

    def generate(self, prompts, **kwargs):
        from eval.backends import Generation

        return [Generation("[ANSWER]\nassert f(0) == 'nope'\n[/ANSWER]", [], "stop") for _ in prompts]


def test_a_re_exported_model_in_the_same_out_is_refused(shared_data_dir, tmp_path):
    model = tmp_path / "export"
    _tiny_llama(model, seed=0)
    config = EvalConfig(benchmarks=["cruxeval-o"], mode="direct", limit=2, model=str(model), backend="hf")
    kw = dict(data_dir=shared_data_dir, progress=False)
    run(config, tmp_path / "out", backend=_Fixed(), **kw)
    _tiny_llama(model, seed=0)  # the same weights written again: the same model
    run(config, tmp_path / "out", backend=_Fixed(), **kw)
    _tiny_llama(model, seed=1)  # a re-export with other weights into the same directory
    with pytest.raises(UserError, match=r"different settings: model weights \(fingerprint\) xxh3-128:\w+… → "
                                        r"xxh3-128:\w+…; use a new --out"):
        run(config, tmp_path / "out", backend=_Fixed(), **kw)
    recorded = json.loads((tmp_path / "out" / "config.json").read_text())["source"]
    assert recorded["fingerprint"].startswith("xxh3-128:") and recorded["dtype"] == "float32"


def test_another_dtype_backend_or_seed_in_the_same_out_is_refused_naming_each_change(shared_data_dir, tmp_path):
    config = EvalConfig(benchmarks=["cruxeval-o"], mode="direct", limit=1, backend="hf")
    kw = dict(data_dir=shared_data_dir, progress=False)
    run(config, tmp_path, backend=_Fixed("float32"), **kw)
    with pytest.raises(UserError, match="different settings: dtype float32 → bfloat16; use"):
        run(config, tmp_path, backend=_Fixed("bfloat16"), **kw)
    other = EvalConfig(**{**config.__dict__, "backend": "jax", "seed": 3, "top_p": 0.9})
    with pytest.raises(UserError, match="different settings: backend hf → jax; seed 0 → 3; cruxeval-o top_p "
                                        "1.0 → 0.9; use"):
        run(other, tmp_path, backend=_Fixed("float32"), **kw)


def test_an_out_dir_written_before_fingerprints_is_refused(shared_data_dir, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"benchmarks": ["cruxeval-o"], "mode": "direct"}))
    with pytest.raises(UserError, match="earlier semcoder eval .* cannot be tied to a model"):
        run(EvalConfig(benchmarks=["cruxeval-o"], limit=1), tmp_path, backend=_Fixed(), data_dir=shared_data_dir,
            progress=False)


def test_the_cli_refuses_another_dtype_before_loading_the_model(tiny_hf_model, shared_data_dir, tmp_path, capsys,
                                                                 monkeypatch):
    argv = ["eval", "--model", str(tiny_hf_model), "--benchmark", "cruxeval-o", "--limit", "1",
            "--max-new-tokens", "4", "--data-dir", str(shared_data_dir), "--out", str(tmp_path / "out")]
    assert semcoder([*argv, "--dtype", "float32"]) == 0  # float32 is also the CPU default
    capsys.readouterr()
    import eval.backends

    monkeypatch.setattr(eval.backends, "load_backend", lambda *a, **k: pytest.fail("loaded the model"))
    assert semcoder([*argv, "--dtype", "bfloat16"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dtype float32 → bfloat16; use a new --out directory" in err
    copy = tmp_path / "copy"
    shutil.copytree(tiny_hf_model, copy)  # the same model elsewhere: the fingerprint, not the path, counts
    monkeypatch.undo()
    assert semcoder([*argv[:2], str(copy), *argv[3:]]) == 0
