"""Examples are built as the release builds them: [bos] + prompt + response + [eos], loss on the response."""

import numpy as np
import pytest

from data_pipeline.examples import build_example, build_examples
from data_pipeline.packing import pad_examples
from data_pipeline.prompts import TASKS, render_prompt
from data_pipeline.records import Record

RESPONSE = "[MONOLOGUE]\nx = 1\n[/MONOLOGUE]\n[ANSWER]\nassert f(1) == 2\n[/ANSWER]"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_label_mask_covers_exactly_the_response_and_eos(task, tokenizer):
    record = Record(task=task, instruction="def f(x):\n    return x + 1", response=RESPONSE, source="t:1")
    prompt_ids = tokenizer.encode(render_prompt(task, record.instruction))
    response_ids = tokenizer.encode(RESPONSE)
    ex = build_example(record, tokenizer, max_seq_len=4096)
    expected = [tokenizer.bos_id, *prompt_ids, *response_ids, tokenizer.eos_id]
    assert ex.tokens.tolist() == expected
    assert ex.label_mask.tolist() == [0] * (1 + len(prompt_ids)) + [1] * (len(response_ids) + 1)
    assert tokenizer.decode(ex.tokens[ex.label_mask == 1]) == RESPONSE
    assert not ex.truncated


def test_row_targets_are_the_next_token_and_loss_mask_marks_response_targets(tokenizer):
    record = Record(task="exec_o", instruction="f(1)", response="2", source="t:1")
    ex = build_example(record, tokenizer, 64)
    row = pad_examples([ex], 64, tokenizer.pad_id)
    n = len(ex.tokens)
    assert row["targets"][0, :n - 1].tolist() == ex.tokens[1:].tolist()
    assert row["targets"][0, n - 1:].tolist() == [0] * (64 - n + 1)
    # position i is trained when its target (token i+1) belongs to the completion
    assert row["loss_mask"][0].tolist() == ex.label_mask[1:].tolist() + [0] * (64 - n + 1)
    assert row["targets"][0][row["loss_mask"][0] == 1].tolist() == ex.tokens[ex.prompt_len:].tolist()
    assert row["input_ids"][0, n:].tolist() == [tokenizer.pad_id] * (64 - n)
    assert row["segment_ids"][0].tolist() == [1] * n + [0] * (64 - n)
    assert row["positions"][0, :n].tolist() == list(range(n))


def test_truncation_cuts_the_tail_and_is_flagged(tokenizer):
    record = Record(task="nl2code", instruction="add", response="def f(a, b):\n    return a + b\n" * 20, source="t:1")
    full = build_example(record, tokenizer, 10**6)
    cut = build_example(record, tokenizer, 100)
    assert cut.truncated and not full.truncated
    assert cut.tokens.tolist() == full.tokens[:100].tolist()
    assert cut.tokens[-1] != tokenizer.eos_id
    assert cut.label_mask.tolist() == full.label_mask[:100].tolist()


def test_a_prompt_longer_than_seq_len_leaves_no_loss_tokens(tokenizer):
    record = Record(task="nl2code", instruction="word " * 200, response="x", source="t:1")
    ex = build_example(record, tokenizer, 50)
    assert ex.truncated and ex.num_loss_tokens == 0 and ex.label_mask.sum() == 0


def test_batch_building_matches_one_by_one(tokenizer):
    records = [Record(task=t, instruction=f"i{k}", response=f"r{k}", source=f"t:{k}")
               for k, t in enumerate(sorted(TASKS))]
    batch = build_examples(records, tokenizer, 256)
    for record, ex in zip(records, batch):
        assert np.array_equal(ex.tokens, build_example(record, tokenizer, 256).tokens)
