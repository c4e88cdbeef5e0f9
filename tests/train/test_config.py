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
    cfg = load_config(os.path.join(CONFIGS, "tiny_cpu.yaml"), ["train.steps=17"])
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


@pytest.mark.parametrize("override,says", [
    ("optimizer.learning_rate=inf", "optimizer.learning_rate: must be a finite number, got inf"),
    ("optimizer.learning_rate=nan", "optimizer.learning_rate: must be a finite number, got nan"),
    ("optimizer.learning_rate=-1e-3", "optimizer.learning_rate: must be positive"),
    ("optimizer.learning_rate=1e39", "optimizer.learning_rate: must be positive and below float32's maximum"),
    ("optimizer.min_lr=.nan", "optimizer.min_lr: must be a finite number"),
    ("optimizer.warmup_steps=500", "optimizer.warmup_steps: must not exceed train.steps=150"),
    ("optimizer.b2=1.5", "optimizer.b2: must lie in [0, 1)"),
    ("optimizer.eps=0", "optimizer.eps: must be positive"),
    ("optimizer.grad_clip=0", "optimizer.grad_clip: must be positive or null"),
    ("train.z_loss=-1", "train.z_loss: must be >= 0"),
    ("train.steps=abc", "train.steps: expected an integer, got 'abc'"),
    ("mesh.fsdp=0", "mesh.fsdp: must be a positive size or -1"),
    ("data.eval_fraction=1.5", "data.eval_fraction: must lie in [0, 1)"),
])
def test_bad_values_are_refused_naming_the_override_they_came_from(override, says):
    with pytest.raises(TrainConfigError) as e:
        load_config(os.path.join(CONFIGS, "tiny_cpu.yaml"), [override])
    assert str(e.value) == f"override {override!r}: {says}" or str(e.value).startswith(f"override {override!r}: {says}")


def test_bad_values_in_a_file_are_refused_naming_its_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: tiny\ntrain:\n  steps: 10\noptimizer:\n  learning_rate: .inf\n")
    with pytest.raises(TrainConfigError, match=r"run\.yaml:6: optimizer\.learning_rate: must be a finite number"):
        load_config(path)
    path.write_text("model:\n  preset: tiny\ntrain:\n  steps: 10\noptimizer:\n  warmup_steps: 20\n")
    with pytest.raises(TrainConfigError, match=r"run\.yaml:6: optimizer\.warmup_steps: must not exceed"):
        load_config(path)


def test_a_value_the_override_replaced_is_not_blamed_on_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: tiny\ntrain:\n  steps: 10\n")
    with pytest.raises(TrainConfigError, match=r"^override 'train.steps=-3': train\.steps: must be positive"):
        load_config(path, ["train.steps=-3"])


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: tiny\ntrain:\n  steps: 10\n  global_batch: 8\n  steps: 20\n")
    with pytest.raises(TrainConfigError, match=r"run\.yaml:6: duplicate key 'train\.steps' \(first given at line 4\)"):
        load_config(path)


def test_an_integer_override_of_a_string_field_is_read_as_its_digits():
    """SLURM's per-GPU mode passes ``distributed.local_device_ids=$SLURM_LOCALID``, e.g. ``=0``."""
    from semcoder_jax.train.config import load_config

    assert load_config(None, ["model.preset=tiny", "train.steps=1", "distributed.local_device_ids=0"]).distributed.local_device_ids == "0"
    assert load_config(None, ["model.preset=tiny", "train.steps=1", "distributed.local_device_ids=0,1"]).distributed.local_device_ids == "0,1"
