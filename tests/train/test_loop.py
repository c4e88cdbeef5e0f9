"""The training run: resume exactly after a kill or SIGTERM, onto any mesh; damaged checkpoints; bad input."""

from __future__ import annotations

import os
import shutil
import signal

import jax
import numpy as np
import pytest

from semcoder_jax import sharding as shd
from semcoder_jax.convert import resolve_params_checkpoint, restore_params
from semcoder_jax.errors import UserError
from semcoder_jax.train import checkpoint as ckpt_lib
from semcoder_jax.train.loop import RunError, train


def final_params(run_dir):
    _, config, params_dir = resolve_params_checkpoint(run_dir)
    return restore_params(params_dir, config)


def assert_same_params(a, b, atol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, th):
    """20 uninterrupted steps on the 8-device data-parallel mesh: the reference."""
    run_dir = str(tmp_path_factory.mktemp("straight"))
    result = train(th.tiny_config("train.steps=20", "run.export_dtype=float32"), run_dir=run_dir,
                   export_hf=os.path.join(run_dir, "hf"))
    assert result.final_step == 20
    return run_dir, th.train_losses(th.read_metrics(run_dir))


def test_loss_falls_and_run_directory_has_config_metrics_and_checkpoints(straight_run):
    run_dir, losses = straight_run
    assert losses[20] < losses[1] - 0.1
    assert os.path.exists(os.path.join(run_dir, "config.yaml"))
    assert ckpt_lib.Checkpointer(ckpt_lib.checkpoints_dir(run_dir)).steps() == [5, 10, 15, 20]
    step_dir, config = ckpt_lib.latest_params_step(run_dir)
    assert step_dir.endswith(os.path.join("checkpoints", "20")) and config.num_layers == 2


