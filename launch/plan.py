"""The ahead-of-time memory planner: will this run fit on N devices of a kind, and how fast will it be?

``plan(config, devices=N, device_kind=KIND)`` builds the real train step (``semcoder_jax.train.step``)
for the run's model, optimizer, mesh, batch and remat policy, lowers it with abstract shapes
(``jax.ShapeDtypeStruct`` carrying ``NamedSharding``: no parameter is ever allocated) and compiles it
ahead of time for an N-device mesh of CPU devices standing in for the target chips.  XLA's buffer
assignment of the compiled SPMD program then gives the per-device bytes:

- parameters / optimizer state: the per-device shard of every leaf (exact, from the shardings);
- gradients: the float32 gradient tree sharded like the parameters (the step accumulates in float32);
- temporaries: ``memory_analysis().temp_size_in_bytes`` of the compiled step (gradients live there);
- peak: arguments + temporaries + outputs not aliased to donated arguments.

The peak is compared with the device kind's memory (``DEVICE_KINDS``) to say fits / does not fit and
by how much.  The step time and tokens/s follow from the model FLOPs (``step.flops_per_token``) at a
stated MFU.  When the run does not fit, ``suggest`` re-plans the single changes that cost the least
throughput first (more fsdp, then more micro-batches, then a stronger remat policy) and reports the
first that fits.

Two things differ between the CPU stand-in and the target and are handled explicitly:
- The fused attention kernels (``splash`` on TPU, ``cudnn`` on GPU) do not compile for CPU.  They are
  planned with a stand-in of the same memory behaviour (a ``custom_vjp`` that keeps q, k, v, the
  output and the float32 log-sum-exp for the backward pass, as flash attention does, and never forms
  the [T, T] score matrix).  ``xla`` attention is planned as itself.
- XLA:CPU's fusion and scheduling decisions are not the TPU's or GPU's; the temporaries are those of
  the CPU compilation of the same partitioned program.  The report states this.

For TPU kinds there is a second compiler: with libtpu installed (``pip install 'jax[tpu]'``; no TPU
needed), ``compiler="tpu"`` lowers the same step for the slice's topology
(``jax.experimental.topologies``) and XLA:TPU compiles it, real splash kernel included.  Its buffer
assignment is then the answer; a program that cannot fit is refused by the compiler, whose message
gives the memory it needed (``_memory_from_tpu_refusal``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator
from typing import Any

from semcoder_jax.errors import UserError
from semcoder_jax.train.config import TrainRunConfig

GIB = 1024**3


class PlanError(UserError):
    """A plan that cannot be made: unknown device kind, too few simulated devices, bad mesh."""


@dataclasses.dataclass(frozen=True)
class DeviceKind:
    """Memory per device and dense bf16 peak FLOP/s (vendor datasheets)."""

    name: str
    memory_bytes: int
    peak_flops: float
    platform: str  # "tpu" or "gpu"


DEVICE_KINDS: dict[str, DeviceKind] = {
    "v4": DeviceKind("TPU v4", 32 * GIB, 275e12, "tpu"),
    "v5e": DeviceKind("TPU v5e", 16 * GIB, 197e12, "tpu"),
    "v5p": DeviceKind("TPU v5p", 95 * GIB, 459e12, "tpu"),
    "v6e": DeviceKind("TPU v6e", 32 * GIB, 918e12, "tpu"),
    "a100-80g": DeviceKind("NVIDIA A100 80GB", 80 * GIB, 312e12, "gpu"),
    "h100": DeviceKind("NVIDIA H100 80GB", 80 * GIB, 989e12, "gpu"),
    "h200": DeviceKind("NVIDIA H200", 141 * GIB, 989e12, "gpu"),
}

# The share of device memory a run may use: XLA/the runtime keep the rest (TPU: program and runtime
# buffers; GPU: the launch scripts set XLA_PYTHON_CLIENT_MEM_FRACTION=0.95, cuDNN/NCCL workspaces).
USABLE_FRACTION = 0.95
# The most a CPU-compiled plan's peak fell short of XLA:TPU's own, over the 6.7B layouts of
# ``benchmarks/plan.py tpu`` (docs/launch.md); a CPU plan closer than this to the limit is flagged.
CPU_PLAN_SHORTFALL = 0.11
DEFAULT_MFU = 0.40
REMAT_ORDER = ("none", "dots", "minimal_attention", "minimal", "full")  # most memory first


@dataclasses.dataclass
class PlanReport:
    """Per-device bytes of one compiled train step, the verdict, and the speed estimate."""

    model: str
    num_params: int
    devices: int
    device_kind: str
    mesh: dict[str, int]
    global_batch: int
    per_device_batch: float
    micro_batches: int
    seq_len: int
    remat_policy: str
    attention_impl: str
    dtype: str
    param_dtype: str
    params_bytes: int
    optimizer_bytes: int
    gradient_bytes: int
    temp_bytes: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    peak_bytes: int
    usable_bytes: int
    memory_bytes: int
    flops_per_step: float
    mfu: float
    step_seconds: float
    tokens_per_second: float
    compile_seconds: float
    compiler: str = "cpu"  # whose buffer assignment the temporaries are: "cpu" (stand-in devices) or "tpu"
    topology: str | None = None  # the TPU topology compiled for (compiler "tpu")
    notes: list[str] = dataclasses.field(default_factory=list)
    suggestion: str | None = None
    suggestion_report: PlanReport | None = None

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.usable_bytes

    @property
    def margin_bytes(self) -> int:
        """Usable memory left over (negative: how much is missing)."""
        return self.usable_bytes - self.peak_bytes

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("suggestion_report")
        out["fits"] = self.fits
        out["margin_bytes"] = self.margin_bytes
        if self.suggestion_report is not None:
            out["suggestion_report"] = self.suggestion_report.to_dict()
        return out

    def format(self) -> str:
        """The human-readable report."""
        g = lambda b: f"{b / GIB:8.2f} GiB"  # noqa: E731
        mesh = " x ".join(f"{k}={v}" for k, v in self.mesh.items())
        lines = [
            f"plan: {self.model} ({self.num_params / 1e9:.2f} B params) on {self.devices} x {self.device_kind}",
            f"  mesh {mesh}; global batch {self.global_batch} x {self.seq_len} tokens, "
            f"{self.per_device_batch:g} sequences per batch shard (data x fsdp) in {self.micro_batches} micro-batch(es); "
            f"remat {self.remat_policy}; attention {self.attention_impl}; compute {self.dtype}, params {self.param_dtype}",
            "  per device:",
            f"    parameters        {g(self.params_bytes)}",
            f"    optimizer state   {g(self.optimizer_bytes)}",
            f"    gradients (fp32)  {g(self.gradient_bytes)}   (held in the temporaries)",
            f"    temporaries       {g(self.temp_bytes)}   (compiled step's buffer assignment)",
            f"    peak              {g(self.peak_bytes)}   = arguments {self.argument_bytes / GIB:.2f} + temporaries "
            f"{self.temp_bytes / GIB:.2f} + outputs not aliased {(self.output_bytes - self.alias_bytes) / GIB:.2f}",
            f"    usable            {g(self.usable_bytes)}   ({USABLE_FRACTION:.0%} of {self.memory_bytes / GIB:.0f} GiB)",
        ]
        pct = 100.0 * self.margin_bytes / self.usable_bytes
        if self.fits:
            lines.append(f"  FITS with {self.margin_bytes / GIB:.2f} GiB to spare ({pct:.0f} % of usable memory)")
        else:
            lines.append(f"  DOES NOT FIT: {-self.margin_bytes / GIB:.2f} GiB over ({-pct:.0f} % of usable memory)")
        lines.append(f"  speed at {self.mfu:.0%} MFU: {self.step_seconds:.2f} s/step, "
                     f"{self.tokens_per_second:,.0f} tokens/s ({self.tokens_per_second / self.devices:,.0f} per device); "
                     f"{self.flops_per_step:.3g} model FLOPs/step")
        if self.suggestion:
            lines.append(f"  suggestion: {self.suggestion}")
            if self.suggestion_report is not None:
                s = self.suggestion_report
                lines.append(f"    -> peak {s.peak_bytes / GIB:.2f} GiB, {s.margin_bytes / GIB:.2f} GiB to spare, "
                             f"{s.step_seconds:.2f} s/step")
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.compiler == "tpu":
            lines.append(f"  (compiled by XLA:TPU for topology {self.topology}, without a TPU, in {self.compile_seconds:.1f} s)")
        else:
            lines.append(f"  (compiled for {self.devices} simulated CPU devices in {self.compile_seconds:.1f} s)")
        return "\n".join(lines)


# ---- the fused-attention stand-in -------------------------------------------------------------


def _flash_like_attention(q, k, v, q_segment, q_slot, kv_segment, kv_slot, **kernel_options):
    """Same shapes and residuals as a flash-attention kernel, without the [T, S] score matrix.

    Forward keeps (q, k, v, out, lse) for the backward pass, which returns dq, dk, dv: the HBM
    traffic of splash/cuDNN attention.  The values are not attention (planning only); the kernel's
    options (cuDNN's ``packed_runs``) do not change that traffic and are ignored.
    """
    import jax
    import jax.numpy as jnp
    from jax.ad_checkpoint import checkpoint_name

    from semcoder_jax.model import FUSED_ATTENTION_FORWARD

    heads, kv_heads = q.shape[2], k.shape[2]

    def kv_to_q(x):
        return jnp.repeat(x, heads // kv_heads, axis=2)[:, : q.shape[1]]

    @jax.custom_vjp
    def attend(q, k, v):
        return q * kv_to_q(k) + kv_to_q(v)

    def fwd(q, k, v):
        # Named as a kernel's forward results, so that remat minimal_attention saves them as it would
        # the real kernel's (model.fused_attention_forward_saveable).
        out = checkpoint_name(attend(q, k, v), FUSED_ATTENTION_FORWARD)
        lse = checkpoint_name(jnp.sum(q.astype(jnp.float32), axis=-1), FUSED_ATTENTION_FORWARD)  # [B, T, H]
        return out, (q, k, v, out, lse)

    def bwd(res, d_out):
        q, k, v, out, lse = res
        scale = lse[..., None].astype(d_out.dtype)
        dq = d_out * out * scale
        dkv = jnp.sum(d_out.reshape(d_out.shape[:2] + (kv_heads, heads // kv_heads, -1)), axis=3)
        return dq, (dkv * k).astype(k.dtype), (dkv * v).astype(v.dtype)

    attend.defvjp(fwd, bwd)
    return attend(q, k, v)


@contextlib.contextmanager
def _fused_attention_stand_in(impl: str) -> Iterator[None]:
    """Routes ``impl`` (splash/cudnn) to the flash-like stand-in while the step is traced."""
    from semcoder_jax import attention as attention_lib

    if impl == "xla":
        yield
        return
    table = attention_lib._IMPLS
    original = table[impl]
    table[impl] = _flash_like_attention
    try:
        yield
    finally:
        table[impl] = original


# ---- planning ---------------------------------------------------------------------------------


def _leaf_bytes_per_device(tree, shardings) -> int:
    import jax
    import numpy as np

    leaves = jax.tree.leaves(tree)
    shard_leaves = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    if len(leaves) != len(shard_leaves):
        raise AssertionError("sharding tree does not match the value tree")
    total = 0
    for leaf, sharding in zip(leaves, shard_leaves):
        shape = sharding.shard_shape(leaf.shape)
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def cpu_stand_in(model):
    """The model XLA:CPU compiles for an accelerator's plan: bfloat16 replaced by float16.

    Both take 2 bytes, but XLA:CPU runs bfloat16 dots and collectives in float32 (its
    ``float-normalization-bf16`` pass), so a bfloat16 step compiled for the CPU gathers every layer's
    weights and holds activations at twice the accelerator's bytes.  float16 it keeps as it is.
    """
    changes = {name: "float16" for name in ("dtype", "param_dtype") if getattr(model, name) == "bfloat16"}
    return model.replace(**changes) if changes else model


def resolve_plan_model(config: TrainRunConfig):
    """The ModelConfig to plan: the preset (with overrides), else the ``init_from`` checkpoint's config."""
    if config.model.preset is not None:
        return config.model.preset_config()
    from semcoder_jax.train.loop import resolve_model

    return resolve_model(config)[0]


def plan(config: TrainRunConfig, *, devices: int, device_kind: str, mfu: float = DEFAULT_MFU,
         suggest: bool = True, compiler: str = "cpu", topology: str | None = None) -> PlanReport:
    """Compiles ``config``'s train step for ``devices`` devices and reports the memory per device.

    ``compiler="cpu"`` (default) compiles for ``devices`` simulated CPU devices, which must exist
    (``launch.plan_cli`` arranges them).  ``compiler="tpu"`` compiles with XLA:TPU itself for a TPU
    topology (``tpu_topology_name``, or ``topology``) without any TPU: it needs libtpu installed and
    gives the TPU compiler's own buffer assignment, with the real splash kernel.  With ``suggest``
    and a run that does not fit, also finds the smallest change that does (``suggestion``).
    """
    if device_kind not in DEVICE_KINDS:
        raise PlanError(f"--device-kind {device_kind!r}: unknown (known: {', '.join(DEVICE_KINDS)})")
    if not 0 < mfu <= 1:
        raise PlanError(f"--mfu {mfu}: must lie in (0, 1]")
    target = _target(device_kind, devices, compiler, topology)
    report = _plan_once(config, devices, DEVICE_KINDS[device_kind], mfu, target)
    if suggest and not report.fits:
        found = suggest_fix(config, devices, device_kind, mfu, target)
        if found is None:
            report.suggestion = ("no single change fits (tried more fsdp, up to 8x the micro-batches, "
                                 "stronger remat): try tensor parallelism (mesh.tensor), more devices, "
                                 "a smaller global batch or seq_len")
        else:
            report.suggestion, report.suggestion_report = found
    return report


@dataclasses.dataclass(frozen=True)
class Target:
    """What the step is compiled for: simulated CPU devices, or a TPU topology's devices (``topology``)."""

    compiler: str
    topology: str | None = None

    def devices(self, count: int) -> list:
        import jax

        if self.compiler == "tpu":
            from jax.experimental import topologies

            # v4 and v5p chips are megacore (one JAX device per chip); libtpu's v4 default counts cores.
            options = {"chip_config_name": "megacore"} if self.topology.startswith(("v4:", "v5p:")) else {}
            try:
                found = topologies.get_topology_desc(topology_name=self.topology, platform="tpu", **options).devices
            except jax.errors.JaxRuntimeError as e:  # libtpu's own words: what it expected
                raise PlanError(f"--topology {self.topology}: {str(e).splitlines()[0]}") from None
            if len(found) != count:
                raise PlanError(f"--topology {self.topology}: has {len(found)} JAX devices, not --devices {count}")
            return list(found)
        available = jax.devices()
        if len(available) < count:
            raise PlanError(f"--devices {count}: only {len(available)} JAX devices here; run through "
                            "`semcoder plan`, which simulates them on the CPU")
        return available[:count]


# Chip-grid rank of the TPU kinds that XLA:TPU can compile for without a TPU (one device per chip).
TPU_GRID_RANK = {"v5e": 2, "v6e": 2, "v4": 3, "v5p": 3}


def tpu_topology_name(device_kind: str, devices: int) -> str:
    """The topology of a slice of ``devices`` chips (a power of two, at least one 4-chip host).

    2-D kinds grow 2x2, 2x4, 4x4, ...; v4 and v5p grow 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, ...
    """
    if device_kind not in TPU_GRID_RANK:
        raise PlanError(f"--compiler tpu: device kind {device_kind!r} is not one of "
                        f"{', '.join(TPU_GRID_RANK)} (plan it with --compiler cpu)")
    if devices < 4 or devices & (devices - 1):
        raise PlanError(f"--devices {devices}: a TPU slice topology needs a power of two >= 4 chips; "
                        "give --topology (e.g. v5e:2x4) for another shape")
    grid = [2, 2] if TPU_GRID_RANK[device_kind] == 2 else [2, 2, 1]
    while math.prod(grid) < devices:
        smallest = min(grid)
        index = len(grid) - 1 - grid[::-1].index(smallest)  # the last of the smallest dims
        grid[index] *= 2
    return f"{device_kind}:{'x'.join(map(str, grid))}"


def _target(device_kind: str, devices: int, compiler: str, topology: str | None) -> Target:
    if compiler == "cpu":
        if topology is not None:
            raise PlanError("--topology: only with --compiler tpu")
        return Target("cpu")
    if compiler != "tpu":
        raise PlanError(f"--compiler {compiler!r}: choose cpu or tpu")
    if DEVICE_KINDS[device_kind].platform != "tpu":
        raise PlanError(f"--compiler tpu: --device-kind {device_kind} is not a TPU")
    import importlib.util

    import jax

    if importlib.util.find_spec("libtpu") is None:
        raise PlanError(f"--compiler tpu needs libtpu, the TPU compiler: pip install 'jax[tpu]=={jax.__version__}' "
                        "(no TPU needed); or plan with --compiler cpu")
    return Target("tpu", topology or tpu_topology_name(device_kind, devices))


def _plan_once(config: TrainRunConfig, devices: int, kind: DeviceKind, mfu: float,
               target: Target = Target("cpu")) -> PlanReport:
    impl = config.model.attention_impl
    if impl == "cpu":
        raise PlanError("model.attention_impl='cpu' is the CPU kernel; plan TPU/GPU runs with xla, "
                        "splash (TPU) or cudnn (GPU)")
    if impl not in ("xla", "splash", "cudnn"):
        raise PlanError(f"model.attention_impl={impl!r}: unknown")
    if target.compiler == "tpu":
        if impl == "cudnn":
            raise PlanError("model.attention_impl='cudnn' is a GPU kernel; plan TPU runs with splash or xla")
        return _plan_traced(config, devices, kind, mfu, target)  # XLA:TPU compiles the real splash kernel
    # The stand-in covers parameter init too: the fused kernels cannot trace the 1-token init call.
    with _fused_attention_stand_in(impl):
        return _plan_traced(config, devices, kind, mfu, target)


def _plan_traced(config: TrainRunConfig, devices: int, kind: DeviceKind, mfu: float, target: Target) -> PlanReport:
    import jax
    import jax.numpy as jnp

    from semcoder_jax import sharding as shd
    from semcoder_jax.model import trace_for_platform
    from semcoder_jax.train import optimizer as opt_lib
    from semcoder_jax.train import step as step_lib

    config.validate()
    target_devices = target.devices(devices)
    model = resolve_plan_model(config)
    compiled_model = cpu_stand_in(model) if target.compiler == "cpu" else model
    mesh = shd.build_mesh(config.mesh.as_dict(), target_devices)
    t = config.train
    shards = shd.batch_shards(mesh)
    if t.global_batch % (shards * t.micro_batches):
        raise shd.MeshError(
            f"train.global_batch={t.global_batch} is not divisible by data x fsdp x micro_batches = "
            f"{mesh.shape['data']} x {mesh.shape['fsdp']} x {t.micro_batches} = {shards * t.micro_batches}")
    seq = config.data.seq_len
    total_steps = t.steps if t.steps is not None else 1000  # the schedule's length does not change memory
    tx = opt_lib.build_optimizer(config.optimizer, total_steps)
    schedule = opt_lib.learning_rate_schedule(config.optimizer, total_steps)
    shardings = step_lib.state_shardings(compiled_model, tx, mesh)
    state = step_lib.abstract_state(compiled_model, tx, shardings)
    batch_sharding = shd.batch_sharding(mesh)
    batch = {key: jax.ShapeDtypeStruct((t.global_batch, seq), jnp.int32, sharding=batch_sharding)
             for key in step_lib.BATCH_KEYS}
    step_fn = step_lib.make_train_step(compiled_model, tx, schedule, micro_batches=t.micro_batches, z_loss=t.z_loss,
                                       loss_chunk=t.loss_chunk, mesh=mesh, param_sharding=shardings.params)
    start = time.perf_counter()
    with trace_for_platform(kind.platform):  # the target's program, not the CPU-specific backward
        lowered = step_lib.compile_train_step(step_fn, shardings, mesh).lower(state, batch)
    params_bytes = _leaf_bytes_per_device(state.params, shardings.params)
    opt_bytes = _leaf_bytes_per_device(state.opt_state, shardings.opt_state)
    grads = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.float32), state.params)
    grad_bytes = _leaf_bytes_per_device(grads, shardings.params)
    notes = []
    try:
        mem = _memory(lowered.compile())
    except jax.errors.JaxRuntimeError as e:
        if target.compiler != "tpu" or "RESOURCE_EXHAUSTED" not in str(e):
            raise
        # XLA:TPU refuses a program that does not fit and says how much it needed.
        arguments = params_bytes + opt_bytes + len(batch) * math.prod(batch_sharding.shard_shape((t.global_batch, seq))) * 4
        mem = _memory_from_tpu_refusal(str(e), arguments)
        notes.append("XLA:TPU refused to compile it: " + str(e).splitlines()[0][:300])
    compile_seconds = time.perf_counter() - start
    peak = mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes

    tokens = t.global_batch * seq
    flops = step_lib.flops_per_token(model, seq) * tokens
    step_seconds = flops / (devices * kind.peak_flops * mfu)
    if target.compiler == "tpu":
        notes.insert(0, f"temporaries are XLA:TPU's own buffer assignment for {target.topology} (libtpu "
                        f"{_libtpu_version()}), attention {model.attention_impl} compiled as itself")
    else:
        measured = ("11 % under to 14 % over XLA:TPU's; --compiler tpu gives XLA:TPU's own figure"
                    if kind.platform == "tpu" else "5 to 20 % over the peaks one H100 measured (single-GPU steps)")
        notes.insert(0, "temporaries are XLA:CPU's buffer assignment of the same partitioned step; for 6.7B "
                        f"steps the peak has been {measured} (docs/launch.md)")
        if compiled_model is not model:
            notes.insert(1, "bfloat16 compiled as float16 (same bytes): XLA:CPU has float16 dots and collectives "
                            "but gathers and multiplies bfloat16 in float32, which over-predicted by up to 69 %")
    if model.attention_impl != "xla":
        if target.compiler == "cpu":
            notes.append(f"attention {model.attention_impl} planned with a flash-like stand-in (no [T, T] scores)")
    elif seq >= 1024:
        notes.append(f"attention xla materialises [batch, heads, {seq}, {seq}] float32 scores per layer; "
                     f"model.attention_impl={'splash' if kind.platform == 'tpu' else 'cudnn'} avoids them")
    usable = int(kind.memory_bytes * USABLE_FRACTION)
    if target.compiler == "cpu" and peak <= usable < peak / (1 - CPU_PLAN_SHORTFALL):
        notes.append(f"tight: CPU plans have come out up to {CPU_PLAN_SHORTFALL:.0%} below XLA:TPU's peak; leave "
                     "more room" + (" or check with --compiler tpu" if kind.platform == "tpu" else ""))
    dropped = [f"{k}" for k, v in mesh.shape.items() if v > 1 and k == "tensor" and model.num_heads % v]
    if dropped:
        notes.append(f"num_heads={model.num_heads} is not divisible by mesh.tensor; heads are replicated")
    return PlanReport(
        model=config.model.preset or str(config.model.init_from), num_params=model.num_params(), devices=devices,
        device_kind=kind.name, mesh=shd.mesh_shape(mesh), global_batch=t.global_batch,
        per_device_batch=t.global_batch / shards, micro_batches=t.micro_batches, seq_len=seq,
        remat_policy=model.remat_policy, attention_impl=model.attention_impl, dtype=model.dtype,
        param_dtype=model.param_dtype, params_bytes=params_bytes, optimizer_bytes=opt_bytes,
        gradient_bytes=grad_bytes, temp_bytes=int(mem.temp_size_in_bytes),
        argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes), peak_bytes=int(peak),
        usable_bytes=usable, memory_bytes=kind.memory_bytes,
        flops_per_step=flops, mfu=mfu, step_seconds=step_seconds, tokens_per_second=tokens / step_seconds,
        compile_seconds=compile_seconds, compiler=target.compiler, topology=target.topology, notes=notes)


