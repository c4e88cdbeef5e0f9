"""Training data and tokenizers on gs:// (a local GCS emulator): the same batches, stats and resume as the
local copies of the same files, and one-line errors for what a cloud user gets wrong."""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil

import numpy as np
import pytest

from data_pipeline import remote
from data_pipeline.index import RecordIndex
from data_pipeline.pipeline import PipelineConfig, build_batches, build_eval_batches, expand_files
from data_pipeline.records import check_compressed, iter_jsonl
from data_pipeline.sample import sample_files, sample_tokenizer_dir
from data_pipeline.tokenizer import TokenizerError, load_tokenizer
from semcoder_jax import locations
from semcoder_jax.errors import UserError

FIELDS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions", "task_ids")
TASK_FEATURE = {"nl2code": "nl", "exec_i": "bwd_mnl", "exec_o": "fwd_mnl", "refine": "fault"}


def write_tfrecords(path, records, extra=()):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for r in records:
            feature = {TASK_FEATURE[r.task]: r.instruction, "response": r.response}
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()])) for k, v in feature.items()
            })).SerializeToString())
        for raw in extra:
            writer.write(raw)


@pytest.fixture(scope="module")
def data(tmp_path_factory, gcs_emulator):
    """The bundled sample three ways (``gz``: the files as shipped; ``jsonl``: decompressed, with a bad
    line; ``tfrecord``: two shards of tf.train.Example with a bad record), plus the sample tokenizer: a local
    directory and its copy in a bucket.  Returns (local root, gs:// root)."""
    root = tmp_path_factory.mktemp("gcs-data")
    (root / "gz").mkdir()
    (root / "jsonl").mkdir()
    (root / "tfrecord").mkdir()
    for f in sample_files():
        shutil.copy(f, root / "gz" / f.name)
        plain = gzip.decompress(f.read_bytes())
        if f.name.startswith("pyx_r"):
            plain += b"\n  \n{not json}\r\n" + b'{"nl": "x", "response": "y"}'  # blank, bad, no last newline
        (root / "jsonl" / f.name.removesuffix(".gz")).write_bytes(plain)
    records = [r for f in sample_files() for r in iter_jsonl(f)]
    write_tfrecords(root / "tfrecord" / "pyx-00000-of-00002.tfrecord", records[::2], extra=[b"not a proto"])
    write_tfrecords(root / "tfrecord" / "pyx-00001-of-00002.tfrecord", records[1::2])
    shutil.copytree(sample_tokenizer_dir(), root / "tokenizer", ignore=shutil.ignore_patterns("__init__.py"))
    url = f"gs://{gcs_emulator.bucket()}/data"
    locations.upload_tree(str(root), url)
    return str(root), url


PATTERNS = {"gz": "gz/*.jsonl.gz", "jsonl": "jsonl", "tfrecord": "tfrecord/pyx-*.tfrecord"}


def config(files, tmp_path, **overrides) -> PipelineConfig:
    base = dict(files=tuple(files), seq_len=1024, batch_size=4, window_size=64, seed=3, eval_fraction=0.1,
                on_bad_record="skip", bad_records_file=str(tmp_path / "bad.jsonl"))
    return PipelineConfig(**{**base, **overrides})


SAVE_AT = 5


def run(cfg, tokenizer, state=None):
    """The epoch's batches, the stats and bad-record counts after them, the position after batch
    ``SAVE_AT``, and the records each batch holds."""
    with build_batches(cfg, tokenizer) as it:
        if state is not None:
            it.set_state(state)
        batches, middle, which = [], None, []
        for i, batch in enumerate(it):
            batches.append(batch)
            which.append(it.last_batch_records)
            if i + 1 == SAVE_AT:
                middle = it.get_state()
        return batches, dataclasses.asdict(it.stats), dict(it.bad_records.counts), middle, which


def assert_same_batches(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert set(x) == set(y) == set(FIELDS)
        for k in FIELDS:
            assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), k


@pytest.mark.parametrize("kind", sorted(PATTERNS))
def test_batches_stats_and_resume_from_gs_equal_the_local_files(kind, data, tokenizer, tmp_path):
    local_root, url = data
    pattern = PATTERNS[kind]
    local = run(config([f"{local_root}/{pattern}"], tmp_path), tokenizer)
    gcs = run(config([f"{url}/{pattern}"], tmp_path), tokenizer)
    assert len(gcs[0]) > 2 * SAVE_AT
    assert_same_batches(local[0], gcs[0])
    assert local[1] == gcs[1] and local[1]["records"] > 0  # stats, blank lines included
    assert local[2] == gcs[2] == ({} if kind == "gz" else {"invalid_json" if kind == "jsonl" else "invalid_example": 1})
    assert local[4] == gcs[4]
    assert local[3] == gcs[3]  # the saved position names files by basename: local and gs:// copies agree
    # a position saved reading gs:// continues exactly, from gs:// or from the local copy
    resumed_gcs = run(config([f"{url}/{pattern}"], tmp_path), tokenizer, state=gcs[3])
    resumed_local = run(config([f"{local_root}/{pattern}"], tmp_path), tokenizer, state=gcs[3])
    assert_same_batches(resumed_gcs[0], gcs[0][SAVE_AT:])
    assert_same_batches(resumed_local[0], gcs[0][SAVE_AT:])


