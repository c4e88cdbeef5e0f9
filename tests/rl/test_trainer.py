"""``semcoder train`` with ``rl.tasks``: the supervised warm-up, then GRPO in RUN_DIR/grpo with the run's
layout; a run stopped mid-way and run again ends with the same records as one that was never stopped."""

from __future__ import annotations

import json

import pytest

from semcoder_jax.train.config import load_config

OVERRIDES = ["train.steps=20", "train.log_every=10", "checkpoint.every=20", "rl.steps=4", "rl.prompts_per_step=2",
             "rl.group_size=4", "rl.max_new_tokens=12", "rl.slots=8", "rl.checkpoint_every=2", "rl.log_every=1",
             "run.tensorboard=false", "rl.kl_coef=0.05",
             "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "rl.micro_batches=2"]  # sharded, accumulating: 8 CPU devices


def _config(run_dir, *extra):
    return load_config("launch/configs/grpo_tiny_cpu.yaml", [*OVERRIDES, f"run.dir={run_dir}", *extra])


def _grpo(config, result, **kwargs):
    from eval.rewards import load_tasks, score
    from semcoder_jax.rl.trainer import run_grpo

    return run_grpo(config, result.run_dir, result.params, result.model, tasks=load_tasks(config.rl.tasks),
                    score=score, **kwargs)


def _records(run_dir):
    from semcoder_jax import locations

    lines = locations.path(f"{run_dir}/grpo/metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("seconds")} for line in lines]


def test_a_stopped_grpo_phase_resumes_to_the_records_of_a_straight_run(tmp_path, gcs_bucket, gcs_emulator):
    """The stopped run lives on gs:// (a local emulator): its warm-up and GRPO checkpoints, metrics and
    tokenizer in the bucket give the records of the straight run on local disk."""
    from semcoder_jax.train.loop import train

    straight = tmp_path / "straight"
    result = train(_config(straight))
    done = _grpo(_config(straight), result)
    assert (done.start_step, done.final_step) == (0, 4)
    records = _records(straight)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"reward_mean", "pass_rate", "pass_rate/forward", "kl", "clip_fraction", "response_tokens",
            "zero_variance_groups", "sample"} <= set(records[0])
    assert sorted(p.name for p in (straight / "grpo" / "checkpoints").iterdir()) == ["2", "4"]

    stopped = f"{gcs_bucket}/runs/stopped"
    first = train(_config(stopped))
    part = _grpo(_config(stopped), first, stop_after=3)
    assert part.final_step == 3
    # A stop (as a preemption) saves its last step; the rerun restores step 3 and runs step 4.
    again = train(_config(stopped))
    assert again.start_step == again.final_step == 20  # the warm-up is finished: restored, not rerun
    resumed = _grpo(_config(stopped), again)
    assert (resumed.start_step, resumed.final_step) == (3, 4)
    assert _records(stopped) == records
    grpo_steps = {o.split("/")[4] for o in gcs_emulator.objects(gcs_bucket[5:], "runs/stopped/grpo/checkpoints/")}
    assert grpo_steps == {"3", "4"}  # checkpoint.keep=2, as on local disk


def test_grpo_settings_are_checked_before_anything_runs(tmp_path):
    from semcoder_jax.train.config import TrainConfigError

    with pytest.raises(TrainConfigError, match="rl.group_size: must be positive, got 0"):
        _config(tmp_path, "rl.group_size=0")
    with pytest.raises(TrainConfigError, match="rl.reward_correct: must exceed rl.reward_wrong=1.0"):
        _config(tmp_path, "rl.reward_wrong=1.0")
    with pytest.raises(TrainConfigError, match=r"rl.micro_batches: must divide rl.prompts_per_step x rl.group_size = 8, got 3"):
        _config(tmp_path, "rl.micro_batches=3")


def test_rollouts_that_do_not_split_over_the_mesh_stop_the_run_before_the_warm_up(tmp_path):
    from semcoder_jax.sharding import MeshError
    from semcoder_jax.train.loop import train

    with pytest.raises(MeshError, match=r"rl.prompts_per_step x rl.group_size = 6 must be a multiple of data x fsdp x rl.micro_batches = 4 x 2"):
        train(_config(tmp_path / "run", "rl.group_size=3"))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_killed_grpo_run_resumes_to_the_records_of_a_straight_run(tmp_path):
    """SIGKILL mid-GRPO (no chance to save): the rerun restores the last periodic checkpoint, drops the
    records after it and ends with exactly the straight run's records."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from semcoder_jax.train.loop import train

    extra = ["rl.steps=6"]
    straight = tmp_path / "straight"
    _grpo(_config(straight, *extra), train(_config(straight, *extra)))
    expected = _records(straight)
    assert [r["step"] for r in expected] == [1, 2, 3, 4, 5, 6]

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "semcoder_jax.cli", "train", "--config", "launch/configs/grpo_tiny_cpu.yaml",
               *OVERRIDES, *extra, f"run.dir={killed}"]
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(command, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    metrics = killed / "grpo" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = len(metrics.read_text().splitlines())
    assert 3 <= at_kill < 6

    rerun = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "GRPO resumes after step" in rerun.stderr
    assert _records(killed) == expected