# ---- the GRPO phase ---------------------------------------------------------------------------


@dataclasses.dataclass
class GRPOPlanReport:
    """Per-device bytes of the GRPO phase (``rl.tasks`` set): what stays resident (policy, Adam moments,
    the frozen reference, the engine's prefix pool) and the two compiled programs that alternate on it: the
    engine's decode chunk (with its ring KV cache) and the sharded update.  The peak is the larger phase."""

    devices: int
    device_kind: str
    mesh: dict[str, int]
    rows: int
    micro_batches: int
    rollout_tokens: int
    slots: int
    cache_len: int
    params_bytes: int
    optimizer_bytes: int
    reference_bytes: int
    kv_cache_bytes: int
    prefix_pool_bytes: int
    rollout_peak_bytes: int
    update_peak_bytes: int
    usable_bytes: int
    memory_bytes: int
    compile_seconds: float
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        return max(self.rollout_peak_bytes, self.update_peak_bytes)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.usable_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "peak_bytes": self.peak_bytes, "fits": self.fits}

    def format(self) -> str:
        g = lambda b: f"{b / GIB:8.2f} GiB"  # noqa: E731
        mesh = " x ".join(f"{k}={v}" for k, v in self.mesh.items())
        lines = [
            f"plan (GRPO phase): {self.devices} x {self.device_kind}, mesh {mesh}; {self.rows} rollouts of up to "
            f"{self.rollout_tokens} tokens per update in {self.micro_batches} micro-batch(es); engine {self.slots} "
            f"slots x {self.cache_len} tokens",
            "  per device, resident:",
            f"    policy parameters {g(self.params_bytes)}",
            f"    optimizer state   {g(self.optimizer_bytes)}",
            f"    reference         {g(self.reference_bytes)}   (rl.kl_coef > 0: a frozen copy of the warm-up)",
            f"    prefix pool       {g(self.prefix_pool_bytes)}",
            f"  rollout peak        {g(self.rollout_peak_bytes)}   (decode chunk, ring KV cache {self.kv_cache_bytes / GIB:.2f}"
            " GiB, + optimizer state and reference)",
            f"  update peak         {g(self.update_peak_bytes)}   (compiled update + reference + prefix pool)",
            f"  usable              {g(self.usable_bytes)}   ({USABLE_FRACTION:.0%} of {self.memory_bytes / GIB:.0f} GiB)",
        ]
        margin = self.usable_bytes - self.peak_bytes
        if self.fits:
            lines.append(f"  FITS with {margin / GIB:.2f} GiB to spare")
        else:
            lines.append(f"  DOES NOT FIT: {-margin / GIB:.2f} GiB over (more rl.micro_batches, fewer rl.slots, "
                         "or more fsdp)")
        lines += [f"  note: {note}" for note in self.notes]
        lines.append(f"  (compiled for {self.devices} simulated CPU devices in {self.compile_seconds:.1f} s)")
        return "\n".join(lines)