def test_eval_files_on_gs_give_the_local_eval_batches(data, tokenizer, tmp_path):
    local_root, url = data

    def eval_batches(root):
        cfg = config([f"{root}/gz"], tmp_path, eval_files=(f"{root}/tfrecord/*.tfrecord",), eval_fraction=0.0)
        with build_eval_batches(cfg, tokenizer) as it:
            return list(it), dataclasses.asdict(it.stats)

    local, gcs = eval_batches(local_root), eval_batches(url)
    assert_same_batches(local[0], gcs[0])
    assert local[1] == gcs[1]


def test_train_data_section_reads_data_and_tokenizer_from_gs(data, tmp_path):
    from semcoder_jax.train.config import DataSection
    from semcoder_jax.train.data import build_sources

    local_root, url = data

    def sources(root):
        section = DataSection(path=f"{root}/gz/*.jsonl.gz", tokenizer=f"{root}/tokenizer", seq_len=512,
                              eval_fraction=0.05, length_sample=64)
        return build_sources(section, global_batch=4, vocab_size=1024, seed=0, process_index=0, process_count=1,
                             run_dir=str(tmp_path))

    local, gcs = sources(local_root), sources(url)
    try:
        assert gcs.tokenizer.source == f"{url}/tokenizer" and gcs.tokenizer_dir == f"{url}/tokenizer"
        assert_same_batches([next(local.train) for _ in range(3)], [next(gcs.train) for _ in range(3)])
        assert local.train.get_state() == gcs.train.get_state()
        assert_same_batches(local.eval_batches(2), gcs.eval_batches(2))
    finally:
        local.train.close()
        gcs.train.close()


