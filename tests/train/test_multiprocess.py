"""Two processes on 127.0.0.1 (jax.distributed, CPU collectives, 4 devices each) train like one 8-device process."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from semcoder_jax.train.loop import train

MESH = ("mesh.data=2", "mesh.fsdp=4", "mesh.tensor=1", "train.steps=5")


@pytest.mark.slow  # two interpreters compiling a multi-process program: about a minute on 2 cores
def test_two_processes_match_one_eight_device_process(th, tmp_path):
    port = th.free_port()
    run_dir = str(tmp_path / "two")
    procs = [th.start_train(run_dir, *MESH, devices=4,
                            extra=["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)])
             for i in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    one_dir = str(tmp_path / "one")
    train(th.tiny_config(*MESH), run_dir=one_dir)
    two = th.train_losses(th.read_metrics(run_dir))
    one = th.train_losses(th.read_metrics(one_dir))
    assert sorted(two) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([two[s] for s in range(1, 6)], [one[s] for s in range(1, 6)], rtol=1e-5)
    # both processes' data positions went into the checkpoint
    from semcoder_jax.train import checkpoint as ckpt_lib

    meta = ckpt_lib.Checkpointer(ckpt_lib.checkpoints_dir(run_dir)).restore_meta(5)
    assert len(meta["data_state"]) == 2
    # the manifest was digested where the shards live (layout-independent sums) and the files verify
    with open(os.path.join(ckpt_lib.checkpoints_dir(run_dir), "5", "manifest", "metadata")) as f:
        manifest = json.load(f)
    assert manifest["algorithm"] == "fmix32x2-sum"
    assert [status for _, status, _ in ckpt_lib.verify_run(run_dir)] == ["ok"]
    # and both processes verify what they restore when the run goes on
    port = th.free_port()
    procs = [th.start_train(run_dir, *MESH[:-1], "train.steps=6", devices=4,
                            extra=["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)])
             for i in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        assert "damaged" not in err and "no manifest" not in err, err[-3000:]
    assert sorted(th.train_losses(th.read_metrics(run_dir))) == [1, 2, 3, 4, 5, 6]
