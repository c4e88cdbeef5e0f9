"""Nothing silently wrong: checkpoints verified against their manifests, damaged steps set aside, non-finite
states never committed, a full disk reported in one line."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from semcoder_jax import integrity
from semcoder_jax.cli import main as semcoder
from semcoder_jax.train import checkpoint as ckpt_lib
from semcoder_jax.train.loop import RunError, train


def largest_data_file(step_dir: str, item: str = "params") -> str:
    files = [f for f in glob.glob(os.path.join(step_dir, item, "**", "*"), recursive=True)
             if os.path.isfile(f) and "/d/" in f]
    return max(files, key=os.path.getsize)


def invert_64_bytes(path: str) -> None:
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    open(path, "wb").write(bytes(data))


def copy_64_bytes_within(path: str) -> None:
    """Overwrite 64 bytes with 64 others of the same file (other finite weights, in a raw layout)."""
    data = bytearray(open(path, "rb").read())
    src, dst = len(data) // 4, len(data) // 2
    data[dst:dst + 64] = data[src:src + 64]
    open(path, "wb").write(bytes(data))


@pytest.fixture(scope="module")
def ten_steps(tmp_path_factory, th):
    """A finished 10-step run with checkpoints at 5 and 10 (copied by each test that damages it)."""
    run_dir = str(tmp_path_factory.mktemp("ten"))
    train(th.tiny_config("train.steps=10"), run_dir=run_dir)
    return run_dir


def copy_run(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def test_every_step_carries_a_manifest_that_verifies(ten_steps, capsys):
    assert semcoder(["checkpoint", "verify", ten_steps]) == 0
    out = capsys.readouterr().out
    assert "step 10: ok" in out and "step 5: ok" in out and "2 ok, 0 corrupt, 0 unverifiable" in out
    manifest = json.load(open(os.path.join(ten_steps, "checkpoints", "10", "manifest", "metadata")))
    assert manifest["algorithm"] in integrity.ALGORITHMS
    assert "params/embedding" in manifest["arrays"] and any(k.startswith("opt_state/") for k in manifest["arrays"])


@pytest.mark.parametrize("damage", [invert_64_bytes, copy_64_bytes_within])
def test_damaged_array_data_is_detected_set_aside_and_training_goes_on(th, ten_steps, tmp_path, capsys, damage):
    run_dir = copy_run(ten_steps, tmp_path / "run")
    step_dir = os.path.join(run_dir, "checkpoints", "10")
    damage(largest_data_file(step_dir))
    assert semcoder(["checkpoint", "verify", run_dir]) == 1
    out = capsys.readouterr().out
    assert "step 10: corrupt" in out and "step 5: ok" in out
    resumed = train(th.tiny_config("train.steps=12"), run_dir=run_dir)
    err = capsys.readouterr().err
    assert "checkpoints/10 is damaged" in err and "corrupt-10-" in err
    assert resumed.start_step == 5 and resumed.final_step == 12
    steps = ckpt_lib.Checkpointer(ckpt_lib.checkpoints_dir(run_dir)).steps()
    assert 10 in steps and 12 in steps  # saved again over the same step number
    assert glob.glob(os.path.join(run_dir, "checkpoints", "corrupt-10-*", "params"))  # moved aside, not deleted
    assert semcoder(["checkpoint", "verify", run_dir]) == 0


def test_damaged_metadata_is_detected(ten_steps, tmp_path, capsys):
    run_dir = copy_run(ten_steps, tmp_path / "run")
    meta_file = os.path.join(run_dir, "checkpoints", "10", "meta", "metadata")
    meta = json.load(open(meta_file))
    meta["rng"][0] ^= 1  # a valid JSON file, one bit different
    json.dump(meta, open(meta_file, "w"))
    assert semcoder(["checkpoint", "verify", run_dir, "--step", "10"]) == 1
    assert "meta: content differs from the manifest" in capsys.readouterr().out


def test_a_step_without_manifest_is_unverifiable_not_corrupt(ten_steps, tmp_path, capsys):
    run_dir = copy_run(ten_steps, tmp_path / "run")
    shutil.rmtree(os.path.join(run_dir, "checkpoints", "5", "manifest"))
    assert semcoder(["checkpoint", "verify", run_dir]) == 0
    assert "step 5: unverifiable: no manifest" in capsys.readouterr().out


def test_when_no_step_verifies_the_error_says_so(th, ten_steps, tmp_path):
    run_dir = copy_run(ten_steps, tmp_path / "run")
    for step in (5, 10):
        invert_64_bytes(largest_data_file(os.path.join(run_dir, "checkpoints", str(step))))
    with pytest.raises(ckpt_lib.CheckpointError, match=r"no checkpoint restores and matches its manifest"):
        train(th.tiny_config("train.steps=12"), run_dir=run_dir)


def test_conversion_refuses_a_damaged_step_and_writes_nothing(ten_steps, tmp_path, capsys):
    run_dir = copy_run(ten_steps, tmp_path / "run")
    invert_64_bytes(largest_data_file(os.path.join(run_dir, "checkpoints", "10")))
    out = tmp_path / "hf"
    assert semcoder(["convert", "orbax-to-hf", "--ckpt", run_dir, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoints/10" in err and ("damaged" in err or "cannot be read" in err)
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
    assert semcoder(["convert", "orbax-to-hf", "--ckpt", os.path.join(run_dir, "checkpoints", "5"),
                     "--out", str(out)]) == 0


def test_a_huge_learning_rate_stops_at_the_first_nonfinite_step_and_commits_no_nan(th, tmp_path):
    run_dir = str(tmp_path / "run")
    with pytest.raises(RunError, match=r"step 2: the loss \(nan\) or gradient norm \(nan\) is not finite"):
        train(th.tiny_config("train.steps=10", "optimizer.learning_rate=1e30", "optimizer.warmup_steps=0",
                             "checkpoint.every=1"), run_dir=run_dir)
    for step, status, problems in ckpt_lib.verify_run(run_dir):
        assert status == "ok", (step, problems)
    assert ckpt_lib.Checkpointer(ckpt_lib.checkpoints_dir(run_dir)).steps() == [1]


def test_skip_policy_skips_and_counts_nonfinite_steps(th, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    train(th.tiny_config("train.steps=6", "optimizer.learning_rate=1e30", "optimizer.warmup_steps=0",
                         "train.nonfinite=skip", "checkpoint.every=3"), run_dir=run_dir)
    records = [r for r in th.read_metrics(run_dir) if "loss" in r]
    assert records[-1]["skipped_steps"] == 5 and "the update was skipped (5 so far)" in capsys.readouterr().err
    for step, status, problems in ckpt_lib.verify_run(run_dir):
        assert status == "ok", (step, problems)


def test_a_state_holding_nan_is_never_committed(tmp_path):
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "ckpts"))
    params = {"w": np.array([1.0, np.nan], np.float32)}
    with pytest.raises(ckpt_lib.NonFiniteState, match=r"step 3: the parameters or optimizer state hold NaN"):
        checkpointer.save(3, params, {"mu": np.zeros(2, np.float32)}, {"step": 3})
    checkpointer.close()
    assert checkpointer.steps() == [] and not os.listdir(tmp_path / "ckpts")


def test_digests_do_not_depend_on_sharding_or_blocks():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16, 4)).astype(np.float32)
    summed, _, _ = integrity.tree_digests({"x": jax.numpy.asarray(x)}, integrity.SUM)
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("a", "b")))
    assert integrity.tree_digests({"x": sharded}, integrity.SUM)[0] == summed
    for algorithm in integrity.ALGORITHMS:
        whole = integrity.digest_array(x, algorithm)
        blocks = integrity.BlockDigest(algorithm)
        for start in range(0, 8, 3):
            blocks.add(x[start:start + 3])
        assert blocks.hexdigest() == whole
        swapped = x.copy()
        swapped[1, 2, 3], swapped[5, 6, 0] = x[5, 6, 0], x[1, 2, 3]
        assert integrity.digest_array(swapped, algorithm) != whole
    assert summed["x"]["digest"] == integrity.digest_array(x, integrity.SUM)


DISK_FULL = r"""
import sys
sys.path.insert(0, sys.argv[3])
from semcoder_jax.cli import main
sys.exit(main(["train", "--run-dir", sys.argv[1], *sys.argv[4:]]))
"""


@pytest.mark.parametrize("async_save", ["true", "false"])
def test_a_full_disk_is_one_line_removes_the_partial_step_and_the_run_resumes(th, tmp_path, async_save):
    """A real full filesystem: a 4 MB tmpfs holds the first checkpoint (2.4 MB) but not the second."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root to mount a small filesystem")
    small = tmp_path / "small"
    small.mkdir()
    out = tmp_path / "after"
    repo = os.path.join(os.path.dirname(__file__), "..", "..")
    args = [*th.BASE, "train.steps=8", "checkpoint.every=4", "run.progress=false",
            f"checkpoint.async_save={async_save}"]
    script = (f'mount -t tmpfs -o size=4m tmpfs {small} && "$0" -c \'{DISK_FULL}\' {small}/run x {repo} '
              + " ".join(f"'{a}'" for a in args) + f"; code=$?; cp -a {small}/run {out}; exit $code")
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script, sys.executable], capture_output=True,
                          text=True, timeout=600, env=th.subprocess_env())
    lines = [line for line in proc.stderr.strip().splitlines() if "host malloc" not in line]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "needs about" in lines[0], lines
    assert "step 4 is intact" in lines[0]
    leftovers = [n for n in os.listdir(out / "checkpoints") if not n.isdigit()]
    assert leftovers == [], leftovers
    assert [s for s, status, _ in ckpt_lib.verify_run(str(out)) if status == "ok"] == [4]
    resumed = train(th.tiny_config("train.steps=8", "checkpoint.every=4"), run_dir=str(out))
    assert resumed.start_step == 4 and resumed.final_step == 8
