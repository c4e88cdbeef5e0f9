"""Shared fixtures: the embedded sample tokenizer and data, and helpers that read batches back."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from data_pipeline.sample import sample_files, sample_tokenizer_dir
from data_pipeline.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer(sample_tokenizer_dir())


@pytest.fixture(scope="session")
def sample_paths() -> list[str]:
    return [str(p) for p in sample_files()]


def write_jsonl(path: pathlib.Path, rows: list) -> pathlib.Path:
    """Write dicts as JSON lines, bytes as they are."""
    with open(path, "wb") as f:
        for row in rows:
            f.write((row if isinstance(row, bytes) else json.dumps(row).encode()) + b"\n")
    return path


def segments(batch: dict[str, np.ndarray]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every example of a batch as (tokens, loss_mask), read back through segment_ids."""
    out = []
    for r in range(batch["input_ids"].shape[0]):
        seg = batch["segment_ids"][r]
        for s in sorted(set(seg.tolist()) - {0}):
            idx = np.nonzero(seg == s)[0]
            out.append((tuple(batch["input_ids"][r, idx].tolist()), tuple(batch["loss_mask"][r, idx].tolist())))
    return out
