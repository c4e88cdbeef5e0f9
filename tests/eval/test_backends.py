"""Backends on a tiny random model: conventions shared by hf and jax, and the CLI end to end on CPU."""

from __future__ import annotations

import json

import pytest

from eval.backends import HFBackend, load_backend
from semcoder_jax.cli import main as semcoder
from semcoder_jax.errors import UserError

PROMPTS = ["def f(x):\n    return x", "assert f(", "for i in range(3):\n    print(i)\n" * 3]


@pytest.fixture(scope="module")
def hf_backend(tiny_hf_model):
    return HFBackend(tiny_hf_model)


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
        printed = capsys.readouterr().out
        assert "cruxeval-o" in printed and "pass@1" in printed
        assert json.loads((tmp_path / name / "summary.json").read_text())["cruxeval-o"]["total"] == 20
        runs[name] = _records(tmp_path / name)
    assert len(runs["hf"]) == 20 and all(r["prompt"].endswith("[MONOLOGUE]\n") for r in runs["hf"])
    assert all(r["status"] in ("passed", "failed", "timeout", "error") for r in runs["hf"])
    assert [r["raw"] for r in runs["hf"]] == [r["raw"] for r in runs["jax"]]
    assert [r["status"] for r in runs["hf"]] == [r["status"] for r in runs["jax"]]
