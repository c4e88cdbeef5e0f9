"""Model configuration: the architecture as typed data, presets, and HF ``config.json`` I/O.

``ModelConfig`` holds what determines the parameters and the function the decoder computes
(architecture) plus how it is computed (dtypes, attention kernel, rematerialisation).  Only the
architecture part round-trips through Hugging Face ``config.json``; both the layout of released
checkpoints (top-level ``rope_theta`` + ``rope_scaling``) and the transformers 5 layout
(``rope_parameters``) are read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, Literal

from semcoder_jax.errors import UserError

DType = Literal["float32", "bfloat16", "float16"]
AttentionImpl = Literal["xla", "cudnn", "splash", "cpu"]
CPU_ATTENTION_HEAD_DIMS = (16, 32, 64, 128, 256)  # what kernels/cpu_attention.cc instantiates
RematPolicy = Literal["none", "minimal", "minimal_attention", "dots", "full"]

SUPPORTED_MODEL_TYPES = ("llama",)


class ConfigError(UserError):
    """A model configuration that is malformed or describes something we do not support."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A LLaMA-architecture decoder (DeepSeek-Coder is one) and how to run it.

    Architecture fields mirror ``transformers.LlamaConfig``; ``rope_scaling_factor`` is the factor of
    linear RoPE scaling (1.0 = none).  ``dtype`` is the compute dtype, ``param_dtype`` the storage
    dtype of parameters.
    """

    vocab_size: int = 32256
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int | None = None
    max_position_embeddings: int = 16384
    rope_theta: float = 100000.0
    rope_scaling_factor: float = 4.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = 32013
    eos_token_id: int | None = 32014
    pad_token_id: int | None = None
    # How the decoder is computed (not part of the HF config).
    dtype: DType = "float32"
    param_dtype: DType = "float32"
    attention_impl: AttentionImpl = "xla"
    # cudnn only: packed rows of up to this many segment runs use cuDNN's packed (ragged) layout, each
    # run causal on its own, instead of the segment mask as a bias; 0 = off.  Hopper or later.
    cudnn_packed_runs: int = 0
    remat_policy: RematPolicy = "none"
    # True: one ``nn.scan`` over the stacked layers (compile time independent of depth; the choice
    # on accelerators).  False: a Python loop over the same stacked parameters, which spares XLA:CPU
    # the scan's stacked residual buffers (fwd+bwd 580 -> 521 ms on the CPU benchmark shape).
    # Parameters are identical.
    scan_layers: bool = True

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "max_position_embeddings"):
            if int(getattr(self, name)) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_heads > 0 and self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim is None and self.num_heads > 0 and self.hidden_size % self.num_heads:
            problems.append(f"hidden_size ({self.hidden_size}) is not divisible by num_heads ({self.num_heads}); set head_dim")
        if self.resolved_head_dim % 2:
            problems.append(f"head_dim must be even for RoPE, got {self.resolved_head_dim}")
        if self.rope_scaling_factor <= 0:
            problems.append(f"rope_scaling_factor must be positive, got {self.rope_scaling_factor}")
        for name, allowed in (("dtype", DType), ("param_dtype", DType), ("attention_impl", AttentionImpl),
                              ("remat_policy", RematPolicy)):
            if getattr(self, name) not in allowed.__args__:
                problems.append(f"{name} must be one of {list(allowed.__args__)}, got {getattr(self, name)!r}")
        if self.cudnn_packed_runs < 0 or (self.cudnn_packed_runs and self.attention_impl != "cudnn"):
            problems.append(f"cudnn_packed_runs must be 0, or positive with attention_impl 'cudnn', got "
                            f"{self.cudnn_packed_runs} with {self.attention_impl!r}")
        if self.attention_impl == "cpu" and self.resolved_head_dim not in CPU_ATTENTION_HEAD_DIMS:
            problems.append(f"attention_impl 'cpu' supports head_dim {list(CPU_ATTENTION_HEAD_DIMS)}, "
                            f"got {self.resolved_head_dim}; use 'xla'")
        if problems:
            raise ConfigError("invalid model config: " + "; ".join(problems))

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // max(self.num_heads, 1)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count implied by the architecture (embeddings and head included)."""
        d, f, v, hd = self.hidden_size, self.intermediate_size, self.vocab_size, self.resolved_head_dim
        attn = d * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        per_layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else v * d
        return v * d + self.num_layers * per_layer + d + head

    # ---- Hugging Face config.json -------------------------------------------------------------

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` of an equivalent ``LlamaForCausalLM`` (released-checkpoint layout).

        ``rope_scaling`` is exactly the release's ``{"type": "linear", "factor": F}`` (or None): every
        transformers version reads that form (4.43+ and 5 add ``rope_type`` themselves), while
        transformers <= 4.42 refuses a dict with any third key.
        """
        rope_scaling = None
        if self.rope_scaling_factor != 1.0:
            rope_scaling = {"type": "linear", "factor": float(self.rope_scaling_factor)}
        out: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.resolved_head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": float(self.rope_theta),
            "rope_scaling": rope_scaling,
            "rms_norm_eps": self.rms_norm_eps,
            "hidden_act": "silu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "pretraining_tp": 1,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "use_cache": True,
        }
        return out

    def to_hf_rope_parameters(self) -> dict[str, Any]:
        """The same RoPE in transformers 5's ``rope_parameters`` form."""
        if self.rope_scaling_factor == 1.0:
            return {"rope_type": "default", "rope_theta": float(self.rope_theta)}
        return {"rope_type": "linear", "factor": float(self.rope_scaling_factor), "rope_theta": float(self.rope_theta)}

    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any], source: str = "config.json", **overrides: Any) -> ModelConfig:
        """Reads a LlamaConfig-style dict; refuses what the decoder does not implement."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"{source}: unsupported model_type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
        for flag in ("attention_bias", "mlp_bias"):
            if hf.get(flag):
                raise ConfigError(f"{source}: {flag}=true is not supported (the decoder has no biases)")
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{source}: hidden_act={act!r} is not supported (only 'silu')")
        if hf.get("pretraining_tp", 1) not in (1, None):
            raise ConfigError(f"{source}: pretraining_tp={hf['pretraining_tp']} is not supported (only 1)")
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        missing = [k for k in required if k not in hf]
        if missing:
            raise ConfigError(f"{source}: missing key(s) {', '.join(missing)}")
        theta, factor = _read_rope(hf, source)
        num_heads = int(hf["num_attention_heads"])
        kv = hf.get("num_key_value_heads")
        fields: dict[str, Any] = dict(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(kv) if kv is not None else num_heads,
            head_dim=int(hf["head_dim"]) if hf.get("head_dim") is not None else None,
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            rope_theta=theta,
            rope_scaling_factor=factor,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            bos_token_id=_single_id(hf.get("bos_token_id")),
            eos_token_id=_single_id(hf.get("eos_token_id")),
            pad_token_id=_single_id(hf.get("pad_token_id")),
        )
        if fields["head_dim"] is not None and fields["head_dim"] == fields["hidden_size"] // num_heads:
            fields["head_dim"] = None
        fields.update(overrides)
        try:
            return cls(**fields)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None


def _single_id(value: Any) -> int | None:
    if isinstance(value, list):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def _read_rope(hf: Mapping[str, Any], source: str) -> tuple[float, float]:
    """(theta, linear factor) from either config layout."""
    params = hf.get("rope_parameters")
    scaling = hf.get("rope_scaling")
    theta = hf.get("rope_theta")
    if isinstance(params, Mapping):
        theta = params.get("rope_theta", theta)
        if scaling is None and params.get("rope_type", "default") != "default":
            scaling = params
    factor = 1.0
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ("linear", "default"):
            raise ConfigError(f"{source}: rope scaling type {kind!r} is not supported (only 'linear')")
        if kind == "linear":
            if "factor" not in scaling:
                raise ConfigError(f"{source}: linear rope scaling without 'factor'")
            factor = float(scaling["factor"])
    return float(theta if theta is not None else 10000.0), factor


# ---- presets ---------------------------------------------------------------------------------

_DEEPSEEK_COMMON = dict(
    vocab_size=32256, max_position_embeddings=16384, rope_theta=100000.0, rope_scaling_factor=4.0,
    rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=32013, eos_token_id=32014,
)

PRESETS: dict[str, dict[str, Any]] = {
    "deepseek-coder-1.3b": dict(_DEEPSEEK_COMMON, hidden_size=2048, intermediate_size=5504, num_layers=24,
                                num_heads=16, num_kv_heads=16),
    "deepseek-coder-6.7b": dict(_DEEPSEEK_COMMON, hidden_size=4096, intermediate_size=11008, num_layers=32,
                                num_heads=32, num_kv_heads=32),
    "deepseek-coder-33b": dict(_DEEPSEEK_COMMON, hidden_size=7168, intermediate_size=19200, num_layers=62,
                               num_heads=56, num_kv_heads=8),
    "tiny": dict(vocab_size=1024, hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4,
                 num_kv_heads=2, max_position_embeddings=2048, rope_theta=10000.0, rope_scaling_factor=1.0,
                 rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
}
PRESETS["semcoder-6.7b"] = PRESETS["deepseek-coder-6.7b"]


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """A named architecture; ``overrides`` replace fields (e.g. ``dtype='bfloat16'``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return ModelConfig(**{**PRESETS[name], **overrides})


def load_hf_config(path: str | os.PathLike, **overrides: Any) -> ModelConfig:
    """Reads ``config.json`` from an HF directory or a file path."""
    path = os.fspath(path)
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise ConfigError(f"{file}: not found (an HF model directory needs config.json)")
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a JSON object")
    return ModelConfig.from_hf_dict(data, source=file, **overrides)


def model_config_to_dict(config: ModelConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def model_config_from_dict(data: Mapping[str, Any], source: str = "model_config") -> ModelConfig:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}")
    return ModelConfig(**data)
