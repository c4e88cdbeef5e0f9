"""``semcoder eval`` on LiveCodeBench execution and REval state end to end: the tiny model on both backends
gives the same greedy generations and the same scores, from a data dir laid out like the official exports."""

from __future__ import annotations

import json
from pathlib import Path

from semcoder_jax.cli import main as semcoder

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "livecodebench"


def test_lcb_execution_and_reval_state_on_both_backends(tiny_hf_model, shared_data_dir, tmp_path, capsys):
    from semcoder_jax.convert import convert_hf_to_native

    data = tmp_path / "data"
    data.mkdir()
    (data / "livecodebench").symlink_to(FIXTURES)
    (data / "reval").symlink_to(shared_data_dir / "reval")
    native = tmp_path / "native"
    convert_hf_to_native(str(tiny_hf_model), str(native))
    common = ["--benchmark", "lcb-execution,reval-state", "--limit", "3", "--max-new-tokens", "24",
              "--batch-size", "4", "--data-dir", str(data)]
    runs = {}
    for name, model, backend in (("hf", tiny_hf_model, "hf"), ("jax", native, "jax")):
        assert semcoder(["eval", "--model", str(model), "--backend", backend, *common,
                         "--out", str(tmp_path / name)]) == 0
        printed = capsys.readouterr().out
        assert "lcb-execution" in printed and "reval-state" in printed
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["lcb-execution"]["total"] == 3 and summary["reval-state"]["total"] == 3
        assert "difficulty" in summary["lcb-execution"]
        runs[name] = {bench: [json.loads(line) for line in (tmp_path / name / f"{bench}.jsonl").read_text().splitlines()]
                      for bench in ("lcb-execution", "reval-state")}
    for bench in ("lcb-execution", "reval-state"):
        hf, jx = runs["hf"][bench], runs["jax"][bench]
        assert [r["raw"] for r in hf] == [r["raw"] for r in jx]
        assert [r["status"] for r in hf] == [r["status"] for r in jx]
        assert all(r["status"] in ("passed", "failed", "timeout", "error") for r in hf)
    # lcb-execution runs SemCoder's forward monologue by default; REval its official direct prompt
    assert all(r["prompt"].endswith("[MONOLOGUE]\n") for r in runs["hf"]["lcb-execution"])


def test_gold_reval_predictions_for_all_four_tasks_score_100_and_full_consistency(shared_data_dir, tmp_path, capsys):
    """One per-sample JSONL holds the four tasks' answers (each record names its benchmark); scoring it gives
    each task's accuracy and, with all four present, the Incremental Consistency under the table."""
    from eval.benchmarks.reval import REval
    from sandbox import Sandbox

    names = ("reval-coverage", "reval-state", "reval-path", "reval-output")
    benches = {n: REval(n) for n in names}
    problems = {n: benches[n].load(shared_data_dir, limit=6) for n in names}
    with Sandbox(workers=2) as sandbox:
        for n in names:
            benches[n].ground_truth(sandbox, problems[n])
    path = tmp_path / "answers.jsonl"
    with open(path, "w") as f:
        for n in names:
            for p in problems[n]:
                raw = f"[ANSWER]\n{benches[n].gold(p)}\n"
                f.write(json.dumps({"benchmark": n, "task_id": p.task_id, "sample": 0, "round": 0, "raw": raw}) + "\n")
    assert semcoder(["eval", "--predictions", str(path), "--benchmark", ",".join(names), "--limit", "6",
                     "--data-dir", str(shared_data_dir), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [summary[n]["pass@1"] for n in names] == [1.0] * 4
    assert summary["reval-consistency"]["ic"] == 100.0
    assert "reval-consistency: " in printed


def test_the_download_pins_of_reval_are_the_byte_identical_shared_copies(shared_data_dir):
    import hashlib

    from eval.download import RELEASES

    pinned = {rel: sha for rel, (_, sha) in RELEASES.items() if rel.startswith("reval/")}
    assert len(pinned) == 10  # the two data files and the eight prompts
    assert {rel: hashlib.sha256((shared_data_dir / rel).read_bytes()).hexdigest() for rel in pinned} == pinned
