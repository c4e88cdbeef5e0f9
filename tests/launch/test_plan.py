"""The AOT planner: exact state bytes, a peak within 20 % of the real step's measured peak, a fix
when a run does not fit, and 6.7B reports for real slices in minutes on a laptop-class CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch import plan as plan_lib
from launch.plan_cli import NOT_FIT_EXIT, main
from semcoder_jax.train.config import load_config

REPO = Path(__file__).resolve().parents[2]

# Big enough that the step's buffers dominate the process's own noise (~100 MB on 4 devices).
MEASURED = ["model.preset=tiny", "model.vocab_size=16384", "model.num_layers=4", "model.dtype=float32",
            "data.source=synthetic", "data.seq_len=128", "train.steps=10", "train.global_batch=16"]


def tiny(*overrides: str):
    return load_config(None, ["model.preset=tiny", "model.dtype=float32", "data.source=synthetic", "data.seq_len=64",
                              "train.steps=10", "train.global_batch=16", *overrides])


def test_state_bytes_are_16_bytes_per_parameter_divided_by_fsdp_and_speed_is_flops_at_the_stated_mfu():
    from semcoder_jax.train.step import flops_per_token

    report = plan_lib.plan(tiny("mesh.fsdp=8", "mesh.data=1"), devices=8, device_kind="v5e", mfu=0.5)
    n = report.num_params
    # fp32 params (4) + Adam mu and nu (8) + fp32 gradients (4); norm scales (320 of them) stay replicated
    assert report.params_bytes + report.optimizer_bytes + report.gradient_bytes == pytest.approx(16 * n / 8, rel=0.02)
    assert report.optimizer_bytes == pytest.approx(2 * report.params_bytes, rel=0.001)
    assert report.fits and report.peak_bytes >= report.argument_bytes + report.gradient_bytes
    replicated = plan_lib.plan(tiny("mesh.data=8"), devices=8, device_kind="v5e")
    assert replicated.params_bytes == pytest.approx(4 * n, rel=0.001)  # pure data parallel: a full copy each
    flops = flops_per_token(tiny().model.preset_config(), 64) * 16 * 64
    assert report.step_seconds == pytest.approx(flops / (8 * 197e12 * 0.5))
    assert report.tokens_per_second == pytest.approx(16 * 64 / report.step_seconds)


def plan_and_measure_in_subprocess(overrides: list[str], devices: int) -> tuple[dict, dict]:
    """(plan, measurement) from one fresh process with exactly ``devices`` CPU devices, as `semcoder plan` runs."""
    code = ("import json, sys; from launch.plan import plan, measure_step_peak; "
            "from semcoder_jax.train.config import load_config; c = load_config(None, sys.argv[1:]); "
            f"p = plan(c, devices={devices}, device_kind='v5e', suggest=False).to_dict(); "
            f"print(json.dumps([p, measure_step_peak(c, {devices})]))")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, *overrides], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    predicted, measured = json.loads(out.stdout.strip().splitlines()[-1])
    return predicted, measured


def check_prediction(extra: list[str]) -> None:
    predicted, measured = plan_and_measure_in_subprocess(MEASURED + extra, 4)
    # The state is ~7 MB per device here and the resident-set method has up to ~2 MB of allocator noise
    # (measured 4.92-6.56 MB against 6.86 MB exact; 4.92 under CI's load), so this sanity check is loose;
    # the claim under test is the peak (~100 MB per device) below.
    assert measured["arguments"] == pytest.approx(predicted["argument_bytes"], rel=0.4)
    # within 20 % of the measured peak: |predicted - measured| <= 0.2 x measured
    assert predicted["peak_bytes"] == pytest.approx(measured["peak"], rel=0.2), (measured, predicted["peak_bytes"])


def test_predicted_peak_is_within_20_percent_of_the_measured_peak_of_the_real_step():
    check_prediction(["mesh.fsdp=4", "mesh.data=1"])


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    ["mesh.fsdp=4", "mesh.data=1", "train.micro_batches=2"],
    ["mesh.fsdp=2", "mesh.data=2", "model.remat_policy=full"],
    ["mesh.fsdp=2", "mesh.tensor=2", "mesh.data=1", "model.dtype=bfloat16"],
], ids=" ".join)
def test_predicted_peak_is_within_20_percent_of_the_measured_peak_for_other_layouts(extra):
    check_prediction(extra)


@pytest.mark.slow
def test_a_run_that_does_not_fit_gets_the_cheapest_single_change_that_does(monkeypatch):
    # activations dominate (global batch 128): halving them fits, sharding the small state does not
    shape = ("model.vocab_size=4096", "train.global_batch=128")
    base = tiny(*shape, "mesh.data=8")
    whole = plan_lib.plan(base, devices=8, device_kind="v5e", suggest=False)
    halves = plan_lib.plan(tiny(*shape, "mesh.data=8", "train.micro_batches=2"), devices=8, device_kind="v5e",
                           suggest=False)
    sharded = plan_lib.plan(tiny(*shape, "mesh.data=1", "mesh.fsdp=8"), devices=8, device_kind="v5e", suggest=False)
    assert halves.peak_bytes < whole.peak_bytes
    budget = (whole.peak_bytes + halves.peak_bytes) / 2 / plan_lib.USABLE_FRACTION
    assert sharded.peak_bytes > budget * plan_lib.USABLE_FRACTION, "premise: fsdp alone must not fit"
    monkeypatch.setitem(plan_lib.DEVICE_KINDS, "test", plan_lib.DeviceKind("test chip", int(budget), 1e12, "tpu"))
    report = plan_lib.plan(base, devices=8, device_kind="test")
    assert not report.fits and report.margin_bytes < 0
    # fsdp is tried first (cheapest) but does not fit here; two micro-batches do
    assert "train.micro_batches=2" in report.suggestion
    assert report.suggestion_report.fits and report.suggestion_report.micro_batches == 2
    assert "DOES NOT FIT" in report.format() and "suggestion:" in report.format()


def test_candidate_changes_come_cheapest_first():
    changes = [c for c, _ in plan_lib.candidate_changes(tiny("mesh.data=2", "mesh.fsdp=2"), 4)]
    assert changes[0].startswith("shard parameters") and "mesh.fsdp=4" in changes[0]
    assert [c.split(": ")[1] for c in changes[1:3]] == ["train.micro_batches=2", "train.micro_batches=4"]
    assert [c.split("=")[-1] for c in changes if "remat" in c] == ["dots", "minimal_attention", "minimal", "full"]


def test_cli_simulates_more_devices_than_this_process_has_by_rerunning_itself(capfd):
    status = main(["--devices", "16", "--device-kind", "v5e", "--json", "model.preset=tiny", "data.source=synthetic",
                   "data.seq_len=64", "train.steps=1", "train.global_batch=16", "mesh.fsdp=16", "mesh.data=1"])
    report = json.loads(capfd.readouterr().out)
    assert status == 0 and report["devices"] == 16 and report["mesh"]["fsdp"] == 16 and report["fits"]


@pytest.mark.slow
def test_cli_errors_name_the_bad_key_and_exit_status_says_fit():
    assert main(["--devices", "8", "--device-kind", "v4", "model.presett=tiny"]) == 1
    proc = subprocess.run([sys.executable, "-m", "semcoder_jax.cli", "plan", "--devices", "2", "--device-kind", "v4",
                           "model.preset=tiny", "train.steps=1", "data.source=synthetic", "train.global_batch=2",
                           "model.remat_policy=full"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "FITS" in proc.stdout and "2 x TPU v4" in proc.stdout
    assert NOT_FIT_EXIT == 3


@pytest.mark.slow
@pytest.mark.parametrize("config,devices,kind", [("semcoder_6.7b_v5p-32.yaml", 16, "v5p"),
                                                 ("semcoder_6.7b_8xh100.yaml", 8, "h100")])
def test_6_7b_reports_for_real_slices_in_under_5_minutes(config, devices, kind):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "semcoder_jax.cli", "plan", "--config", f"launch/configs/{config}",
                           "--devices", str(devices), "--device-kind", kind, "--json"], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    elapsed = time.monotonic() - start
    assert proc.returncode in (0, NOT_FIT_EXIT), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert elapsed < 300
    n = report["num_params"]
    assert n == pytest.approx(6.74e9, rel=0.01)
    fsdp = report["mesh"]["fsdp"]
    state = report["params_bytes"] + report["optimizer_bytes"] + report["gradient_bytes"]
    assert state == pytest.approx(16 * n / fsdp, rel=0.01)
    assert report["fits"], "the shipped config fits its target"


def test_the_cpu_attention_kernel_is_refused_for_accelerator_plans():
    with pytest.raises(plan_lib.PlanError, match="attention_impl='cpu' is the CPU kernel"):
        plan_lib.plan(tiny("model.attention_impl=cpu"), devices=1, device_kind="v4")


# ---- compiling with XLA:TPU (no TPU needed; libtpu installed) --------------------------------------


def test_tpu_topologies_grow_from_one_host():
    assert plan_lib.tpu_topology_name("v5e", 4) == "v5e:2x2"
    assert plan_lib.tpu_topology_name("v5e", 8) == "v5e:2x4"
    assert plan_lib.tpu_topology_name("v6e", 64) == "v6e:8x8"
    assert plan_lib.tpu_topology_name("v5p", 4) == "v5p:2x2x1"
    assert plan_lib.tpu_topology_name("v5p", 16) == "v5p:2x2x4"
    assert plan_lib.tpu_topology_name("v5p", 64) == "v5p:4x4x4"
    assert plan_lib.tpu_topology_name("v5p", 128) == "v5p:4x4x8"
    with pytest.raises(plan_lib.PlanError, match="power of two >= 4 chips"):
        plan_lib.tpu_topology_name("v5e", 12)
    assert plan_lib.tpu_topology_name("v4", 32) == "v4:2x4x4"
    with pytest.raises(plan_lib.PlanError, match="'a100-80g' is not one of"):
        plan_lib.tpu_topology_name("a100-80g", 16)


def test_the_tpu_compiler_is_refused_where_it_cannot_serve(monkeypatch):
    with pytest.raises(plan_lib.PlanError, match="h100 is not a TPU"):
        plan_lib.plan(tiny(), devices=4, device_kind="h100", compiler="tpu")
    with pytest.raises(plan_lib.PlanError, match="--topology: only with --compiler tpu"):
        plan_lib.plan(tiny(), devices=4, device_kind="v5e", topology="v5e:2x2")
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real_find_spec(name, *a))
    with pytest.raises(plan_lib.PlanError, match=r"needs libtpu.*pip install 'jax\[tpu\]=="):
        plan_lib.plan(tiny(), devices=4, device_kind="v5e", compiler="tpu")


def test_an_out_of_memory_refusal_of_xla_tpu_gives_the_temporaries():
    gib = 2**30
    refusal = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
               "(57.41G) exceeds available HBM (15.75G).")
    mem = plan_lib._memory_from_tpu_refusal(refusal, 3 * gib)
    assert mem.temp_size_in_bytes == int(57.41 * gib) and mem.argument_size_in_bytes == 3 * gib
    assert mem.output_size_in_bytes == mem.alias_size_in_bytes  # donated state: outputs reuse the arguments
    used = "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 20.5G of 15.75G hbm."
    assert plan_lib._memory_from_tpu_refusal(used, 4 * gib).temp_size_in_bytes == int(16.5 * gib)
    with pytest.raises(plan_lib.PlanError, match="without saying how much"):
        plan_lib._memory_from_tpu_refusal("RESOURCE_EXHAUSTED: something else", gib)


def test_xla_tpu_compiles_the_step_with_the_real_splash_kernel_and_agrees_with_the_cpu_plan():
    """Runs where libtpu is installed (``pip install 'jax[tpu]'``); CI's CPU set-up has no libtpu."""
    pytest.importorskip("libtpu")
    config = tiny("model.attention_impl=splash", "mesh.fsdp=4", "mesh.data=1", "data.seq_len=256")
    on_tpu = plan_lib.plan(config, devices=4, device_kind="v5e", compiler="tpu", suggest=False)
    on_cpu = plan_lib.plan(config, devices=4, device_kind="v5e", suggest=False)
    assert on_tpu.compiler == "tpu" and on_tpu.topology == "v5e:2x2" and on_tpu.fits
    assert on_tpu.params_bytes == on_cpu.params_bytes and on_tpu.optimizer_bytes == on_cpu.optimizer_bytes
    assert on_tpu.argument_bytes >= on_cpu.argument_bytes  # TPU layouts pad small arrays to (8, 128) tiles
    assert "XLA:TPU's own buffer assignment" in on_tpu.format()
    # a run that cannot fit is refused by XLA:TPU, reported as not fitting, with the amount it needed
    big = load_config(None, ["model.preset=deepseek-coder-6.7b", "data.source=synthetic", "data.seq_len=2048",
                             "train.steps=10", "train.global_batch=4", "mesh.fsdp=4", "mesh.data=1",
                             "model.attention_impl=splash"])
    refused = plan_lib.plan(big, devices=4, device_kind="v5e", compiler="tpu", suggest=False)
    assert not refused.fits and refused.temp_bytes > 16 * 2**30
    assert any("XLA:TPU refused" in note for note in refused.notes)
    # v4 chips are megacore: one JAX device each, as on a real slice
    v4 = plan_lib.plan(config, devices=4, device_kind="v4", compiler="tpu", suggest=False)
    assert v4.topology == "v4:2x2x1" and v4.devices == 4 and v4.fits
    with pytest.raises(plan_lib.PlanError, match=r"--topology v5e:3x3: .*chips_per_host_bounds"):
        plan_lib.plan(config, devices=9, device_kind="v5e", compiler="tpu", topology="v5e:3x3")
    with pytest.raises(plan_lib.PlanError, match="--topology v5e:2x4: has 8 JAX devices, not --devices 4"):
        plan_lib.plan(config, devices=4, device_kind="v5e", compiler="tpu", topology="v5e:2x4")


