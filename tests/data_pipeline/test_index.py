"""The record index: every record found once, blank lines skipped and counted, any record readable by id."""

import gzip
import json

import numpy as np
import pytest

from data_pipeline.index import RecordIndex


def lines_file(tmp_path, name, content: bytes, compress=False):
    path = tmp_path / name
    path.write_bytes(gzip.compress(content) if compress else content)
    return str(path)


@pytest.mark.parametrize("compress", [False, True])
def test_blank_lines_carriage_returns_and_a_missing_last_newline(tmp_path, compress):
    content = b'{"a": 1}\n\n   \n{"b": 2}\r\n\t\r\n{"c": 3}'
    path = lines_file(tmp_path, "x.jsonl" + (".gz" if compress else ""), content, compress)
    index = RecordIndex([path], ["jsonl"], ["GZIP" if compress else ""])
    assert len(index) == 3 and index.blank == 3
    assert index.read(np.array([2, 0, 1])) == [b'{"c": 3}', b'{"a": 1}', b'{"b": 2}']
    assert [index.where(i) for i in range(3)] == [(path, 1), (path, 4), (path, 6)]
    index.close()


def test_lines_longer_than_a_block_and_an_empty_file(tmp_path, monkeypatch):
    import data_pipeline.index as index_lib

    monkeypatch.setattr(index_lib, "_BLOCK", 7)  # every line crosses block boundaries
    rows = [json.dumps({"k": "v" * n}).encode() for n in (1, 20, 3)]
    path = lines_file(tmp_path, "long.jsonl", b"\n".join(rows) + b"\n")
    empty = lines_file(tmp_path, "empty.jsonl", b"")
    index = RecordIndex([empty, path], ["jsonl", "jsonl"], ["", ""])
    assert index.read(np.arange(3)) == rows and index.records_per_file().tolist() == [0, 3]


def test_a_cut_off_gzip_keeps_the_whole_records_before_the_damage(tmp_path):
    rows = b"".join(json.dumps({"n": i, "pad": "x" * 50}).encode() + b"\n" for i in range(2000))
    blob = gzip.compress(rows)
    path = lines_file(tmp_path, "cut.jsonl.gz", blob[:len(blob) // 2])
    index = RecordIndex([path], ["jsonl"], ["GZIP"])
    (damage,) = index.damaged
    assert damage.reason == "truncated_file" and damage.path == path
    kept = index.read(np.arange(len(index)))
    assert 0 < len(kept) < 2000 and [json.loads(r)["n"] for r in kept] == list(range(len(kept)))


def test_tfrecord_payloads_are_found_by_their_framing(tmp_path):
    import tensorflow as tf

    path = str(tmp_path / "x.tfrecord")
    payloads = [b"one", b"", b"three" * 1000]
    with tf.io.TFRecordWriter(path) as writer:
        for p in payloads:
            writer.write(p)
    index = RecordIndex([path], ["tfrecord"], [""])
    assert index.read(np.arange(3)) == payloads


def test_the_held_out_side_is_the_same_records_every_time_and_disjoint(tmp_path):
    rows = b"".join(json.dumps({"n": i}).encode() + b"\n" for i in range(1000))
    path = lines_file(tmp_path, "h.jsonl", rows)
    train = RecordIndex([path], ["jsonl"], [""], heldout="train", eval_fraction=0.1)
    held = RecordIndex([path], ["jsonl"], [""], heldout="eval", eval_fraction=0.1)
    again = RecordIndex([path], ["jsonl"], [""], heldout="eval", eval_fraction=0.1)
    a, b = set(train.read(np.arange(len(train)))), set(held.read(np.arange(len(held))))
    assert not a & b and len(a | b) == 1000 and 60 < len(b) < 140
    assert held.read(np.arange(len(held))) == again.read(np.arange(len(again)))
