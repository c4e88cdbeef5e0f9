"""User-given locations: local paths and gs:// URLs through one path layer; what cannot be served, and the
errors a cloud user meets (no bucket, missing bucket, no credentials, no permission), are one line each,
before any work, with no traceback and no local folder named ``gs:``."""

from __future__ import annotations

from pathlib import Path

import pytest

from semcoder_jax import locations
from semcoder_jax.cli import main as semcoder
from semcoder_jax.train.config import TrainConfigError, load_config

CONFIG = str(Path(__file__).resolve().parents[1] / "launch" / "configs" / "tiny_cpu.yaml")


def test_urls_are_told_from_local_paths():
    assert [locations.object_store_scheme(v) for v in ("gs://b/x", "s3://b", "/mnt/gcs/b", "runs/x", "C:/x", None)] == [
        "gs", "s3", None, None, None, None]
    assert locations.split("gs://bkt/a/b") == ("gs", "bkt", "a/b")
    assert locations.join("gs://bkt/run/", "checkpoints", "5") == "gs://bkt/run/checkpoints/5"


@pytest.mark.parametrize("value,message", [
    ("gs:///runs/x", r"no bucket name \(write gs://BUCKET/path\)"),
    ("gs://Bad_Bucket/x", "'Bad_Bucket' is not a valid bucket name"),
    ("s3://b/x", r"s3:// is not a storage this installation serves \(gs:// is"),
])
def test_a_location_that_cannot_be_served_is_refused_in_one_line(value, message):
    with pytest.raises(locations.LocationError, match=message) as raised:
        locations.check("run.dir", value)
    assert str(raised.value).startswith(f"run.dir {value}: ") and "\n" not in str(raised.value)


def test_a_registered_scheme_without_its_package_names_what_to_install(monkeypatch):
    monkeypatch.setitem(locations.SCHEMES, "s3", locations.Scheme("s3", "s3fs_not_installed_here", "pip install s3fs"))
    with pytest.raises(locations.LocationError, match=r"s3:// needs the s3fs_not_installed_here package: pip install s3fs"):
        locations.check("data.path", "s3://b/x")


@pytest.mark.parametrize("override,match", [
    ("run.dir=gs:///runs/x", r"run.dir: gs:///runs/x: no bucket name"),
    ("data.path=s3://b/pyx/*.jsonl", r"data.path: s3://b/pyx/\*.jsonl: s3:// is not a storage"),
    ("rl.tasks=gs://bkt/tasks.jsonl", r"rl.tasks: gs://bkt/tasks.jsonl: the GRPO task file is read from local disk only"),
])
def test_config_locations_are_checked_at_load(override, match):
    with pytest.raises(TrainConfigError, match=match):
        load_config(CONFIG, [override])


def test_gs_locations_pass_the_config_checks():
    config = load_config(CONFIG, ["run.dir=gs://bkt/runs/x", "data.path=gs://bkt/pyx/*.jsonl.gz",
                                  "model.init_from=hf:gs://bkt/models/ds", "run.export_hf=gs://bkt/hf"])
    assert config.run.dir == "gs://bkt/runs/x"


def test_the_write_probe_passes_on_a_bucket_and_leaves_nothing(gcs_bucket, gcs_emulator):
    locations.probe_writable("run.dir", f"{gcs_bucket}/runs/x")
    assert gcs_emulator.objects(gcs_bucket[5:]) == []


def test_a_missing_bucket_is_one_line_and_not_created(gcs_emulator):
    with pytest.raises(locations.LocationError, match=r"^run.dir gs://no-such-bucket-x/r: bucket no-such-bucket-x "
                                                      r"does not exist \(fix the name, or create it: gcloud storage buckets"):
        locations.probe_writable("run.dir", "gs://no-such-bucket-x/r")
    assert not locations.path("gs://no-such-bucket-x/r").exists()


@pytest.mark.parametrize("status,message", [
    (401, r"no credentials were found for gs:// \(run `gcloud auth application-default login`, or set "
          r"GOOGLE_APPLICATION_CREDENTIALS"),
    (403, r"permission denied \(403\) writing to bucket bkt-x: the account needs storage.objects.create"),
])
def test_no_credentials_or_no_permission_is_one_line(monkeypatch, status, message):
    from tests.gcs_emulator import RefusingGcs

    server = RefusingGcs(status)
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        with pytest.raises(locations.LocationError, match=message) as raised:
            locations.probe_writable("run.dir", "gs://bkt-x/runs/x")
        assert str(raised.value).startswith("run.dir gs://bkt-x/runs/x: ")
    finally:
        server.stop()


def test_the_cli_stops_before_any_work_on_a_missing_bucket(gcs_emulator, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert semcoder(["train", "--config", CONFIG, "--run-dir", "gs://no-such-bucket-y/runs/x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("semcoder train: error: run.dir gs://no-such-bucket-y/runs/x: bucket no-such-bucket-y "
                          "does not exist (fix the name") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no folder named gs:


def test_the_cli_refuses_urls_where_a_subcommand_reads_only_local_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert semcoder(["train", "--config", CONFIG, "--run-dir", "gs:///runs/x"]) == 1
    assert "--run-dir gs:///runs/x: no bucket name" in capsys.readouterr().err
    assert semcoder(["data", "make-sample", "--out", "gs://bkt/pyx"]) == 1
    assert ("--out gs://bkt/pyx: semcoder data make-sample reads and writes --out with local file APIs only"
            in capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []
