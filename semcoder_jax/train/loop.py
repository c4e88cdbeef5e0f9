"""The training run: everything with side effects around the pure step.

``train(config)`` resolves the model (preset, ``hf:DIR`` or ``orbax:DIR``; or the run's own latest
checkpoint when it exists), checks the mesh and batch geometry, builds data sources, restores or
initialises the state, then runs the compiled step, logging metrics, evaluating, checkpointing and
honouring SIGTERM (finish the step, save, return).  All user mistakes surface as ``UserError``
before the first compilation.  Only process 0 writes files other than checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline.pipeline import DataPositionError
from data_pipeline.prompts import TASK_NAMES
from semcoder_jax import locations
from semcoder_jax import sharding as shd
from semcoder_jax.config import ModelConfig, model_config_from_dict
from semcoder_jax.errors import UserError
from semcoder_jax.train import checkpoint as ckpt_lib
from semcoder_jax.train import data as data_lib
from semcoder_jax.train import optimizer as opt_lib
from semcoder_jax.train import profile as profile_lib
from semcoder_jax.train import step as step_lib
from semcoder_jax.train import watchdog as watchdog_lib
from semcoder_jax.train.config import DistributedSection, TrainRunConfig, dump_config

ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                       "num_kv_heads", "head_dim", "tie_word_embeddings")
TASK_METRICS = ("task_loss_sum", "task_tokens")  # [K] vectors among the step's metrics, logged per task


class RunError(UserError):
    """A run that cannot start as configured (run directory, resume, initialisation)."""


@dataclasses.dataclass
class RunResult:
    run_dir: str
    start_step: int
    final_step: int
    total_steps: int
    preempted: bool
    history: list[dict[str, Any]]
    params: Any = None
    model: ModelConfig | None = None


# ---- multi-host --------------------------------------------------------------------------------


def initialize_distributed(section: DistributedSection) -> bool:
    """Calls ``jax.distributed.initialize`` when the config, flags or environment ask for it.

    Explicit settings win; otherwise ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
    ``JAX_PROCESS_ID`` are read; ``auto`` (or a multi-worker TPU slice) lets JAX discover the cluster.
    Returns whether it initialised.
    """
    coordinator = section.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num = section.num_processes if section.num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    pid = section.process_id if section.process_id is not None else _env_int("JAX_PROCESS_ID")
    multi_tpu = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if coordinator:
        if num is None or pid is None:
            raise RunError("distributed.coordinator is set: also set distributed.num_processes and "
                           "distributed.process_id (or JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
        if not 0 <= pid < num:
            raise RunError(f"distributed.process_id={pid} must lie in [0, num_processes={num})")
        local = None
        if section.local_device_ids:
            local = [int(x) for x in section.local_device_ids.split(",")]
        # Everything is given: no auto-detection, which on SLURM would pin each process to the GPU numbered
        # SLURM_LOCALID unless local_device_ids says otherwise (one process per node must see all of them).
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid,
                                   local_device_ids=local, heartbeat_timeout_seconds=section.heartbeat_timeout_s,
                                   cluster_detection_method="deactivate")
        return True
    if section.auto or multi_tpu:
        jax.distributed.initialize(heartbeat_timeout_seconds=section.heartbeat_timeout_s)
        return True
    return False


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def _gather_json(obj: Any) -> list[Any]:
    """Every process's JSON-able ``obj``, in process order (a list of one on a single process)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([data.size], np.int32))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:data.size] = data
    every = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(every[i][:int(lengths[i][0])]).decode()) for i in range(jax.process_count())]


def _any_process(flag: bool) -> bool:
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([flag], np.int32))))


# ---- model resolution --------------------------------------------------------------------------


