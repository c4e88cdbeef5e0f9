"""The runner: pass@k, per-sample records, summaries, resume and the official prediction formats."""

from __future__ import annotations

import json
from math import comb

import pytest

from eval.runner import EvalConfig, format_table, pass_at_k, run
from semcoder_jax.errors import UserError


@pytest.mark.parametrize("n,c,k", [(1, 1, 1), (1, 0, 1), (10, 3, 1), (10, 3, 5), (20, 0, 10), (20, 19, 10), (5, 5, 5)])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


class FakeBackend:
    """Deterministic 'model' for runner tests: answers from a table, counts its calls."""

    def __init__(self, answers: dict[str, str]):
        self.answers, self.prompts, self.calls = answers, [], []

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, top_p=1.0, seeds=None, stop=(), batch_size=8):
        from eval.backends import Generation

        self.prompts += list(prompts)
        self.calls.append({"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                           "seeds": seeds})
        out = []
        for prompt in prompts:
            key = next(k for k in self.answers if k in prompt)
            out.append(Generation(self.answers[key], [], "stop"))
        return out


def _crux_answers(shared_data_dir, limit, wrong=()):
    rows = [json.loads(line) for line in open(shared_data_dir / "cruxeval" / "cruxeval.jsonl")][:limit]
    answers = {}
    for i, r in enumerate(rows):
        code = r["code"].replace("'", '"')  # as it appears in the prompt
        value = "'nope'" if i in wrong else r["output"]
        answers[code + "\nassert f("] = f"The function runs.\n[ANSWER]\nassert f({r['input']}) == {value}\n"
    return answers


def test_generate_score_and_summarise_cruxeval(shared_data_dir, tmp_path):
    backend = FakeBackend(_crux_answers(shared_data_dir, 10, wrong={2, 7}))
    config = EvalConfig(benchmarks=["cruxeval-o"], mode="direct", limit=10, max_new_tokens=64)
    summary = run(config, tmp_path, backend=backend, data_dir=shared_data_dir, progress=False)
    s = summary["cruxeval-o"]
    assert (s["pass@1"], s["passed"], s["total"]) == (0.8, 8, 10)
    records = [json.loads(line) for line in (tmp_path / "cruxeval-o.jsonl").read_text().splitlines()]
    assert len(records) == 10
    first = records[0]
    assert set(first) >= {"task_id", "prompt", "raw", "extracted", "status", "message", "sample", "round"}
    assert first["prompt"].endswith("[/PYTHON]\n[ANSWER]\n")
    failed = {r["task_id"]: r for r in records if r["status"] != "passed"}
    assert set(failed) == {"sample_2", "sample_7"} and "wrong output" in failed["sample_2"]["message"]
    assert json.loads((tmp_path / "summary.json").read_text())["cruxeval-o"]["passed"] == 8
    table = format_table(summary)
    assert "cruxeval-o" in table and "80.0" in table


def test_rerun_skips_finished_samples_and_drops_a_cut_off_line(shared_data_dir, tmp_path):
    config = EvalConfig(benchmarks=["cruxeval-o"], mode="direct", limit=6, max_new_tokens=64)
    first = FakeBackend(_crux_answers(shared_data_dir, 6))
    run(EvalConfig(**{**config.__dict__, "limit": 4}), tmp_path, backend=first, data_dir=shared_data_dir,
        progress=False)
    assert len(first.prompts) == 4
    path = tmp_path / "cruxeval-o.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])  # interrupted while writing sample 3
    second = FakeBackend(_crux_answers(shared_data_dir, 6))
    summary = run(config, tmp_path, backend=second, data_dir=shared_data_dir, progress=False)
    assert len(second.prompts) == 3  # samples 3, 4, 5
    assert summary["cruxeval-o"]["total"] == 6 and summary["cruxeval-o"]["passed"] == 6
    assert len(path.read_text().splitlines()) == 6


def test_changed_settings_in_the_same_directory_are_an_error(shared_data_dir, tmp_path):
    backend = FakeBackend(_crux_answers(shared_data_dir, 2))
    run(EvalConfig(benchmarks=["cruxeval-o"], mode="direct", limit=2), tmp_path, backend=backend,
        data_dir=shared_data_dir, progress=False)
    with pytest.raises(UserError, match="different settings: cruxeval-o temperature 0.0 → 0.7;"):
        run(EvalConfig(benchmarks=["cruxeval-o"], mode="direct", limit=2, temperature=0.7), tmp_path,
            backend=backend, data_dir=shared_data_dir, progress=False)


def test_n_samples_give_pass_at_k(shared_data_dir, tmp_path):
    class Alternating(FakeBackend):
        def generate(self, prompts, **kw):
            out = super().generate(prompts, **kw)
            from eval.backends import Generation

            # every other sample of each task is wrong
            return [g if (len(self.prompts) - len(prompts) + i) % 2 == 0 else Generation("[ANSWER]\nassert f(0) == 'nope'", [], "stop")
                    for i, g in enumerate(out)]

    backend = Alternating(_crux_answers(shared_data_dir, 3))
    config = EvalConfig(benchmarks=["cruxeval-o"], mode="direct", limit=3, n_samples=2, temperature=0.8)
    s = run(config, tmp_path, backend=backend, data_dir=shared_data_dir, progress=False, chunk=100)["cruxeval-o"]
    assert s["total"] == 6 and s["passed"] == 3
    assert s["pass@1"] == pytest.approx(0.5)
    assert "pass@5" not in s


def test_evalplus_samples_jsonl_with_solution_or_completion(shared_data_dir, gt_cache, tmp_path):
    rows = [json.loads(line) for line in __import__("gzip").open(
        shared_data_dir / "humanevalplus" / "HumanEvalPlus-v0.1.10.jsonl.gz", "rt")][:4]
    samples = [
        {"task_id": rows[0]["task_id"], "solution": rows[0]["prompt"] + rows[0]["canonical_solution"]},
        {"task_id": rows[1]["task_id"], "completion": rows[1]["canonical_solution"]},
        {"task_id": rows[2]["task_id"], "completion": "    return None\n"},
        {"task_id": rows[3]["task_id"], "solution": "def truncate_number(x):\n    return 0.5\n"},  # base only
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    summary = run(EvalConfig(benchmarks=["humaneval+"], predictions=str(path), limit=4), tmp_path / "out",
                  data_dir=shared_data_dir, progress=False, gt_cache_dir=gt_cache)
    s = summary["humaneval+"]
    assert s["base"]["passed"] == 2 and s["plus"]["passed"] == 2 and s["passed"] == 2
    records = {r["task_id"]: r for r in map(json.loads, (tmp_path / "out" / "humanevalplus.jsonl").read_text().splitlines())}
    assert records[rows[2]["task_id"]]["parts"]["base"]["status"] == "failed"


def test_the_harness_own_file_can_be_rescored(shared_data_dir, tmp_path):
    backend = FakeBackend(_crux_answers(shared_data_dir, 5, wrong={1}))
    run(EvalConfig(benchmarks=["cruxeval-o"], mode="direct", limit=5), tmp_path / "a", backend=backend,
        data_dir=shared_data_dir, progress=False)
    summary = run(EvalConfig(benchmarks=["cruxeval-o"], predictions=str(tmp_path / "a" / "cruxeval-o.jsonl"),
                             limit=5), tmp_path / "b", data_dir=shared_data_dir, progress=False)
    assert (summary["cruxeval-o"]["passed"], summary["cruxeval-o"]["total"]) == (4, 5)


def test_bad_predictions_name_file_and_line(shared_data_dir, tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"task_id": "HumanEval/0", "solution": "x"}\n{"task_id": "HumanEval/1"}\n')
    with pytest.raises(UserError, match=r"samples.jsonl:2: expected 'solution', 'completion' or 'raw'"):
        run(EvalConfig(benchmarks=["humaneval"], predictions=str(path)), tmp_path / "out",
            data_dir=shared_data_dir, progress=False)


def test_self_refine_reports_pass_at_1_after_each_round(shared_data_dir, gt_cache, tmp_path):
    rows = [json.loads(line) for line in __import__("gzip").open(
        shared_data_dir / "humanevalplus" / "HumanEvalPlus-v0.1.10.jsonl.gz", "rt")][:2]
    fixed = "[Refined]\n```python\n" + rows[1]["prompt"] + rows[1]["canonical_solution"] + "```\n[/Refined]"
    backend = FakeBackend({
        "### Buggy Solution": fixed,                      # refine prompts: the fix
        rows[0]["entry_point"]: rows[0]["canonical_solution"] + "```",   # task 0: right first time
        rows[1]["entry_point"]: "    return ''\n```",                       # task 1: wrong first time
    })
    config = EvalConfig(benchmarks=["humaneval+"], limit=2, self_refine=2, max_new_tokens=64)
    summary = run(config, tmp_path, backend=backend, data_dir=shared_data_dir, progress=False,
                  gt_cache_dir=gt_cache)
    s = summary["humaneval+"]
    assert [r["pass@1"] for r in s["self_refine"]] == [0.5, 1.0, 1.0]
    refine_prompts = [p for p in backend.prompts if "### Buggy Solution" in p]
    assert len(refine_prompts) == 1  # only the failing sample, only until it passes
    assert "### Failed Test\n```python\nretv = " + rows[1]["entry_point"] in refine_prompts[0]
    # The headline is round 0's; each round has a column of its own.
    assert (s["pass@1"], s["passed"], s["plus"]["pass@1"]) == (0.5, 1, 0.5)
    assert (s["pass@1 refine-1"], s["pass@1 refine-2"]) == (1.0, 1.0)
    table = format_table(summary).splitlines()
    assert [c.strip() for c in table[0].split("  ") if c.strip()][:6] == [
        "benchmark", "pass@1", "passed", "total", "pass@1 refine-1", "pass@1 refine-2"]
    assert table[2].split()[:6] == ["humaneval+", "50.0", "1", "2", "100.0", "100.0"]
    # The same directory without refinement: round 0 only, nothing generated again.
    calls = len(backend.prompts)
    again = run(EvalConfig(benchmarks=["humaneval+"], limit=2, max_new_tokens=64), tmp_path, backend=backend,
                data_dir=shared_data_dir, progress=False, gt_cache_dir=gt_cache)
    assert len(backend.prompts) == calls
    assert again["humaneval+"]["pass@1"] == 0.5 and not [k for k in again["humaneval+"] if "refine" in k]
    assert "refine" not in format_table(again)
    assert json.loads((tmp_path / "summary.json").read_text())["humaneval+"]["pass@1"] == 0.5
    # Other refine settings for the rounds already made are a change.
    with pytest.raises(UserError, match="humaneval\\+ refine_temperature 0.0 → 0.6"):
        run(EvalConfig(benchmarks=["humaneval+"], limit=2, max_new_tokens=64, self_refine=2, refine_temperature=0.6),
            tmp_path, backend=backend, data_dir=shared_data_dir, progress=False, gt_cache_dir=gt_cache)


def test_refine_trace_shows_the_failing_inputs_execution(shared_data_dir, gt_cache, tmp_path):
    rows = [json.loads(line) for line in __import__("gzip").open(
        shared_data_dir / "mbppplus" / "MbppPlus-v0.2.0.jsonl.gz", "rt")][:1]  # Mbpp/2 similar_elements
    buggy = "\ndef similar_elements(a, b):\n    out = []\n    for x in a:\n        if x in b:\n            out.append(x + 1)\n    return tuple(out)\n```"
    backend = FakeBackend({"### Buggy Solution": "[Refined]\ndef similar_elements(a, b):\n    return ()\n[/Refined]",
                           "similar_elements": buggy})
    config = EvalConfig(benchmarks=["mbpp+"], limit=1, self_refine=1, refine_trace=True, max_new_tokens=64)
    run(config, tmp_path, backend=backend, data_dir=shared_data_dir, progress=False, gt_cache_dir=gt_cache)
    prompt = next(p for p in backend.prompts if "### Buggy Solution" in p)
    assert "### Failed Test\n```python\nretv = similar_elements((3, 4, 5, 6), (5, 7, 4, 10))\nassert retv == " in prompt
    assert "[MONOLOGUE]\n### Execution Simulation\n```python\n" in prompt
    assert "            out.append(x + 1) # [STATE] a = (3, 4, 5, 6), b = (5, 7, 4, 10), out = [5, 6], x = 5 [/STATE]" in prompt
    assert prompt.endswith("### Root Cause Analysis\n\n")
    assert rows[0]["entry_point"] == "similar_elements"


def _crux_predictions(shared_data_dir, tmp_path, n):
    rows = [json.loads(line) for line in open(shared_data_dir / "cruxeval" / "cruxeval.jsonl")][:n]
    path = tmp_path / "generations.json"
    path.write_text(json.dumps({r["id"]: [r["output"]] for r in rows}))
    return path


def test_predictions_that_miss_tasks_are_refused_naming_how_many_and_which(shared_data_dir, tmp_path):
    path = _crux_predictions(shared_data_dir, tmp_path, 4)  # all correct, for 4 of the first 8 tasks
    config = EvalConfig(benchmarks=["cruxeval-o"], predictions=str(path), limit=12)
    with pytest.raises(UserError, match=r"generations.json: 8 of 12 cruxeval-o tasks have no prediction "
                                        r"\(sample_4, sample_5, sample_6, sample_7, sample_8, … \(3 more\)\); "
                                        r"pass --limit N .* or --missing-as-failed"):
        run(config, tmp_path / "out", data_dir=shared_data_dir, progress=False)
    assert not (tmp_path / "out" / "cruxeval-o.jsonl").exists()
    # --limit defines the tasks a predictions file must cover.
    s = run(EvalConfig(benchmarks=["cruxeval-o"], predictions=str(path), limit=4), tmp_path / "first4",
            data_dir=shared_data_dir, progress=False)["cruxeval-o"]
    assert (s["pass@1"], s["total"], "missing" in s) == (1.0, 4, False)


def test_missing_as_failed_scores_the_missing_tasks_as_failed_and_says_so(shared_data_dir, tmp_path):
    path = _crux_predictions(shared_data_dir, tmp_path, 4)
    config = EvalConfig(benchmarks=["cruxeval-o"], predictions=str(path), limit=8, missing_as_failed=True)
    summary = run(config, tmp_path / "out", data_dir=shared_data_dir, progress=False)
    s = summary["cruxeval-o"]
    assert (s["pass@1"], s["passed"], s["total"], s["tasks"], s["problems"]) == (0.5, 4, 8, 4, 8)
    assert (s["missing"], s["missing_as_failed"]) == (4, True)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["cruxeval-o"]["missing"] == 4
    assert "4 of 8 tasks without a prediction, scored as failed" in format_table(summary)


def test_each_sample_has_its_own_seed_whatever_the_chunking_or_resume(shared_data_dir, tmp_path):
    config = EvalConfig(benchmarks=["cruxeval-o"], mode="direct", limit=3, n_samples=2, temperature=0.8)
    whole = FakeBackend(_crux_answers(shared_data_dir, 3))
    run(config, tmp_path / "a", backend=whole, data_dir=shared_data_dir, progress=False, chunk=100)
    pieces = FakeBackend(_crux_answers(shared_data_dir, 3))
    run(EvalConfig(**{**config.__dict__, "limit": 1}), tmp_path / "b", backend=pieces, data_dir=shared_data_dir,
        progress=False, chunk=1)
    run(config, tmp_path / "b", backend=pieces, data_dir=shared_data_dir, progress=False, chunk=3)

    def seeds(out):
        return {(r["task_id"], r["sample"]): r["seed"]
                for r in map(json.loads, (out / "cruxeval-o.jsonl").read_text().splitlines())}

    assert seeds(tmp_path / "a") == seeds(tmp_path / "b")
    assert len(set(seeds(tmp_path / "a").values())) == 6
    assert [c["seeds"] for c in whole.calls] == [list(seeds(tmp_path / "a").values())]
    other = FakeBackend(_crux_answers(shared_data_dir, 3))
    run(EvalConfig(**{**config.__dict__, "seed": 1}), tmp_path / "c", backend=other, data_dir=shared_data_dir,
        progress=False)
    assert not set(seeds(tmp_path / "c").values()) & set(seeds(tmp_path / "a").values())


def test_more_samples_extend_a_directory_and_fewer_report_fewer(shared_data_dir, tmp_path):
    backend = FakeBackend(_crux_answers(shared_data_dir, 2))
    config = EvalConfig(benchmarks=["cruxeval-o"], mode="direct", limit=2, n_samples=1, temperature=0.8)
    run(config, tmp_path, backend=backend, data_dir=shared_data_dir, progress=False)
    s = run(EvalConfig(**{**config.__dict__, "n_samples": 3}), tmp_path, backend=backend,
            data_dir=shared_data_dir, progress=False)["cruxeval-o"]
    assert len(backend.prompts) == 6 and s["total"] == 6
    s = run(config, tmp_path, backend=backend, data_dir=shared_data_dir, progress=False)["cruxeval-o"]
    assert len(backend.prompts) == 6 and s["total"] == 2
