"""CRUXEval and HumanEval+ ship in the package, so the quick start scores offline with no data dir."""

import hashlib

import pytest

import eval.benchmarks as benchmarks


def test_bundled_files_are_byte_copies_of_the_releases():
    crux = benchmarks.BUNDLED_DATA_DIR / "cruxeval" / "cruxeval.jsonl"
    human = benchmarks.BUNDLED_DATA_DIR / "humanevalplus" / "HumanEvalPlus-v0.1.10.jsonl.gz"
    assert hashlib.sha256(crux.read_bytes()).hexdigest() == "8368b81047dc5014e4caf5a2f97604eff7644e0ecd7415e3ceeb184bbc2e0c96"
    assert hashlib.sha256(human.read_bytes()).hexdigest() == "272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101"


def test_bundled_copy_is_the_fallback_only_when_nothing_was_configured(monkeypatch, tmp_path):
    monkeypatch.delenv(benchmarks.DATA_ENV, raising=False)
    monkeypatch.setattr(benchmarks, "DEFAULT_DATA_DIR", tmp_path / "empty-cache")
    assert benchmarks.data_file("cruxeval-o", None) == benchmarks.BUNDLED_DATA_DIR / "cruxeval" / "cruxeval.jsonl"
    with pytest.raises(benchmarks.DataError, match="not found"):
        benchmarks.data_file("cruxeval-o", tmp_path / "explicit-but-empty")
    monkeypatch.setenv(benchmarks.DATA_ENV, str(tmp_path / "env-but-empty"))
    with pytest.raises(benchmarks.DataError, match="not found"):
        benchmarks.data_file("cruxeval-o", None)
    with pytest.raises(benchmarks.DataError):
        benchmarks.data_file("mbpp+", tmp_path)  # MBPP+ is not bundled
