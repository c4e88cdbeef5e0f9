"""Backends on a tiny random model: conventions shared by hf and jax, per-sample seeds, per-prompt token
limits, the model's content fingerprint, and the CLI end to end on CPU."""

from __future__ import annotations

import json
import re

import pytest

from eval.backends import HFBackend, load_backend, model_fingerprint, row_sampler
from semcoder_jax.cli import main as semcoder
from semcoder_jax.errors import UserError

PROMPTS = ["def f(x):\n    return x", "assert f(", "for i in range(3):\n    print(i)\n" * 3]


@pytest.fixture(scope="module")
def hf_backend(tiny_hf_model):
    return HFBackend(tiny_hf_model)


@pytest.fixture(scope="module")
def native_model(tiny_hf_model, tmp_path_factory):
    from semcoder_jax.convert import convert_hf_to_native

    native = tmp_path_factory.mktemp("native") / "model"
    convert_hf_to_native(str(tiny_hf_model), str(native))
    return native


@pytest.fixture(scope="module")
def jax_backend(native_model):
    return load_backend("jax", native_model)


def test_batched_left_padded_greedy_equals_one_prompt_at_a_time(hf_backend):
    batched = hf_backend.generate(PROMPTS, max_new_tokens=12, batch_size=3)
    single = [hf_backend.generate([p], max_new_tokens=12, batch_size=1)[0] for p in PROMPTS]
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(g.finish_reason in ("eos", "length") for g in batched)


def test_the_prompt_starts_with_bos(hf_backend):
    assert hf_backend.encode("def f")[0] == hf_backend.bos_id
    assert hf_backend.encode("def f")[1:] == hf_backend.tokenizer.encode("def f")


def test_stop_strings_cut_the_text_before_the_stop(hf_backend):
    free = hf_backend.generate(PROMPTS[:1], max_new_tokens=16)[0]
    assert len(free.text) > 4
    stop = free.text[2:4]
    cut = hf_backend.generate(PROMPTS[:1], max_new_tokens=16, stop=[stop])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.find(stop)]
    assert len(cut.token_ids) < len(free.token_ids)


def test_sampling_is_seeded(hf_backend):
    a = hf_backend.generate(PROMPTS, max_new_tokens=10, temperature=1.0, top_p=0.95, seed=3)
    b = hf_backend.generate(PROMPTS, max_new_tokens=10, temperature=1.0, top_p=0.95, seed=3)
    c = hf_backend.generate(PROMPTS, max_new_tokens=10, temperature=1.0, top_p=0.95, seed=4)
    assert [g.text for g in a] == [g.text for g in b]
    assert [g.text for g in a] != [g.text for g in c]


def test_the_row_sampler_draws_exactly_from_the_tempered_nucleus():
    """argmax(scores / T, cut to the top-p nucleus, + Gumbel noise) is a draw from softmax of those scores."""
    import torch

    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0])
    temperature, top_p, n = 0.7, 0.9, 20000
    probs = torch.softmax(logits / temperature, dim=0)
    kept = int(((torch.cumsum(probs, 0) - probs) < top_p).sum())  # the nucleus: the first `kept` tokens
    expected = torch.zeros(5)
    expected[:kept] = probs[:kept] / probs[:kept].sum()
    sampler = row_sampler(torch, range(n), temperature, top_p)
    draws = sampler(None, logits.repeat(n, 1)).argmax(dim=-1)
    freq = torch.bincount(draws, minlength=5).float() / n
    assert kept == 3 and freq[kept:].sum() == 0
    assert torch.allclose(freq, expected, atol=0.015), (freq, expected)  # 4 sigma at n = 20000


@pytest.mark.parametrize("name", ["hf", "jax"])
def test_a_sampled_row_depends_on_its_seed_not_on_its_batch_or_position(name, request):
    backend = request.getfixturevalue(f"{name}_backend")
    kw = dict(temperature=0.8, top_p=0.95)
    prompts = ["def f(x):\n    return x", "assert f(", "x = [1, 2]"]  # one length bucket: two jax compilations
    seeds, limits = [11, 22, 33], [10, 4, 7]
    together = backend.generate(prompts, max_new_tokens=limits, seeds=seeds, batch_size=3, **kw)
    alone = [backend.generate([p], max_new_tokens=[n], seeds=[s], batch_size=1, **kw)[0]
             for p, n, s in zip(prompts, limits, seeds)]
    reordered = backend.generate(prompts[::-1], max_new_tokens=limits[::-1], seeds=seeds[::-1], batch_size=3,
                                 **kw)[::-1]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone] == [g.token_ids for g in reordered]
    assert [len(g.token_ids) for g in together if g.finish_reason == "length"] == [
        n for g, n in zip(together, limits) if g.finish_reason == "length"]
    assert all(len(g.token_ids) <= n for g, n in zip(together, limits))
    other = backend.generate(prompts, max_new_tokens=limits, seeds=[12, 23, 34], batch_size=3, **kw)
    assert [g.text for g in other] != [g.text for g in together]


