"""The device mesh and the one table that says how every named axis is laid out on it.

The mesh has three named axes:
- ``data``: pure data parallelism (parameters replicated, batch split);
- ``fsdp``: data parallelism with parameters and optimizer state split as well (ZeRO-3 style);
- ``tensor``: tensor (model) parallelism over heads, MLP width and vocabulary.

Parameters carry logical axis names (``vocab``, ``embed``, ...; see ``semcoder_jax.model``).  The
rules table ``LOGICAL_AXIS_RULES`` maps each logical name to mesh axes, so "how is X sharded?" has
exactly one answer.  A dimension whose size is not divisible by its mesh axes is replicated instead
(reported by ``describe_param_shardings``) rather than failing deep inside XLA.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from semcoder_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical name -> mesh axis (or tuple of mesh axes, or None = replicated)
LOGICAL_AXIS_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "length": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "norm": None,
    "layers": None,
    "act_embed": None,  # the hidden dim of [batch, length, hidden] activations
}


# The mesh and rules bound by ``activation_sharding`` while tracing, for code that needs the concrete
# mesh rather than the abstract one (``shard_map`` regions around fused kernels: see ``attention.per_device``).
_BOUND: contextvars.ContextVar[tuple[Mesh, Mapping[str, str | tuple[str, ...] | None]] | None] = \
    contextvars.ContextVar("semcoder_activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None,
                        rules: Mapping[str, str | tuple[str, ...] | None] = LOGICAL_AXIS_RULES) -> Iterator[None]:
    """While tracing inside it, the model's logical activation constraints bind to ``mesh`` by ``rules``.

    Without it (``mesh`` None, e.g. generation) the constraints are no-ops.
    """
    if mesh is None:
        yield
        return
    import flax.linen as nn

    token = _BOUND.set((mesh, dict(rules)))
    try:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(list(rules.items())):
            yield
    finally:
        _BOUND.reset(token)


def bound_mesh() -> tuple[Mesh, Mapping[str, str | tuple[str, ...] | None]] | None:
    """The (mesh, rules) of the innermost ``activation_sharding``, or None outside one."""
    return _BOUND.get()


class MeshError(UserError):
    """A mesh shape that does not fit the devices, or a batch that does not fit the mesh."""


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Fills in the one axis given as -1 with what remains; checks the product equals ``num_devices``."""
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise MeshError(f"mesh: unknown axis {', '.join(unknown)} (axes are {', '.join(MESH_AXES)})")
    sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise MeshError(f"mesh: at most one axis may be -1, got {', '.join('mesh.' + a for a in free)}")
    bad = [f"mesh.{a}={s}" for a, s in sizes.items() if s == 0 or s < -1]
    if bad:
        raise MeshError(f"mesh: axis sizes must be positive or -1, got {', '.join(bad)}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if num_devices % fixed:
            raise MeshError(f"mesh: {num_devices} devices are not divisible by the fixed axes "
                            f"({_fmt(sizes)}, product {fixed})")
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise MeshError(f"mesh: {_fmt(sizes)} needs {fixed} devices but {num_devices} are available "
                        "(set one axis to -1 to take what remains)")
    return sizes


def _fmt(sizes: Mapping[str, int]) -> str:
    return " x ".join(f"{a}={s}" for a, s in sizes.items())


def build_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``Mesh`` over ``devices`` (default: all, across processes) with axes data, fsdp, tensor.

    Devices are laid out in ``jax.devices()`` order (process-major), ``tensor`` innermost, so that
    tensor-parallel groups stay within a host and each process holds a contiguous block of the batch.
    Axis types are GSPMD-style (Auto): jit propagates shardings from the in/out annotations.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(shape, len(devices))
    grid = np.asarray(devices, dtype=object).reshape([sizes[a] for a in MESH_AXES])
    return Mesh(grid, MESH_AXES)


def mesh_shape(mesh: Mesh) -> dict[str, int]:
    return {name: int(size) for name, size in mesh.shape.items()}


def logical_to_mesh_spec(logical: PartitionSpec | Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                         rules: Mapping[str, str | tuple[str, ...] | None] = LOGICAL_AXIS_RULES
                         ) -> PartitionSpec:
    """Maps a spec of logical names to mesh axes by ``rules``; replicates dims the mesh does not divide."""
    if len(logical) != len(shape):
        raise ValueError(f"logical spec {logical} has {len(logical)} names for a rank-{len(shape)} array")
    used: set[str] = set()
    out: list[str | tuple[str, ...] | None] = []
    for name, dim in zip(logical, shape):
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule in the sharding table")
        target = rules[name]
        axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        # Mesh axes of size 1 change nothing; an axis already used by an earlier dim cannot repeat.
        axes = tuple(a for a in axes if mesh.shape[a] > 1 and a not in used)
        size = math.prod(mesh.shape[a] for a in axes)
        if not axes or dim % size:
            out.append(None)
            continue
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def per_device_attention_specs(q_shape: Sequence[int], k_shape: Sequence[int], mesh,
                                rules: Mapping[str, str | tuple[str, ...] | None] = LOGICAL_AXIS_RULES
                                ) -> tuple[PartitionSpec, PartitionSpec, PartitionSpec]:
    """Mesh specs (q, k/v, per-row inputs) that split an attention kernel's work by rows and heads.

    Rows follow the ``batch`` rule and heads the ``heads``/``kv_heads`` rules, as the activations
    around the kernel do.  Heads are split only when the same mesh axes divide both the query and
    the key/value heads, so that every device keeps whole grouped-query groups; otherwise each
    device runs all heads of its rows.  Per-row inputs ([B, T, ...]: segment ids, slots, RoPE
    tables) are split by rows only.
    """
    q_spec = logical_to_mesh_spec(("batch", "length", "heads", "head_dim"), q_shape, mesh, rules)
    kv_spec = logical_to_mesh_spec(("batch", "length", "kv_heads", "head_dim"), k_shape, mesh, rules)
    if q_spec[2] != kv_spec[2]:
        q_spec = PartitionSpec(q_spec[0], None, None, None)
        kv_spec = PartitionSpec(kv_spec[0], None, None, None)
    return q_spec, kv_spec, PartitionSpec(q_spec[0])


def param_shardings(abstract_params, logical_specs, mesh: Mesh,
                    rules: Mapping[str, str | tuple[str, ...] | None] = LOGICAL_AXIS_RULES):
    """NamedSharding tree for parameters from their shapes and logical-name specs."""
    return jax.tree.map(
        lambda leaf, spec: NamedSharding(mesh, logical_to_mesh_spec(spec, leaf.shape, mesh, rules)),
        abstract_params, logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh, rank: int = 2) -> NamedSharding:
    """Batch rows split over (data, fsdp); every other dim replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (rank - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch is split (data x fsdp)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def describe_param_shardings(abstract_params, shardings) -> list[str]:
    """One line per parameter: path, shape, mesh spec — for logs and for checking the table."""
    lines = []
    flat, _ = jax.tree_util.tree_flatten_with_path(abstract_params)
    flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, leaf), sharding in zip(flat, flat_s):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        lines.append(f"{name} {tuple(leaf.shape)} {sharding.spec}")
    return lines