def test_hard_kill_then_resume_reproduces_the_uninterrupted_run(th, tmp_path, straight_run):
    ref_dir, ref_losses = straight_run
    run_dir = str(tmp_path / "killed")
    proc = th.start_train(run_dir, "train.steps=20")
    th.wait_for_step(run_dir, 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = train(th.tiny_config("train.steps=20"), run_dir=run_dir)
    assert 0 < resumed.start_step < 20, "the kill came too late to test resuming"
    losses = th.train_losses(th.read_metrics(run_dir))
    assert [r["step"] for r in th.read_metrics(run_dir)] == list(range(1, 21))  # no step logged twice
    assert losses == ref_losses  # bit-identical: same data order, same state
    assert_same_params(final_params(run_dir), final_params(ref_dir))


def test_resume_onto_a_different_mesh_shape(th, tmp_path, straight_run):
    _, ref_losses = straight_run
    run_dir = str(tmp_path / "remesh")
    first = train(th.tiny_config("train.steps=20"), run_dir=run_dir, max_steps_this_run=10)
    assert first.final_step == 10
    second = train(th.tiny_config("train.steps=20", "mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2"), run_dir=run_dir)
    assert second.start_step == 10 and second.final_step == 20
    losses = th.train_losses(th.read_metrics(run_dir))
    np.testing.assert_allclose([losses[s] for s in range(1, 21)], [ref_losses[s] for s in range(1, 21)], rtol=1e-5)


def test_sigterm_finishes_the_step_saves_and_resumes_exactly(th, tmp_path):
    run_dir = str(tmp_path / "preempted")
    overrides = ("train.steps=20", "checkpoint.every=100")  # the reference's programs: compiled once
    proc = th.start_train(run_dir, *overrides)
    th.wait_for_step(run_dir, 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]  # EX_TEMPFAIL: unfinished, resumable; a scheduler requeues it
    last = th.read_metrics(run_dir)[-1]["step"]
    assert "stopped by SIGTERM" in err
    assert ckpt_lib.Checkpointer(ckpt_lib.checkpoints_dir(run_dir)).steps() == [last]
    resumed = train(th.tiny_config(*overrides), run_dir=run_dir, max_steps_this_run=2)
    assert resumed.start_step == last
    straight_dir = str(tmp_path / "straight")
    train(th.tiny_config(*overrides), run_dir=straight_dir, max_steps_this_run=last + 2)
    assert th.train_losses(th.read_metrics(run_dir)) == th.train_losses(th.read_metrics(straight_dir))


def test_unreadable_latest_checkpoint_is_set_aside_and_the_previous_used(th, tmp_path, capsys, straight_run):
    _, ref_losses = straight_run
    run_dir = str(tmp_path / "damaged")
    train(th.tiny_config("train.steps=20"), run_dir=run_dir, max_steps_this_run=10)
    params_dir = os.path.join(run_dir, "checkpoints", "10", "params")
    for root, _, files in os.walk(params_dir):  # lose the array data of step 10
        for name in files:
            if "manifest" in name or root.endswith("/d"):
                os.remove(os.path.join(root, name))
    resumed = train(th.tiny_config("train.steps=20"), run_dir=run_dir, max_steps_this_run=7)
    err = capsys.readouterr().err
    assert "checkpoints/10 is damaged" in err and "moved to" in err and "corrupt-10-" in err
    assert resumed.start_step == 5 and resumed.final_step == 12
    assert ckpt_lib.Checkpointer(ckpt_lib.checkpoints_dir(run_dir)).steps()[-2:] == [10, 12]  # 10 saved again
    losses = th.train_losses(th.read_metrics(run_dir))
    assert [losses[6], losses[7], losses[11]] == [ref_losses[6], ref_losses[7], ref_losses[11]]


def _no_compute_happened(run_dir):
    ckpts = os.path.join(run_dir, "checkpoints")
    return not os.path.exists(os.path.join(run_dir, "metrics.jsonl")) and (
        not os.path.isdir(ckpts) or not [n for n in os.listdir(ckpts) if n.isdigit()])


@pytest.mark.parametrize("overrides,error,match", [
    (("mesh.data=3",), shd.MeshError, r"needs 3 devices but 8 are available"),
    (("train.global_batch=12",), shd.MeshError, r"global_batch=12 is not divisible by data x fsdp x micro_batches"),
    (("train.micro_batches=2",), shd.MeshError, r"= 8 x 1 x 2 = 16"),
    (("model.init_from=hf:/nonexistent/dir",), RunError, r"/nonexistent/dir is not a directory"),
    (("model.init_from=orbax:/nonexistent/dir",), RunError, r"is not a directory"),
])
def test_bad_geometry_or_paths_fail_before_any_compute(th, tmp_path, overrides, error, match):
    run_dir = str(tmp_path / "bad")
    with pytest.raises(error, match=match):
        train(th.tiny_config("train.steps=2", *overrides), run_dir=run_dir)
    assert _no_compute_happened(run_dir)


def test_init_from_a_directory_that_is_not_a_checkpoint_or_another_model_fails(th, tmp_path, straight_run):
    ref_dir, _ = straight_run
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunError, match="not an HF model directory"):
        train(th.tiny_config("train.steps=2", f"model.init_from=hf:{empty}"), run_dir=str(tmp_path / "a"))
    with pytest.raises(UserError, match="no training checkpoints|not a native checkpoint"):
        train(th.tiny_config("train.steps=2", f"model.init_from=orbax:{empty}"), run_dir=str(tmp_path / "b"))
    with pytest.raises(RunError, match=r"different architecture .*num_layers: 3 vs 2"):
        train(th.tiny_config("train.steps=2", "model.num_layers=3", f"model.init_from=orbax:{ref_dir}"),
              run_dir=str(tmp_path / "c"))
    assert _no_compute_happened(str(tmp_path / "c"))


def test_resuming_with_a_different_model_shape_is_refused(th, tmp_path, straight_run):
    ref_dir, _ = straight_run
    run_dir = str(tmp_path / "reshaped")
    shutil.copytree(ref_dir, run_dir)
    with pytest.raises(RunError, match=r"resuming a run whose model shape differs .*num_layers: 2 vs 3"):
        train(th.tiny_config("train.steps=30", "model.num_layers=3"), run_dir=run_dir)


