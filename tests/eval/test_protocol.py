"""``--protocol semcoder``: the release's generation settings per benchmark, each with its source; explicit
flags that disagree are errors; prompt + output limits; summaries say how a run differs from the release."""

from __future__ import annotations

import json
import re

import pytest

from eval import protocol
from eval.runner import EvalConfig, format_table, run
from semcoder_jax.cli import main as semcoder
from semcoder_jax.errors import UserError

EVALPLUS = {"n_samples": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 1024, "max_length": None}
CRUXEVAL = {"mode": "monologue", "n_samples": 1, "temperature": 0.2, "top_p": 0.95, "max_new_tokens": None,
            "max_length": 4096}
RELEASE_FILES = ("scripts/eval/eval_evalplus.sh", "scripts/eval/eval_cruxeval.sh",
                 "scripts/eval/eval_finetune_refine.sh", "experiments/cruxeval_utils.py",
                 "experiments/run_refine_evalplus.py", "src/wrapper.py")


@pytest.mark.parametrize("name,expected", [("humaneval", EVALPLUS), ("humaneval+", EVALPLUS), ("mbpp", EVALPLUS),
                                           ("mbpp+", EVALPLUS), ("cruxeval-i", CRUXEVAL), ("cruxeval-o", CRUXEVAL)])
def test_the_semcoder_preset_is_the_release_settings_per_benchmark(name, expected):
    assert EvalConfig(benchmarks=[name], protocol="semcoder").settings(name) == expected


def test_the_preset_with_self_refine_is_the_release_refinement_script():
    refine = {"max_new_tokens": 512, "refine_top_p": 0.95, "refine_max_new_tokens": 512, "refine_trace": False}
    for name, temperature in (("humaneval+", 0.6), ("humaneval", 0.6), ("mbpp+", 0.8), ("mbpp", 0.8)):
        settings = EvalConfig(benchmarks=[name], protocol="semcoder", self_refine=5).settings(name)
        assert settings == {**EVALPLUS, **refine, "refine_temperature": temperature}
    assert protocol.SEMCODER_REFINE["self_refine"].value == 5


def test_every_preset_value_names_its_file_and_line_in_the_release():
    settings = [*protocol.SEMCODER["evalplus"].values(), *protocol.SEMCODER["cruxeval"].values(),
                *protocol.SEMCODER_REFINE.values()]
    for setting in settings:
        assert re.match(rf"({'|'.join(map(re.escape, RELEASE_FILES))}):\d+", setting.source), setting.source
    assert protocol.RELEASE == "ARiSE-Lab/SemCoder@edc4ad39"


def test_an_explicit_setting_must_agree_with_the_preset_for_every_benchmark():
    with pytest.raises(UserError, match=r"--protocol semcoder sets --temperature to 0.2 for cruxeval-o "
                                        r"\(scripts/eval/eval_cruxeval.sh:39,92 .*\); drop --temperature 0.7"):
        EvalConfig(benchmarks=["cruxeval-o"], protocol="semcoder", temperature=0.7).settings("cruxeval-o")
    agreeing = EvalConfig(benchmarks=["cruxeval-o"], protocol="semcoder", temperature=0.2, mode="monologue")
    assert agreeing.settings("cruxeval-o") == CRUXEVAL
    both = EvalConfig(benchmarks=["cruxeval-o", "humaneval+"], protocol="semcoder", temperature=0.2)
    with pytest.raises(UserError, match="sets --temperature to 0.0 for humaneval\\+"):
        both.settings("humaneval+")
    with pytest.raises(UserError, match="sets --max-length to none for humaneval"):
        EvalConfig(benchmarks=["humaneval"], protocol="semcoder", max_length=2048).settings("humaneval")
    with pytest.raises(UserError, match="sets --refine-trace to False for mbpp\\+"):
        EvalConfig(benchmarks=["mbpp+"], protocol="semcoder", self_refine=5, refine_trace=True).settings("mbpp+")


