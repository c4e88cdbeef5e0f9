"""Object-store URLs (gs://, s3://) are refused before any work, one line naming the setting: no local folder
named ``gs:``, no traceback at the first checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from semcoder_jax.cli import main as semcoder
from semcoder_jax.locations import object_store_scheme
from semcoder_jax.train.config import TrainConfigError, load_config


def test_urls_are_told_from_local_paths():
    assert [object_store_scheme(v) for v in ("gs://b/x", "s3://b", "/mnt/gcs/b", "runs/x", "C:/x", None)] == [
        "gs", "s3", None, None, None, None]


@pytest.mark.parametrize("override", ["run.dir=gs://b/runs/x", "data.path=gs://b/pyx/*.jsonl",
                                      "model.init_from=hf:gs://b/models/ds", "run.export_hf=s3://b/hf"])
def test_config_locations_on_object_storage_are_refused_at_load(override):
    key = override.split("=")[0]
    with pytest.raises(TrainConfigError, match=rf"{key}: .*:// locations are not supported yet.*mount the bucket"):
        load_config("launch/configs/tiny_cpu.yaml", [override])


def test_the_cli_refuses_a_gs_run_dir_before_making_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "launch" / "configs" / "tiny_cpu.yaml"
    assert semcoder(["train", "--config", str(config), "--run-dir", "gs://b/runs/x"]) == 1
    assert "--run-dir gs://b/runs/x: gs:// locations are not supported yet" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no folder named gs:
    assert semcoder(["eval", "--model", "gs://b/hf", "--benchmark", "cruxeval-o", "--out", "o"]) == 1
    assert "--model gs://b/hf: gs:// locations are not supported yet" in capsys.readouterr().err
    assert semcoder(["convert", "hf-to-orbax", "--hf", "x", "--out", "gs://b/ckpt"]) == 1
    assert "--out gs://b/ckpt" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
