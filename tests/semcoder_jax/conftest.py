"""Fixtures: random HF LLaMA models built from configs and a tokenizer trained in-process."""

from __future__ import annotations

import pathlib

import pytest


def make_hf_model(seed: int = 0, dtype: str = "float32", **overrides):
    """A random ``LlamaForCausalLM``; defaults are odd sizes with GQA and linear RoPE scaling."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = dict(vocab_size=333, hidden_size=96, intermediate_size=200, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
                  rope_scaling={"rope_type": "linear", "factor": 4.0}, rope_theta=10000.0,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    fields.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**fields)).eval()
    return model.to(getattr(torch, dtype))


def train_tokenizer(directory: pathlib.Path, vocab_size: int = 400) -> pathlib.Path:
    """A byte-level BPE with <s>/</s>/<pad> trained on a little Python, saved for AutoTokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = [
        "def f(x):\n    return x + 1\nassert f(1) == 2\n",
        "for i in range(10):\n    print(i * i)\n",
        "[ANSWER]\nassert f('abc') == 'cba'\n[/ANSWER]\n",
        "You are an exceptionally intelligent coding assistant\n",
    ] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def hf_model():
    """``hf_model(seed=0, dtype='float32', **LlamaConfig overrides)`` -> a random LlamaForCausalLM."""
    return make_hf_model


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> pathlib.Path:
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))
