"""A run on gs:// (a local GCS emulator): data, tokenizer, run directory, export and scores in the bucket give
the run on local disk, through a kill and a resume; steps committed by Orbax's marker objects, metrics and
TensorBoard events in the bucket, damaged steps copied aside, two processes saving to one directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from semcoder_jax import locations
from semcoder_jax.cli import main as semcoder
from semcoder_jax.train import checkpoint as ckpt_lib
from semcoder_jax.train.loop import train

STEPS = ("train.steps=10",)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def remote_metrics(run_dir: str) -> list[dict]:
    target = locations.path(locations.join(run_dir, "metrics.jsonl"))
    return [json.loads(line) for line in target.read_text().splitlines() if line.strip()] if target.exists() else []


TINY = ["--config", os.path.join(REPO, "launch", "configs", "tiny_cpu.yaml"), "train.steps=8", "optimizer.warmup_steps=2", "checkpoint.every=4",
        "train.log_every=1", "train.eval_every=4", "train.eval_batches=1", "data.seq_len=128", "run.progress=false"]
EVAL = ["--benchmark", "cruxeval-o", "--mode", "monologue", "--limit", "4", "--max-new-tokens", "12",
        "--batch-size", "4", "--backend", "hf"]


def test_the_tiny_config_on_gs_killed_resumed_exported_and_scored_equals_the_local_run(
        th, gcs_bucket, gcs_emulator, tmp_path, capsys):
    """Data, tokenizer, run directory, export and eval output all on gs://: the same losses, weights and
    scores as the same run on local disk, through a SIGKILL and a resume."""
    from data_pipeline import sample

    data, tokenizer = f"{gcs_bucket}/pyx", f"{gcs_bucket}/tokenizer"
    locations.upload_tree(str(sample.sample_data_dir()), data)
    locations.upload_tree(str(sample.sample_tokenizer_dir()), tokenizer)
    local = tmp_path / "local"
    assert semcoder(["train", *TINY, "--run-dir", str(local / "run"), "--export-hf", str(local / "hf")]) == 0

    run_dir, remote_data = f"{gcs_bucket}/runs/tiny", [f"data.path={data}", f"data.tokenizer={tokenizer}"]
    proc = subprocess.Popen([sys.executable, "-m", "semcoder_jax.cli", "train", *TINY, "--run-dir", run_dir,
                             *remote_data], env=th.subprocess_env(), cwd=th.REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    committed = locations.path(f"{run_dir}/checkpoints/4/commit_success.txt")
    while not committed.exists():  # Orbax's marker: step 4 is complete
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(r["step"] for r in remote_metrics(run_dir)) < 8, "the kill came too late to test resuming"

    export = f"{gcs_bucket}/hf"
    assert semcoder(["train", *TINY, "--run-dir", run_dir, *remote_data, "--export-hf", export]) == 0
    assert "resuming gs://" in capsys.readouterr().err
    records, local_records = remote_metrics(run_dir), th.read_metrics(str(local / "run"))
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 9))  # none lost, none twice
    assert [(r["step"], r.get("loss"), r.get("eval_loss")) for r in records] == [
        (r["step"], r.get("loss"), r.get("eval_loss")) for r in local_records]  # bit-identical to local disk

    with tempfile.TemporaryDirectory() as copy:
        locations.download_tree(export, copy)
        assert sorted(os.listdir(copy)) == sorted(os.listdir(local / "hf"))
        for name in os.listdir(copy):
            assert open(os.path.join(copy, name), "rb").read() == (local / "hf" / name).read_bytes(), name
    objects = gcs_emulator.objects(gcs_bucket[5:], "runs/tiny/")
    assert {"runs/tiny/config.yaml", "runs/tiny/tokenizer/tokenizer.json", "runs/tiny/checkpoints/4/commit_success.txt",
            "runs/tiny/checkpoints/8/commit_success.txt"} <= set(objects)
    assert not [o for o in objects if "orbax-checkpoint-tmp" in o]  # committed by marker, nothing to rename
    assert [status for _, status, _ in ckpt_lib.verify_run(run_dir)] == ["ok", "ok"]
    with tempfile.TemporaryDirectory() as events:  # TensorBoard's files, in the bucket, hold the records
        import tensorflow as tf

        locations.download_tree(f"{run_dir}/tensorboard", events)
        steps = {e.step for name in os.listdir(events)
                 for e in tf.compat.v1.train.summary_iterator(os.path.join(events, name))
                 if any(v.tag == "loss" for v in e.summary.value)}
        assert steps == set(range(1, 9))

    assert semcoder(["eval", "--model", export, *EVAL, "--out", f"{gcs_bucket}/eval"]) == 0
    assert semcoder(["eval", "--model", str(local / "hf"), *EVAL, "--out", str(local / "eval")]) == 0
    scored = json.loads(locations.path(f"{gcs_bucket}/eval/summary.json").read_text())["cruxeval-o"]
    local_scored = json.loads((local / "eval" / "summary.json").read_text())["cruxeval-o"]
    assert scored.pop("source")["fingerprint"] == local_scored.pop("source")["fingerprint"]  # the same weights
    assert scored == local_scored
    samples = locations.path(f"{gcs_bucket}/eval/cruxeval-o.jsonl").read_text().splitlines()
    assert [json.loads(x)["raw"] for x in samples] == [
        json.loads(x)["raw"] for x in (local / "eval" / "cruxeval-o.jsonl").read_text().splitlines()]


@pytest.mark.slow  # a second run from a damaged step: ~7 s; the default suite keeps the gs:// must-shows
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
