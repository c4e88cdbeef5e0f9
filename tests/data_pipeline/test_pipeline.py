"""The tf.data pipeline: batch contract, determinism, exact resume, host sharding, eval split."""

import collections
import json

import numpy as np
import pytest

from data_pipeline.examples import build_examples
from data_pipeline.pipeline import PipelineConfig, build_batches, build_eval_batches
from data_pipeline.records import iter_jsonl
from semcoder_jax.errors import UserError

from .conftest import segments

FIELDS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions", "task_ids")


def small(paths, **overrides) -> PipelineConfig:
    base = dict(files=tuple(paths), seq_len=1024, batch_size=4, window_size=64, seed=3)
    return PipelineConfig(**{**base, **overrides})


def take(config, tokenizer, n=None, **kwargs) -> list[dict]:
    with build_batches(config, tokenizer, **kwargs) as it:
        return [b for _, b in zip(range(n) if n else iter(int, 1), it)]


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in FIELDS)


@pytest.fixture(scope="module")
def all_examples(tokenizer, sample_paths):
    """Every sample example as (tokens, shifted loss mask): what an epoch must contain exactly once."""
    records = [r for p in sample_paths for r in iter_jsonl(p)]
    return collections.Counter((tuple(e.tokens.tolist()), tuple(e.label_mask[1:].tolist()) + (0,))
                               for e in build_examples(records, tokenizer, 1024))


def epoch_examples(batches) -> collections.Counter:
    return collections.Counter(s for b in batches for s in segments(b))


