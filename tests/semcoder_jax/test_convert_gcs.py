"""HF and native checkpoints on gs:// (a local GCS emulator): the same bytes as on local disk, streamed.

An export to gs:// stages one shard at a time on local disk and publishes the file that completes it last;
an import reads tensors by byte range (no local disk); native checkpoints are read and written in place
through TensorStore and Orbax.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest

from semcoder_jax import convert, integrity, locations
from semcoder_jax.cli import main


def _local_files(directory) -> dict[str, bytes]:
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory).replace(os.sep, "/")] = open(path, "rb").read()
    return out


def _remote_files(url: str) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        locations.download_tree(url, tmp)
        return _local_files(tmp)


def _leaves(tree: dict, prefix: tuple = ()) -> dict[tuple, np.ndarray]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = np.asarray(value)
    return out


def _assert_same_params(a: dict, b: dict) -> None:
    a, b = _leaves(a), _leaves(b)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key


def _staged(scratch) -> list[str]:
    """What the conversions left in the scratch directory (torch keeps a compile cache there too)."""
    return [name for name in os.listdir(scratch) if name.startswith("semcoder-")]


@pytest.fixture()
def scratch(tmp_path, monkeypatch):
    """The local temporary directory (TMPDIR) the conversions stage files in, to watch its use."""
    directory = tmp_path / "scratch"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


@pytest.fixture()
def uploads(monkeypatch):
    """(name, files in the local scratch directory at that moment) for every file an export publishes."""
    seen: list[tuple[str, list[str]]] = []
    publish = convert._RemoteStaging.publish

    def recording(self, name):
        held = sorted(os.path.relpath(os.path.join(root, f), self.tmp)
                      for root, _, files in os.walk(self.tmp) for f in files)
        seen.append((name, held))
        publish(self, name)

    monkeypatch.setattr(convert._RemoteStaging, "publish", recording)
    return seen


def test_export_to_gs_is_the_local_export_byte_for_byte_one_shard_on_disk_at_a_time(
        hf_model, tokenizer_dir, tmp_path, gcs_bucket, gcs_emulator, scratch, uploads):
    hf_model().save_pretrained(tmp_path / "hf")
    config, params = convert.load_hf_params(str(tmp_path / "hf"), param_dtype=None)
    options = dict(tokenizer_dir=str(tokenizer_dir), dtype="bfloat16", max_shard_size="40KB")
    convert.save_hf(params, config, str(tmp_path / "local"), **options)
    url = f"{gcs_bucket}/exports/hf"
    convert.save_hf(params, config, url, **options)

    local = _local_files(tmp_path / "local")
    assert _remote_files(url) == local  # every file, byte for byte
    shards = sorted(n for n in local if n.endswith(".safetensors"))
    assert len(shards) > 3
    # read back through the gs:// reader too: every tensor equal to the local export's
    a, b = convert.HFCheckpoint(str(tmp_path / "local")), convert.HFCheckpoint(url)
    assert a.names() == b.names()
    for name in a.names():
        assert a.read(name).tobytes() == b.read(name).tobytes(), name

    published = [name for name, _ in uploads]
    assert sorted(published) == sorted(local)
    assert published[:len(shards)] == shards and published[-1] == "model.safetensors.index.json"
    assert published.index("config.json") > published.index("tokenizer.json")
    for name, held in uploads:  # local disk holds the shard being uploaded and no other (or a few small files)
        assert name in held and (held == [name] or not any(h.endswith(".safetensors") for h in held)), (name, held)
    assert _staged(scratch) == []


def test_an_export_to_gs_needs_overwrite_for_a_non_empty_target_and_replaces_it_whole(
        hf_model, tmp_path, gcs_bucket, gcs_emulator):
    hf_model().save_pretrained(tmp_path / "hf")
    config, params = convert.load_hf_params(str(tmp_path / "hf"))
    url = f"{gcs_bucket}/hf"
    locations.write_text(f"{url}/stale.txt", "old")
    with pytest.raises(convert.ConversionError, match="exists and is not empty \\(pass --overwrite"):
        convert.save_hf(params, config, url)
    assert gcs_emulator.objects(gcs_bucket[5:]) == ["hf/stale.txt"]
    convert.save_hf(params, config, url, overwrite=True)
    assert sorted(gcs_emulator.objects(gcs_bucket[5:])) == [
        "hf/config.json", "hf/generation_config.json", "hf/model.safetensors"]
    before = _remote_files(url)
    broken = {**params, "final_norm": {"scale": np.full_like(params["final_norm"]["scale"], np.nan)}}
    with pytest.raises(convert.ConversionError, match="non-finite"):  # fails before uploading anything:
        convert.save_hf(broken, config, url, overwrite=True)       # the old export is left alone
    assert _remote_files(url) == before
    locations.write_text(f"{gcs_bucket}/file", "x")
    with pytest.raises(convert.ConversionError, match="exists and is not a directory"):
        convert.save_hf(params, config, f"{gcs_bucket}/file")


def test_a_failed_export_to_gs_is_one_line_and_leaves_nothing(hf_model, tmp_path, gcs_bucket, gcs_emulator,
                                                               monkeypatch, scratch):
    hf_model().save_pretrained(tmp_path / "hf")
    config, params = convert.load_hf_params(str(tmp_path / "hf"))
    publish = convert._RemoteStaging.publish

    def failing(self, name):
        if name.startswith("model-00003"):
            raise OSError("connection reset by peer")
        publish(self, name)

    monkeypatch.setattr(convert._RemoteStaging, "publish", failing)
    url = f"{gcs_bucket}/hf"
    with pytest.raises(convert.ConversionError) as e:
        convert.save_hf(params, config, url, max_shard_size="40KB")
    assert str(e.value) == f"{url}: could not be written (connection reset by peer); nothing was left behind"
    assert gcs_emulator.objects(gcs_bucket[5:]) == [] and _staged(scratch) == []


def test_a_missing_bucket_or_input_on_gs_is_one_line(hf_model, tmp_path, gcs_bucket, capsys):
    hf_model().save_pretrained(tmp_path / "hf")
    config, params = convert.load_hf_params(str(tmp_path / "hf"))
    with pytest.raises(locations.LocationError, match="bucket no-such-bucket-26 does not exist"):
        convert.save_hf(params, config, "gs://no-such-bucket-26/hf")
    capsys.readouterr()
    for argv, message in ((["hf-to-orbax", "--hf", f"{gcs_bucket}/none", "--out", str(tmp_path / "a")],
                           f"HF directory {gcs_bucket}/none: not found"),
                          (["orbax-to-hf", "--ckpt", f"{gcs_bucket}/none", "--out", str(tmp_path / "b")],
                           f"checkpoint {gcs_bucket}/none: not found")):
        assert main(["convert", *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("safetensors", [True, False])
def test_import_from_gs_gives_the_local_params(hf_model, tokenizer_dir, tmp_path, gcs_bucket, scratch,
                                               safetensors, monkeypatch):
    import shutil

    monkeypatch.setattr(convert, "_RANGE_BYTES", 4096)  # many ranged reads per tensor, several rounds of them

    hf = tmp_path / "hf"
    hf_model().save_pretrained(hf, max_shard_size="60KB", safe_serialization=safetensors)
    for name in os.listdir(tokenizer_dir):
        shutil.copy(tokenizer_dir / name, hf / name)
    url = f"{gcs_bucket}/hf"
    locations.upload_tree(str(hf), url)

    config, params = convert.load_hf_params(url)
    assert config == convert.load_hf_params(str(hf))[0]
    _assert_same_params(params, convert.load_hf_params(str(hf))[1])
    convert.convert_hf_to_native(url, str(tmp_path / "from-gs"))
    convert.convert_hf_to_native(str(hf), str(tmp_path / "from-disk"))
    _assert_same_params(convert.load_native(str(tmp_path / "from-gs"))[1],
                        convert.load_native(str(tmp_path / "from-disk"))[1])
    assert _local_files(tmp_path / "from-gs" / "tokenizer") == _local_files(tmp_path / "from-disk" / "tokenizer")
    if safetensors:  # read by byte range: nothing was staged on local disk
        assert _staged(scratch) == []


def test_native_checkpoints_on_gs_are_written_read_and_exported_in_place(
        hf_model, tokenizer_dir, tmp_path, gcs_bucket, capsys):
    hf_model().save_pretrained(tmp_path / "hf")
    native = f"{gcs_bucket}/native"
    convert.convert_hf_to_native(str(tmp_path / "hf"), native, tokenizer_dir=str(tokenizer_dir))
    convert.convert_hf_to_native(str(tmp_path / "hf"), str(tmp_path / "native"), tokenizer_dir=str(tokenizer_dir))
    _, remote_params = convert.load_native(native)
    _assert_same_params(remote_params, convert.load_native(str(tmp_path / "native"))[1])
    _assert_same_params(_restored_on_a_mesh(f"{native}/params", convert.read_native_config(native)),
                        remote_params)  # what model.init_from=orbax:gs://... does
    leaf = convert.open_native_leaf(f"{native}/params", ("layers", "mlp", "up_proj"))
    assert leaf.shape == (2, 200, 96) and leaf.chunk_layout.read_chunk.shape == (1, 200, 96)
    assert convert.native_leaf_metadata(f"{native}/params") == convert.native_leaf_metadata(
        str(tmp_path / "native" / "params"))

    out = f"{gcs_bucket}/exported"
    assert main(["convert", "orbax-to-hf", "--ckpt", native, "--out", out, "--max-shard-size", "60KB"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    convert.convert_native_to_hf(str(tmp_path / "native"), str(tmp_path / "exported"), max_shard_size="60KB")
    assert _remote_files(out) == _local_files(tmp_path / "exported")


def _restored_on_a_mesh(params_dir: str, config) -> dict:
    import flax.linen as nn
    import jax

    from semcoder_jax import model as model_lib
    from semcoder_jax import sharding as shd

    mesh = shd.build_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    abstract = nn.unbox(model_lib.abstract_params(config))
    shardings = shd.param_shardings(abstract, model_lib.logical_axes(config), mesh)
    restored = convert.restore_params(params_dir, config, shardings=shardings)
    gate = restored["layers"]["mlp"]["gate_proj"]
    assert gate.sharding == shardings["layers"]["mlp"]["gate_proj"]
    return jax.tree.map(np.asarray, restored)


def _fake_run(params: dict, config, run: str, step: int, digests: dict | None = None) -> None:
    """A training run's layout on gs:// with one step: its parameters (saved as the trainer saves them:
    Orbax's standard format, OCDBT), meta and manifest; the optimizer state, which conversion does not
    read, left out."""
    import orbax.checkpoint as ocp

    with tempfile.TemporaryDirectory() as tmp:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.join(tmp, "params"), params)
        checkpointer.wait_until_finished()
        locations.upload_tree(os.path.join(tmp, "params"), f"{run}/checkpoints/{step}/params")
    meta = {"model_config": convert.model_config_to_dict(config), "step": step}
    locations.write_text(f"{run}/checkpoints/{step}/meta/metadata", json.dumps(meta))
    if digests is None:
        digests, _, _ = integrity.tree_digests({"params": params}, integrity.XXH3)
    manifest = {"algorithm": integrity.XXH3, "arrays": digests}
    locations.write_text(f"{run}/checkpoints/{step}/manifest/metadata", json.dumps(manifest))


def test_a_training_run_on_gs_resolves_verifies_and_exports(hf_model, tmp_path, gcs_bucket):
    hf_model().save_pretrained(tmp_path / "hf")
    config, params = convert.load_hf_params(str(tmp_path / "hf"), param_dtype=None)
    run = f"{gcs_bucket}/runs/a"
    _fake_run(params, config, run, 7)
    ckpt_dir, found, params_dir = convert.resolve_params_checkpoint(run)
    assert (ckpt_dir, params_dir) == (run, f"{run}/checkpoints/7/params") and found == config
    assert convert.read_step_manifest(params_dir)["algorithm"] == integrity.XXH3
    assert json.loads(locations.path(f"{params_dir}/_METADATA").read_text())["use_ocdbt"]
    leaf = convert.open_native_leaf(params_dir, ("layers", "attention", "q_proj"))
    np.testing.assert_array_equal(leaf[1].read().result(), params["layers"]["attention"]["q_proj"][1])
    _assert_same_params(convert.restore_params(params_dir, config), params)
    from semcoder_jax.train.checkpoint import verify_step

    # the verifier reads every parameter back from the bucket (this step has no optimizer state to read)
    _, problems = verify_step(f"{run}/checkpoints/7")
    assert problems and not [p for p in problems if "params" in p], problems
    convert.convert_native_to_hf(run, f"{gcs_bucket}/out")
    _assert_same_params(convert.load_hf_params(f"{gcs_bucket}/out", param_dtype=None)[1], params)

    digests, _, _ = integrity.tree_digests({"params": params}, integrity.XXH3)
    name = "params/layers/mlp/up_proj"
    digests[name] = {**digests[name], "digest": "0" * len(digests[name]["digest"])}
    damaged = f"{gcs_bucket}/runs/b"
    _fake_run(params, config, damaged, 3, digests)
    with pytest.raises(convert.ConversionError, match=f"{damaged}/checkpoints/3: .*up_proj.*damaged"):
        convert.convert_native_to_hf(damaged, f"{gcs_bucket}/out2")
    assert not locations.path(f"{gcs_bucket}/out2").exists()
    problems = [p for p in verify_step(f"{damaged}/checkpoints/3")[1] if p.startswith("params/")]
    assert len(problems) == 1 and problems[0].startswith(f"{name}: content digest"), problems
