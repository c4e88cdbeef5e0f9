"""Batches represent the data: rows leave a window in random order, hosts get equal and representative
shares, and a saved position survives another number of hosts, batch size or layout."""

import collections
import json
import math

import numpy as np
import pytest

from data_pipeline import order as order_lib
from data_pipeline.pipeline import BatchIterator, DataPositionError, PipelineConfig, build_batches

from .conftest import write_jsonl


def _records(task_field: str, n: int, words: int, tag: str) -> list[dict]:
    body = " ".join(f"w{i % 50}" for i in range(words))
    return [{task_field: f"{tag} {i}: {body}", "response": f"{tag} answer {i} {body}"} for i in range(n)]


@pytest.fixture(scope="module")
def mixed_files(tmp_path_factory):
    """Three files of very different sizes, one task each (the common case, not a corner)."""
    d = tmp_path_factory.mktemp("mixed")
    return [str(write_jsonl(d / "a_nl2code.jsonl", _records("nl", 500, 4, "a"))),
            str(write_jsonl(d / "b_refine.jsonl", _records("fault", 60, 30, "b"))),
            str(write_jsonl(d / "c_exec_o.jsonl", _records("fwd_mnl", 140, 12, "c")))]


def read_all(config, tokenizer, **kw) -> tuple[list[dict], list[list[int]]]:
    """Every batch and, per batch, the record ids of its rows (flattened)."""
    batches, records = [], []
    with build_batches(config, tokenizer, **kw) as it:
        for b in it:
            batches.append(b)
            records.append([r for row in it.last_batch_records for r in row])
    return batches, records


def task_of(index_files, files) -> dict[int, str]:
    """Record id -> its file's task (ids count records in file order)."""
    out, rid = {}, 0
    for f in files:
        n = sum(1 for line in open(f) if line.strip())
        for _ in range(n):
            out[rid] = f.split("_")[-1].split(".")[0]
            rid += 1
    return out


def test_a_windows_rows_leave_in_random_order_so_both_halves_hold_the_same_mix(tmp_path, tokenizer):
    # one window: 600 short nl2code examples (several per row) and 120 long exec_o ones (one per row)
    path = write_jsonl(tmp_path / "d.jsonl", _records("nl", 600, 3, "s") + _records("fwd_mnl", 120, 60, "l"))
    gaps = []
    for seed in range(3):
        config = PipelineConfig(files=(str(path),), seq_len=512, batch_size=4, window_size=1024, seed=seed, epochs=1)
        batches, _ = read_all(config, tokenizer)
        long_rows = np.array([(b["task_ids"] == 2).any(axis=1).mean() for b in batches])  # exec_o is task 2
        half = len(long_rows) // 2
        first, second = long_rows[:half].mean(), long_rows[half:].mean()
        p = long_rows.mean()
        stderr = math.sqrt(p * (1 - p) / (half * 4)) * math.sqrt(2)
        gaps.append(abs(first - second) / stderr)
    # best-fit decreasing order alone puts every long row first (a gap of ~15 standard errors)
    assert max(gaps) < 4, gaps