@pytest.mark.parametrize("mode", ["pack", "pad"])
def test_batches_follow_the_contract_and_one_epoch_holds_every_example_once(mode, tokenizer, sample_paths,
                                                                           all_examples):
    batches = take(small(sample_paths, mode=mode), tokenizer)
    for b in batches:
        assert set(b) == set(FIELDS)
        assert all(b[k].shape == (4, 1024) and b[k].dtype == np.int32 for k in FIELDS)
    assert epoch_examples(batches) == all_examples
    if mode == "pad":
        assert all(((b["segment_ids"] == 1) | (b["segment_ids"] == 0)).all() for b in batches)
        assert len(batches) == -(-sum(all_examples.values()) // 4)


def test_dynamic_padding_trims_each_batch_to_its_longest_row(tokenizer, sample_paths):
    batches = take(small(sample_paths, mode="pad", pad_to_multiple_of=128), tokenizer, 6)
    for b in batches:
        width = b["input_ids"].shape[1]
        longest = (b["segment_ids"] > 0).sum(axis=1).max()
        assert width % 128 == 0 and width - 128 < longest <= width


def test_same_seed_same_batches_and_another_seed_another_order(tokenizer, sample_paths):
    a = take(small(sample_paths), tokenizer, 8)
    assert same(a, take(small(sample_paths), tokenizer, 8))
    assert not same(a, take(small(sample_paths, seed=4), tokenizer, 8))


@pytest.mark.parametrize("n", [0, 3, 17, 40])
def test_restoring_the_state_after_batch_n_yields_batch_n_plus_1(n, tokenizer, sample_paths, reference_run):
    config = small(sample_paths, epochs=2)
    with build_batches(config, tokenizer) as it:
        for _ in range(n):
            next(it)
        state = json.loads(json.dumps(it.get_state()))
    assert state["batches"] == n
    resumed = take(config, tokenizer, 3, state=state)
    assert same(resumed, reference_run[n:n + 3])


@pytest.fixture(scope="module")
def reference_run(tokenizer, sample_paths):
    """Two uninterrupted epochs (an epoch is about 58 packed batches of 4 x 1024)."""
    return take(small(sample_paths, epochs=2), tokenizer)


def test_second_epoch_is_reshuffled_and_complete(reference_run, all_examples):
    starts = [i for i, b in enumerate(reference_run)]
    assert len(starts) > 60
    both = epoch_examples(reference_run)
    assert both == collections.Counter({k: 2 * v for k, v in all_examples.items()})


def test_endless_stream_runs_past_the_end_of_the_data(tokenizer, sample_paths, reference_run):
    endless = take(small(sample_paths, epochs=None), tokenizer, len(reference_run) + 5)
    assert len(endless) == len(reference_run) + 5
    assert all(b["segment_ids"].any() for b in endless)


def test_two_hosts_read_disjoint_halves_that_cover_every_record(tokenizer, sample_paths, all_examples):
    config = small(sample_paths)
    hosts = [epoch_examples(take(config, tokenizer, process_index=i, process_count=2)) for i in range(2)]
    assert not set(hosts[0]) & set(hosts[1])
    assert hosts[0] + hosts[1] == all_examples
    assert min(sum(h.values()) for h in hosts) > 0


def test_eval_fraction_holds_out_the_same_records_on_every_run(tokenizer, sample_paths, all_examples):
    config = small(sample_paths, eval_fraction=0.1)
    train = epoch_examples(take(config, tokenizer))
    with build_eval_batches(config, tokenizer) as it:
        evals = list(it)
    held = epoch_examples(evals)
    assert train + held == all_examples and not set(train) & set(held)
    assert 0.05 < sum(held.values()) / sum(all_examples.values()) < 0.15
    with build_eval_batches(config, tokenizer) as it:
        assert same(evals, list(it))  # no shuffle: the same order every time


def test_task_filter_keeps_only_the_named_tasks_and_counts_the_rest(tokenizer, sample_paths):
    with build_batches(small(sample_paths, tasks=("exec_o",)), tokenizer) as it:
        list(it)
        assert it.stats.by_task["exec_o"] == 300 and it.stats.records == 300
        assert it.stats.filtered == 750


def test_a_state_from_another_seed_is_refused_naming_it(tokenizer, sample_paths):
    with build_batches(small(sample_paths), tokenizer) as it:
        next(it)
        state = it.get_state()
    with pytest.raises(UserError, match=r"the data seed \(3 -> 9\)"):
        build_batches(small(sample_paths, seed=9), tokenizer, state=state)


def test_config_errors_name_the_field(sample_paths):
    with pytest.raises(UserError, match="mode must be"):
        small(sample_paths, mode="stack")
    with pytest.raises(UserError, match="exactly one source"):
        PipelineConfig()
    with pytest.raises(UserError, match="unknown key"):
        PipelineConfig.from_dict({"files": sample_paths, "seqlen": 3})
    with pytest.raises(UserError, match="shuffle_buffer: removed: every epoch is a seeded permutation"):
        PipelineConfig.from_dict({"files": sample_paths, "shuffle_buffer": 3})
    with pytest.raises(UserError, match="no data files"):
        build_batches(PipelineConfig(files=("/nonexistent/*.jsonl",)), None)


def test_an_epoch_without_any_valid_record_is_an_error_not_an_endless_loop(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"nl": 1, "response": "x"}\n' * 5)
    config = PipelineConfig(files=(str(path),), seq_len=64, batch_size=2, epochs=None, on_bad_record="skip",
                            bad_records_file=str(tmp_path / "side.jsonl"))
    with build_batches(config, tokenizer) as it, pytest.raises(UserError, match="produced no examples"):
        next(it)


def test_tfrecord_shards_of_examples_read_like_json_lines(tmp_path, tokenizer, sample_paths):
    import tensorflow as tf

    records = [r for p in sample_paths for r in iter_jsonl(p)][:40]
    fields = {"nl2code": "nl", "exec_i": "bwd_mnl", "exec_o": "fwd_mnl", "refine": "fault"}
    shard = tmp_path / "pyx.tfrecord"
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for r in records:
            feature = {fields[r.task]: r.instruction, "response": r.response}
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()])) for k, v in feature.items()
            })).SerializeToString())
        writer.write(b"not a proto")
    config = small([str(shard)], on_bad_record="skip", bad_records_file=str(tmp_path / "bad.jsonl"))
    with build_batches(config, tokenizer) as it:
        got = epoch_examples(it)
        assert dict(it.bad_records.counts) == {"invalid_example": 1}
    expected = collections.Counter((tuple(e.tokens.tolist()), tuple(e.label_mask[1:].tolist()) + (0,))
                                   for e in build_examples(records, tokenizer, 1024))
    assert got == expected
