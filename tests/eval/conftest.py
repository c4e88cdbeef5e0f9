"""Shared fixtures of the eval tests: one sandbox pool, a ground-truth cache, a tiny model pair."""

from __future__ import annotations

import pathlib

import pytest


@pytest.fixture(scope="session")
def sandbox():
    from sandbox import Sandbox

    with Sandbox(workers=2, preload=("numpy",)) as sb:
        yield sb


@pytest.fixture(scope="session")
def gt_cache(tmp_path_factory) -> pathlib.Path:
    """EvalPlus ground truth cached for this test session only."""
    return tmp_path_factory.mktemp("groundtruth")


def _train_tokenizer(directory: pathlib.Path, data_dir: pathlib.Path) -> None:
    """A byte-level BPE (~300 merges) trained in-process on CRUXEval code, saved for AutoTokenizer."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    with open(data_dir / "cruxeval" / "cruxeval.jsonl") as f:
        text = [json.loads(line)["code"] for line in f][:200]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + 3 + 300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(directory)


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory, shared_data_dir) -> pathlib.Path:
    """A random 2-layer LLaMA with a trained tokenizer, saved as an HF directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("tiny-hf")
    _train_tokenizer(directory, shared_data_dir)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(directory))
    torch.manual_seed(0)
    # A large initializer range gives a clear argmax, so greedy text does not hinge on rounding.
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.3,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).eval().save_pretrained(directory)
    return directory
