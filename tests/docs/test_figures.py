"""Every measured figure the docs mark is what its benchmark's latest record renders (benchmarks/figures.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _figures():
    spec = importlib.util.spec_from_file_location("semcoder_bench_figures", REPO / "benchmarks" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


figures = _figures()
PLACES = figures.places()


def test_the_docs_mark_their_measured_figures():
    assert {name for _, name, _ in PLACES} == set(figures.FIGURES)


@pytest.mark.parametrize(("path", "name", "text"), PLACES, ids=[f"{p.name}:{n}" for p, n, _ in PLACES])
def test_a_marked_figure_is_what_its_record_renders(path, name, text):
    assert text == figures.FIGURES[name](), (
        f"{path.relative_to(REPO)}: figure {name!r} differs from benchmarks/results; run "
        "`python benchmarks/figures.py --write` after recording the benchmark with --record")


def test_a_figure_edited_by_hand_or_an_unknown_one_is_caught(tmp_path):
    """The check can fail: one rendered place, then the same doc with a number typed over, and a figure
    name no benchmark renders."""
    name = "pipeline-utilisation"
    doc = tmp_path / "doc.md"
    rendered = figures.FIGURES[name]()
    doc.write_text(f"Intro.\n\n  <!-- figures: {name} -->\n" + "".join("  " + line for line in
                   rendered.splitlines(keepends=True)) + "  <!-- /figures -->\n")
    assert figures.stale([doc]) == []  # indented inside a list item, as the walkthrough's figure is
    doc.write_text(doc.read_text().replace("98.22 %", "98.46 %", 1))
    assert figures.stale([doc]) == [f"{doc}: {name}"]
    doc.write_text("<!-- figures: no-such-figure -->\nanything\n<!-- /figures -->\n")
    assert figures.stale([doc]) == [f"{doc}: no-such-figure"]