def plan_grpo(config: TrainRunConfig, *, devices: int, device_kind: str) -> GRPOPlanReport:
    """Compiles the GRPO phase's two programs (the engine's decode chunk and the sharded update) for
    ``devices`` simulated CPU devices on the run's mesh and reports the memory per device.  Rollouts are
    ``rl.max_prompt_tokens + rl.max_new_tokens`` long (``data.seq_len`` when the former is null), rounded
    up to 64 as ``semcoder_jax.rl.step.build_batch`` pads them."""
    if device_kind not in DEVICE_KINDS:
        raise PlanError(f"--device-kind {device_kind!r}: unknown (known: {', '.join(DEVICE_KINDS)})")
    if config.rl.tasks is None:
        raise PlanError("rl.tasks is not set: the run has no GRPO phase to plan")
    kind = DEVICE_KINDS[device_kind]
    impl = config.model.attention_impl
    if impl == "cpu":
        raise PlanError("model.attention_impl='cpu' is the CPU kernel; plan TPU/GPU runs with xla, "
                        "splash (TPU) or cudnn (GPU)")
    with _fused_attention_stand_in(impl) if impl != "xla" else contextlib.nullcontext():
        return _plan_grpo_traced(config, devices, kind)


def _plan_grpo_traced(config: TrainRunConfig, devices: int, kind: DeviceKind) -> GRPOPlanReport:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from semcoder_jax import sharding as shd
    from semcoder_jax.engine import compile_decode
    from semcoder_jax.model import abstract_params, trace_for_platform
    from semcoder_jax.rl import step as rl_step
    from semcoder_jax.rl.trainer import grpo_config, optimizer

    config.validate()
    r = config.rl
    model = resolve_plan_model(config)
    compiled_model = cpu_stand_in(model)
    mesh = shd.build_mesh(config.mesh.as_dict(), Target("cpu").devices(devices))
    rows, shards = r.prompts_per_step * r.group_size, shd.batch_shards(mesh)
    if rows % (shards * r.micro_batches) or r.slots % shards:
        raise shd.MeshError(f"rl.prompts_per_step x rl.group_size = {rows} must be a multiple of data x fsdp x "
                            f"rl.micro_batches = {shards} x {r.micro_batches} and rl.slots = {r.slots} of data x fsdp")
    notes = []
    if r.max_prompt_tokens is None:
        cache_len = config.data.seq_len
        notes.append(f"rl.max_prompt_tokens is null: rollouts planned at data.seq_len = {cache_len} tokens")
    else:
        cache_len = r.max_prompt_tokens + r.max_new_tokens
    length = -(-cache_len // 64) * 64
    settings = grpo_config(config, compiled_model)
    tx = optimizer(config)
    params_s, opt_s = rl_step.state_shardings(compiled_model, tx, mesh)
    abstract = nn.unbox(abstract_params(compiled_model))
    params = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), abstract, params_s)
    opt_state = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                             jax.eval_shape(tx.init, abstract), opt_s)
    rows_2d = shd.batch_sharding(mesh, 2)
    rows_1d = shd.batch_sharding(mesh, 1)
    tokens = jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=rows_2d)
    per_token = jax.ShapeDtypeStruct((rows, length - 1), jnp.float32, sharding=rows_2d)
    per_row = jax.ShapeDtypeStruct((rows,), jnp.float32, sharding=rows_1d)
    ref = per_token if r.kl_coef > 0 else None
    sharded = rl_step.compile_sharded_update(compiled_model, settings.objective, tx, mesh,
                                             micro_batches=r.micro_batches)
    start = time.perf_counter()
    with trace_for_platform(kind.platform):
        update = _memory(sharded.update.lower(params, opt_state, tokens, per_token, per_row, per_row, None, ref)
                         .compile())
        decode = _memory(compile_decode(compiled_model, slots=r.slots, max_len=cache_len, mesh=mesh))
    compile_seconds = time.perf_counter() - start
    params_bytes = _leaf_bytes_per_device(params, params_s)
    opt_bytes = _leaf_bytes_per_device(opt_state, opt_s)
    reference = params_bytes if r.kl_coef > 0 else 0
    per_token_kv = 2 * model.num_layers * model.num_kv_heads * model.resolved_head_dim * jnp.dtype(model.dtype).itemsize
    tensor = mesh.shape["tensor"] if model.num_kv_heads % mesh.shape["tensor"] == 0 else 1
    kv_cache = r.slots * cache_len * per_token_kv // (shards * tensor)
    pool_tokens = r.prefix_cache_tokens if r.prefix_cache_tokens is not None else r.slots * cache_len // 4
    pool = pool_tokens // 16 * 16 * per_token_kv // tensor  # the engine's pool: 16-token blocks, heads split
    rollout_peak = (decode.argument_size_in_bytes + decode.temp_size_in_bytes + decode.output_size_in_bytes
                    - decode.alias_size_in_bytes + opt_bytes + reference + pool)
    update_peak = (update.argument_size_in_bytes + update.temp_size_in_bytes + update.output_size_in_bytes
                   - update.alias_size_in_bytes + reference + pool)
    notes.insert(0, "temporaries are XLA:CPU's buffer assignment of the same partitioned programs")
    return GRPOPlanReport(
        devices=devices, device_kind=kind.name, mesh=shd.mesh_shape(mesh), rows=rows, micro_batches=r.micro_batches,
        rollout_tokens=length, slots=r.slots, cache_len=cache_len, params_bytes=params_bytes,
        optimizer_bytes=opt_bytes, reference_bytes=reference, kv_cache_bytes=kv_cache, prefix_pool_bytes=pool,
        rollout_peak_bytes=int(rollout_peak), update_peak_bytes=int(update_peak),
        usable_bytes=int(kind.memory_bytes * USABLE_FRACTION), memory_bytes=kind.memory_bytes,
        compile_seconds=compile_seconds, notes=notes)


