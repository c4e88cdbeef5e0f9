"""The data side of a run: held-out loss that does not depend on the batch size or the host count, and a
data position that survives a resize and refuses other data."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from data_pipeline.sample import sample_data_dir
from semcoder_jax import sharding as shd
from semcoder_jax.cli import main
from semcoder_jax.config import get_preset
from semcoder_jax.model import init_params
from semcoder_jax.train import step as st
from semcoder_jax.train.config import DataSection
from semcoder_jax.train.data import build_sources
from semcoder_jax.train.loop import evaluate

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "launch", "configs", "tiny_cpu.yaml")
SMALL = ["data.seq_len=128", "data.max_truncated=1", "train.global_batch=8", "optimizer.warmup_steps=0",
         "run.progress=false", "run.tensorboard=false", "train.eval_every=0", "checkpoint.async_save=false"]


def test_the_held_out_loss_is_the_same_for_global_batch_4_8_and_16():
    model = get_preset("tiny", vocab_size=1024, dtype="float32", param_dtype="float32")
    mesh = shd.build_mesh({"data": 1}, jax.devices()[:1])
    params = init_params(model, jax.random.key(0))
    eval_fn = jax.jit(st.make_eval_step(model, mesh))
    data = DataSection(seq_len=256, eval_fraction=0.05, length_sample=64)
    results = []
    for global_batch in (4, 8, 16):
        sources = build_sources(data, global_batch=global_batch, vocab_size=1024, seed=0, process_index=0,
                                process_count=1)
        results.append(evaluate(eval_fn, params, sources, mesh, global_batch=global_batch, seq_len=256))
        sources.train.close()
    assert [r["eval_tokens"] for r in results] == [results[0]["eval_tokens"]] * 3
    np.testing.assert_allclose([r["eval_loss"] for r in results], results[0]["eval_loss"], rtol=2e-6)
    for task in ("nl2code", "exec_i", "exec_o", "refine"):
        np.testing.assert_allclose([r[f"eval_loss/{task}"] for r in results], results[0][f"eval_loss/{task}"],
                                   rtol=2e-6)
    assert [r["eval_steps"] for r in results] == [-(-results[0]["eval_steps"] * 4 // b) for b in (4, 8, 16)] or \
        results[0]["eval_steps"] > results[2]["eval_steps"]
    capped = evaluate(eval_fn, params, sources, mesh, global_batch=16, seq_len=256, cap=1)
    assert capped["eval_cap"] == 1 and capped["eval_steps"] == 1 and capped["eval_tokens"] < results[2]["eval_tokens"]


def test_a_run_resumed_with_a_doubled_global_batch_says_so_and_goes_on(tmp_path, capsys):
    run = ["train", "--config", CONFIG, "--run-dir", str(tmp_path / "run"), *SMALL]
    assert main(run + ["train.steps=2", "checkpoint.every=2"]) == 0
    state = _saved_positions(tmp_path / "run", 2)
    assert state[0]["batches"] == 2 and state[0]["batch_size"] == 8
    capsys.readouterr()
    assert main(run + ["train.steps=4", "checkpoint.every=2", "train.global_batch=16"]) == 0
    err = capsys.readouterr().err
    assert "data position: continuing epoch 0 with 8 -> 16 rows per host per step" in err
    after = _saved_positions(tmp_path / "run", 4)
    assert after[0]["batch_size"] == 16 and after[0]["batches"] == 4


def test_resuming_on_other_data_is_refused_until_the_data_is_reset_on_purpose(tmp_path, capsys):
    run = ["train", "--config", CONFIG, "--run-dir", str(tmp_path / "run"), *SMALL]
    assert main(run + ["train.steps=2", "checkpoint.every=2"]) == 0
    capsys.readouterr()
    other = f"data.path={sample_data_dir()}/pyx_r_sample.jsonl.gz"
    assert main(run + ["train.steps=3", "checkpoint.every=3", other]) == 1
    err = capsys.readouterr().err
    assert "the file list (saved: pyx_r_sample.jsonl.gz (" in err and "pyx_sample.jsonl.gz" in err
    assert "add data.reset_position=true" in err and len(err.strip().splitlines()) <= 3
    assert main(run + ["train.steps=3", "checkpoint.every=3", other, "data.reset_position=true"]) == 0
    assert "the data starts again from its beginning" in capsys.readouterr().err
    assert _saved_positions(tmp_path / "run", 3)[0]["batches"] == 1


def _saved_positions(run_dir, step) -> list[dict]:
    from semcoder_jax.train import checkpoint as ckpt_lib

    return ckpt_lib.Checkpointer(ckpt_lib.checkpoints_dir(str(run_dir))).restore_meta(step)["data_state"]


def _launch(th, run_dir, processes, devices, *overrides, timeout=300):
    port = th.free_port()
    procs = [th.start_train(run_dir, *overrides, devices=devices,
                            extra=["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                                   "--process-id", str(i)]) for i in range(processes)]
    outputs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return outputs[0][1]


@pytest.mark.slow  # three multi-process runs: a few minutes on 2 cores
def test_two_processes_resume_on_one_and_on_four_with_uneven_held_out_shards(th, tmp_path):
    run_dir = str(tmp_path / "run")
    pyx = ["data.source=pyx", "model.vocab_size=1024", "data.seq_len=128", "data.max_truncated=1",
           "data.eval_fraction=0.05", "train.eval_every=2", "data.pipeline.window_size=256"]
    # the held-out split is 41 records: one window, so host 1 of 2 has no eval batch and must still step along
    _launch(th, run_dir, 2, 2, *pyx, "mesh.data=4", "train.steps=4", "checkpoint.every=2")
    two = _saved_positions(run_dir, 4)
    assert [s["host"] for s in two] == [0, 1] and all(s["hosts"] == 2 for s in two)
    evals = [r for r in th.read_metrics(run_dir) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(r["eval_tokens"] > 0 for r in evals)
    from semcoder_jax.train.loop import train

    err = _run_inline(train, th, run_dir, *pyx, "train.steps=6", "checkpoint.every=2")
    assert "data position: continuing epoch 0 with 2 -> 1 hosts" in err
    err = _launch(th, run_dir, 4, 1, *pyx, "mesh.data=4", "train.steps=8", "checkpoint.every=2",
                  "train.global_batch=16")
    assert "1 -> 4 hosts" in err and "8 -> 4 rows per host per step" in err
    four = _saved_positions(run_dir, 8)
    assert len(four) == 4 and all(s["batches"] == 8 for s in four)
    assert sorted(r["step"] for r in th.read_metrics(run_dir) if "loss" in r) == list(range(1, 9))


def _run_inline(train, th, run_dir, *overrides):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "semcoder_jax.cli", "train", "--run-dir", run_dir, *th.BASE,
                           *overrides], env=th.subprocess_env(1), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def test_saved_positions_are_a_few_numbers(tmp_path):
    """The position travels in every checkpoint's meta: ranges, not lists of windows."""
    from data_pipeline.order import EpochPlan

    plan = EpochPlan(3, tuple(range(1, 4001, 4)), {1: 7})
    assert len(json.dumps(plan.to_json())) < 80 and EpochPlan.from_json(plan.to_json()) == plan