def resolve_model(config: TrainRunConfig) -> tuple[ModelConfig, str | None, str | None]:
    """(ModelConfig, init kind, init path) without reading any weights; checks paths exist."""
    section = config.model
    overrides = section.compute_overrides()
    if section.init_from is None:
        return section.preset_config(), None, None
    kind, path = section.init_from.split(":", 1)
    path = locations.absolute(path if locations.is_remote(path) else os.path.expanduser(path))
    locations.probe_readable("model.init_from:", path)
    if not locations.path(path).is_dir():
        raise RunError(f"model.init_from: {path} is not a directory")
    if kind == "hf":
        from semcoder_jax.convert import read_hf_config

        if not (locations.path(path) / "config.json").exists():
            raise RunError(f"model.init_from: {path} is not an HF model directory (no config.json)")
        model = read_hf_config(path, **overrides)
    else:
        from semcoder_jax.convert import resolve_params_checkpoint

        _, found, _ = resolve_params_checkpoint(path)
        model = found.replace(**overrides)
    if section.preset is not None:
        diff = _architecture_diff(section.preset_config(), model)
        if diff:
            raise RunError(f"model.init_from: {path} holds a different architecture than model.preset="
                           f"{section.preset} with overrides ({diff}); drop model.preset to take the checkpoint's")
    else:
        diff = ", ".join(f"{k}: {v} vs {getattr(model, k)}" for k, v in section.architecture_overrides().items()
                         if getattr(model, k) != v)
        if diff:
            raise RunError(f"model.init_from: {path} holds a different architecture than model.* asks ({diff})")
    return model, kind, path


def _architecture_diff(a: ModelConfig, b: ModelConfig) -> str:
    diffs = [f"{f}: {getattr(a, f)} vs {getattr(b, f)}" for f in ARCHITECTURE_FIELDS
             if getattr(a, f) != getattr(b, f) and not (f == "head_dim" and a.resolved_head_dim == b.resolved_head_dim)]
    return ", ".join(diffs)


def _load_init_params(kind: str, path: str, model: ModelConfig, param_shardings) -> Any:
    if kind == "hf":
        from semcoder_jax.convert import load_hf_params

        loaded_config, params = load_hf_params(path, param_dtype=model.param_dtype)
        diff = _architecture_diff(model, loaded_config)
        if diff:
            raise RunError(f"model.init_from: {path} does not match its config ({diff})")
        return step_lib.place_params(params, param_shardings, model)
    from semcoder_jax.convert import resolve_params_checkpoint, restore_params

    _, found, params_dir = resolve_params_checkpoint(path)
    return restore_params(params_dir, found, dtype=model.param_dtype, shardings=param_shardings)


# ---- files of the run --------------------------------------------------------------------------


def _write_atomic(path: str, text: str) -> None:
    locations.write_text(path, text)