def test_the_fingerprint_follows_the_weights_not_the_export(tiny_hf_model, native_model, tmp_path):
    import shutil

    from semcoder_jax.convert import convert_hf_to_native

    again = tmp_path / "again"
    convert_hf_to_native(str(tiny_hf_model), str(again))  # Orbax writes a new timestamp, same weights
    assert model_fingerprint(again) == model_fingerprint(native_model)
    assert model_fingerprint(native_model).startswith("xxh3-128:")
    copy = tmp_path / "hf"
    shutil.copytree(tiny_hf_model, copy)
    assert model_fingerprint(copy) == model_fingerprint(tiny_hf_model)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert model_fingerprint(copy) != model_fingerprint(tiny_hf_model)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    weights.write_bytes(bytes((tiny_hf_model / "model.safetensors").read_bytes()))
    assert model_fingerprint(copy) != model_fingerprint(tiny_hf_model)  # the config alone


def test_a_non_hf_directory_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not an HF model directory"):
        load_backend("hf", tmp_path)
    with pytest.raises(UserError, match="no such file"):
        load_backend("jax", tmp_path / "missing")


def _records(out):
    return [json.loads(line) for line in (out / "cruxeval-o.jsonl").read_text().splitlines()]


def test_cli_on_cpu_hf_and_jax_backends_give_the_same_greedy_generations_and_scores(
        tiny_hf_model, shared_data_dir, tmp_path, capsys):
    """The main job's last step: one CLI call scores the exported model on a CRUXEval-O monologue slice."""
    from semcoder_jax.convert import convert_hf_to_native

    native = tmp_path / "native"
    convert_hf_to_native(str(tiny_hf_model), str(native))
    common = ["--benchmark", "cruxeval-o", "--mode", "monologue", "--limit", "20", "--max-new-tokens", "24",
              "--batch-size", "10", "--data-dir", str(shared_data_dir)]
    runs = {}
    for name, model, backend in (("hf", tiny_hf_model, "hf"), ("jax", native, "jax")):
        assert semcoder(["eval", "--model", str(model), "--backend", backend, *common,
                         "--out", str(tmp_path / name)]) == 0
        printed, err = capsys.readouterr()
        assert "cruxeval-o" in printed and "pass@1" in printed
        if backend == "jax":  # the engine says what decoding cost: requests, prefills, compilations
            assert re.search(r"decoding \(jax engine\): 20 requests, \d+ tokens .* \d+ prefills .* "
                             r"\d+ compilations", err), err
        assert json.loads((tmp_path / name / "summary.json").read_text())["cruxeval-o"]["total"] == 20
        runs[name] = _records(tmp_path / name)
    assert len(runs["hf"]) == 20 and all(r["prompt"].endswith("[MONOLOGUE]\n") for r in runs["hf"])
    assert all(r["status"] in ("passed", "failed", "timeout", "error") for r in runs["hf"])
    assert [r["raw"] for r in runs["hf"]] == [r["raw"] for r in runs["jax"]]
    assert [r["status"] for r in runs["hf"]] == [r["status"] for r in runs["jax"]]


@pytest.mark.slow  # about 4 minutes on 2 cores: both samplers over 50 + 164 x 4 generations
def test_the_engine_scores_exactly_as_the_batched_sampler(native_model, shared_data_dir, tmp_path):
    """``eval --backend jax`` decodes on the continuous-batching engine; CRUXEval-O (50 problems, greedy) and
    all of HumanEval (n = 4 at temperature 0.8) give the same records and scores as the batched sampler did."""
    from eval.runner import EvalConfig, run

    configs = {"cruxeval-o": EvalConfig(["cruxeval-o"], limit=50, max_new_tokens=40),
               "humaneval": EvalConfig(["humaneval"], n_samples=4, temperature=0.8, max_new_tokens=40)}
    results = {}
    for engine in (True, False):
        backend = load_backend("jax", native_model)
        backend.engine = engine
        for name, config in configs.items():
            out = tmp_path / f"{name}-{engine}"
            summary = run(config, out, backend=backend, data_dir=shared_data_dir, batch_size=8, progress=False)
            records = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
            results[name, engine] = ({k: v for k, v in summary[name].items() if "seconds" not in k},
                                     sorted((r["task_id"], r["sample"], r["raw"], r["status"]) for r in records))
    for name in configs:
        assert results[name, True] == results[name, False]
    assert len(results["humaneval", True][1]) == 164 * 4
    assert len({raw for _, _, raw, _ in results["humaneval", True][1]}) > 164  # samples differ
