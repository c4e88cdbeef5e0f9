"""HF -> native -> HF conversion: bit-identical, loadable by transformers, and strict about bad input."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open

from semcoder_jax.cli import main
from semcoder_jax.convert import convert_hf_to_native, convert_native_to_hf, load_native, save_native


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _roundtrip(model, tmp_path, shard="5GB", **save_kwargs):
    hf, native, back = tmp_path / "hf", tmp_path / "native", tmp_path / "back"
    model.save_pretrained(hf, **save_kwargs)
    assert main(["convert", "hf-to-orbax", "--hf", str(hf), "--out", str(native)]) == 0
    assert main(["convert", "orbax-to-hf", "--ckpt", str(native), "--out", str(back), "--max-shard-size", shard]) == 0
    return back


def _load_strict(path):
    from transformers import LlamaForCausalLM

    model, info = LlamaForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model


@pytest.mark.parametrize("dtype, overrides", [
    ("bfloat16", {}),
    ("float32", dict(num_attention_heads=4, num_key_value_heads=4, rope_scaling=None)),
    ("float16", dict(tie_word_embeddings=True)),
])
def test_roundtrip_is_bit_identical_per_tensor(hf_model, tmp_path, dtype, overrides):
    model = hf_model(dtype=dtype, **overrides)
    back = _load_strict(_roundtrip(model, tmp_path, max_shard_size="60KB"))
    assert str(back.dtype) == f"torch.{dtype}"
    source, result = _state(model), _state(back)
    assert source.keys() == result.keys()
    for name in source:
        assert torch.equal(source[name].view(torch.uint8), result[name].view(torch.uint8)), name


def test_export_is_sharded_with_an_index_and_keeps_every_vocab_row(hf_model, tmp_path, tokenizer_dir):
    model = hf_model(vocab_size=1000)  # more rows than the 400-entry tokenizer: never resized
    model.save_pretrained(tmp_path / "hf")
    convert_hf_to_native(str(tmp_path / "hf"), str(tmp_path / "native"), tokenizer_dir=str(tokenizer_dir))
    convert_native_to_hf(str(tmp_path / "native"), str(tmp_path / "out"), max_shard_size="200KB")
    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).exists() for s in shards)
    with safe_open(out / index["weight_map"]["model.embed_tokens.weight"], "pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").shape == (1000, 96)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).eos_token == "</s>"
    _load_strict(out)


def test_pytorch_bin_checkpoints_with_legacy_buffers_are_read(hf_model, tmp_path):
    model = hf_model()
    model.config.save_pretrained(tmp_path / "hf")
    state = dict(model.state_dict())
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # legacy buffer, ignored
    torch.save(state, tmp_path / "hf" / "pytorch_model.bin")
    convert_hf_to_native(str(tmp_path / "hf"), str(tmp_path / "native"))
    _, params = load_native(str(tmp_path / "native"))
    np.testing.assert_array_equal(params["embedding"], model.model.embed_tokens.weight.detach().numpy())


def test_dtype_option_casts_on_the_way_in_and_out(hf_model, tmp_path):
    model = hf_model()
    model.save_pretrained(tmp_path / "hf")
    config = convert_hf_to_native(str(tmp_path / "hf"), str(tmp_path / "native"), dtype="bfloat16")
    assert config.param_dtype == "bfloat16"
    convert_native_to_hf(str(tmp_path / "native"), str(tmp_path / "out"), dtype="float32")
    back = _load_strict(tmp_path / "out")
    expected = model.lm_head.weight.detach().to(torch.bfloat16).float()
    assert torch.equal(back.lm_head.weight.detach(), expected)


def test_save_native_from_memory_matches_conversion(hf_model, tmp_path):
    model = hf_model()
    model.save_pretrained(tmp_path / "hf")
    convert_hf_to_native(str(tmp_path / "hf"), str(tmp_path / "a"))
    config, params = load_native(str(tmp_path / "a"))
    save_native(params, config, str(tmp_path / "b"))
    _, again = load_native(str(tmp_path / "b"))
    for path in (("embedding",), ("layers", "attention", "q_proj"), ("lm_head",)):
        a, b = params, again
        for key in path:
            a, b = a[key], b[key]
        np.testing.assert_array_equal(a, b)


def test_native_checkpoints_store_one_chunk_per_layer_so_export_streams_by_layer(hf_model, tmp_path):
    from semcoder_jax.convert import iter_native_leaf, open_native_leaf

    model = hf_model()
    model.save_pretrained(tmp_path / "hf")
    convert_hf_to_native(str(tmp_path / "hf"), str(tmp_path / "native"))
    params_dir = str(tmp_path / "native" / "params")
    up = open_native_leaf(params_dir, ("layers", "mlp", "up_proj"))
    assert up.shape == (2, 200, 96) and up.chunk_layout.read_chunk.shape == (1, 200, 96)
    layers = list(iter_native_leaf(params_dir, ("layers", "mlp", "up_proj")))
    expected = [model.model.layers[i].mlp.up_proj.weight.detach().numpy() for i in range(2)]
    for got, want in zip(layers, expected):
        np.testing.assert_array_equal(got, want)  # HF's [out, in] layout: no transpose


def test_prefetch_reads_ahead_only_within_its_byte_budget():
    import threading
    import time

    from semcoder_jax.convert import prefetch

    sizes = [1, 1, 3, 3, 1, 2]
    alive, peak, lock = [], [0], threading.Lock()

    def produce():
        for i, size in enumerate(sizes):
            with lock:
                alive.append(size)
                peak[0] = max(peak[0], sum(alive))
            yield i

    seen = []
    for i in prefetch(produce(), depth=3, sizes=sizes, max_bytes=4):
        time.sleep(0.02)  # a slow consumer: the producer runs ahead as far as it may
        seen.append(i)
        with lock:
            alive.remove(sizes[i])
    assert seen == list(range(len(sizes)))
    assert peak[0] == 4  # 1+1 ahead of 3 would be 5; 3+3 never together


def test_prefetch_reraises_the_producers_error_in_the_consumer():
    from semcoder_jax.convert import prefetch

    def produce():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetch(produce()))


# ---- bad input: one line naming the file and the problem, exit 1, no output left behind ----------

def _fails(capsys, argv, message, out_dir):
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    parent = os.path.dirname(out_dir)
    leftovers = [n for n in os.listdir(parent) if ".tmp-" in n] if os.path.isdir(parent) else []
    assert not leftovers
    return err


@pytest.fixture()
def hf_dir(hf_model, tmp_path):
    hf_model().save_pretrained(tmp_path / "hf", max_shard_size="60KB")
    return tmp_path / "hf"


def test_missing_config_json(capsys, hf_dir, tmp_path):
    os.remove(hf_dir / "config.json")
    out = str(tmp_path / "out")
    _fails(capsys, ["convert", "hf-to-orbax", "--hf", str(hf_dir), "--out", out], "config.json: not found", out)
    assert not os.path.exists(out)


def test_shard_named_in_index_but_absent(capsys, hf_dir, tmp_path):
    shard = sorted(p for p in os.listdir(hf_dir) if p.endswith(".safetensors"))[-1]
    os.remove(hf_dir / shard)
    out = str(tmp_path / "out")
    err = _fails(capsys, ["convert", "hf-to-orbax", "--hf", str(hf_dir), "--out", out],
                 f"shard {shard} named in the index is missing", out)
    assert "model.safetensors.index.json" in err and not os.path.exists(out)


def test_tensor_shape_disagreeing_with_config(capsys, hf_dir, tmp_path):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["intermediate_size"] = 208
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    out = str(tmp_path / "out")
    _fails(capsys, ["convert", "hf-to-orbax", "--hf", str(hf_dir), "--out", out],
           "but config.json implies [208, 96]", out)
    assert not os.path.exists(out)


def test_unsupported_model_type(capsys, hf_dir, tmp_path):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    out = str(tmp_path / "out")
    _fails(capsys, ["convert", "hf-to-orbax", "--hf", str(hf_dir), "--out", out], "unsupported model_type 'gpt2'", out)


def test_existing_non_empty_output_needs_overwrite(capsys, hf_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    _fails(capsys, ["convert", "hf-to-orbax", "--hf", str(hf_dir), "--out", str(out)],
           "exists and is not empty (pass --overwrite", str(out))
    assert (out / "keep.txt").read_text() == "precious"
    assert main(["convert", "hf-to-orbax", "--hf", str(hf_dir), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model_config.json").exists()


def test_orbax_to_hf_on_a_directory_that_is_not_a_checkpoint(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "out")
    _fails(capsys, ["convert", "orbax-to-hf", "--ckpt", str(tmp_path / "empty"), "--out", out], "empty", out)


@pytest.mark.parametrize("direction", ["hf-to-orbax", "orbax-to-hf"])
def test_output_storage_failing_midway_gives_one_line_and_leaves_nothing(hf_model, tmp_path, direction):
    """A real write failure (files may not grow past 64 KB: EFBIG, like a full disk) -- not bad input,
    but it must still be one line, exit 1, and no output or temporary directory left behind."""
    import subprocess
    import sys

    model = hf_model(vocab_size=1000)  # 1000 x 96 float32 embedding = 384 KB
    model.save_pretrained(tmp_path / "hf")
    src = ["--hf", str(tmp_path / "hf")]
    if direction == "orbax-to-hf":
        convert_hf_to_native(str(tmp_path / "hf"), str(tmp_path / "native"))
        src = ["--ckpt", str(tmp_path / "native")]
    out = tmp_path / "out"

    # bash: ignore SIGXFSZ (a failing write() rather than a killed process), cap files at 64 KiB, exec
    limited = ["bash", "-c", 'trap "" XFSZ; ulimit -f 64; exec "$0" "$@"', sys.executable, "-m", "semcoder_jax.cli"]
    proc = subprocess.run([*limited, "convert", direction, *src, "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not be written (File too large)" in lines[0], proc.stderr[-2000:]
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_converted_checkpoint_restores_sharded_onto_a_mesh(hf_model, tmp_path):
    """What ``model.init_from=orbax:`` does with a converted checkpoint: per-layer chunks, fsdp shards."""
    import flax.linen as nn
    import jax

    from semcoder_jax import model as model_lib
    from semcoder_jax import sharding as shd
    from semcoder_jax.convert import restore_params

    hf_model().save_pretrained(tmp_path / "hf")
    convert_hf_to_native(str(tmp_path / "hf"), str(tmp_path / "native"))
    config, host = load_native(str(tmp_path / "native"))
    mesh = shd.build_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    abstract = nn.unbox(model_lib.abstract_params(config))
    shardings = shd.param_shardings(abstract, model_lib.logical_axes(config), mesh)
    sharded = restore_params(str(tmp_path / "native" / "params"), config, shardings=shardings)
    gate = sharded["layers"]["mlp"]["gate_proj"]  # [layers, mlp 200, embed 96] -> (None, tensor, fsdp)
    assert gate.sharding == shardings["layers"]["mlp"]["gate_proj"]
    assert gate.addressable_shards[0].data.shape == (2, 100, 24)
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(host)):
        np.testing.assert_array_equal(np.asarray(a), b)


def _retype_in_header(path, tensor: str, new_dtype: str) -> None:
    """Rewrite one tensor's dtype in a safetensors header, leaving its bytes and offsets alone."""
    import struct

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header[tensor]["dtype"] = new_dtype
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (n - len(text))  # same header length: the data offsets stay valid
    assert len(text) == n
    path.write_bytes(raw[:8] + text + raw[8 + n:])