def test_export_hf_then_init_from_it_and_from_the_run(th, tmp_path, straight_run):
    from semcoder_jax.convert import load_hf_params

    run_dir, _ = straight_run
    export = os.path.join(run_dir, "hf")
    _, exported = load_hf_params(export)
    assert_same_params(exported, final_params(run_dir))
    # a run initialised from either source starts from exactly those parameters: same first loss
    firsts = []
    for source in (f"hf:{export}", f"orbax:{run_dir}"):
        d = str(tmp_path / source.split(":")[0])
        train(th.tiny_config("train.steps=20", f"model.init_from={source}"), run_dir=d, max_steps_this_run=1)
        firsts.append(th.read_metrics(d)[0]["loss"])
    assert firsts[0] == firsts[1]
    fresh = th.read_metrics(run_dir)[0]["loss"]
    assert firsts[0] < fresh  # trained parameters fit the (same) first batch better than the random init


def test_orbax_to_hf_on_a_training_run_equals_the_export_of_the_run(tmp_path, straight_run):
    """Training checkpoints are sharded OCDBT (not the converter's layout): they convert all the same."""
    from semcoder_jax.cli import main
    from semcoder_jax.convert import HFCheckpoint

    run_dir, _ = straight_run
    out = str(tmp_path / "hf")
    assert main(["convert", "orbax-to-hf", "--ckpt", run_dir, "--out", out, "--dtype", "float32"]) == 0
    exported, converted = HFCheckpoint(os.path.join(run_dir, "hf")), HFCheckpoint(out)
    assert exported.names() == converted.names()
    for name in sorted(exported.names()):
        np.testing.assert_array_equal(exported.read(name), converted.read(name), err_msg=name)


def test_a_metrics_line_torn_by_a_kill_is_dropped_on_resume(th, tmp_path, capsys):
    from semcoder_jax.train.loop import MetricsLog

    log = MetricsLog(str(tmp_path), enabled=True, tensorboard=False)
    log.write({"step": 1, "loss": 2.0})
    log.write({"step": 2, "loss": 1.5})
    with open(log.path, "a") as f:
        f.write('{"step": 3, "lo')
    log.truncate_after(2)
    assert th.read_metrics(str(tmp_path)) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert "dropped 1 incomplete line" in capsys.readouterr().err


def test_profiling_a_window_of_steps_writes_the_trace_and_where_the_time_went(th, tmp_path, straight_run, capsys):
    """``run.profile_steps``: steps 3-4 traced; the run's losses are those of the untraced run."""
    import glob
    import json

    run_dir = str(tmp_path / "profiled")
    train(th.tiny_config("train.steps=20", "run.profile_from=3", "run.profile_steps=2"), run_dir=run_dir,
          max_steps_this_run=6)
    losses = th.train_losses(th.read_metrics(run_dir))
    assert [losses[s] for s in range(1, 7)] == [straight_run[1][s] for s in range(1, 7)]
    parts = json.load(open(os.path.join(run_dir, "profile", "parts.json")))
    assert parts["steps"] == 2 and parts["busy_ms"] > 0
    assert {"mlp", "lm head", "optimizer"} <= {p["part"] for p in parts["parts"]}
    summary = open(os.path.join(run_dir, "profile", "summary.txt")).read()
    assert "slowest" in summary and summary.strip() in capsys.readouterr().err
    assert glob.glob(os.path.join(run_dir, "profile", "process_0", "**", "*.xplane.pb"), recursive=True)


def test_profile_settings_are_checked_up_front(th):
    from semcoder_jax.train.config import TrainConfigError

    with pytest.raises(TrainConfigError, match="run.profile_from: must be >= 1"):
        th.tiny_config("train.steps=5", "run.profile_steps=2", "run.profile_from=0").validate()


def test_a_sigterm_while_the_run_starts_is_not_lost_it_stops_before_the_first_step(th, tmp_path):
    """JAX's preemption notifier (installed by jax.distributed) used to swallow a TERM that came while the run
    compiled or restored; the trainer then trained on.  Now it stops at once with status 75."""
    import os
    import time

    run_dir = str(tmp_path / "run")
    proc = th.start_train(run_dir, "train.steps=20", "checkpoint.every=100")
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(run_dir, "config.yaml")):  # written after restore, before compiling
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    stopped = [line for line in err.splitlines() if "stopped by SIGTERM after step" in line]
    assert stopped and int(stopped[0].split("after step ")[1].split(";")[0]) <= 1
