"""The pyx TFDS builder prepares the released files, the pipeline reads it, and the CLI reports on data."""

import gzip
import json
import shutil

import pytest

from data_pipeline.cli import LOSS_CLOSE, LOSS_OPEN
from data_pipeline.pipeline import PipelineConfig, build_batches, build_eval_batches
from data_pipeline.sample import sample_data_dir, sample_tokenizer_dir
from semcoder_jax.cli import main as semcoder_main

from .conftest import segments


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, sample_paths):
    manual = tmp_path_factory.mktemp("manual")
    for p in sample_paths:
        shutil.copy(p, manual)
    (manual / "broken.jsonl").write_text('{"nl": "x"}\n{"nl": "y", "response": "z"}\n')
    data_dir = tmp_path_factory.mktemp("tfds")
    assert semcoder_main(["data", "prepare-tfds", "--manual-dir", str(manual), "--data-dir", str(data_dir)]) == 0
    return data_dir


def test_prepared_dataset_has_splits_counts_and_bad_record_report(prepared):
    import tensorflow_datasets as tfds

    builder = tfds.builder("pyx", data_dir=str(prepared))
    splits = builder.info.splits
    assert splits["train"].num_examples + splits["validation"].num_examples == 1051
    assert 0.02 < splits["validation"].num_examples / 1051 < 0.09
    assert builder.info.metadata["bad_records"] == {"missing_field": 1}
    assert "response" in builder.info.features and "task" in builder.info.features
    assert (prepared / "pyx" / "1.0.0" / "bad_records.jsonl").read_text().count("broken.jsonl:1") == 1


def test_pipeline_reads_the_tfds_train_and_validation_splits(prepared, tokenizer):
    import tensorflow_datasets as tfds

    info = tfds.builder("pyx", data_dir=str(prepared)).info
    config = PipelineConfig(tfds_name="pyx", tfds_data_dir=str(prepared), seq_len=1024, batch_size=8, window_size=128)
    with build_batches(config, tokenizer) as it:
        train = sum(len(segments(b)) for b in it)
        assert it.stats.by_task["refine"] > 0
    with build_eval_batches(config, tokenizer) as it:
        val = sum(len(segments(b)) for b in it)
    assert (train, val) == (info.splits["train"].num_examples, info.splits["validation"].num_examples)


def test_stats_reports_tasks_lengths_truncation_and_utilisation(sample_paths, capsys):
    assert semcoder_main(["data", "stats", "--tokenizer", str(sample_tokenizer_dir()), "--seq-len", "512",
                          *sample_paths]) == 0
    out = capsys.readouterr().out
    for task in ("nl2code", "exec_i", "exec_o", "refine"):
        assert task in out
    assert "p50" in out and "truncated at seq_len 512" in out
    assert "pad :" in out and "pack:" in out


def test_preview_marks_the_loss_span(capsys):
    assert semcoder_main(["data", "preview", "--tokenizer", str(sample_tokenizer_dir()), "-n", "2",
                          "--task", "exec_o", str(sample_data_dir() / "pyx_sample.jsonl.gz")]) == 0
    out = capsys.readouterr().out
    assert out.count(LOSS_OPEN) == 2 and out.count(LOSS_CLOSE) == 2
    prompt, rest = out.split(LOSS_OPEN, 1)
    assert "Simulate the Execution" in prompt and rest.startswith("[MONOLOGUE]")


def test_make_sample_regenerates_the_shipped_data_byte_for_byte(tmp_path):
    assert semcoder_main(["data", "make-sample", "--out", str(tmp_path)]) == 0
    for name in ("pyx_sample.jsonl.gz", "pyx_r_sample.jsonl.gz"):
        assert (tmp_path / name).read_bytes() == (sample_data_dir() / name).read_bytes()


def test_sample_answers_come_from_really_running_the_code():
    records = [json.loads(line) for line in gzip.open(sample_data_dir() / "pyx_sample.jsonl.gz")]
    checked = 0
    for r in records:
        text = r["fwd_mnl"] or r["bwd_mnl"]
        if not text:
            continue
        code = text.split("[PYTHON]\n", 1)[1].split("assert ", 1)[0]
        answer = r["response"].split("[ANSWER]\n", 1)[1].split("\n[/ANSWER]", 1)[0]
        namespace = {}
        exec(code, namespace)
        exec(answer, namespace)  # raises AssertionError if the recorded output is wrong
        checked += 1
    assert checked == 600
