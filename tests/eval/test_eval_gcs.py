"""``semcoder eval --model gs://... --out gs://...`` (a local GCS emulator): the same samples, scores and
model fingerprint as on local disk, and a rerun resumes from the samples in the bucket."""

from __future__ import annotations

import json
import os
import tempfile

import pytest

from eval.backends import local_model, model_fingerprint
from semcoder_jax import locations
from semcoder_jax.cli import main as semcoder


def _files(url: str) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        locations.download_tree(url, tmp)
        return {name: open(os.path.join(tmp, name), "rb").read() for name in os.listdir(tmp)}


def _records(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines()]


def _common(shared_data_dir) -> list[str]:
    return ["--benchmark", "cruxeval-o", "--mode", "monologue", "--limit", "6", "--max-new-tokens", "16",
            "--batch-size", "6", "--data-dir", str(shared_data_dir)]


def test_eval_of_a_gs_export_scores_as_the_local_one_and_resumes_from_the_bucket(
        tiny_hf_model, shared_data_dir, gcs_bucket, tmp_path, capsys):
    url = f"{gcs_bucket}/models/hf"
    locations.upload_tree(str(tiny_hf_model), url)
    assert model_fingerprint(url) == model_fingerprint(tiny_hf_model)

    local_out = tmp_path / "local"
    assert semcoder(["eval", "--model", str(tiny_hf_model), "--backend", "hf", *_common(shared_data_dir),
                     "--out", str(local_out)]) == 0
    out = f"{gcs_bucket}/evals/a"
    assert semcoder(["eval", "--model", url, "--backend", "hf", *_common(shared_data_dir), "--out", out]) == 0
    assert f"summary: {out}/summary.json" in capsys.readouterr().out

    remote = _files(out)
    assert sorted(remote) == sorted(os.listdir(local_out)) == ["config.json", "cruxeval-o.jsonl", "summary.json"]
    here, there = _records((local_out / "cruxeval-o.jsonl").read_bytes()), _records(remote["cruxeval-o.jsonl"])
    assert len(here) == 6
    assert [(r["raw"], r["status"]) for r in here] == [(r["raw"], r["status"]) for r in there]
    summaries = json.loads((local_out / "summary.json").read_text()), json.loads(remote["summary.json"])
    assert summaries[0]["cruxeval-o"]["pass@1"] == summaries[1]["cruxeval-o"]["pass@1"]
    configs = json.loads((local_out / "config.json").read_text()), json.loads(remote["config.json"])
    assert configs[0]["source"]["fingerprint"] == configs[1]["source"]["fingerprint"]
    assert configs[1]["source"]["path"] == url

    # a rerun finds every sample done in the bucket; other settings there are refused naming the URL
    assert semcoder(["eval", "--model", url, "--backend", "hf", *_common(shared_data_dir), "--out", out]) == 0
    assert _files(out)["cruxeval-o.jsonl"] == remote["cruxeval-o.jsonl"]
    capsys.readouterr()
    assert semcoder(["eval", "--model", url, "--backend", "hf", *_common(shared_data_dir), "--seed", "5",
                     "--out", out]) == 1
    err = capsys.readouterr().err
    assert f"{out}/config.json: this output directory holds samples made with different settings" in err


def test_a_gs_model_is_copied_once_with_only_the_files_the_loaders_read(tiny_hf_model, gcs_bucket, tmp_path):
    from semcoder_jax import convert

    native = tmp_path / "native"
    convert.convert_hf_to_native(str(tiny_hf_model), str(native))
    # a training run's layout: one step's params and meta, the run's tokenizer, and files eval never reads
    run = tmp_path / "run"
    config = convert.read_native_config(str(native))
    locations.upload_tree(str(native / "params"), str(run / "checkpoints" / "4" / "params"))
    (run / "checkpoints" / "4" / "meta").mkdir()
    (run / "checkpoints" / "4" / "meta" / "metadata").write_text(
        json.dumps({"model_config": convert.model_config_to_dict(config)}))
    locations.upload_tree(str(native / "tokenizer"), str(run / "tokenizer"))
    (run / "checkpoints" / "4" / "opt_state").mkdir()
    (run / "checkpoints" / "4" / "opt_state" / "big").write_bytes(b"\0" * 1000)
    (run / "metrics.jsonl").write_text("{}\n")
    for name, path in (("native", native), ("run", run)):
        url = f"{gcs_bucket}/{name}"
        locations.upload_tree(str(path), url)
        assert model_fingerprint(url) == model_fingerprint(path), name
        copy = local_model(url)
        assert local_model(url) == copy  # once per process
        copied = {os.path.relpath(os.path.join(root, f), copy) for root, _, files in os.walk(copy) for f in files}
        assert not any(n.startswith(("checkpoints/4/opt_state", "metrics")) for n in copied), copied
        assert os.path.isfile(os.path.join(copy, "tokenizer", "tokenizer.json"))


def test_a_missing_gs_model_is_one_line(gcs_bucket, shared_data_dir, tmp_path, capsys):
    assert semcoder(["eval", "--model", f"{gcs_bucket}/nothing", "--backend", "hf", *_common(shared_data_dir),
                     "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--model {gcs_bucket}/nothing: not found" in err, err


@pytest.mark.slow  # compiles the JAX sampler: ~5 s; the hf backend's gs:// test stays in the default suite
def test_the_jax_backend_scores_a_native_checkpoint_on_gs_as_on_disk(tiny_hf_model, shared_data_dir, gcs_bucket,
                                                                    tmp_path):
    from semcoder_jax import convert

    native = tmp_path / "native"
    convert.convert_hf_to_native(str(tiny_hf_model), str(native))
    url = f"{gcs_bucket}/native"
    locations.upload_tree(str(native), url)
    for model, out in ((str(native), str(tmp_path / "local")), (url, f"{gcs_bucket}/evals/jax")):
        assert semcoder(["eval", "--model", model, "--backend", "jax", *_common(shared_data_dir),
                         "--out", out]) == 0
    here = _records((tmp_path / "local" / "cruxeval-o.jsonl").read_bytes())
    there = _records(_files(f"{gcs_bucket}/evals/jax")["cruxeval-o.jsonl"])
    assert [(r["raw"], r["status"]) for r in here] == [(r["raw"], r["status"]) for r in there]