class MetricsLog:
    """``metrics.jsonl`` (+ TensorBoard events) written by process 0 only.

    On a local run directory each record is appended at once.  An object store has no append (gcsfs's
    ``"a"`` mode silently replaces the object), so on one the records are kept in memory and the whole
    object is rewritten (one atomic upload) at most every ``flush_s`` seconds, at every checkpoint
    (``flush()``) and at the end: what a kill loses is only records after the last checkpoint, which a
    resumed run drops and recomputes anyway.  TensorBoard events are written to a local folder and that
    folder is uploaded to ``RUN/tensorboard`` at the same moments (TensorFlow's writer cannot reach every
    object store; TensorBoard reads the uploaded files from the bucket).
    """

    def __init__(self, run_dir: str, *, enabled: bool, tensorboard: bool, flush_s: float = 60.0):
        self.enabled = enabled
        self.remote = locations.is_remote(run_dir)
        self.path = locations.join(run_dir, "metrics.jsonl")
        self.tensorboard_dir = locations.join(run_dir, "tensorboard")
        self.flush_s = flush_s
        self._lines: list[str] = []
        self._dirty = False
        self._flushed_at = time.monotonic()
        self._local_events: str | None = None
        self.writer = None
        if enabled and tensorboard:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
            import tensorflow as tf

            tf.config.set_visible_devices([], "GPU")
            events = self.tensorboard_dir
            if self.remote:
                import tempfile

                self._local_events = events = tempfile.mkdtemp(prefix="semcoder-tensorboard-")
            self.writer = tf.summary.create_file_writer(events)

    def _read_lines(self) -> list[str]:
        target = locations.path(self.path)
        if not target.exists():
            return []
        return target.read_text(encoding="utf-8").splitlines(keepends=True)

    def truncate_after(self, step: int) -> None:
        """Drops records of steps after ``step`` (they are recomputed by the resumed run)."""
        if not self.enabled:
            return
        lines = self._read_lines()
        if not lines:
            return
        kept, torn = [], 0
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill mid-write
                torn += 1
                continue
            if record.get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        if torn:
            print(f"semcoder train: warning: {self.path}: dropped {torn} incomplete line(s) left by an "
                  "interrupted run", file=sys.stderr, flush=True)
        _write_atomic(self.path, "".join(kept))
        self._lines = kept

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(record) + "\n"
        if self.remote:
            if not self._lines and not self._dirty:
                self._lines = self._read_lines()
            self._lines.append(line)
            self._dirty = True
        else:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        if self.writer is not None:
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2

            # tf.summary.scalar lives in the tensorboard package (not installed with tensorflow-cpu);
            # tf.summary.write with the scalars plugin's metadata writes the same event.
            meta = summary_pb2.SummaryMetadata(data_class=summary_pb2.DATA_CLASS_SCALAR)
            meta.plugin_data.plugin_name = "scalars"
            with self.writer.as_default(step=int(record["step"])):
                for key, value in record.items():
                    if key != "step" and isinstance(value, int | float):
                        tf.summary.write(key, tf.constant(float(value), tf.float32), metadata=meta)
            self.writer.flush()
        if self.remote and time.monotonic() - self._flushed_at >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Makes everything written so far durable in the run directory (a no-op locally: appended)."""
        if not (self.enabled and self.remote):
            return
        if self._dirty:
            locations.write_text(self.path, "".join(self._lines))
            self._dirty = False
        if self._local_events is not None:
            self.writer.flush()
            locations.upload_tree(self._local_events, self.tensorboard_dir)
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.flush()
        if self._local_events is not None:
            import shutil

            shutil.rmtree(self._local_events, ignore_errors=True)
            self._local_events = None


_TERM_RECEIVED = threading.Event()
_TERM_FLAG_FOR_PROCESS = False


def _set_term_flag(signum, frame) -> None:
    _TERM_RECEIVED.set()


def catch_sigterm_from_now() -> None:
    """SIGTERM sets a flag from now until the process exits (``semcoder train`` calls this right after
    ``jax.distributed.initialize``): a TERM that arrives while the run starts — compiling, restoring — is
    not swallowed by JAX's preemption notifier, and one that arrives while the process exits after its save
    does not turn its status 75 into 143.  The loop reads the flag before its first step and after each."""
    global _TERM_FLAG_FOR_PROCESS
    try:
        signal.signal(signal.SIGTERM, _set_term_flag)
    except ValueError:  # not the main thread
        return
    _TERM_FLAG_FOR_PROCESS = True


class StopSignal:
    """SIGTERM (preemption) sets a flag; the loop finishes the step, saves and returns."""

    def __init__(self) -> None:
        self._previous = None

    @property
    def requested(self) -> bool:
        return _TERM_RECEIVED.is_set()

    def __enter__(self) -> StopSignal:
        if not _TERM_FLAG_FOR_PROCESS:  # a library call: this run's own flag, from now
            _TERM_RECEIVED.clear()
        try:
            self._previous = signal.signal(signal.SIGTERM, _set_term_flag)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None and not _TERM_FLAG_FOR_PROCESS:
            signal.signal(signal.SIGTERM, self._previous)


# ---- the run -----------------------------------------------------------------------------------


def _check_geometry(config: TrainRunConfig, mesh) -> None:
    t = config.train
    shards = shd.batch_shards(mesh)
    need = shards * t.micro_batches
    if t.global_batch % need:
        raise shd.MeshError(
            f"train.global_batch={t.global_batch} is not divisible by data x fsdp x micro_batches = "
            f"{mesh.shape['data']} x {mesh.shape['fsdp']} x {t.micro_batches} = {need}")
    if t.global_batch % jax.process_count():
        raise shd.MeshError(f"train.global_batch={t.global_batch} is not divisible by the "
                            f"{jax.process_count()} processes")
    r = config.rl
    if r.tasks is not None and (r.prompts_per_step * r.group_size % (shards * r.micro_batches) or r.slots % shards):
        raise shd.MeshError(f"rl.prompts_per_step x rl.group_size = {r.prompts_per_step * r.group_size} must be a "
                            f"multiple of data x fsdp x rl.micro_batches = {shards} x {r.micro_batches} and rl.slots = "
                            f"{r.slots} of data x fsdp (the GRPO phase splits its rollouts and engine slots over them)")


def _report_truncation(config: TrainRunConfig, lengths, process0: bool) -> None:
    """One line at start on what ``data.seq_len`` cuts off; a warning above ``data.max_truncated``, or an
    error with ``data.on_truncation=error`` (every process measures the same sample, so all agree)."""
    if lengths is None:
        return
    line = lengths.describe()
    limit = config.data.max_truncated
    if lengths.truncated_share > limit:
        if config.data.on_truncation == "error":
            raise RunError(f"{line}; more than data.max_truncated={limit:g} of the records (raise data.seq_len, "
                           "or set data.on_truncation=warn to train on cut-off examples)")
        if process0:
            print(f"semcoder train: warning: {line}; more than data.max_truncated={limit:g} of the records",
                  file=sys.stderr, flush=True)
    elif process0:
        print(f"semcoder train: data: {line}", file=sys.stderr, flush=True)


def _total_steps(config: TrainRunConfig, epoch_rows: int | None) -> int:
    """``train.steps``, or epochs x the global batches of an epoch (every process's rows of epoch 0)."""
    if config.train.steps is not None:
        return config.train.steps
    if epoch_rows is None:
        raise RunError("train.epochs: this data source has no epoch length; set train.steps instead")
    rows = sum(int(n) for n in _gather_json(int(epoch_rows)))
    per_epoch = max(1, math.ceil(rows / config.train.global_batch))
    total = max(1, math.ceil(config.train.epochs * per_epoch))
    if config.optimizer.warmup_steps > total:
        raise RunError(f"optimizer.warmup_steps={config.optimizer.warmup_steps} exceeds the run's {total} steps "
                       f"(train.epochs={config.train.epochs} of {per_epoch} batches)")
    return total


def _host_params(params: Any) -> Any:
    if jax.process_count() == 1:
        return jax.device_get(params)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(params, tiled=True)


def train(config: TrainRunConfig, *, run_dir: str | None = None, export_hf: str | None = None,
          devices: list | None = None, max_steps_this_run: int | None = None,
          overwrite_export: bool = False) -> RunResult:
    """Runs (or resumes) the training described by ``config`` in ``run_dir``.

    ``max_steps_this_run`` stops early after that many steps (with a checkpoint), as a preemption would.
    ``overwrite_export`` lets the HF export replace a non-empty directory (checked before any compute
    otherwise).
    """
    config.validate()
    run_dir = locations.absolute(run_dir or config.run.dir or "runs/default")
    export_hf = export_hf or config.run.export_hf
    # an object store's missing bucket, credentials or permission: one line now, not at the first save
    locations.probe_writable("run.dir", run_dir)
    if export_hf:
        locations.probe_writable("--export-hf", export_hf)
    if export_hf and _not_empty(export_hf) and not overwrite_export:
        raise RunError(f"--export-hf {export_hf}: exists and is not empty (pass --overwrite to replace it)")
    process0 = jax.process_index() == 0
    if locations.path(run_dir).is_file():
        raise RunError(f"run.dir: {run_dir} exists and is not a directory")

    model, init_kind, init_path = resolve_model(config)
    if config.data.seq_len > model.max_position_embeddings:
        raise RunError(f"data.seq_len={config.data.seq_len} exceeds the model's max_position_embeddings="
                       f"{model.max_position_embeddings}")
    mesh = shd.build_mesh(config.mesh.as_dict(), devices)
    _check_geometry(config, mesh)
    sources = data_lib.build_sources(config.data, global_batch=config.train.global_batch,
                                     vocab_size=model.vocab_size, seed=config.train.seed,
                                     process_index=jax.process_index(), process_count=jax.process_count(),
                                     count_epoch=config.train.epochs is not None, run_dir=run_dir)
    _report_truncation(config, sources.lengths, process0)
    total = _total_steps(config, sources.epoch_rows)
    tok = sources.tokenizer
    if tok is not None and init_kind is None:
        # a model trained from scratch takes its special ids from the tokenizer it is trained with
        model = model.replace(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)

    if model.attention_impl == "cpu":  # compiled here, before the run directory exists: no half-made run
        from semcoder_jax import cpu_attention

        cpu_attention.build()
    if not locations.is_remote(run_dir):  # an object store has no directories to make
        os.makedirs(run_dir, exist_ok=True)
    checkpointer = ckpt_lib.Checkpointer(ckpt_lib.checkpoints_dir(run_dir), keep=config.checkpoint.keep,
                                         async_save=config.checkpoint.async_save)
    dog = watchdog_lib.for_this_run(config.distributed.peer_timeout_s)
    try:
        if dog is None:
            return _run(config, run_dir, export_hf, overwrite_export, model, init_kind, init_path, mesh, sources,
                        total, checkpointer, process0, max_steps_this_run, _no_watchdog)
        dog.start()
        result = _run(config, run_dir, export_hf, overwrite_export, model, init_kind, init_path, mesh, sources,
                      total, checkpointer, process0, max_steps_this_run, dog.enter)
        # Only a run that ended normally stops the watchdog: after an error (a collective that failed because
        # a peer went away) it stays up through JAX's shutdown, which waits for that peer, and names it.
        dog.stop()
        return result
    finally:
        checkpointer.close()


def _not_empty(location: str) -> bool:
    """Whether a directory (or an object-store prefix) exists and holds anything."""
    where = locations.path(location)
    return where.is_dir() and any(True for _ in where.iterdir())


def _no_watchdog(step: int, phase: str) -> None:
    pass


def _run(config, run_dir, export_hf, overwrite_export, model, init_kind, init_path, mesh, sources, total, checkpointer,
         process0, max_steps_this_run, enter: Callable[[int, str], None]) -> RunResult:
    """The run itself; ``enter(step, phase)`` tells the watchdog where the training thread is going to wait."""
    enter(0, "restore")
    tx = opt_lib.build_optimizer(config.optimizer, total)
    schedule = opt_lib.learning_rate_schedule(config.optimizer, total)
    shardings = step_lib.state_shardings(model, tx, mesh)
    abstract = step_lib.abstract_state(model, tx, shardings)

    def check_meta(meta: dict) -> None:
        saved = model_config_from_dict(meta["model_config"], source=f"{checkpointer.directory} meta")
        diff = _architecture_diff(saved, model)
        if diff:
            raise RunError(f"{run_dir}: resuming a run whose model shape differs from the config ({diff}); "
                           "use a new run directory or the original model settings")

    restored = checkpointer.restore_latest(abstract.params, abstract.opt_state, check_meta=check_meta)
    if restored is not None:
        start, params, opt_state, meta = restored
        state = step_lib.TrainState(step=jax.device_put(np.int32(start), shardings.step), params=params,
                                    opt_state=opt_state,
                                    rng=jax.device_put(ckpt_lib.rng_from_json(meta["rng"]), shardings.rng))
        data_states = meta.get("data_state")
        if data_states is not None and config.data.reset_position:
            if process0:
                print("semcoder train: data.reset_position=true: the data starts again from its beginning "
                      f"(the model and optimizer resume from step {start})", file=sys.stderr, flush=True)
        elif data_states is not None:
            try:
                change = sources.train.restore(data_states)
            except (DataPositionError, data_lib.DataConfigError) as e:
                raise RunError(f"{run_dir}: {e}. To start the data from its beginning on purpose (the model and "
                               "optimizer still resume), add data.reset_position=true") from None
            if change and process0:
                print(f"semcoder train: {change}", file=sys.stderr, flush=True)
        if process0:
            print(f"semcoder train: resuming {run_dir} from step {start}", file=sys.stderr, flush=True)
    else:
        start = 0
        params = None
        if init_kind is not None:
            params = _load_init_params(init_kind, init_path, model, shardings.params)
        state = step_lib.init_state(model, tx, shardings, config.train.seed, params=params)

    log = MetricsLog(run_dir, enabled=process0, tensorboard=config.run.tensorboard)
    if process0:
        _write_atomic(locations.join(run_dir, "config.yaml"), dump_config(config))
        save_tokenizer(sources.tokenizer, run_dir)
        log.truncate_after(start)

    step_fn = step_lib.compile_train_step(
        step_lib.make_train_step(model, tx, schedule, micro_batches=config.train.micro_batches,
                                 z_loss=config.train.z_loss, loss_chunk=config.train.loss_chunk, mesh=mesh,
                                 param_sharding=shardings.params),
        shardings, mesh)
    eval_fn = None
    if config.train.eval_every and sources.eval_batches is not None:
        if config.train.eval_batches and process0:
            print(f"semcoder train: eval covers at most {config.train.eval_batches} global batches of the held-out "
                  "data (train.eval_batches; 0 = all of it)", file=sys.stderr, flush=True)
        eval_fn = step_lib.compile_eval_step(step_lib.make_eval_step(model, mesh, config.train.loss_chunk),
                                             shardings.params, mesh)

    seq = config.data.seq_len
    tokens_per_step = config.train.global_batch * seq
    peak = step_lib.peak_flops(jax.devices()[0])
    flops_token = step_lib.flops_per_token(model, seq)
    num_devices = mesh.devices.size

    def save(step: int) -> None:
        enter(step, "save")
        meta = {"step": step, "model_config": dataclasses.asdict(model),
                "rng": ckpt_lib.rng_to_json(state.rng), "data_state": _gather_json(sources.train.get_state()),
                "config": dataclasses.asdict(config)}
        checkpointer.save(step, state.params, state.opt_state, meta)
        log.flush()  # the records up to a checkpoint are as durable as it is

    history: list[dict[str, Any]] = []
    guard = _NonFiniteGuard(config.train.nonfinite, process0)
    bar = None
    # A progress bar only on a terminal; in a batch log (SLURM, a pod's log file) its carriage returns are
    # noise, so each logged record is one plain line instead.
    plain_progress = process0 and config.run.progress and not sys.stdout.isatty()
    if process0 and config.run.progress and not plain_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, file=sys.stdout, desc="train", dynamic_ncols=True)
    preempted = False
    step = start
    last_saved = start if restored is not None else -1
    window_start, window_steps = time.perf_counter(), 0
    sums = None  # loss sums of the steps since the last logged record (on device, no sync per step)
    stop_at = total if max_steps_this_run is None else min(total, start + max_steps_this_run)
    call, window = step_fn, None
    with StopSignal() as stop, contextlib.ExitStack() as cleanup:
        if _any_process(stop.requested):  # SIGTERM while the run started: stop before the first step
            preempted = True
            stop_at = step
        while step < stop_at:
            enter(step + 1, "train")
            batch = step_lib.shard_batch(next(sources.train), mesh)
            if config.run.profile_steps and window is None:
                call = step_fn.lower(state, batch).compile()  # compiled once; its HLO names the trace's ops
                trace_dir = os.path.join(_local_mirror(run_dir, cleanup), "profile", f"process_{jax.process_index()}")
                window = profile_lib.TraceWindow(trace_dir, config.run.profile_from, config.run.profile_steps,
                                                 call.as_text())
                cleanup.callback(window.close)
            if window is not None:
                window.before_step(step + 1)
            state, metrics = call(state, batch)
            sums = _add_to_window(sums, metrics)
            step += 1
            window_steps += 1
            guard.watch(step, metrics)  # checks the step before this one: one step stays in flight
            report = window.after_step(step, metrics) if window is not None else None
            if report is not None and process0:
                _write_profile(run_dir, report)
            if step % config.train.log_every == 0 or step == stop_at:
                guard.settle()
                host = jax.device_get(metrics)
                values = {k: float(v) for k, v in host.items() if k != "finite" and k not in TASK_METRICS}
                values.update(_window_values(jax.device_get(sums)))
                sums = None
                if guard.skipped:
                    values["skipped_steps"] = guard.skipped
                elapsed = time.perf_counter() - window_start
                record = {"step": step, **values, "tokens_per_second": tokens_per_step * window_steps / elapsed,
                          "step_time": elapsed / window_steps}
                if peak:
                    record["mfu"] = record["tokens_per_second"] * flops_token / (peak * num_devices)
                history.append(record)
                log.write(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['learning_rate']:.2e}")
                elif plain_progress:
                    print(f"step {step}/{total}: loss {values['loss']:.4f}, lr {values['learning_rate']:.2e}, "
                          f"{record['tokens_per_second']:,.0f} tokens/s", flush=True)
                window_start, window_steps = time.perf_counter(), 0
            if bar is not None:
                bar.update(1)
            if eval_fn is not None and step % config.train.eval_every == 0:
                enter(step, "eval")
                record = {"step": step, **evaluate(eval_fn, state.params, sources, mesh, global_batch=config.train.global_batch,
                                                   seq_len=config.data.seq_len, cap=config.train.eval_batches)}
                history.append(record)
                log.write(record)
            if step % config.checkpoint.every == 0 and step != last_saved:
                guard.settle()
                save(step)
                last_saved = step
            if _any_process(stop.requested):
                preempted = True
                break
        guard.settle()
        if step != last_saved:
            save(step)
        enter(step, "save")
        checkpointer.wait()
    if bar is not None:
        bar.close()
    log.close()
    if preempted and process0:
        print(f"semcoder train: stopped by SIGTERM after step {step}; checkpoint saved", file=sys.stderr, flush=True)
    if export_hf and step == total and not preempted and config.rl.tasks is None:  # else after the RL phase
        enter(step, "export")
        _export(state.params, model, export_hf, run_dir, config, process0, overwrite_export)
    return RunResult(run_dir=run_dir, start_step=start, final_step=step, total_steps=total, preempted=preempted,
                     history=history, params=state.params, model=model)