def test_bfloat16_is_compiled_as_float16_for_the_cpu_plan(monkeypatch):
    """Same bytes; XLA:CPU would otherwise gather and multiply bf16 in float32 and over-predict.

    Two layers of the 6.7B shape, where gathered [11008, 4096] weights dominate the temporaries."""
    def config(dtype):
        return load_config(None, ["model.preset=deepseek-coder-6.7b", "model.num_layers=2", f"model.dtype={dtype}",
                                  "model.remat_policy=minimal", "data.source=synthetic", "data.seq_len=512",
                                  "train.steps=10", "train.global_batch=8", "mesh.fsdp=4", "mesh.data=1"])

    bf16 = plan_lib.plan(config("bfloat16"), devices=4, device_kind="h100", suggest=False)
    f16 = plan_lib.plan(config("float16"), devices=4, device_kind="h100", suggest=False)
    assert bf16.dtype == "bfloat16" and bf16.temp_bytes == f16.temp_bytes
    assert any("bfloat16 compiled as float16" in note for note in bf16.notes)
    monkeypatch.setattr(plan_lib, "cpu_stand_in", lambda model: model)
    as_bf16 = plan_lib.plan(config("bfloat16"), devices=4, device_kind="h100", suggest=False)
    assert as_bf16.temp_bytes > 1.1 * bf16.temp_bytes, (as_bf16.temp_bytes, bf16.temp_bytes)


