"""`semcoder data build --out gs://...` (a local GCS emulator): the bytes of a local build, its stage cache in
the bucket (a rerun resumes from it), and a missing bucket refused in one line before any work."""

from __future__ import annotations

import json

from data_pipeline import remote
from semcoder_jax.cli import main as semcoder

BUILD = ["data", "build", "--seeds", "stdlib:colorsys", "--limit", "2", "--workers", "1", "--quiet"]
OUTPUTS = ("data/pyx.jsonl", "data/pyx_r.jsonl", "removed.jsonl")


def test_a_build_into_a_bucket_equals_the_local_build_and_resumes_from_its_cache(gcs_bucket, gcs_emulator, tmp_path):
    local = tmp_path / "pyx"
    assert semcoder([*BUILD, "--out", str(local)]) == 0
    out = f"{gcs_bucket}/pyx"
    assert semcoder([*BUILD, "--out", out]) == 0
    fs = remote.filesystem(out)
    for name in OUTPUTS:
        assert fs.cat_file(f"{out}/{name}") == (local / name).read_bytes(), name
    report = json.loads(fs.cat_file(f"{out}/build_report.json"))
    local_report = json.loads((local / "build_report.json").read_text())
    assert report["records"] == local_report["records"] and report["stages"] == local_report["stages"]
    assert any("/.cache/" in name for name in gcs_emulator.objects(gcs_bucket[5:], "pyx/"))

    before = {name: fs.cat_file(f"{out}/{name}") for name in OUTPUTS}
    assert semcoder([*BUILD, "--out", out]) == 0  # from the bucket's cache: the same output again
    assert {name: fs.cat_file(f"{out}/{name}") for name in OUTPUTS} == before


def test_a_build_into_a_missing_bucket_is_one_line(gcs_emulator, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert semcoder([*BUILD, "--out", "gs://no-such-bucket-b/pyx"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("semcoder data: error: data build: --out gs://no-such-bucket-b/pyx: bucket no-such-bucket-b "
                           "does not exist (fix the name, or create it: gcloud storage buckets create gs://no-such-bucket-b)")
    assert list(tmp_path.iterdir()) == []