def save_tokenizer(tokenizer, run_dir: str) -> None:
    """RUN/tokenizer (once): the tokenizer a run trains with, beside its checkpoints (exports copy it)."""
    target = locations.join(run_dir, "tokenizer")
    if tokenizer is None or locations.path(target).is_dir():
        return
    if not locations.is_remote(run_dir):
        tokenizer.save(target)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="semcoder-tokenizer-") as tmp:
        tokenizer.save(os.path.join(tmp, "tokenizer"))
        locations.upload_tree(os.path.join(tmp, "tokenizer"), target)


def _local_mirror(run_dir: str, cleanup: contextlib.ExitStack) -> str:
    """Where files that only local writers can make (profiler traces) go: the run directory itself, or for
    a run on an object store a temporary folder uploaded to it when the run's loop exits."""
    if not locations.is_remote(run_dir):
        return run_dir
    import shutil
    import tempfile

    local = tempfile.mkdtemp(prefix="semcoder-run-")
    cleanup.callback(shutil.rmtree, local, True)
    cleanup.callback(lambda: locations.upload_tree(local, run_dir))
    return local


def _write_profile(run_dir: str, report: profile_lib.StepProfile) -> None:
    """RUN/profile/summary.txt (the table, also printed) and RUN/profile/parts.json (ms per step)."""
    table = report.table()
    if not locations.is_remote(run_dir):
        os.makedirs(os.path.join(run_dir, "profile"), exist_ok=True)
    _write_atomic(locations.join(run_dir, "profile", "summary.txt"), table + "\n")
    parts = [{"part": part, "direction": direction, "ms_per_step": ms}
             for (part, direction), ms in sorted(report.parts.items(), key=lambda kv: -kv[1])]
    _write_atomic(locations.join(run_dir, "profile", "parts.json"),
                  json.dumps({"steps": report.steps, "wall_ms": report.wall_ms, "busy_ms": report.busy_ms,
                              "parts": parts}, indent=1) + "\n")
    print(f"semcoder train: profile of {report.steps} steps (trace in {locations.join(run_dir, 'profile')})\n{table}",
          file=sys.stderr, flush=True)


