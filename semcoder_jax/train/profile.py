"""Where a compiled step spends its time: a ``jax.profiler`` trace folded onto the model's parts.

``profile_compiled(compiled, run, steps)`` traces ``steps`` calls of ``run`` and returns a
``StepProfile``: milliseconds per step for each part of the model (attention core, attention
projections, MLP, norms, LM head, loss, embedding, optimizer, collectives, other), forward and
backward apart, plus the slowest HLO instructions.

How time is counted:
- Events are the trace's XLA op events (``args.hlo_op`` of the compiled module): on GPU the device
  kernels, on CPU the thunk executor's ops.  On XLA:CPU independent ops run at once on different
  cores, so plain sums of durations count the same wall time twice; every instant of the step is
  instead shared equally among the ops running at that instant (a sweep over start/end points), so
  the parts add up to the busy time of the device.
- Each HLO instruction is mapped to the JAX ``op_name`` of its metadata in ``compiled.as_text()``
  (``jit(train_step)/transpose(jvp(Decoder))/DecoderLayer/mlp/...``), which names the Flax module
  and whether it is the forward (``jvp``) or backward (``transpose``) pass.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")  # name, the rest of the line
_OP_NAME = re.compile(r'metadata=\{[^}]*op_name="([^"]*)"')
_LAYOUT = re.compile(r"\{[^{}]*\}")
_SIGNATURE_END = re.compile(r",\s*(?:kind=|calls=|metadata=|backend_config=|sharding=)")


def signatures_from_hlo(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> its result shape, opcode and operands (layouts dropped), e.g.
    ``f32[8,4,128,352] copy(%wrapped_broadcast.6)``.

    For instructions that XLA made without a JAX op, this is all the report can say about them.
    """
    out: dict[str, str] = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if m and m.group(1) not in out:
            text = _SIGNATURE_END.split(m.group(2), maxsplit=1)[0]
            while _LAYOUT.search(text):
                text = _LAYOUT.sub("", text)
            out[m.group(1)] = " ".join(text.split())
    return out


