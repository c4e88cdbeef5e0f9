"""Records to token-level training examples, exactly as the release builds them.

prompt ids = [bos] + tokenize(template with the instruction, ``{response}`` empty)
completion ids = tokenize(response) + [eos]
Both tokenizations add no special tokens; the loss covers the completion only; examples longer
than ``max_seq_len`` lose their tail (counted, kept, as the release keeps them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from data_pipeline.prompts import render_prompt
from data_pipeline.records import Record
from data_pipeline.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Example:
    """One example: ``tokens`` (int32) and how many leading tokens (bos + prompt) carry no loss."""

    tokens: np.ndarray
    prompt_len: int
    task: str
    truncated: bool

    @property
    def label_mask(self) -> np.ndarray:
        """1 for tokens that are loss targets (completion and eos), 0 for bos and prompt."""
        mask = np.zeros(len(self.tokens), np.int32)
        mask[self.prompt_len:] = 1
        return mask

    @property
    def num_loss_tokens(self) -> int:
        """Targets that carry loss: completion tokens (and eos) that survived truncation."""
        return max(0, len(self.tokens) - self.prompt_len)


def build_examples(records: Sequence[Record], tokenizer: Tokenizer, max_seq_len: int) -> list[Example]:
    """Tokenize prompts and responses in two batch calls and assemble one ``Example`` per record."""
    if not records:
        return []
    prompts = tokenizer.encode_batch([render_prompt(r.task, r.instruction) for r in records])
    responses = tokenizer.encode_batch([r.response for r in records])
    out = []
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    for record, prompt_ids, response_ids in zip(records, prompts, responses):
        tokens = np.fromiter([bos, *prompt_ids, *response_ids, eos], np.int32,
                             count=len(prompt_ids) + len(response_ids) + 2)
        truncated = len(tokens) > max_seq_len
        out.append(Example(tokens=tokens[:max_seq_len], prompt_len=min(1 + len(prompt_ids), max_seq_len),
                           task=record.task, truncated=truncated))
    return out


def build_example(record: Record, tokenizer: Tokenizer, max_seq_len: int) -> Example:
    """``build_examples`` for one record."""
    return build_examples([record], tokenizer, max_seq_len)[0]
