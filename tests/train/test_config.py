"""The run config: YAML + dotted overrides, typed, every key checked, presets for the release recipes."""

from __future__ import annotations

import os

import pytest

from semcoder_jax.train.config import TrainConfigError, config_from_yaml_text, dump_config, load_config

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "launch", "configs")


def test_overrides_set_nested_values_with_yaml_types(tmp_path):
    cfg = load_config(os.path.join(CONFIGS, "tiny_cpu.yaml"),
                      ["train.steps=50", "mesh.fsdp=4", "optimizer.learning_rate=1e-3", "run.tensorboard=false"])
    assert cfg.train.steps == 50 and cfg.mesh.fsdp == 4
    assert cfg.optimizer.learning_rate == pytest.approx(1e-3) and cfg.run.tensorboard is False


def test_unknown_key_in_file_names_file_line_and_close_match(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  preset: tiny\ntrain:\n  steps: 3\n  global_bach: 8\n")
    with pytest.raises(TrainConfigError, match=r"bad\.yaml:5: unknown config key 'train\.global_bach'.*train\.global_batch"):
        load_config(path)


def test_unknown_override_key_suggests_close_matches():
    with pytest.raises(TrainConfigError, match=r"'mesh\.fsdb'.*did you mean mesh\.fsdp"):
        load_config(None, ["model.preset=tiny", "train.steps=1", "mesh.fsdb=4"])
    with pytest.raises(TrainConfigError, match=r"'optimiser'.*optimizer"):
        load_config(None, ["model.preset=tiny", "train.steps=1", "optimiser.learning_rate=1"])


def test_wrong_types_and_choices_are_named():
    with pytest.raises(TrainConfigError, match=r"train\.steps: expected an integer, got 'many'"):
        load_config(None, ["model.preset=tiny", "train.steps=many"])
    with pytest.raises(TrainConfigError, match=r"model\.remat_policy: must be one of .*'full'"):
        load_config(None, ["model.preset=tiny", "train.steps=1", "model.remat_policy=ful"])
    with pytest.raises(TrainConfigError, match=r"model\.preset: unknown preset 'tiyn'.*tiny"):
        load_config(None, ["model.preset=tiyn", "train.steps=1"])


def test_length_is_steps_or_epochs_not_both():
    with pytest.raises(TrainConfigError, match="exactly one"):
        load_config(None, ["model.preset=tiny", "train.steps=1", "train.epochs=2"])


def test_resolved_config_round_trips_through_yaml():
    cfg = load_config(os.path.join(CONFIGS, "tiny_cpu.yaml"), ["train.steps=7"])
    assert config_from_yaml_text(dump_config(cfg)) == cfg


@pytest.mark.parametrize("name,lr,min_lr,schedule,warmup,batch", [
    ("semcoder_6.7b_pyx.yaml", 5e-5, 5e-6, "cosine_with_min_lr", 5, 512),
    ("semcoder_6.7b_pyxr.yaml", 1e-5, None, "cosine", 5, 512),
])
def test_release_recipe_presets_carry_the_papers_hyperparameters(name, lr, min_lr, schedule, warmup, batch):
    cfg = load_config(os.path.join(CONFIGS, name))
    o = cfg.optimizer
    assert (o.learning_rate, o.min_lr, o.schedule, o.warmup_steps) == (lr, min_lr, schedule, warmup)
    assert (o.b1, o.b2, o.eps, o.weight_decay) == (0.9, 0.999, 1e-8, 0.0)
    assert cfg.train.global_batch == batch and cfg.train.epochs == 2 and cfg.data.seq_len == 2048
    assert cfg.model.dtype == "bfloat16"
