"""Packed rows never let a token attend to, or be predicted from, another example."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline.examples import build_examples
from data_pipeline.packing import best_fit_decreasing, pack_examples, pad_examples, utilisation
from data_pipeline.pipeline import PipelineConfig, build_batches
from data_pipeline.records import Record, iter_jsonl

from .conftest import segments


def test_best_fit_decreasing_places_every_item_once_within_capacity():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=500).tolist()
    bins = best_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert bins == best_fit_decreasing(lengths, 128)  # deterministic
    assert len(bins) <= int(np.ceil(sum(lengths) / 128 * 11 / 9)) + 1  # BFD's worst-case bound
    with pytest.raises(ValueError):
        best_fit_decreasing([129], 128)


@pytest.fixture(scope="module")
def sample_examples(tokenizer, sample_paths):
    records = [r for p in sample_paths for r in iter_jsonl(p)]
    return build_examples(records, tokenizer, 2048)


def check_row_invariants(batch: dict) -> None:
    ids, tgt, mask, seg, pos = (batch[k] for k in ("input_ids", "targets", "loss_mask", "segment_ids", "positions"))
    for r in range(ids.shape[0]):
        for i in range(ids.shape[1]):
            same_next = i + 1 < ids.shape[1] and seg[r, i] != 0 and seg[r, i + 1] == seg[r, i]
            if same_next:
                assert tgt[r, i] == ids[r, i + 1]  # predicted from its own example's next token
                assert pos[r, i + 1] == pos[r, i] + 1
            else:
                assert tgt[r, i] == 0 and mask[r, i] == 0  # last token of an example, or padding
            if seg[r, i] == 0:
                assert pos[r, i] == 0
            elif i == 0 or seg[r, i - 1] != seg[r, i]:
                assert pos[r, i] == 0  # each example starts at position 0
        nonzero = seg[r][seg[r] > 0]
        assert (np.diff(nonzero) >= 0).all() and (np.diff(nonzero) <= 1).all()  # contiguous segments 1..k
        assert (seg[r, len(nonzero):] == 0).all()  # padding only at the end


def test_packed_rows_keep_examples_apart_and_lose_none(sample_examples, tokenizer):
    window = sample_examples[:200]
    rows = pack_examples(window, 2048, tokenizer.pad_id)
    check_row_invariants(rows)
    got = sorted(segments(rows))
    assert got == sorted((tuple(e.tokens.tolist()), tuple(e.label_mask[1:].tolist()) + (0,)) for e in window)


def test_packing_utilisation_of_the_sample_at_2048_is_at_least_97_percent(sample_examples, tokenizer):
    rows = pack_examples(sample_examples, 2048, tokenizer.pad_id)
    assert utilisation(rows)["real"] >= 0.97


def test_pipeline_batches_in_pack_mode_satisfy_the_row_invariants(tokenizer, sample_paths):
    config = PipelineConfig(files=tuple(sample_paths), seq_len=1024, batch_size=4, mode="pack", window_size=128)
    with build_batches(config, tokenizer) as it:
        for _, batch in zip(range(2), it):
            check_row_invariants(batch)


def test_packed_logits_equal_unpacked_logits(tokenizer):
    from semcoder_jax.config import ModelConfig
    from semcoder_jax.model import forward, init_params

    config = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_layers=1,
                         num_heads=4, num_kv_heads=2, max_position_embeddings=512, rope_scaling_factor=1.0,
                         rope_theta=10000.0)
    params = init_params(config, jax.random.PRNGKey(0))
    records = [Record(task=t, instruction=f"def f{k}(x): return x * {k}", response=f"assert f{k}(2) == {2 * k}",
                      source=f"t:{k}") for k, t in enumerate(["exec_o", "chat", "nl2code"])]
    examples = build_examples(records, tokenizer, 256)
    packed = pack_examples(examples, 256, tokenizer.pad_id)
    assert packed["input_ids"].shape[0] == 1  # all three share one row
    alone = pad_examples(examples, 256, tokenizer.pad_id)  # the release's layout: one example per row
    # One forward over [packed row, three padded rows] (a single compile).
    batch = {k: jnp.asarray(np.concatenate([packed[k], alone[k]])) for k in ("input_ids", "positions", "segment_ids")}
    logits = np.asarray(forward(params, config, batch["input_ids"], batch["positions"], batch["segment_ids"]))
    seg = packed["segment_ids"][0]
    for s, ex in enumerate(examples, start=1):
        n = len(ex.tokens)
        np.testing.assert_allclose(logits[0, seg == s], logits[s, :n], atol=2e-5, rtol=2e-5)
