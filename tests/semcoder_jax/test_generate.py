"""The KV-cache sampler: cache decoding equals recomputation, greedy equals transformers, stops work."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from semcoder_jax.cli import main
from semcoder_jax.convert import convert_hf_to_native, load_hf_params
from semcoder_jax.generate import Generator, generate_ids, sample_tokens
from semcoder_jax.model import forward


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, hf_model, tokenizer_dir):
    """An HF directory (random model with a clear argmax, our tokenizer) and its native conversion."""
    root = tmp_path_factory.mktemp("gen")
    model = hf_model(vocab_size=400, initializer_range=0.3)
    model.save_pretrained(root / "hf")
    for f in tokenizer_dir.iterdir():
        (root / "hf" / f.name).write_bytes(f.read_bytes())
    convert_hf_to_native(str(root / "hf"), str(root / "native"))
    return root, model


@pytest.mark.parametrize("scan_layers, impl", [(True, "xla"), (False, "xla"), (True, "cpu")])
def test_cache_decoding_equals_full_recomputation(model_dir, scan_layers, impl):
    """With ``impl`` cpu the recomputation runs the fused kernel and decoding the cache's reference path."""
    root, _ = model_dir
    config, params = load_hf_params(str(root / "hf"))
    config = config.replace(scan_layers=scan_layers, attention_impl=impl)
    rs = np.random.RandomState(0)
    prompts = [rs.randint(3, 400, n).tolist() for n in (4, 17, 9)]
    results = generate_ids(params, config, prompts, max_new_tokens=12, eos_id=2, chunk=5)
    full = jax.jit(lambda ids: forward(params, config, ids))
    for prompt, (ids, _) in zip(prompts, results):
        seq, expected = list(prompt), []
        for _ in range(len(ids)):
            # Right-padded to one shape (one compilation); causal, so padding does not change row len-1.
            padded = np.zeros((1, 32), np.int32)
            padded[0, : len(seq)] = seq
            token = int(np.asarray(full(jnp.asarray(padded)))[0, len(seq) - 1].argmax())
            expected.append(token)
            seq.append(token)
            if token == 2:
                break
        assert ids == expected


@pytest.mark.parametrize("source", ["hf", "native", "gs:hf", "gs:native"])
def test_greedy_cli_equals_transformers_generate_token_for_token(model_dir, capsys, source, request):
    """Also with the model in a bucket (``gs:``, a local GCS emulator): read in place, the same tokens."""
    root, model = model_dir
    path = str(root / source.removeprefix("gs:"))
    if source.startswith("gs:"):
        from semcoder_jax import locations

        path = f"{request.getfixturevalue('gcs_bucket')}/model"
        locations.upload_tree(str(root / source.removeprefix("gs:")), path)
    prompts = ["def f(x):\n", "assert f('abc') ==", "for i in range(10):\n    print("]
    capsys.readouterr()
    argv = ["generate", "--model", path, "--max-new-tokens", "24", "--json"]
    for p in prompts:
        argv += ["--prompt", p]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(root / "hf")
    for prompt, row in zip(prompts, rows):
        ids = [tok.bos_token_id] + tok.encode(prompt, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        expected = out[0, len(ids):].tolist()
        assert row["token_ids"] == expected
        assert row["completion"] == tok.decode([t for t in expected if t != tok.eos_token_id], skip_special_tokens=True)


class _CharTokenizer:
    """Token id = ord(char) for a toy model whose output we can steer."""

    bos_id, eos_id, pad_id = 1, 2, 0

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if i > 2)


def test_stop_strings_cut_before_the_stop_and_end_generation(model_dir):
    root, _ = model_dir
    config, params = load_hf_params(str(root / "hf"))
    gen = Generator(config, jax_tree(params), _CharTokenizer())
    free = gen.generate(["ab"], max_new_tokens=30, chunk=4)[0]
    assert free.finish_reason in ("length", "eos")
    stop = free.text[5:7]  # two characters the model produces at steps 6-7
    cut = gen.generate(["ab"], max_new_tokens=30, stop=[stop], chunk=4)[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.index(stop)]
    assert cut.token_ids == free.token_ids[: len(cut.token_ids)] and len(cut.token_ids) < 30


def jax_tree(params):
    return jax.tree.map(jnp.asarray, params)


def test_sampling_is_seeded_and_nucleus_of_tiny_mass_is_greedy():
    logits = jnp.asarray(np.random.RandomState(0).randn(4, 50).astype(np.float32) * 3)
    rng = jax.random.key(7)
    a = sample_tokens(logits, rng, jnp.float32(1.0), jnp.float32(0.9), greedy=False)
    b = sample_tokens(logits, rng, jnp.float32(1.0), jnp.float32(0.9), greedy=False)
    assert (np.asarray(a) == np.asarray(b)).all()
    tiny = sample_tokens(logits, rng, jnp.float32(1.0), jnp.float32(1e-6), greedy=False)
    assert (np.asarray(tiny) == np.asarray(logits).argmax(-1)).all()
    draws = {int(sample_tokens(logits, jax.random.key(s), jnp.float32(5.0), jnp.float32(1.0), False)[0])
             for s in range(20)}
    assert len(draws) > 1


def test_sampled_cli_output_depends_on_seed_only(model_dir, capsys):
    root, _ = model_dir
    base = ["generate", "--model", str(root / "native"), "--prompt", "def", "--max-new-tokens", "16",
            "--temperature", "1.0", "--top-p", "0.95", "--json"]
    outs = []
    for seed in ("1", "1", "2"):
        capsys.readouterr()
        assert main(base + ["--seed", seed]) == 0
        outs.append(json.loads(capsys.readouterr().out)["token_ids"])
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_bad_generate_arguments_are_one_line_errors(model_dir, capsys, tmp_path):
    root, _ = model_dir
    capsys.readouterr()
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 1
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": 1}\n')
    assert main(["generate", "--model", str(root / "native"), "--prompt-file", str(bad)]) == 1
    assert "p.jsonl:2: expected an object with a string 'prompt' field" in capsys.readouterr().err


def test_a_row_stopped_early_in_a_batch_keeps_only_its_own_tokens(model_dir):
    root, _ = model_dir
    config, params = load_hf_params(str(root / "hf"))
    gen = Generator(config, jax_tree(params), _CharTokenizer())
    free = gen.generate(["ab", "xyz"], max_new_tokens=30, chunk=4)
    stop = free[0].text[5:7]
    both = gen.generate(["ab", "xyz"], max_new_tokens=30, stop=[stop], chunk=4)
    assert both[0].finish_reason == "stop" and both[0].text == free[0].text[: free[0].text.index(stop)]
    assert both[0].token_ids == free[0].token_ids[: len(both[0].token_ids)]
    if stop not in free[1].text:  # the other row is unaffected by its neighbour's stop
        assert both[1].token_ids == free[1].token_ids and both[1].finish_reason == free[1].finish_reason
