"""What a benchmark run measured, kept as data: ``benchmarks/results/NAME.json``.

A benchmark called with ``--record`` writes its repeats' raw results here, with the machine, the date, the
command line and the commit; ``benchmarks/figures.py`` renders the docs' tables and figures from these files
(never from numbers typed into the docs), and ``tests/docs/test_figures.py`` fails when a doc and its
record disagree.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers depend on: CPU model and count, memory, accelerators, OS, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory, "os": platform.platform(),
            "python": platform.python_version(), "load_average_at_start": load, "accelerators": accelerators()}


def accelerators() -> list[str]:
    """GPU names from ``nvidia-smi`` (empty without one)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


SOFTWARE = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "transformers", "tensorflow", "tensorflow-cpu", "libtpu")


def versions() -> dict[str, str]:
    """Installed versions of the packages a figure may depend on (those present)."""
    from importlib import metadata

    found = {}
    for name in SOFTWARE:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(RESULTS.parent), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def write(name: str, repeats: list[dict[str, Any]], *, started: dict[str, Any]) -> Path:
    """Writes the record atomically (temporary file, then rename) and returns its path."""
    RESULTS.mkdir(exist_ok=True)
    record = {"benchmark": name, "date": datetime.date.today().isoformat(), "command": sys.argv,
              "commit": commit(), "machine": started, "software": versions(), "repeats": repeats}
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read(name: str) -> dict[str, Any]:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no record; run the benchmark with --record")
    return json.loads(path.read_text())


def row(claim: str, ours: dict[str, float], *, baseline: dict[str, float] | None = None, baseline_label: str = "",
        compare: str | None = None, higher_is_better: bool = True) -> dict[str, Any]:
    """One line of the README's performance table, as one repeat measured it.

    ``claim`` says what was measured (shape, precision, settings) and must be the same string in every repeat;
    ``ours`` and ``baseline`` map a metric name, unit included (``"tokens/s"``, ``"peak GiB"``, ``"ms"``), to
    its value; ``compare`` names the metric whose ratio ours ÷ baseline (or baseline ÷ ours when lower is
    better) goes in the table's ratio column.  ``benchmarks/figures.py`` renders every repeat's rows as one
    line with each figure's median (min–max).
    """
    if compare is not None and (compare not in ours or baseline is None or compare not in baseline):
        raise ValueError(f"row {claim!r}: compare={compare!r} must be a metric of both sides")
    return {"claim": claim, "ours": dict(ours), "baseline": dict(baseline) if baseline else None,
            "baseline_label": baseline_label, "compare": compare, "higher_is_better": higher_is_better}
