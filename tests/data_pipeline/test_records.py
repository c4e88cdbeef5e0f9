"""Every class of bad record gets a message naming file, line and field, and is counted; none is lost."""

import json

import pytest

from data_pipeline.cli import register  # noqa: F401  (the CLI module imports cleanly)
from data_pipeline.pipeline import PipelineConfig, build_batches
from data_pipeline.records import BadRecord, iter_jsonl, parse_json_line
from semcoder_jax.cli import main as semcoder_main

from .conftest import write_jsonl

GOOD = {"nl": "add two numbers", "fwd_mnl": "", "bwd_mnl": "", "response": "def f(a, b):\n    return a + b\n"}

# (raw line, reason code, field named in the message or None)
BAD_LINES = [
    (b"{not json", "invalid_json", None),
    (b"[1, 2, 3]", "not_object", None),
    (json.dumps({"nl": "x"}).encode(), "missing_field", "response"),
    (json.dumps({"response": "x", "id": 3}).encode(), "missing_field", "nl/bwd_mnl/fwd_mnl/fault/instruction"),
    (json.dumps({"nl": 3, "response": "x"}).encode(), "wrong_type", "nl"),
    (json.dumps({"nl": "x", "response": ["a"]}).encode(), "wrong_type", "response"),
    (json.dumps({"nl": "", "fwd_mnl": "", "bwd_mnl": "", "response": "x"}).encode(), "no_task_field", "nl/bwd_mnl/fwd_mnl"),
    (json.dumps({"nl": "a", "fwd_mnl": "b", "bwd_mnl": "", "response": "x"}).encode(), "several_task_fields", "nl/fwd_mnl"),
    (json.dumps({"fault": "bug", "response": "   \n"}).encode(), "empty_response", "response"),
    (b'{"nl": "caf\xe9", "response": "x"}', "invalid_utf8", None),
    (json.dumps({"nl": "x" * 5000, "response": "x"}).encode(), "too_large", None),
    (b'{"nl": "a", "response": "x", "nl": "b"}', "duplicate_key", "nl"),
    (b'{"nl": "a", "response": "x", "meta": ' + b"[" * 1500 + b"]" * 1500 + b"}", "too_deep", None),
]


@pytest.mark.parametrize("raw,reason,field", BAD_LINES, ids=[b[1] + str(i) for i, b in enumerate(BAD_LINES)])
def test_each_bad_record_class_has_its_reason_and_location(raw, reason, field):
    with pytest.raises(BadRecord) as info:
        parse_json_line(raw, "data.jsonl", 7, max_bytes=4096)
    bad = info.value
    assert bad.reason == reason
    assert str(bad).startswith("data.jsonl:7: ")
    if field:
        assert f"field {field!r}" in str(bad)


def test_the_three_released_schemas_select_their_task():
    def task(obj):
        return parse_json_line(json.dumps(obj).encode(), "f", 1).task

    assert task(GOOD) == "nl2code"
    assert task({**GOOD, "nl": "", "fwd_mnl": "x"}) == "exec_o"
    assert task({**GOOD, "nl": None, "bwd_mnl": "x"}) == "exec_i"
    assert task({"fault": "buggy", "response": "fixed"}) == "refine"
    assert task({"instruction": "hi", "response": "hello", "extra": {"meta": 1}}) == "chat"


def _mixed_file(tmp_path):
    rows = []
    for i, (raw, _, _) in enumerate(BAD_LINES):
        rows.append({**GOOD, "nl": f"task {i}"})
        rows.append(raw)
    return write_jsonl(tmp_path / "mixed.jsonl", rows)


def test_iter_jsonl_reports_line_numbers_of_bad_records(tmp_path):
    path = _mixed_file(tmp_path)
    items = list(iter_jsonl(path, max_bytes=4096))
    bad = [x for x in items if isinstance(x, BadRecord)]
    assert [b.line for b in bad] == list(range(2, 2 * len(BAD_LINES) + 1, 2))
    assert [b.reason for b in bad] == [r for _, r, _ in BAD_LINES]