class _NonFiniteGuard:
    """Watches each step's ``finite`` flag without stalling the device: a step's flag is read once the next
    step has been dispatched.  The step function itself never applies a non-finite update; here ``error``
    stops the run naming the step and ``skip`` counts it."""

    def __init__(self, policy: str, process0: bool):
        self.policy, self.process0 = policy, process0
        self.skipped = 0
        self._pending: list[tuple[int, dict]] = []

    def watch(self, step: int, metrics: dict) -> None:
        self._pending.append((step, metrics))
        if len(self._pending) > 1:
            self._check(self._pending.pop(0))

    def settle(self) -> None:
        while self._pending:
            self._check(self._pending.pop(0))

    def _check(self, item: tuple[int, dict]) -> None:
        step, metrics = item
        if bool(jax.device_get(metrics["finite"])):
            return
        loss, grad_norm = (float(jax.device_get(metrics[k])) for k in ("loss", "grad_norm"))
        if self.policy == "error":
            raise RunError(f"step {step}: the loss ({loss}) or gradient norm ({grad_norm}) is not finite; the run "
                           "stops without applying it (the last checkpoint is intact; a lower "
                           "optimizer.learning_rate usually helps, train.nonfinite=skip skips such steps)")
        self.skipped += 1
        if self.process0:
            print(f"semcoder train: warning: step {step}: loss {loss}, gradient norm {grad_norm}: not finite; "
                  f"the update was skipped ({self.skipped} so far)", file=sys.stderr, flush=True)


