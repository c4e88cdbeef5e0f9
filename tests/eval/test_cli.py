"""``semcoder eval`` command line: one-line errors for bad input, scoring-only mode, download."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from eval import download as download_module
from semcoder_jax.cli import main as semcoder


@pytest.mark.parametrize("argv,message", [
    (["--out", "x", "--predictions", "p.jsonl"], "--benchmark is required"),
    (["--benchmark", "humaneval", "--predictions", "p.jsonl"], "--out is required"),
    (["--benchmark", "humaneval", "--out", "x"], "exactly one of --model or --predictions"),
    (["--benchmark", "humanevalx", "--out", "x", "--predictions", "p"], "--benchmark 'humanevalx': expected one of"),
    (["--benchmark", "cruxeval-o", "--out", "x", "--model", "m", "--limit", "0"], "--limit must be >= 1"),
    (["--benchmark", "cruxeval-o", "--out", "x", "--model", "m", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--benchmark", "cruxeval-o", "--out", "x", "--model", "/nonexistent"], "--model /nonexistent: no such file"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert semcoder(["eval", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("semcoder eval: error: ") and message in err and err.count("\n") == 1


def _row(table: str, name: str) -> list[str]:
    return next(line.split()[1:] for line in table.splitlines() if line.split()[:1] == [name])


def test_predictions_are_scored_from_the_command_line(shared_data_dir, tmp_path, capsys):
    rows = [json.loads(line) for line in open(shared_data_dir / "cruxeval" / "cruxeval.jsonl")][:5]
    path = tmp_path / "generations.json"
    path.write_text(json.dumps({r["id"]: [r["output"] if i else "None"] for i, r in enumerate(rows)}))
    assert semcoder(["eval", "--predictions", str(path), "--benchmark", "cruxeval-o", "--limit", "5",
                     "--data-dir", str(shared_data_dir), "--out", str(tmp_path / "out")]) == 0
    assert _row(capsys.readouterr().out, "cruxeval-o") == ["80.0", "4", "5"]


def test_data_dir_can_come_from_the_environment(shared_data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEMCODER_DATA_DIR", str(shared_data_dir))
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return True\n"}) + "\n")
    assert semcoder(["eval", "--predictions", str(path), "--benchmark", "humaneval", "--limit", "1",
                     "--out", str(tmp_path / "out")]) == 0
    assert _row(capsys.readouterr().out, "humaneval") == ["0.0", "0", "1"]


def test_help_is_fast_and_imports_no_ml_framework():
    code = ("import sys, time; t = time.time(); from semcoder_jax.cli import build_parser; "
            "build_parser().parse_args(['eval', '--help'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "--benchmark" in proc.stdout
    check = ("import sys; from eval import cli; import argparse; p = argparse.ArgumentParser(); "
             "cli.register(p.add_subparsers()); print(sorted(m for m in ('torch', 'jax', 'tensorflow') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, text=True).stdout.strip() == "[]"


def test_download_checks_the_pinned_hash(shared_data_dir, tmp_path, monkeypatch):
    source = shared_data_dir / "cruxeval" / "cruxeval.jsonl"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    monkeypatch.setattr(download_module, "RELEASES", {"cruxeval/cruxeval.jsonl": (source.as_uri(), digest)})
    assert download_module.download(tmp_path) == [tmp_path / "cruxeval" / "cruxeval.jsonl"]
    assert download_module.download(tmp_path) == []  # already there
    monkeypatch.setattr(download_module, "RELEASES", {"x/y.jsonl": (source.as_uri(), "0" * 64)})
    with pytest.raises(download_module.UserError, match="does not match the pinned release"):
        download_module.download(tmp_path)


def test_require_isolation_refuses_to_run_without_namespaces_in_one_line(shared_data_dir, tmp_path, capsys):
    path = tmp_path / "generations.json"
    path.write_text(json.dumps({"sample_0": ["'x'"]}))
    code = semcoder(["eval", "--predictions", str(path), "--benchmark", "cruxeval-o", "--limit", "1",
                     "--data-dir", str(shared_data_dir), "--out", str(tmp_path / "out"), "--sandbox-mode", "none",
                     "--require-isolation"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "isolation is required" in err
    assert not (tmp_path / "out" / "cruxeval-o.jsonl").exists()


def test_half_covered_predictions_are_refused_unless_missing_tasks_count_as_failed(shared_data_dir, tmp_path, capsys):
    rows = [json.loads(line) for line in open(shared_data_dir / "cruxeval" / "cruxeval.jsonl")][:2]
    path = tmp_path / "generations.json"
    path.write_text(json.dumps({r["id"]: [r["output"]] for r in rows}))  # right answers for 2 of 4 tasks
    argv = ["eval", "--predictions", str(path), "--benchmark", "cruxeval-o", "--limit", "4",
            "--data-dir", str(shared_data_dir), "--out", str(tmp_path / "out")]
    assert semcoder(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 of 4 cruxeval-o tasks have no prediction (sample_2, sample_3)" in err
    assert semcoder([*argv, "--missing-as-failed"]) == 0
    out = capsys.readouterr().out
    assert _row(out, "cruxeval-o")[:3] == ["50.0", "2", "4"]
    assert "2 of 4 tasks without a prediction, scored as failed" in out