def test_without_the_row_permutation_the_window_is_length_sorted(tmp_path, tokenizer):
    """The control for the test above: the packer's own order is a curriculum."""
    path = write_jsonl(tmp_path / "d.jsonl", _records("nl", 600, 3, "s") + _records("fwd_mnl", 120, 60, "l"))
    rows = order_lib.row_order(50, seed=0, epoch=0, window=0, shuffle=False)
    assert rows.tolist() == list(range(50))
    config = PipelineConfig(files=(str(path),), seq_len=512, batch_size=4, window_size=1024, shuffle=False, epochs=1)
    batches, _ = read_all(config, tokenizer)
    long_rows = [(b["task_ids"] == 2).any(axis=1).mean() for b in batches]
    assert np.mean(long_rows[:len(long_rows) // 3]) == 1.0 and np.mean(long_rows[-3:]) == 0.0


@pytest.mark.parametrize("hosts", [2, 3])
def test_hosts_get_equal_representative_shares_and_an_epoch_is_every_record_once(hosts, mixed_files, tokenizer):
    window = 32
    config = PipelineConfig(files=tuple(mixed_files), seq_len=256, batch_size=4, window_size=window, seed=1, epochs=1)
    tasks = task_of(None, mixed_files)
    share = collections.Counter(tasks.values())
    total = len(tasks)
    per_host = []
    for h in range(hosts):
        _, records = read_all(config, tokenizer, process_index=h, process_count=hosts)
        per_host.append([r for batch in records for r in batch])
    every = [r for ids in per_host for r in ids]
    assert sorted(every) == list(range(total))  # each record exactly once across hosts
    counts = [len(ids) for ids in per_host]
    assert max(counts) - min(counts) <= window, counts
    for ids in per_host:
        mix = collections.Counter(tasks[r] for r in ids)
        for task, n in share.items():
            p = n / total
            assert abs(mix[task] / len(ids) - p) < 4 * math.sqrt(p * (1 - p) / len(ids)) + 0.01, (task, mix)


def _consume(its, steps):
    """``steps`` batches from every host; the record ids they held."""
    seen = []
    for _ in range(steps):
        for it in its:
            next(it)
            seen += [r for row in it.last_batch_records for r in row]
    return seen


def _drain(its):
    seen = []
    for it in its:
        for _ in it:
            seen += [r for row in it.last_batch_records for r in row]
    return seen


@pytest.mark.parametrize("new_hosts,new_batch", [(1, 4), (4, 4), (2, 8), (3, 2)])
def test_a_position_saved_on_two_hosts_resumes_on_another_count_or_batch_without_loss_or_repeat(
        new_hosts, new_batch, mixed_files, tokenizer):
    base = dict(files=tuple(mixed_files), seq_len=256, window_size=32, seed=5, epochs=1)
    old = [build_batches(PipelineConfig(**base, batch_size=4), tokenizer, process_index=h, process_count=2)
           for h in range(2)]
    before = _consume(old, 11)
    states = json.loads(json.dumps([it.get_state() for it in old]))
    for it in old:
        it.close()
    new = [BatchIterator(PipelineConfig(**base, batch_size=new_batch), tokenizer, process_index=h,
                         process_count=new_hosts) for h in range(new_hosts)]
    lines = {it.restore(states) for it in new}
    after = _drain(new)
    assert sorted(before + after) == list(range(700))  # nothing skipped, nothing read twice
    (line,) = lines
    if new_hosts != 2:
        assert f"2 -> {new_hosts} hosts" in line
    if new_batch != 4:
        assert f"4 -> {new_batch} rows per host per step" in line


def test_another_layout_restarts_only_the_windows_in_progress(mixed_files, tokenizer):
    base = dict(files=tuple(mixed_files), window_size=32, seed=5, epochs=1, batch_size=4)
    old = [build_batches(PipelineConfig(**base, seq_len=256), tokenizer, process_index=h, process_count=2)
           for h in range(2)]
    before = _consume(old, 9)
    states = [it.get_state() for it in old]
    new = [BatchIterator(PipelineConfig(**base, seq_len=512), tokenizer, process_index=h, process_count=2)
           for h in range(2)]
    assert "seq_len 256 -> 512 (partly read windows start again)" in new[0].restore(states)
    new[1].restore(states)
    after = _drain(new)
    counts = collections.Counter(before + after)
    assert set(counts) == set(range(700))
    assert sum(n - 1 for n in counts.values()) <= 2 * 32  # at most one window per old host read twice


def test_a_position_for_other_data_is_refused_naming_what_changed(mixed_files, tokenizer):
    config = PipelineConfig(files=tuple(mixed_files), seq_len=256, batch_size=4, window_size=32, epochs=1)
    with build_batches(config, tokenizer) as it:
        next(it)
        state = it.get_state()
    fewer = PipelineConfig(files=tuple(mixed_files[:2]), seq_len=256, batch_size=4, window_size=32, epochs=1)
    with pytest.raises(DataPositionError, match=r"the file list \(saved: a_nl2code.jsonl \(500 records\), "
                                                r"b_refine.jsonl \(60 records\), c_exec_o.jsonl"):
        build_batches(fewer, tokenizer, state=state)


def test_the_same_hosts_resume_bit_exactly(mixed_files, tokenizer):
    config = PipelineConfig(files=tuple(mixed_files), seq_len=256, batch_size=4, window_size=32, seed=2, epochs=2)
    reference = [read_all(config, tokenizer, process_index=h, process_count=2)[0] for h in range(2)]
    its = [build_batches(config, tokenizer, process_index=h, process_count=2) for h in range(2)]
    _consume(its, 30)
    states = json.loads(json.dumps([it.get_state() for it in its]))
    for h in range(2):
        with BatchIterator(config, tokenizer, process_index=h, process_count=2) as it:
            assert it.restore(states) == ""
            rest = list(it)
        assert len(rest) == len(reference[h]) - 30
        assert all(np.array_equal(a[k], b[k]) for a, b in zip(rest, reference[h][30:]) for k in a)
