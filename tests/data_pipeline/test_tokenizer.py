"""One tokenizer interface over HF (tokenizer.json or a directory) and SentencePiece; save() round-trips."""

import json

import pytest

from data_pipeline.sample import sample_tokenizer_dir
from data_pipeline.tokenizer import TokenizerError, load_tokenizer

TEXTS = ["def f(x):\n    return x + 1\n", "assert f(??) == 3", "  leading spaces and ünïcödé ✓"]


def test_directory_and_tokenizer_json_load_the_same_tokenizer(tokenizer):
    bare = load_tokenizer(sample_tokenizer_dir() / "tokenizer.json")
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 2, 0)
    assert (bare.bos_id, bare.eos_id, bare.pad_id) == (1, 2, 0)
    assert tokenizer.vocab_size == 1024
    for text in TEXTS:
        assert tokenizer.encode(text) == bare.encode(text)
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_encode_adds_no_special_tokens(tokenizer):
    ids = tokenizer.encode("def f():")
    assert tokenizer.bos_id not in ids and tokenizer.eos_id not in ids
    assert tokenizer.encode_batch(TEXTS) == [tokenizer.encode(t) for t in TEXTS]


def test_saved_directory_loads_in_transformers_with_the_same_ids(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save(tmp_path / "tok")
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 0)
    for text in TEXTS:
        assert hf(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)
    assert load_tokenizer(tmp_path / "tok").encode(TEXTS[0]) == tokenizer.encode(TEXTS[0])


def test_explicit_ids_override_and_pad_falls_back_to_eos(tmp_path):
    data = json.loads((sample_tokenizer_dir() / "tokenizer.json").read_text())
    for token in data["added_tokens"]:  # a tokenizer whose vocabulary has no pad token
        if token["content"] == "<pad>":
            token["content"] = "<unused>"
    data["model"]["vocab"]["<unused>"] = data["model"]["vocab"].pop("<pad>")
    (tmp_path / "nopad.json").write_text(json.dumps(data))
    tok = load_tokenizer(tmp_path / "nopad.json")
    assert tok.pad_id == tok.eos_id == 2
    tok = load_tokenizer(sample_tokenizer_dir(), bos_id=5, eos_id=6, pad_id=7)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (5, 6, 7)
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        load_tokenizer(sample_tokenizer_dir(), pad_id=10**6)


def test_bad_paths_are_user_errors(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer.json or tokenizer.model, and transformers cannot"):
        load_tokenizer(tmp_path / "empty")


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    import sentencepiece as spm

    from data_pipeline.records import iter_jsonl
    from data_pipeline.sample import sample_files

    out = tmp_path_factory.mktemp("sp")
    texts = [r.response for r in iter_jsonl(sample_files()[0])][:300]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(out / "sp"), vocab_size=512,
                                   byte_fallback=True, model_type="bpe", bos_id=1, eos_id=2, pad_id=3, unk_id=0,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   minloglevel=2)
    return out / "sp.model"


def test_sentencepiece_model_loads_and_round_trips_through_transformers(sp_model, tmp_path):
    from transformers import AutoTokenizer

    tok = load_tokenizer(sp_model)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 3, 512)
    ids = tok.encode("def f(x):\n    return x")
    assert ids and tok.bos_id not in ids
    assert tok.decode(ids) == "def f(x):\n    return x"
    tok.save(tmp_path / "sp_dir")
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "sp_dir"))
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 3)
    assert hf("def f(x): return x", add_special_tokens=False)["input_ids"] == tok.encode("def f(x): return x")
    assert load_tokenizer(tmp_path / "sp_dir").encode("abc def") == tok.encode("abc def")
    # A directory's config names the special tokens; here pad is redirected to eos's piece.
    config = json.loads((tmp_path / "sp_dir" / "tokenizer_config.json").read_text())
    config["pad_token"] = config["eos_token"]
    (tmp_path / "sp_dir" / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_tokenizer(tmp_path / "sp_dir").pad_id == 2


def test_a_vocab_and_merges_directory_loads_through_transformers(tokenizer, tmp_path):
    data = json.loads((sample_tokenizer_dir() / "tokenizer.json").read_text())
    (tmp_path / "vocab.json").write_text(json.dumps(data["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
         "add_prefix_space": False}))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 0)
    assert tok.encode(TEXTS[0]) == tokenizer.encode(TEXTS[0])