def test_a_tokenizer_loads_from_gs_as_a_directory_or_a_file(data, tokenizer, tmp_path):
    _, url = data
    text = "def f(x):\n    return [x, 'ü', 1.5]"
    for where in (f"{url}/tokenizer", f"{url}/tokenizer/", f"{url}/tokenizer/tokenizer.json"):
        tok = load_tokenizer(where)
        assert tok.source == where.removesuffix("/tokenizer.json")
        assert (tok.encode(text), tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (
            tokenizer.encode(text), tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.vocab_size)
    tok.save(tmp_path / "saved")  # the downloaded copy is gone; saving does not need it
    assert load_tokenizer(tmp_path / "saved").encode(text) == tokenizer.encode(text)


def test_json_lines_helpers_read_gs(data):
    local_root, url = data
    for name in ("gz/pyx_sample.jsonl.gz", "jsonl/pyx_r_sample.jsonl"):
        assert [str(r) for r in iter_jsonl(f"{local_root}/{name}")] == [
            str(r).replace(url, local_root) for r in iter_jsonl(f"{url}/{name}")]
    assert check_compressed(f"{url}/gz/pyx_sample.jsonl.gz") is None


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_missing_data_on_gs_is_one_line_naming_it(gcs_bucket, tokenizer):
    locations.path(f"{gcs_bucket}/d/a.jsonl").write_bytes(b'{"nl": "x", "response": "y"}\n')
    cases = {
        f"{gcs_bucket}/d/*.jsonl.gz": "no data files found",  # a pattern that matches nothing
        f"{gcs_bucket}/d/b.jsonl": "no data files found",  # a missing object
        f"{gcs_bucket}/nothing/": "no data files found",  # an empty "directory"
        "gs://no-such-bucket-3f9a1/d/*.jsonl": "bucket no-such-bucket-3f9a1 does not exist",
        "gs://no-such-bucket-3f9a1/d/a.jsonl": "bucket no-such-bucket-3f9a1 does not exist",
    }
    for pattern, expected in cases.items():
        with pytest.raises(UserError) as excinfo:
            build_batches(PipelineConfig(files=(pattern,), seq_len=64, batch_size=2), tokenizer)
        message = one_line(excinfo)
        assert pattern in message and expected in message, message
    assert expand_files((f"{gcs_bucket}/d",)) == expand_files((f"{gcs_bucket}/d/",)) == [f"{gcs_bucket}/d/a.jsonl"]
    for where, expected in ((f"{gcs_bucket}/tok", "tokenizer path does not exist"),
                            ("gs://no-such-bucket-3f9a1/tok", "bucket no-such-bucket-3f9a1 does not exist")):
        with pytest.raises(UserError) as excinfo:
            load_tokenizer(where)
        assert where in one_line(excinfo) and expected in str(excinfo.value)
    with pytest.raises(TokenizerError, match="tokenizer path does not exist"):
        load_tokenizer(f"{gcs_bucket}/tok")


def test_a_remote_index_matches_the_local_one_when_every_line_crosses_a_block(gcs_bucket, tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "SCAN_BLOCK", 7)
    monkeypatch.setattr(remote, "SCAN_AHEAD", 3)
    rows = [json.dumps({"n": i, "pad": "x" * (i % 23)}).encode() for i in range(60)]
    content = b'{"a": 1}\n\n   \n' + b"\r\n".join(rows) + b"\n\t\r\n" + b'{"tail": 1}'
    blob = gzip.compress(b"".join(r + b"\n" for r in rows))
    files = {"x.jsonl": content, "empty.jsonl": b"", "x.jsonl.gz": gzip.compress(content),
             "cut.jsonl.gz": blob[:len(blob) // 2]}
    for name, body in files.items():
        (tmp_path / name).write_bytes(body)
        locations.path(f"{gcs_bucket}/{name}").write_bytes(body)
    names = list(files)
    comps = ["GZIP" if n.endswith(".gz") else "" for n in names]

    def index(root):
        return RecordIndex([f"{root}/{n}" for n in names], ["jsonl"] * len(names), comps)

    local, gcs = index(str(tmp_path)), index(gcs_bucket)
    try:
        assert len(local) == len(gcs) > 60 and local.blank == gcs.blank == 6
        for name in ("file_idx", "offsets", "lengths", "lines"):
            assert np.array_equal(getattr(local, name), getattr(gcs, name)), name
        ids = np.random.default_rng(0).permutation(len(local))
        assert local.read(ids) == gcs.read(ids)
        assert [(d.reason, d.line) for d in local.damaged] == [(d.reason, d.line) for d in gcs.damaged]
    finally:
        local.close()
        gcs.close()


def test_tfrecords_split_across_blocks_index_like_local(gcs_bucket, tmp_path, monkeypatch):
    import tensorflow as tf

    monkeypatch.setattr(remote, "SCAN_BLOCK", 5)
    payloads = [b"one", b"", b"three" * 100, b"x" * 17]
    path = tmp_path / "x.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for p in payloads:
            writer.write(p)
    locations.path(f"{gcs_bucket}/x.tfrecord").write_bytes(path.read_bytes())
    index = RecordIndex([f"{gcs_bucket}/x.tfrecord"], ["tfrecord"], [""])
    assert index.read(np.array([3, 1, 0, 2])) == [payloads[3], payloads[1], payloads[0], payloads[2]]
    index.close()


def test_an_object_replaced_while_training_is_one_line(gcs_bucket):
    url = f"{gcs_bucket}/d/a.jsonl"
    locations.path(url).write_bytes(b"".join(json.dumps({"n": i}).encode() + b"\n" for i in range(100)))
    index = RecordIndex([url], ["jsonl"], [""])
    locations.path(url).write_bytes(b'{"n": 0}\n')
    with pytest.raises(UserError) as excinfo:
        index.read(np.array([99]))
    assert url in one_line(excinfo) and "changed while" in str(excinfo.value)


def test_nearby_ranges_share_a_request_and_far_ones_do_not():
    urls = ["gs://b/a", "gs://b/a", "gs://b/a", "gs://b/z", "gs://b/a", "gs://b/a"]
    starts = [100, 0, 150, 0, 10_000, 50]
    lengths = [10, 40, 30, 5, 10, 0]
    plan = remote.plan_ranges(urls, starts, lengths, gap=64, limit=1000)
    assert [(u, s, e) for u, s, e, _ in plan] == [("gs://b/a", 0, 180), ("gs://b/a", 10_000, 10_010), ("gs://b/z", 0, 5)]
    assert plan[0][3] == [(1, 0, 40), (0, 100, 10), (2, 150, 30)]
    assert [(u, s, e) for u, s, e, _ in remote.plan_ranges(urls[:3], starts[:3], lengths[:3], gap=64, limit=120)] == [
        ("gs://b/a", 0, 110), ("gs://b/a", 150, 180)]


@pytest.mark.parametrize(("status", "expected"), [(403, "permission denied (403) reading bucket bkt"),
                                                  (401, "no credentials were found for gs://")])
def test_refused_reads_are_one_line_naming_what_to_do(status, expected, monkeypatch, gcs_emulator):
    import gcsfs

    from tests.gcs_emulator import RefusingGcs

    server = RefusingGcs(status)
    fs = gcsfs.GCSFileSystem(endpoint_url=server.url, token="anon", skip_instance_cache=True)
    monkeypatch.setattr(remote, "filesystem", lambda url: fs)
    try:
        for call, url in ((lambda: expand_files(("gs://bkt/pyx/*.jsonl",)), "gs://bkt/pyx/*.jsonl"),
                          (lambda: RecordIndex(["gs://bkt/a.jsonl"], ["jsonl"], [""]), "gs://bkt/a.jsonl"),
                          (lambda: remote.read_ranges(["gs://bkt/a.jsonl"], [0], [5]), "gs://bkt/a.jsonl"),
                          (lambda: load_tokenizer("gs://bkt/tok"), "gs://bkt/tok")):
            with pytest.raises(UserError) as excinfo:
                call()
            assert one_line(excinfo).startswith(f"{url}: {expected}")
    finally:
        server.stop()