def test_a_cpu_plan_within_its_measured_shortfall_of_the_limit_is_flagged(monkeypatch):
    report = plan_lib.plan(tiny("mesh.fsdp=8", "mesh.data=1"), devices=8, device_kind="v5e", suggest=False)
    assert not any(note.startswith("tight") for note in report.notes)  # megabytes on a 16 GiB chip
    # a chip just large enough for this plan's peak
    chip = plan_lib.DeviceKind("test chip", int(report.peak_bytes / plan_lib.USABLE_FRACTION) + 4096, 1e12, "tpu")
    monkeypatch.setitem(plan_lib.DEVICE_KINDS, "test", chip)
    tight = plan_lib.plan(tiny("mesh.fsdp=8", "mesh.data=1"), devices=8, device_kind="test", suggest=False)
    assert tight.fits and any(note.startswith("tight") and "--compiler tpu" in note for note in tight.notes)


def test_the_attention_stand_in_is_saved_by_remat_minimal_attention_as_the_real_kernels_are():
    """The plan of a minimal_attention run holds the kernel's output and statistics per layer, as the
    GPU/TPU step does, instead of planning the rerun of ``minimal``."""
    import jax
    import jax.numpy as jnp
    from jax._src.ad_checkpoint import saved_residuals

    from semcoder_jax.model import _REMAT_POLICIES

    q = jnp.ones((2, 16, 4, 8))
    segments = jnp.ones((2, 16), jnp.int32)

    def loss(q):
        return jnp.sum(jnp.sin(plan_lib._flash_like_attention(q, q, q, segments, segments, segments, segments)))

    def saved(policy):
        return sorted(aval.shape for aval, _ in saved_residuals(jax.checkpoint(loss, policy=_REMAT_POLICIES[policy]), q))

    assert saved("minimal") == [(2, 16, 4, 8)]  # q only: the forward runs again in the backward
    assert saved("minimal_attention") == [(2, 16, 4), (2, 16, 4, 8), (2, 16, 4, 8)]  # + statistics, output