def test_skip_policy_counts_every_reason_and_writes_the_sidecar(tmp_path, tokenizer):
    path = _mixed_file(tmp_path)
    sidecar = tmp_path / "bad.jsonl"
    config = PipelineConfig(files=(str(path),), seq_len=128, batch_size=4, on_bad_record="skip",
                            bad_records_file=str(sidecar), max_record_bytes=4096, window_size=8)
    with build_batches(config, tokenizer) as it:
        list(it)
        assert it.stats.records == len(BAD_LINES)
        expected = {}
        for _, reason, _ in BAD_LINES:
            expected[reason] = expected.get(reason, 0) + 1
        assert dict(it.bad_records.counts) == expected
        assert f"skipped {len(BAD_LINES)} bad records" in it.bad_records.summary()
    logged = [json.loads(line) for line in sidecar.read_text().splitlines()]
    assert sorted(x["line"] for x in logged) == list(range(2, 2 * len(BAD_LINES) + 1, 2))
    assert all(x["message"].startswith(f"{path}:") for x in logged)


def test_error_policy_stops_at_the_first_bad_record_with_its_location(tmp_path, tokenizer):
    path = _mixed_file(tmp_path)
    config = PipelineConfig(files=(str(path),), seq_len=128, batch_size=4, shuffle=False, window_size=64)
    with build_batches(config, tokenizer) as it, pytest.raises(BadRecord, match=f"{path}:2: not valid JSON"):
        next(it)


def test_data_check_lists_bad_records_and_exits_1(tmp_path, capsys):
    path = _mixed_file(tmp_path)
    assert semcoder_main(["data", "check", "--max-record-bytes", "4096", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:2: not valid JSON" in out
    assert f"{path}:10: field 'nl': wrong type" in out
    assert f"{len(BAD_LINES)} valid records" in out and f"{len(BAD_LINES)} bad records" in out


def test_data_check_passes_clean_files(sample_paths, capsys):
    assert semcoder_main(["data", "check", *sample_paths]) == 0
    assert "0 bad records" in capsys.readouterr().out


def _truncated_gz(tmp_path, n: int = 200):
    import gzip

    rows = [json.dumps({**GOOD, "nl": f"task {i} " + "pad" * 50}).encode() + b"\n" for i in range(n)]
    whole = gzip.compress(b"".join(rows))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) * 2 // 3])  # the end of the stream is missing
    return path


def test_a_truncated_compressed_file_is_one_bad_record_naming_how_much_was_read(tmp_path):
    path = _truncated_gz(tmp_path)
    items = list(iter_jsonl(path))
    bad = [x for x in items if isinstance(x, BadRecord)]
    good = [x for x in items if not isinstance(x, BadRecord)]
    assert len(bad) == 1 and bad[0].reason == "truncated_file"
    assert f"{len(good)} records in {len(good)} lines were read before it" in str(bad[0])
    assert str(bad[0]).startswith(f"{path}:{len(good) + 1}: truncated or corrupt compressed file")


def test_data_check_on_a_truncated_file_prints_one_line_not_a_traceback(tmp_path, capsys):
    path = _truncated_gz(tmp_path)
    assert semcoder_main(["data", "check", str(path)]) == 1
    captured = capsys.readouterr()
    assert "truncated or corrupt compressed file" in captured.out and "Traceback" not in captured.out + captured.err


def test_training_on_a_truncated_file_stops_with_one_line_naming_it(tmp_path, tokenizer):
    from data_pipeline.errors import UserError

    path = _truncated_gz(tmp_path)
    config = PipelineConfig(files=(str(path),), seq_len=256, batch_size=4, shuffle=False, window_size=16)
    with pytest.raises(UserError) as error:  # found by the index scan, before the first batch
        build_batches(config, tokenizer)
    assert str(error.value).startswith(f"{path}:") and "records in" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_runs_skipped_records_are_listed_in_its_run_directory(tmp_path):
    from semcoder_jax.train.config import DataSection
    from semcoder_jax.train.data import build_sources

    path = _mixed_file(tmp_path)
    data = DataSection(path=str(path), seq_len=64, pipeline={"on_bad_record": "skip", "max_record_bytes": 4096})
    sources = build_sources(data, global_batch=4, vocab_size=1024, seed=0, process_index=0, process_count=1,
                            run_dir=str(tmp_path / "run"))
    next(sources.train)
    sidecar = tmp_path / "run" / "bad_records.p0.jsonl"
    assert sources.train.bad_records.sidecar == sidecar and sidecar.is_file()