@jax.jit
def _window_sums(metrics: dict) -> dict:
    """A step's loss as sums (cross-entropy, z-loss, loss tokens, per task); zero for a step not applied."""
    keep = metrics["finite"] > 0
    tokens = jnp.where(keep, metrics["loss_tokens"], 0.0)
    out = {"ce": jnp.where(keep, metrics["loss"] * metrics["loss_tokens"], 0.0),
           "z": jnp.where(keep, metrics["z_loss"] * metrics["loss_tokens"], 0.0), "tokens": tokens,
           "applied": keep.astype(jnp.float32)}
    for key in TASK_METRICS:
        if key in metrics:
            out[key] = jnp.where(keep, metrics[key], 0.0)
    return out


def _add_to_window(sums: dict | None, metrics: dict) -> dict:
    step_sums = _window_sums(metrics)
    return step_sums if sums is None else jax.tree.map(jnp.add, sums, step_sums)


def _window_values(sums: dict) -> dict[str, float]:
    """``loss``, ``z_loss`` (token-weighted means), ``loss_tokens`` and the per-task keys over the steps of a
    logged record's window: one step's batch is too few tokens of a rare task to read a trend from.  A
    window whose steps were all skipped (non-finite) keeps the last step's own values."""
    if not float(sums["applied"]):
        return {}
    tokens = float(sums["tokens"])
    values = {"loss": float(sums["ce"]) / max(tokens, 1.0), "z_loss": float(sums["z"]) / max(tokens, 1.0),
              "loss_tokens": tokens}
    if "task_tokens" in sums:
        values.update(task_scalars(sums["task_loss_sum"], sums["task_tokens"], "loss", "tokens"))
    return values