# ---- the GRPO phase ----------------------------------------------------------------------------

def grpo(*overrides: str):
    return tiny("model.vocab_size=1024", "mesh.data=2", "mesh.fsdp=4", "rl.tasks=tasks.jsonl", "rl.prompts_per_step=4",
                "rl.group_size=8", "rl.slots=16", "rl.max_prompt_tokens=96", "rl.max_new_tokens=32", *overrides)


def test_the_grpo_plan_holds_policy_adam_reference_and_the_engines_kv_cache():
    base = plan_lib.plan_grpo(grpo("rl.kl_coef=0.0"), devices=8, device_kind="h100")
    kl = plan_lib.plan_grpo(grpo("rl.kl_coef=0.05"), devices=8, device_kind="h100")
    model = plan_lib.resolve_plan_model(grpo())
    n = model.num_params()
    # float32 policy + two Adam moments, split over fsdp = 4 (data replicates them) where a dimension allows
    assert n * 4 / 4 <= base.params_bytes <= n * 4 / 4 * 1.05
    assert base.optimizer_bytes == pytest.approx(2 * base.params_bytes, rel=0.01)
    assert base.reference_bytes == 0 and kl.reference_bytes == base.params_bytes  # a frozen copy only for KL
    assert kl.update_peak_bytes > base.update_peak_bytes + base.params_bytes * 0.9
    # the ring: 16 slots x 128 tokens x (k, v) x layers x kv heads x head_dim x 4 bytes (float32), slots over 8
    per_token = 2 * model.num_layers * model.num_kv_heads * model.resolved_head_dim * 4
    assert (base.cache_len, base.rollout_tokens) == (128, 128)
    assert base.kv_cache_bytes == 16 * 128 * per_token // 8
    assert base.rows == 32 and base.fits