@dataclasses.dataclass(frozen=True)
class _Memory:
    argument_size_in_bytes: int
    temp_size_in_bytes: int
    output_size_in_bytes: int
    alias_size_in_bytes: int


def _memory(compiled) -> _Memory:
    m = compiled.memory_analysis()
    return _Memory(int(m.argument_size_in_bytes), int(m.temp_size_in_bytes), int(m.output_size_in_bytes),
                   int(m.alias_size_in_bytes))


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _memory_from_tpu_refusal(message: str, argument_bytes: int) -> _Memory:
    """The step's memory from XLA:TPU's out-of-memory refusal (arguments donated: outputs alias them).

    XLA:TPU words it as "the total memory required for HLO temporaries (57.41G) exceeds available
    HBM (15.75G)" or as "Used 20.5G of 15.75G hbm" (everything); either gives the temporaries.
    """
    import re

    def size(number: str, unit: str) -> int:
        return int(float(number) * _SIZE_UNITS[unit.upper()])

    found = re.search(r"required for HLO temporaries \(([\d.]+)([KMGT]?)", message)
    if found:
        temps = size(*found.groups())
    else:
        found = re.search(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm", message)
        if not found:
            raise PlanError("XLA:TPU refused the step without saying how much memory it needs: "
                            + message.splitlines()[0][:300])
        temps = max(size(*found.groups()[:2]) - argument_bytes, 0)
    return _Memory(argument_bytes, temps, argument_bytes, argument_bytes)


def _libtpu_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def candidate_changes(config: TrainRunConfig, devices: int) -> list[tuple[str, list[str]]]:
    """Single changes that lower memory, cheapest in throughput first: (description, overrides).

    All data parallelism into fsdp (more communication, no recompute); then 2x, 4x, 8x micro-batches
    (smaller matmuls); then each stronger remat policy (recompute).
    """
    from semcoder_jax import sharding as shd

    sizes = shd.resolve_mesh_shape(config.mesh.as_dict(), devices)
    t = config.train
    out: list[tuple[str, list[str]]] = []
    if sizes["data"] > 1:
        fsdp = sizes["fsdp"] * sizes["data"]
        out.append((f"shard parameters over all data-parallel devices: mesh.fsdp={fsdp} mesh.data=1",
                    [f"mesh.fsdp={fsdp}", "mesh.data=1"]))
    shards = sizes["data"] * sizes["fsdp"]
    for factor in (2, 4, 8):
        micro = t.micro_batches * factor
        if t.global_batch % (shards * micro) == 0:
            out.append((f"more gradient-accumulation steps: train.micro_batches={micro}",
                        [f"train.micro_batches={micro}"]))
    current = REMAT_ORDER.index(config.model.remat_policy)
    for policy in REMAT_ORDER[current + 1:]:
        out.append((f"a stronger remat policy: model.remat_policy={policy}", [f"model.remat_policy={policy}"]))
    return out


def suggest_fix(config: TrainRunConfig, devices: int, device_kind: str,
                mfu: float = DEFAULT_MFU, target: Target = Target("cpu")) -> tuple[str, PlanReport] | None:
    """The first single change (in ``candidate_changes`` order) whose plan fits, with its report."""
    from semcoder_jax.train.config import apply_overrides, from_dict, to_dict

    kind = DEVICE_KINDS[device_kind]
    for description, overrides in candidate_changes(config, devices):
        changed = from_dict(TrainRunConfig, apply_overrides(to_dict(config), overrides))
        report = _plan_once(changed, devices, kind, mfu, target)
        if report.fits:
            return description, report
    return None


# ---- measuring the real step (validation of the plan) -----------------------------------------


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_step_peak(config: TrainRunConfig, devices: int, platform: str = "tpu") -> dict[str, float]:
    """Runs the real train step on ``devices`` CPU devices and measures its peak memory per device.

    The step is traced as for ``platform`` (default: the TPU program, which is what ``plan``
    predicts for TPU and GPU kinds), with ``plan``'s float16 stand-in for bfloat16, so prediction and
    measurement see the same program.

    The CPU backend keeps no allocator statistics (``Device.memory_stats()`` is None), so the peak is
    the process's resident-set high-water mark (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``
    just before the step) above the resident size measured before the state existed, divided by the
    devices.  Run it in a fresh process with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed buffers
    leave the resident set.  Returns bytes per device: ``arguments`` (state + batch) and ``peak``.
    """
    import gc

    import jax

    from semcoder_jax import sharding as shd
    from semcoder_jax.model import trace_for_platform
    from semcoder_jax.train import optimizer as opt_lib
    from semcoder_jax.train import step as step_lib
    from semcoder_jax.train.data import SyntheticBatches

    model = cpu_stand_in(resolve_plan_model(config))  # the program ``plan`` compiles
    mesh = shd.build_mesh(config.mesh.as_dict(), jax.devices()[:devices])
    t = config.train
    tx = opt_lib.build_optimizer(config.optimizer, t.steps or 1000)
    schedule = opt_lib.learning_rate_schedule(config.optimizer, t.steps or 1000)
    shardings = step_lib.state_shardings(model, tx, mesh)
    step_fn = step_lib.compile_train_step(
        step_lib.make_train_step(model, tx, schedule, micro_batches=t.micro_batches, z_loss=t.z_loss,
                                 loss_chunk=t.loss_chunk, mesh=mesh,
                                 param_sharding=shardings.params), shardings, mesh)
    data = SyntheticBatches(global_batch=t.global_batch, seq_len=config.data.seq_len, vocab_size=model.vocab_size)
    batch = step_lib.shard_batch(next(data), mesh)
    with trace_for_platform(platform):
        compiled = step_fn.lower(step_lib.init_state(model, tx, shardings, 0), batch).compile()
    gc.collect()
    base = _proc_status_kib("VmRSS")
    state = step_lib.init_state(model, tx, shardings, 0)
    jax.block_until_ready(state)
    gc.collect()
    with_args = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets VmHWM to the current resident size
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    peak = _proc_status_kib("VmHWM")
    return {"arguments": (with_args - base) * 1024 / devices, "peak": (peak - base) * 1024 / devices}