def task_scalars(loss_sum: np.ndarray, tokens: np.ndarray, loss_key: str, tokens_key: str) -> dict[str, float]:
    """Per-task vectors -> ``{tokens_key}/<task>`` for every task and ``{loss_key}/<task>`` (mean
    cross-entropy) for each task with loss tokens, tasks named by ``TASK_NAMES``."""
    values: dict[str, float] = {}
    for name, ce, n in zip(TASK_NAMES, np.asarray(loss_sum, np.float64), np.asarray(tokens, np.float64), strict=True):
        if n > 0:
            values[f"{loss_key}/{name}"] = float(ce / n)
        values[f"{tokens_key}/{name}"] = float(n)
    return values


def evaluate(eval_fn, params, sources, mesh, *, global_batch: int, seq_len: int, cap: int = 0) -> dict[str, float]:
    """Held-out loss over every held-out record (or at most ``cap`` global batches), token-weighted, and
    per task when the batches carry ``task_ids``.

    Every process runs the same number of eval steps, the most any process has (agreed by an
    all-gather): a process whose share is used up feeds empty rows, which carry no loss.  So the
    result is the same for any batch size or number of hosts, up to float32 summation order.
    """
    local_batches = sources.eval_batches(cap or None)
    steps = max(int(n) for n in _gather_json(len(local_batches)))
    rows = global_batch // jax.process_count()
    keys = sources.batch_keys
    empty = {k: np.zeros((rows, seq_len), np.int32) for k in keys}
    loss_sum, tokens = 0.0, 0.0
    task_loss, task_tokens = None, None
    for i in range(steps):
        local = local_batches[i] if i < len(local_batches) else empty
        local = {k: _pad_rows(np.asarray(local[k]), rows) for k in keys}
        out = jax.device_get(eval_fn(params, step_lib.shard_batch(local, mesh)))
        loss_sum += float(out["loss_sum"])
        tokens += float(out["loss_tokens"])
        if "task_tokens" in out:
            if task_tokens is None:
                task_loss, task_tokens = np.zeros(len(TASK_NAMES)), np.zeros(len(TASK_NAMES))
            task_loss += np.asarray(out["task_loss_sum"], np.float64)
            task_tokens += np.asarray(out["task_tokens"], np.float64)
    result = {"eval_loss": loss_sum / max(tokens, 1.0), "eval_tokens": tokens, "eval_steps": float(steps)}
    if cap:
        result["eval_cap"] = float(cap)
    if task_tokens is not None:
        result.update(task_scalars(task_loss, task_tokens, "eval_loss", "eval_tokens"))
    return result


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """A short final batch padded with all-zero rows (segment 0, loss_mask 0: they count nothing)."""
    if x.shape[0] == rows:
        return x
    pad = np.zeros((rows - x.shape[0],) + x.shape[1:], x.dtype)
    return np.concatenate([x, pad], axis=0)


def _export(params, model: ModelConfig, out_dir: str, run_dir: str, config: TrainRunConfig, process0: bool,
            overwrite: bool = False) -> None:
    from semcoder_jax.convert import save_hf

    host = _host_params(params)
    if process0:
        tokenizer_dir = locations.join(run_dir, "tokenizer")
        save_hf(host, model, out_dir, tokenizer_dir=tokenizer_dir if locations.path(tokenizer_dir).is_dir() else None,
                dtype=config.run.export_dtype, overwrite=overwrite)
        print(f"semcoder train: exported HF checkpoint to {out_dir}", file=sys.stderr, flush=True)