def test_a_weight_whose_header_says_int32_is_refused_naming_tensor_and_file(capsys, hf_model, tmp_path):
    hf_model(torch_dtype=torch.float32).save_pretrained(tmp_path / "hf")
    _retype_in_header(tmp_path / "hf" / "model.safetensors", "model.norm.weight", "I32")
    out = str(tmp_path / "out")
    err = _fails(capsys, ["convert", "hf-to-orbax", "--hf", str(tmp_path / "hf"), "--out", out],
                 "tensor model.norm.weight has dtype int32; a weight must be a floating type", out)
    assert "model.safetensors" in err and not os.path.exists(out)


def test_a_header_whose_sizes_disagree_with_the_bytes_is_refused(capsys, hf_model, tmp_path):
    hf_model(torch_dtype=torch.float32).save_pretrained(tmp_path / "hf")
    _retype_in_header(tmp_path / "hf" / "model.safetensors", "model.norm.weight", "F16")
    out = str(tmp_path / "out")
    _fails(capsys, ["convert", "hf-to-orbax", "--hf", str(tmp_path / "hf"), "--out", out],
           "tensor model.norm.weight has inconsistent offsets", out)


def test_nonfinite_weights_are_refused_both_ways_unless_allowed(capsys, hf_model, tmp_path):
    model = hf_model()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
        model.model.layers[0].self_attn.q_proj.weight[0, 0] = float("inf")
    model.save_pretrained(tmp_path / "hf")
    out = str(tmp_path / "native")
    err = _fails(capsys, ["convert", "hf-to-orbax", "--hf", str(tmp_path / "hf"), "--out", out],
                 "holds 1 non-finite value(s) (NaN or infinity); refusing to convert", out)
    assert "model.layers.0.self_attn.q_proj.weight" in err and "--allow-nonfinite" in err
    assert main(["convert", "hf-to-orbax", "--hf", str(tmp_path / "hf"), "--out", out, "--allow-nonfinite"]) == 0
    back = str(tmp_path / "back")
    err = _fails(capsys, ["convert", "orbax-to-hf", "--ckpt", out, "--out", back], "non-finite value(s)", back)
    assert "layers/attention/q_proj" in err or "q_proj" in err
    assert main(["convert", "orbax-to-hf", "--ckpt", out, "--out", back, "--allow-nonfinite"]) == 0


@pytest.mark.parametrize("direction", ["hf-to-orbax", "orbax-to-hf"])
def test_a_read_only_output_location_is_one_line_and_leaves_nothing(hf_model, tmp_path, direction):
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root to mount a read-only filesystem for the output")
    hf_model().save_pretrained(tmp_path / "hf")
    src = ["--hf", str(tmp_path / "hf")]
    if direction == "orbax-to-hf":
        convert_hf_to_native(str(tmp_path / "hf"), str(tmp_path / "native"))
        src = ["--ckpt", str(tmp_path / "native")]
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (f'mount -t tmpfs -o ro tmpfs {ro} && exec "$0" -m semcoder_jax.cli convert {direction} '
              + " ".join(src) + f" --out {ro}/out")
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script, sys.executable], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Read-only file system" in lines[0] and "out" in lines[0], proc.stderr[-2000:]