@pytest.mark.parametrize("argv,message", [
    (["--protocol", "semcoder", "--top-p", "0.5"], "--protocol semcoder sets --top-p to 0.95 for cruxeval-o"),
    (["--protocol", "semcoder", "--mode", "direct"], "--protocol semcoder sets --mode to monologue"),
])
def test_cli_conflicts_with_the_preset_are_one_line_errors(argv, message, tiny_hf_model, tmp_path, capsys):
    assert semcoder(["eval", "--model", str(tiny_hf_model), "--benchmark", "cruxeval-o", "--out",
                     str(tmp_path / "out"), *argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_the_protocol_does_not_apply_to_predictions(tmp_path, capsys):
    path = tmp_path / "g.json"
    path.write_text("{}")
    assert semcoder(["eval", "--predictions", str(path), "--benchmark", "cruxeval-o", "--protocol", "semcoder",
                     "--out", str(tmp_path / "out")]) == 1
    assert "does not apply to --predictions" in capsys.readouterr().err


class CountingBackend:
    """Answers every prompt wrongly; records what it was asked; a token is four characters."""

    dtype = "float32"

    def __init__(self):
        self.calls = []

    def encode(self, prompt):
        return [1] + [0] * (len(prompt) // 4)

    def generate(self, prompts, *, max_new_tokens, temperature, top_p, seeds, stop, batch_size):
        from eval.backends import Generation

        self.calls.append(dict(prompts=list(prompts), max_new_tokens=list(max_new_tokens), temperature=temperature,
                               top_p=top_p, seeds=list(seeds), stop=tuple(stop)))
        return [Generation("[ANSWER]\nassert f(0) == 'nope'\n", [], "stop") for _ in prompts]


def test_the_preset_reaches_the_backend_with_a_prompt_plus_output_limit(shared_data_dir, tmp_path):
    backend = CountingBackend()
    config = EvalConfig(benchmarks=["cruxeval-o"], protocol="semcoder", limit=3)
    summary = run(config, tmp_path, backend=backend, data_dir=shared_data_dir, progress=False)
    (call,) = backend.calls
    assert (call["temperature"], call["top_p"], call["stop"]) == (0.2, 0.95, ("[/ANSWER]",))
    assert call["max_new_tokens"] == [4096 - len(backend.encode(p)) for p in call["prompts"]]
    assert all(p.endswith("[MONOLOGUE]\n") for p in call["prompts"])
    s = json.loads((tmp_path / "summary.json").read_text())["cruxeval-o"]
    assert s["settings"] == {**CRUXEVAL, "seed": 0, "limit": 3, "self_refine": 0, "release_quotes": False}
    assert s["protocol"] == {"requested": "semcoder", "release": False, "source": "ARiSE-Lab/SemCoder@edc4ad39",
                             "differences": ["tasks: the first 3 of 800"]}
    assert s["source"]["dtype"] == "float32"
    assert "not the release's protocol: tasks: the first 3 of 800" in format_table(summary)


def test_a_prompt_longer_than_the_limit_gets_an_empty_answer_as_in_the_release(shared_data_dir, tmp_path):
    backend = CountingBackend()
    lengths = [len(backend.encode(p)) for p in _prompts(shared_data_dir, 3)]
    limit = min(lengths)  # max_length limit + 1: one token of room for the shortest prompt, none for the others
    config = EvalConfig(benchmarks=["cruxeval-o"], limit=3, max_length=limit + 1)
    run(config, tmp_path, backend=backend, data_dir=shared_data_dir, progress=False)
    records = [json.loads(line) for line in (tmp_path / "cruxeval-o.jsonl").read_text().splitlines()]
    sent = [n for call in backend.calls for n in call["max_new_tokens"]]
    assert sent == [limit + 1 - n for n in lengths if n <= limit]
    empty = [r for r, n in zip(records, lengths) if n > limit]
    assert empty and all((r["raw"], r["finish_reason"], r["status"]) == ("", "length", "failed") for r in empty)
    both = CountingBackend()
    run(EvalConfig(benchmarks=["cruxeval-o"], limit=3, max_length=10**6, max_new_tokens=5), tmp_path / "b",
        backend=both, data_dir=shared_data_dir, progress=False)
    assert both.calls[0]["max_new_tokens"] == [5, 5, 5]  # the tighter limit applies


def _prompts(shared_data_dir, n):
    from eval.benchmarks import get_benchmark

    return [p.prompt for p in get_benchmark("cruxeval-o", mode="monologue").load(shared_data_dir, n)]


def test_a_full_run_with_the_preset_is_the_release_and_any_change_is_listed():
    assert protocol.differences("cruxeval-i", CRUXEVAL, self_refine=0, limit=None) == []
    assert protocol.differences("humaneval+", EVALPLUS, self_refine=0, limit=164) == []
    custom = {**CRUXEVAL, "temperature": 0.0, "max_length": None, "max_new_tokens": 1024}
    assert protocol.differences("cruxeval-o", custom, self_refine=0, limit=20) == [
        "tasks: the first 20 of 800", "temperature 0.0 (release: 0.2)", "max_new_tokens 1024 (release: none)",
        "max_length none (release: 4096)"]
    refined = EvalConfig(benchmarks=["mbpp+"], protocol="semcoder", self_refine=2).settings("mbpp+")
    assert protocol.differences("mbpp+", refined, self_refine=2, limit=None) == [
        "self_refine 2 rounds (release: 5)"]


def test_round_0_of_a_refine_run_under_the_preset_is_not_the_plain_run(tmp_path):
    """The release's refinement script generates round 0 with 512 new tokens, its plain EvalPlus run with
    1024: a plain rerun in a refine run's directory (or the reverse) is refused, naming that."""
    from eval.runner import _check_config, describe

    refine = EvalConfig(benchmarks=["humaneval+"], protocol="semcoder", self_refine=5, backend="hf")
    _check_config(tmp_path, describe(refine))
    plain = EvalConfig(benchmarks=["humaneval+"], protocol="semcoder", backend="hf")
    with pytest.raises(UserError, match="different settings: humaneval\\+ max_new_tokens 512 → 1024; use"):
        _check_config(tmp_path, describe(plain), write=False)
