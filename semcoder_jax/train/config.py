"""The training run's configuration: typed dataclasses, YAML files and ``key=value`` overrides.

A run is described by ``TrainRunConfig`` (sections ``model``, ``data``, ``train``, ``optimizer``,
``mesh``, ``checkpoint``, ``run``, ``distributed``).  ``load_config(path, overrides)`` reads a YAML
file, applies dotted overrides such as ``train.steps=50`` (values parsed as YAML scalars), checks
every key and type, and returns the frozen config.  An unknown key fails with the file:line (or the
override) and the closest known keys.  ``dump_config`` writes the resolved config back as YAML; it is
saved in every run directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import yaml

from semcoder_jax.config import PRESETS, AttentionImpl, DType, ModelConfig, RematPolicy, get_preset
from semcoder_jax.errors import UserError


class TrainConfigError(UserError):
    """A training config that names an unknown key or holds a value of the wrong type."""


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Which architecture to train and how to compute it.

    ``preset`` names an entry of ``semcoder_jax.config.PRESETS``.  ``init_from`` is ``None`` (random
    init from ``train.seed``), ``hf:DIR`` (an HF checkpoint through the converter) or ``orbax:DIR`` (a
    native checkpoint: a run directory, its ``checkpoints/`` or one step of it); with ``init_from`` the
    architecture is the checkpoint's and ``preset`` may be left empty.  The remaining fields override
    the preset (``num_layers`` is for benchmarks and smoke tests of large shapes).
    """

    preset: str | None = None
    init_from: str | None = None
    dtype: DType = "bfloat16"
    param_dtype: DType = "float32"
    remat_policy: RematPolicy = "none"
    attention_impl: AttentionImpl = "xla"
    cudnn_packed_runs: int = 0
    scan_layers: bool = True
    num_layers: int | None = None
    vocab_size: int | None = None
    max_position_embeddings: int | None = None

    def compute_overrides(self) -> dict[str, Any]:
        """How the model is computed: applies to a preset and to a checkpoint's architecture alike."""
        return dict(dtype=self.dtype, param_dtype=self.param_dtype, remat_policy=self.remat_policy,
                    attention_impl=self.attention_impl, cudnn_packed_runs=self.cudnn_packed_runs,
                    scan_layers=self.scan_layers)

    def architecture_overrides(self) -> dict[str, Any]:
        """Architecture fields set on top of the preset (a checkpoint's architecture is never changed)."""
        out: dict[str, Any] = {}
        if self.num_layers is not None:
            out["num_layers"] = self.num_layers
        if self.vocab_size is not None:
            out["vocab_size"] = self.vocab_size
        if self.max_position_embeddings is not None:
            out["max_position_embeddings"] = self.max_position_embeddings
        return out

    def preset_config(self) -> ModelConfig:
        if self.preset is None:
            raise TrainConfigError("model.preset: required when model.init_from is not set")
        if self.preset not in PRESETS:
            close = difflib.get_close_matches(self.preset, list(PRESETS), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else f" (known: {', '.join(sorted(PRESETS))})"
            raise TrainConfigError(f"model.preset: unknown preset {self.preset!r}{hint}")
        return get_preset(self.preset, **self.compute_overrides(), **self.architecture_overrides())


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Where batches come from.

    ``source: pyx`` reads PyX-style records through ``data_pipeline``: ``path`` = data files, a glob
    or a directory (default: the bundled sample), ``tokenizer`` = a tokenizer directory (default: the
    bundled one), ``mode`` = ``pack`` or ``pad`` (the release's one example per row).  Held-out data
    for evaluation: ``eval_path`` files, or ``eval_fraction`` of ``path`` split off by record hash.
    ``pipeline`` passes further ``data_pipeline.PipelineConfig`` fields (checked against it).
    ``source: synthetic`` draws random packed rows addressed by step (benchmarks, smoke tests).

    At start, training measures ``length_sample`` records (0 = all) and says what ``seq_len`` cuts
    off; above ``max_truncated`` (a share of records) that is a warning, or an error with
    ``on_truncation: error``.  ``reset_position: true`` resumes the model and optimizer but starts
    the data from its beginning (needed on purpose after changing the data files or tokenizer).
    """

    source: Literal["pyx", "synthetic"] = "pyx"
    path: str | None = None
    tokenizer: str | None = None
    seq_len: int = 256
    mode: Literal["pack", "pad"] = "pack"
    eval_path: str | None = None
    eval_fraction: float = 0.0
    pipeline: dict = dataclasses.field(default_factory=dict)
    max_truncated: float = 0.01
    on_truncation: Literal["warn", "error"] = "warn"
    length_sample: int = 4096
    reset_position: bool = False


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """How long and in what pieces: ``steps`` or ``epochs`` (one of them), batches in sequences; what a
    non-finite step does (``nonfinite``)."""

    steps: int | None = None
    epochs: float | None = None
    global_batch: int = 8
    micro_batches: int = 1
    seed: int = 0
    z_loss: float = 0.0
    loss_chunk: int = 0
    log_every: int = 1
    eval_every: int = 0
    # 0: every held-out record (comparable across batch sizes and hosts); n > 0: at most n global batches
    eval_batches: int = 0
    # A step whose loss or gradient norm is NaN/inf is never applied; "error" then stops the run naming the
    # step, "skip" goes on and counts it (metrics: skipped_steps).
    nonfinite: Literal["error", "skip"] = "error"


@dataclasses.dataclass(frozen=True)
class OptimizerSection:
    """AdamW with linear warmup and HF-style cosine decay.

    ``schedule``: ``cosine`` (HF ``cosine``: to 0 unless ``min_lr`` is set), ``cosine_with_min_lr``
    (to ``min_lr``, default 0.1 x peak as in the release) or ``constant`` (after warmup).  Weight decay
    skips norm scales and the embedding unless ``decay_norms_and_embeddings``.
    """

    learning_rate: float = 1e-3
    min_lr: float | None = None
    schedule: Literal["cosine", "cosine_with_min_lr", "constant"] = "cosine"
    warmup_steps: int = 0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decay_norms_and_embeddings: bool = False
    grad_clip: float | None = 1.0
    mu_dtype: Literal["float32", "bfloat16"] | None = None


@dataclasses.dataclass(frozen=True)
class MeshSection:
    """Device mesh shape; -1 = whatever remains of the devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def as_dict(self) -> dict[str, int]:
        return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    """Orbax checkpoints in ``RUN/checkpoints``: every ``every`` steps and at the end, ``keep`` kept."""

    every: int = 100
    keep: int = 3
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class RunSection:
    """The run directory (``--run-dir`` sets ``dir``) and what is written there."""

    dir: str | None = None
    tensorboard: bool = True
    progress: bool = True
    export_hf: str | None = None
    export_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    # CPU hosts: keep freed memory in glibc's heap so XLA:CPU reuses each step's buffers rather than
    # mapping and faulting them in again (semcoder_jax.host_memory); no effect with an accelerator.
    keep_host_buffers: bool = True
    # Trace steps profile_from .. profile_from + profile_steps - 1 with jax.profiler into
    # RUN/profile/ and write where the time went (semcoder_jax.train.profile); 0 steps = off.
    profile_steps: int = 0
    profile_from: int = 3


@dataclasses.dataclass(frozen=True)
class DistributedSection:
    """``jax.distributed`` settings; ``auto`` initialises on TPU pods / SLURM / env-configured clusters.

    Set ``coordinator`` (host:port), ``num_processes`` and ``process_id`` for GPU clusters without a
    scheduler and for local multi-process runs on CPU.
    """

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: str | None = None
    auto: bool = False
    peer_timeout_s: float = 60.0
    """A process that has waited this long on a peer that is gone or in another step/phase stops with one
    line naming both (``train/watchdog.py``); 0 turns the watchdog off."""
    heartbeat_timeout_s: int = 100
    """JAX's coordination service declares a silent process dead after this long and ends the run."""


@dataclasses.dataclass(frozen=True)
class RLSection:
    """Reinforcement learning with execution rewards (GRPO family) after the supervised steps.

    With ``tasks`` set (a CRUXEval- or PyX-shaped JSON Lines file, see ``eval.rewards``), the
    run's ``train.steps`` supervised steps on ``data`` are the warm-up, then ``steps`` GRPO steps run in
    ``RUN_DIR/grpo`` (checkpoints, ``metrics.jsonl``, TensorBoard, as supervised training lays them out);
    each takes ``prompts_per_step`` tasks, samples ``group_size`` responses to each on the engine with the
    current parameters, scores them in the sandbox (``sandbox_workers`` processes) and makes
    ``updates_per_batch`` Adam steps at ``learning_rate`` on the objective (``semcoder_jax.rl.objective``:
    ``clip_low``/``clip_high``, ``kl_coef`` to the warm-up's weights, ``aggregation``, ``scale_by_std``,
    ``drop_zero_variance_groups``), accumulating gradients over ``micro_batches`` slices of the rollouts.
    Rewards: ``reward_correct``/``reward_wrong``, ``format_bonus``; an NL -> code solution gets
    ``code_timeout_s`` for its tests.  ``max_prompt_tokens``: prompts longer than this are left out (counted);
    with it, the engine's cache length is fixed at ``max_prompt_tokens + max_new_tokens`` (null: the longest
    task prompt; ``semcoder plan`` then assumes ``data.seq_len``).  ``prefix_cache_tokens``: the engine's
    prefix pool (null: its default, a quarter of slots x cache length; a group's samples share their
    prompt's prefill without it, so GRPO needs little).
    """

    tasks: str | None = None
    steps: int = 100
    prompts_per_step: int = 4
    group_size: int = 4
    updates_per_batch: int = 1
    micro_batches: int = 1
    max_prompt_tokens: int | None = None
    max_new_tokens: int = 128
    prefix_cache_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    slots: int = 16
    learning_rate: float = 1e-4
    grad_clip: float | None = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    aggregation: Literal["sequence", "token", "constant"] = "sequence"
    scale_by_std: bool = True
    drop_zero_variance_groups: bool = False
    reward_correct: float = 1.0
    reward_wrong: float = 0.0
    format_bonus: float = 0.0
    code_timeout_s: float = 10.0
    sandbox_workers: int = 2
    checkpoint_every: int = 20
    log_every: int = 1


@dataclasses.dataclass(frozen=True)
class TrainRunConfig:
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    optimizer: OptimizerSection = OptimizerSection()
    mesh: MeshSection = MeshSection()
    checkpoint: CheckpointSection = CheckpointSection()
    run: RunSection = RunSection()
    distributed: DistributedSection = DistributedSection()
    rl: RLSection = RLSection()

    def validate(self, sources: Mapping[str, str] | None = None) -> None:
        """Cross-field and range checks that need no devices or files.  ``sources`` maps dotted keys to
        where their values came from (``FILE:LINE: `` or ``override 'k=v': ``), for the message."""
        sources = sources or {}

        def fail(key: str, message: str) -> TrainConfigError:
            return TrainConfigError(f"{sources.get(key, '')}{key}: {message}")

        from semcoder_jax import locations

        # gs:// (any served scheme) works for these; rl.tasks is read with local file APIs only
        for key, value in (("run.dir", self.run.dir), ("run.export_hf", self.run.export_hf),
                           ("data.path", self.data.path), ("data.eval_path", self.data.eval_path),
                           ("data.tokenizer", self.data.tokenizer), ("rl.tasks", self.rl.tasks),
                           ("model.init_from", (self.model.init_from or "").partition(":")[2] or None)):
            try:
                locations.check(key + ":", value)
            except locations.LocationError as e:
                raise TrainConfigError(sources.get(key, "") + str(e)) from None
            if key == "rl.tasks" and locations.is_remote(value):
                raise TrainConfigError(f"{sources.get(key, '')}rl.tasks: {value}: the GRPO task file is read from "
                                       "local disk only; copy it beside the run (gcloud storage cp)")
        t = self.train
        if (t.steps is None) == (t.epochs is None):
            key = "train.steps" if "train.steps" in sources else "train.epochs"
            raise TrainConfigError(f"{sources.get(key, '')}train.steps / train.epochs: set exactly one of them "
                                   f"(got steps={t.steps}, epochs={t.epochs})")
        if t.steps is not None and t.steps <= 0:
            raise fail("train.steps", f"must be positive, got {t.steps}")
        if t.epochs is not None and t.epochs <= 0:
            raise fail("train.epochs", f"must be positive, got {t.epochs}")
        for key in ("global_batch", "micro_batches", "log_every"):
            if getattr(t, key) <= 0:
                raise fail(f"train.{key}", f"must be positive, got {getattr(t, key)}")
        for key in ("eval_every", "loss_chunk", "eval_batches"):
            if getattr(t, key) < 0:
                raise fail(f"train.{key}", f"must be >= 0, got {getattr(t, key)}")
        if t.z_loss < 0:
            raise fail("train.z_loss", f"must be >= 0, got {t.z_loss}")
        if t.global_batch % t.micro_batches:
            raise fail("train.micro_batches", f"train.global_batch={t.global_batch} is not divisible by "
                       f"train.micro_batches={t.micro_batches}")
        from semcoder_jax.train.loss import check_loss_chunk

        try:
            check_loss_chunk(t.loss_chunk, self.data.seq_len, "data.seq_len")
        except ValueError as e:
            raise TrainConfigError(f"{sources.get('train.loss_chunk', '')}{e}") from None
        if not 0.0 <= self.data.eval_fraction < 1.0:
            raise fail("data.eval_fraction", f"must lie in [0, 1), got {self.data.eval_fraction}")
        if self.data.seq_len <= 1:
            raise fail("data.seq_len", f"must be > 1, got {self.data.seq_len}")
        if not 0.0 <= self.data.max_truncated <= 1.0:
            raise fail("data.max_truncated", f"must lie in [0, 1] (a share of records), got {self.data.max_truncated}")
        if self.data.on_truncation not in ("warn", "error"):
            raise fail("data.on_truncation", f"must be 'warn' or 'error', got {self.data.on_truncation!r}")
        if self.data.length_sample < 0:
            raise fail("data.length_sample", f"must be >= 0 (0 = every record), got {self.data.length_sample}")
        o = self.optimizer
        if not 0 < o.learning_rate < 3.4e38:
            raise fail("optimizer.learning_rate", f"must be positive and below float32's maximum 3.4e38, "
                       f"got {o.learning_rate}")
        if o.min_lr is not None and not 0 <= o.min_lr <= o.learning_rate:
            raise fail("optimizer.min_lr", f"must lie in [0, optimizer.learning_rate={o.learning_rate}], "
                       f"got {o.min_lr}")
        if o.warmup_steps < 0:
            raise fail("optimizer.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
        if t.steps is not None and o.warmup_steps > t.steps:
            raise fail("optimizer.warmup_steps", f"must not exceed train.steps={t.steps}, got {o.warmup_steps} "
                       f"(for a short run, set optimizer.warmup_steps={min(t.steps, o.warmup_steps) // 2} or 0)")
        for key in ("b1", "b2"):
            if not 0 <= getattr(o, key) < 1:
                raise fail(f"optimizer.{key}", f"must lie in [0, 1), got {getattr(o, key)}")
        if o.eps <= 0:
            raise fail("optimizer.eps", f"must be positive, got {o.eps}")
        if o.weight_decay < 0:
            raise fail("optimizer.weight_decay", f"must be >= 0, got {o.weight_decay}")
        if o.grad_clip is not None and o.grad_clip <= 0:
            raise fail("optimizer.grad_clip", f"must be positive or null (no clipping), got {o.grad_clip}")
        m = self.model
        if m.cudnn_packed_runs < 0:
            raise fail("model.cudnn_packed_runs", f"must be >= 0, got {m.cudnn_packed_runs}")
        for key in ("num_layers", "vocab_size", "max_position_embeddings"):
            if getattr(m, key) is not None and getattr(m, key) <= 0:
                raise fail(f"model.{key}", f"must be positive, got {getattr(m, key)}")
        for key, value in self.mesh.as_dict().items():
            if value != -1 and value <= 0:
                raise fail(f"mesh.{key}", f"must be a positive size or -1 (what remains), got {value}")
        if self.run.profile_steps < 0:
            raise fail("run.profile_steps", f"must be >= 0, got {self.run.profile_steps}")
        if self.run.profile_from < 1:
            raise fail("run.profile_from", f"must be >= 1, got {self.run.profile_from}")
        for key in ("every", "keep"):
            if getattr(self.checkpoint, key) <= 0:
                raise fail(f"checkpoint.{key}", f"must be positive, got {getattr(self.checkpoint, key)}")
        d = self.distributed
        if d.num_processes is not None and d.num_processes <= 0:
            raise fail("distributed.num_processes", f"must be positive, got {d.num_processes}")
        if d.process_id is not None and (d.process_id < 0 or (d.num_processes is not None
                                                              and d.process_id >= d.num_processes)):
            raise fail("distributed.process_id", f"must lie in [0, num_processes), got {d.process_id}")
        if d.peer_timeout_s < 0:
            raise fail("distributed.peer_timeout_s", f"must be >= 0 (0 = no watchdog), got {d.peer_timeout_s}")
        if d.heartbeat_timeout_s <= 0:
            raise fail("distributed.heartbeat_timeout_s", f"must be positive, got {d.heartbeat_timeout_s}")
        r = self.rl
        for key in ("steps", "prompts_per_step", "group_size", "updates_per_batch", "micro_batches", "max_new_tokens",
                    "slots", "sandbox_workers", "checkpoint_every", "log_every", "code_timeout_s"):
            if getattr(r, key) <= 0:
                raise fail(f"rl.{key}", f"must be positive, got {getattr(r, key)}")
        if r.temperature <= 0 or not 0 < r.top_p <= 1:
            raise fail("rl.temperature" if r.temperature <= 0 else "rl.top_p",
                       f"GRPO samples: needs temperature > 0 and 0 < top_p <= 1 (got {r.temperature}, {r.top_p})")
        if not 0 < r.learning_rate < 3.4e38:
            raise fail("rl.learning_rate", f"must be positive, got {r.learning_rate}")
        if r.grad_clip is not None and r.grad_clip <= 0:
            raise fail("rl.grad_clip", f"must be positive or null, got {r.grad_clip}")
        for key in ("clip_low", "clip_high", "kl_coef", "format_bonus"):
            if getattr(r, key) < 0:
                raise fail(f"rl.{key}", f"must be >= 0, got {getattr(r, key)}")
        for key in ("max_prompt_tokens", "prefix_cache_tokens"):
            if getattr(r, key) is not None and getattr(r, key) <= 0:
                raise fail(f"rl.{key}", f"must be positive or null, got {getattr(r, key)}")
        if r.prompts_per_step * r.group_size % r.micro_batches:
            raise fail("rl.micro_batches", f"must divide rl.prompts_per_step x rl.group_size = "
                       f"{r.prompts_per_step * r.group_size}, got {r.micro_batches}")
        if r.reward_correct <= r.reward_wrong:
            raise fail("rl.reward_correct", f"must exceed rl.reward_wrong={r.reward_wrong}, got {r.reward_correct}")
        if m.init_from is not None:
            scheme = m.init_from.split(":", 1)[0]
            if ":" not in m.init_from or scheme not in ("hf", "orbax"):
                raise fail("model.init_from", f"expected hf:DIR or orbax:DIR, got {m.init_from!r}")
        if m.preset is not None or m.init_from is None:
            try:
                m.preset_config()
            except TrainConfigError as e:
                raise TrainConfigError(f"{sources.get('model.preset', '')}{e}") from None
            except ValueError as e:  # the model config's own checks (head sizes, dtypes, ...)
                raise TrainConfigError(f"{sources.get('model.preset', '')}model: {e}") from None


# ---- generic dataclass <-> dict with checking ------------------------------------------------


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Checks (and mildly converts: int -> float) ``value`` against a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except TrainConfigError as e:
                errors.append(str(e))
        raise TrainConfigError(errors[0] if len(errors) == 1 else f"{where}: invalid value {value!r}")
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TrainConfigError(f"{where}: must be one of {list(allowed)}, got {value!r}{hint}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise TrainConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TrainConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TrainConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise TrainConfigError(f"{where}: must be a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if isinstance(value, int) and not isinstance(value, bool):  # `key=0` reads as YAML's int 0
            value = str(value)
        if not isinstance(value, str):
            raise TrainConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if annotation is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise TrainConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"unsupported annotation {annotation!r} at {where}")


def _unknown_key_error(key: str, known: list[str], prefix: str, location: str) -> TrainConfigError:
    full = f"{prefix}{key}"
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else \
        f"; known keys: {', '.join(prefix + k for k in known)}"
    return TrainConfigError(f"{location}unknown config key {full!r}{hint}")


def from_dict(cls, data: Mapping[str, Any], *, prefix: str = "", lines: Mapping[str, str] | None = None):
    """Builds dataclass ``cls`` from nested dicts; unknown keys and wrong types are ``TrainConfigError``."""
    lines = lines or {}
    if not isinstance(data, Mapping):
        raise TrainConfigError(f"{lines.get(prefix.rstrip('.'), '')}{prefix.rstrip('.') or 'config'}: "
                               f"expected a mapping, got {data!r}")
    hints = _hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        location = lines.get(dotted, "")
        if key not in known:
            raise _unknown_key_error(str(key), known, prefix, location)
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = from_dict(annotation, value if value is not None else {}, prefix=dotted + ".", lines=lines)
        else:
            try:
                kwargs[key] = _coerce(value, annotation, dotted)
            except TrainConfigError as e:
                raise TrainConfigError(f"{location}{e}") from None
    return cls(**kwargs)


def to_dict(obj) -> dict[str, Any]:
    return dataclasses.asdict(obj)


# ---- YAML and overrides ------------------------------------------------------------------------


def _yaml_key_lines(text: str, path: str) -> dict[str, str]:
    """dotted key -> 'FILE:LINE: ' for every mapping key in a YAML document; a key given twice in one
    mapping is an error naming both lines (YAML loaders silently keep the last)."""
    out: dict[str, str] = {}
    root = yaml.compose(text)

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                dotted = f"{prefix}{key_node.value}"
                line = key_node.start_mark.line + 1
                if dotted in seen:
                    raise TrainConfigError(f"{path}:{line}: duplicate key {dotted!r} (first given at line "
                                           f"{seen[dotted]}); remove one of them")
                seen[dotted] = line
                out[dotted] = f"{path}:{line}: "
                walk(value_node, dotted + ".")

    if root is not None:
        walk(root, "")
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=VALUE`` -> (['a', 'b'], VALUE parsed as a YAML scalar/flow value)."""
    if "=" not in text:
        raise TrainConfigError(f"override {text!r}: expected KEY=VALUE (e.g. train.steps=50)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise TrainConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise TrainConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str],
                    sources: dict[str, str] | None = None) -> dict[str, Any]:
    """Applies dotted overrides to a nested dict, checking every key against the dataclasses.  With
    ``sources``, each overridden key (and everything below it) is recorded as coming from its override."""
    data = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    for text in overrides:
        parts, value = parse_override(text)
        if sources is not None:
            dotted = ".".join(parts)
            for key in [k for k in sources if k == dotted or k.startswith(dotted + ".")]:
                del sources[key]
            sources[dotted] = f"override {text!r}: "
            if isinstance(value, Mapping):
                for sub in _nested_keys(value, dotted + "."):
                    sources[sub] = f"override {text!r}: "
        cls: Any = TrainRunConfig
        node = data
        for depth, part in enumerate(parts):
            prefix = ".".join(parts[:depth]) + ("." if depth else "")
            is_dataclass_level = cls is not None and dataclasses.is_dataclass(cls)
            if is_dataclass_level:
                known = [f.name for f in dataclasses.fields(cls)]
                if part not in known:
                    raise _unknown_key_error(part, known, prefix, f"override {text!r}: ")
                annotation = _hints(cls)[part]
            last = depth == len(parts) - 1
            if last:
                node[part] = value
                break
            if is_dataclass_level and not dataclasses.is_dataclass(annotation) and not (
                    annotation is dict or typing.get_origin(annotation) is dict):
                raise TrainConfigError(f"override {text!r}: {prefix}{part} is a value, not a section")
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, Mapping) else {}
            node = node[part]
            cls = annotation if is_dataclass_level and dataclasses.is_dataclass(annotation) else None
    return data


def _nested_keys(value: Mapping, prefix: str) -> list[str]:
    keys = []
    for key, sub in value.items():
        keys.append(f"{prefix}{key}")
        if isinstance(sub, Mapping):
            keys += _nested_keys(sub, f"{prefix}{key}.")
    return keys


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainRunConfig:
    """Reads a YAML config (or the defaults when ``path`` is None), applies overrides, validates."""
    data: dict[str, Any] = {}
    lines: dict[str, str] = {}
    if path is not None:
        from semcoder_jax import locations

        path = os.fspath(path)
        try:
            where = locations.path(path, "--config")
            if not where.exists():
                raise TrainConfigError(f"{path}: config file not found")
            text = where.read_text(encoding="utf-8")
        except locations.LocationError as e:
            raise TrainConfigError(str(e)) from None
        try:
            loaded = yaml.safe_load(text)
            lines = _yaml_key_lines(text, path)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else path
            raise TrainConfigError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise TrainConfigError(f"{path}: expected a mapping of sections at the top level")
        data = loaded
    data = apply_overrides(data, list(overrides), lines)
    config = from_dict(TrainRunConfig, data, lines=lines)
    config.validate(lines)
    return config


def dump_config(config: TrainRunConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def config_from_yaml_text(text: str) -> TrainRunConfig:
    """Parses a config saved by ``dump_config`` (the run directory's ``config.yaml``)."""
    return from_dict(TrainRunConfig, yaml.safe_load(text) or {})