def test_micro_batches_lower_the_grpo_update_peak():
    one = plan_lib.plan_grpo(grpo("rl.max_prompt_tokens=480", "data.seq_len=512"), devices=8, device_kind="h100")
    four = plan_lib.plan_grpo(grpo("rl.max_prompt_tokens=480", "data.seq_len=512", "rl.micro_batches=4"), devices=8,
                              device_kind="h100")
    assert four.update_peak_bytes < one.update_peak_bytes
    assert four.rollout_peak_bytes == one.rollout_peak_bytes


def test_the_grpo_plan_refuses_rollouts_that_do_not_split_over_the_mesh():
    from semcoder_jax.sharding import MeshError

    with pytest.raises(MeshError, match="rl.prompts_per_step x rl.group_size = 12 must be a multiple of data x fsdp"):
        plan_lib.plan_grpo(grpo("rl.group_size=3"), devices=8, device_kind="h100")
    with pytest.raises(plan_lib.PlanError, match="rl.tasks is not set"):
        plan_lib.plan_grpo(tiny(), devices=8, device_kind="h100")


@pytest.mark.slow
def test_the_6_7b_grpo_config_plans_both_phases_and_fits_8_h100s():
    proc = subprocess.run([sys.executable, "-m", "semcoder_jax.cli", "plan", "--config",
                           "launch/configs/grpo_6.7b_8xh100.yaml", "--devices", "8", "--device-kind", "h100", "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    g = report["grpo"]
    assert g["params_bytes"] == pytest.approx(4 * report["num_params"] / 8, rel=0.01)
    assert g["reference_bytes"] == g["params_bytes"]  # kl_coef 0.01
    assert g["kv_cache_bytes"] == 128 * 2048 * 512 * 1024 // 8  # 512 KiB per token in bf16
    assert report["fits"] and g["fits"]