def op_names_from_hlo(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the JAX ``op_name`` its metadata records (instructions without one are left out)."""
    out: dict[str, str] = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if m:
            name = _OP_NAME.search(m.group(2))
            if name and m.group(1) not in out:
                out[m.group(1)] = name.group(1)
    return out


# (part, test on the op_name) in order; the first match wins.
_PARTS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("collectives", lambda n: any(c in n for c in ("all-gather", "all_gather", "reduce-scatter", "reduce_scatter",
                                                    "all-reduce", "psum", "all-to-all"))),
    # q/k/v/o projections contract with a weight ([heads, head_dim, embed] = "hkd" / "dhk"); the rest of
    # the attention module is its core: RoPE, scores, softmax, values, or one fused kernel call.
    ("attention projections", lambda n: "/attention/" in n and ("hkd" in n or "dhk" in n)),
    ("attention core", lambda n: "/attention/" in n),
    ("mlp", lambda n: "/mlp/" in n),
    ("norms", lambda n: "_norm/" in n),
    ("lm head", lambda n: any(s in n for s in ("btd,vd->btv", "btv,vd->btd", "btd,btv->", "btv,btd->"))),
    ("embedding", lambda n: "Decoder" in n and ("_take" in n or "gather" in n or "scatter" in n)),
    ("loss", lambda n: any(s in n for s in ("logsumexp", "take_along_axis", "reduce_max", "jvp()"))),
    ("optimizer", lambda n: "jvp" not in n and "transpose" not in n),
)


def classify(op_name: str) -> tuple[str, str]:
    """(part of the model, 'fwd' | 'bwd' | '') for an ``op_name``; unknown names are ('other', '').

    An instruction XLA made without a JAX op (``op_name`` empty: the layer scan's buffer updates,
    copies) is ('unattributed', '') rather than counted as the optimizer's.
    """
    if not op_name:
        return "unattributed", ""
    direction = "bwd" if "transpose(" in op_name else ("fwd" if "jvp(" in op_name else "")
    for part, test in _PARTS:
        if test(op_name):
            return part, direction
    return "other", direction


def wall_shares(events: Iterable[tuple[float, float, str]]) -> dict[str, float]:
    """key -> wall time, from (start, duration, key) intervals: each instant is split evenly among
    the intervals covering it, so the shares add up to the union of the intervals."""
    points: list[tuple[float, int, str]] = []
    for start, dur, key in events:
        if dur > 0:
            points.append((start, 1, key))
            points.append((start + dur, -1, key))
    points.sort(key=lambda p: (p[0], p[1]))
    active: dict[str, int] = defaultdict(int)
    shares: dict[str, float] = defaultdict(float)
    running = 0
    last = None
    for t, delta, key in points:
        if last is not None and running and t > last:
            span = (t - last) / running
            for k, count in active.items():
                shares[k] += span * count
        active[key] += delta
        if not active[key]:
            del active[key]
        running += delta
        last = t
    return dict(shares)


@dataclasses.dataclass
class StepProfile:
    """Milliseconds per step by (part, direction) and by HLO instruction; ``busy_ms`` is their sum."""

    steps: int
    wall_ms: float
    parts: dict[tuple[str, str], float]
    instructions: dict[str, float]
    op_names: dict[str, str]
    source: str = "host ops"  # or "device kernels": which trace events were counted
    signatures: dict[str, str] = dataclasses.field(default_factory=dict)  # shapes, for instructions without an op

    @property
    def busy_ms(self) -> float:
        return sum(self.parts.values())

    def table(self, top: int = 12) -> str:
        """A plain-text report: parts (fwd / bwd / total, % of busy time), then the slowest instructions."""
        by_part: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for (part, direction), ms in self.parts.items():
            by_part[part][direction or "-"] += ms
        busy = self.busy_ms or 1.0
        lines = [f"{self.steps} steps, {self.wall_ms:.1f} ms/step wall, {self.busy_ms:.1f} ms/step busy "
                 f"({self.source}; concurrent ones share their overlap)",
                 f"{'part':24s} {'fwd':>8s} {'bwd':>8s} {'other':>8s} {'total':>8s} {'share':>6s}"]
        for part, d in sorted(by_part.items(), key=lambda kv: -sum(kv[1].values())):
            total = sum(d.values())
            lines.append(f"{part:24s} {d.get('fwd', 0):8.2f} {d.get('bwd', 0):8.2f} {d.get('-', 0):8.2f} "
                         f"{total:8.2f} {100 * total / busy:5.1f}%")
        hidden = sum(ms for name, ms in self.instructions.items() if name.startswith("command_buffer"))
        if hidden:
            lines.append(f"note: {hidden:.1f} ms/step ran inside XLA:GPU command buffers, which hide their kernels; "
                         "set XLA_FLAGS=--xla_gpu_enable_command_buffer= to attribute them")
        lines.append(f"slowest {top} instructions (ms/step):")
        for name, ms in sorted(self.instructions.items(), key=lambda kv: -kv[1])[:top]:
            what = self.op_names.get(name) or f"(no JAX op) {self.signatures.get(name, '?')}"
            lines.append(f"  {ms:8.2f}  {name:28s} {what[:110]}")
        return "\n".join(lines)


def _trace_events(trace_dir: str) -> list[dict[str, Any]]:
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
    if not paths:
        raise FileNotFoundError(f"{trace_dir}: the profiler wrote no *.trace.json.gz")
    with gzip.open(paths[-1], "rt", encoding="utf-8") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def fold_trace(events: list[Mapping[str, Any]], op_names: Mapping[str, str], module: str,
               steps: int, wall_s: float, signatures: Mapping[str, str] | None = None) -> StepProfile:
    """A ``StepProfile`` from raw trace events of ``steps`` steps of the HLO module ``module``."""
    processes = {e.get("pid"): (e.get("args") or {}).get("name", "") for e in events
                 if e.get("ph") == "M" and e.get("name") == "process_name"}
    ops = [e for e in events if e.get("ph") == "X" and "hlo_op" in (e.get("args") or {})
           and module in str(e["args"].get("hlo_module", ""))]
    on_device = [e for e in ops if "/device:" in processes.get(e.get("pid"), "")]
    ops = on_device or ops  # device kernels when there are any (GPU/TPU), else host thunks (CPU)
    shares = wall_shares((float(e["ts"]), float(e["dur"]), e["args"]["hlo_op"]) for e in ops)
    per_step = {name: us / 1000.0 / steps for name, us in shares.items()}
    parts: dict[tuple[str, str], float] = defaultdict(float)
    for name, ms in per_step.items():
        parts[classify(op_names.get(name, ""))] += ms
    return StepProfile(steps=steps, wall_ms=1000.0 * wall_s / steps, parts=dict(parts),
                       instructions=per_step, op_names=dict(op_names),
                       source="device kernels" if on_device else "host ops",
                       signatures={name: sig for name, sig in (signatures or {}).items()
                                   if name in per_step and name not in op_names})


def fold_trace_dir(trace_dir: str, hlo_text: str, steps: int, wall_s: float) -> StepProfile:
    """Folds the trace ``jax.profiler`` wrote into ``trace_dir`` for ``steps`` steps of the HLO module."""
    module = re.search(r"HloModule\s+([\w.\-]+)", hlo_text)
    return fold_trace(_trace_events(trace_dir), op_names_from_hlo(hlo_text), module.group(1) if module else "",
                      steps, wall_s, signatures_from_hlo(hlo_text))


def profile_compiled(compiled, run: Callable[[], Any], steps: int = 3, trace_dir: str | None = None) -> StepProfile:
    """Trace ``steps`` calls of ``run`` (which must call ``compiled`` once and block until done)."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = trace_dir or tmp
        with jax.profiler.trace(directory):
            start = time.perf_counter()
            for _ in range(steps):
                run()
            wall = time.perf_counter() - start
        return fold_trace_dir(directory, compiled.as_text(), steps, wall)


class TraceWindow:
    """Traces steps ``first .. first + count - 1`` (1-based step numbers) of a training loop.

    ``before_step(n)`` / ``after_step(n, outputs)`` bracket each step; the trace starts before the
    first step of the window that runs and stops after the last one (outputs are waited for), and
    ``after_step`` then returns the folded ``StepProfile``.  ``close()`` stops a trace that a
    preempted run left open.  The raw trace stays in ``directory`` for TensorBoard or Perfetto.
    """

    def __init__(self, directory: str, first: int, count: int, hlo_text: str) -> None:
        self.directory, self.first, self.count, self.hlo_text = directory, first, count, hlo_text
        self._start: float | None = None
        self._steps = 0

    def _inside(self, n: int) -> bool:
        return self.first <= n < self.first + self.count

    def before_step(self, n: int) -> None:
        if self._start is None and self._steps == 0 and self._inside(n):
            os.makedirs(self.directory, exist_ok=True)
            jax.profiler.start_trace(self.directory)
            self._start = time.perf_counter()

    def after_step(self, n: int, outputs: Any) -> StepProfile | None:
        if self._start is None:
            return None
        self._steps += 1
        if n < self.first + self.count - 1:
            return None
        jax.block_until_ready(outputs)
        wall = time.perf_counter() - self._start
        jax.profiler.stop_trace()
        self._start = None
        return fold_trace_dir(self.directory, self.hlo_text, self._steps, wall)

    def close(self) -> None:
        if self._start is not None:
            jax.profiler.stop_trace()
            self._start = None
