"""A run directory on gs:// (a local GCS emulator): the same run as on local disk, killed and resumed exactly,
committed with Orbax's marker files, metrics and TensorBoard events in the bucket, damaged steps set aside,
two processes saving to one directory, and the errors a cloud user meets before any work."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from semcoder_jax import locations
from semcoder_jax.convert import resolve_params_checkpoint, restore_params
from semcoder_jax.train import checkpoint as ckpt_lib
from semcoder_jax.train.loop import train

STEPS = ("train.steps=10",)


def remote_metrics(run_dir: str) -> list[dict]:
    target = locations.path(locations.join(run_dir, "metrics.jsonl"))
    return [json.loads(line) for line in target.read_text().splitlines() if line.strip()] if target.exists() else []


def params_of(run_dir: str):
    _, config, params_dir = resolve_params_checkpoint(run_dir)
    return restore_params(params_dir, config)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, th):
    run_dir = str(tmp_path_factory.mktemp("local"))
    train(th.tiny_config(*STEPS), run_dir=run_dir)
    return run_dir, th.train_losses(th.read_metrics(run_dir))


def test_a_run_on_gs_killed_and_resumed_equals_the_run_on_local_disk(th, gcs_bucket, gcs_emulator, local_run):
    local_dir, local_losses = local_run
    run_dir = f"{gcs_bucket}/runs/tiny"
    proc = th.start_train(run_dir, *STEPS, "run.tensorboard=true")
    deadline = time.time() + 180
    while not any(r["step"] >= 5 for r in remote_metrics(run_dir)):  # flushed with the step-5 checkpoint
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint within 180 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(r["step"] for r in remote_metrics(run_dir))
    assert killed_at < 10, "the kill came too late to test resuming"

    resumed = train(th.tiny_config(*STEPS), run_dir=run_dir)
    assert 5 <= resumed.start_step < 10 and resumed.final_step == 10
    records = remote_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, 11))  # no step lost or logged twice
    assert th.train_losses(records) == local_losses  # bit-identical to the local run
    for a, b in zip(jax.tree.leaves(params_of(run_dir)), jax.tree.leaves(params_of(local_dir))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    objects = gcs_emulator.objects(gcs_bucket[5:], "runs/tiny/")
    assert "runs/tiny/config.yaml" in objects
    assert {"runs/tiny/checkpoints/5/commit_success.txt", "runs/tiny/checkpoints/10/commit_success.txt"} <= set(objects)
    assert not [o for o in objects if "orbax-checkpoint-tmp" in o]  # committed by marker, nothing left to rename
    events = [o for o in objects if o.startswith("runs/tiny/tensorboard/events.out.tfevents")]
    assert events, "no TensorBoard events in the bucket"
    assert [s for s, status, _ in ckpt_lib.verify_run(run_dir)] == [10, 5] and all(
        status == "ok" for _, status, _ in ckpt_lib.verify_run(run_dir))


def test_tensorboard_events_in_the_bucket_hold_the_logged_scalars(th, gcs_bucket, tmp_path):
    import tensorflow as tf

    run_dir = f"{gcs_bucket}/runs/tb"
    train(th.tiny_config("train.steps=3", "run.tensorboard=true"), run_dir=run_dir)
    locations.download_tree(locations.join(run_dir, "tensorboard"), str(tmp_path))
    steps = set()
    for path in tmp_path.iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            if any(v.tag == "loss" for v in event.summary.value):
                steps.add(event.step)
    assert steps == {1, 2, 3}


def test_a_damaged_step_on_gs_is_copied_aside_and_the_previous_one_resumes(th, gcs_bucket, gcs_emulator, capsys):
    run_dir = f"{gcs_bucket}/runs/damaged"
    train(th.tiny_config(*STEPS), run_dir=run_dir)
    bucket = gcs_bucket[5:]
    data = [o for o in gcs_emulator.objects(bucket, "runs/damaged/checkpoints/10/params/") if "/d/" in o]
    for name in data:  # lose the array data of step 10
        locations.path(f"{gcs_bucket}/{name}").unlink()
    resumed = train(th.tiny_config("train.steps=12"), run_dir=run_dir, max_steps_this_run=1)
    err = capsys.readouterr().err
    assert "checkpoints/10 is damaged" in err and "corrupt-10-" in err
    assert resumed.start_step == 5
    objects = gcs_emulator.objects(bucket, "runs/damaged/checkpoints/")
    kept = [o for o in objects if o.split("/")[3].startswith("corrupt-10-")]
    assert any(o.endswith("params/_METADATA") for o in kept)  # the evidence, copied aside
    assert ckpt_lib.Checkpointer(ckpt_lib.checkpoints_dir(run_dir)).steps() == [5, 6]


TWO_PROCESS_SAVE = textwrap.dedent("""
    import sys
    import jax, numpy as np
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]),
                               cluster_detection_method="deactivate")
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from semcoder_jax.train import checkpoint as ckpt_lib
    mesh = Mesh(np.array(jax.devices()), ("x",))
    sharding = NamedSharding(mesh, P("x"))
    host = {"w": np.arange(32 * 4, dtype=np.float32).reshape(32, 4), "b": np.linspace(-1, 1, 16, dtype=np.float32)}
    params = {k: jax.make_array_from_callback(v.shape, sharding, lambda i, v=v: v[i]) for k, v in host.items()}
    opt = {"m": jax.tree.map(lambda x: x * 2, params)}
    ckpt = ckpt_lib.Checkpointer(sys.argv[3], keep=2)
    ckpt.save(7, params, opt, {"step": 7, "rng": [1, 2]})
    ckpt.wait()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), (params, opt))
    step, p, o, meta = ckpt.restore_latest(*abstract)
    from jax.experimental import multihost_utils
    whole = multihost_utils.process_allgather(p["w"], tiled=True)
    assert step == 7 and meta["rng"] == [1, 2] and np.array_equal(whole, host["w"]), (step, meta)
    ckpt.close()
    print("restored", step, jax.process_index())
""")


def test_two_processes_save_to_one_gs_directory_and_restore(th, gcs_bucket, gcs_emulator):
    port = th.free_port()
    directory = f"{gcs_bucket}/runs/two/checkpoints"
    procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS_SAVE, f"127.0.0.1:{port}", str(i), directory],
                              env=th.subprocess_env(devices=2), cwd=th.REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert sorted(out.strip().splitlines()[-1] for out, _ in outputs) == ["restored 7 0", "restored 7 1"]
    objects = gcs_emulator.objects(gcs_bucket[5:], "runs/two/checkpoints/7/")
    assert any("ocdbt.process_1" in o for o in objects) and any("ocdbt.process_0" in o for o in objects)
    assert "runs/two/checkpoints/7/commit_success.txt" in objects
    assert [status for _, status, _ in ckpt_lib.verify_run(directory)] == ["ok"]
