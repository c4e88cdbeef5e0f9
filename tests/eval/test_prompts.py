"""Prompts are the release's bytes: the six pinned CRUXEval prompts and the NL2CODE/REFINE templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.prompts import (
    NL2CODE_PROMPT,
    REFINE_PROMPT,
    cruxeval_prompt,
    humaneval_prompt,
    mbpp_prompt,
    refine_prompt,
)


@pytest.fixture(scope="module")
def pinned(shared_data_dir: Path) -> dict:
    path = shared_data_dir.parent / "semcoder" / "prompts.json"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return json.loads(path.read_text())


@pytest.mark.parametrize("task", ["input", "output"])
@pytest.mark.parametrize("mode", ["direct", "cot", "monologue"])
def test_cruxeval_prompts_reproduce_the_pinned_bytes(pinned, task, mode):
    examples = pinned["cruxeval_prompt_examples"]
    s = examples["sample"]
    built = cruxeval_prompt(task[0], mode, s["code"], s["input"], s["output"], swap_quotes=False)
    assert built == examples[f"{task}_{mode}"]


def test_the_release_swaps_single_quotes_before_prompting(pinned):
    s = pinned["cruxeval_prompt_examples"]["sample"]
    built = cruxeval_prompt("o", "monologue", s["code"], s["input"], s["output"])
    assert built == pinned["cruxeval_prompt_examples"]["output_monologue"].replace("f('abc')", 'f("abc")')


def test_monologue_labels_skip_blank_lines_but_count_them():
    prompt = cruxeval_prompt("o", "monologue", "def f(x):\n\n    return x", "1", "1")
    assert "def f(x): # [L5]\n\n    return x # [L7]\n" in prompt
    assert prompt.endswith("[/PYTHON]\n[MONOLOGUE]\n")


def test_templates_match_the_release(pinned):
    templates = pinned["training_templates"]
    assert NL2CODE_PROMPT == templates["NL2CODE_PROMPT"]
    assert REFINE_PROMPT == templates["REFINE_PROMPT"]


def test_humaneval_prompt_puts_the_problem_in_a_fence_and_continues_it():
    problem = 'def add(a, b):\n    """Add {a} and {b}."""\n'
    prompt, prefix = humaneval_prompt(problem)
    assert prefix == '```python\ndef add(a, b):\n    """Add {a} and {b}."""'
    assert prompt.endswith("<Code>\n" + prefix)
    assert "Write a solution to the following problem:\n```python\n" + problem.strip() + "\n```" in prompt


def test_mbpp_prompt_splits_the_docstring_into_text_and_assertion():
    problem = '"""\nWrite a function to add two numbers\nassert add(1, 2) == 3\n"""\n'
    prompt, prefix = mbpp_prompt(problem)
    assert prefix == "```python"
    assert ("Write a function to add two numbers. Your code should satisfy the following assertion:\n"
            "```python\nassert add(1, 2) == 3\n```") in prompt
    assert prompt.endswith("<Code>\n```python")


def test_refine_prompt_has_the_release_sections():
    prompt = refine_prompt("Add two numbers.", "def add(a, b):\n    return a - b", "assert add(1, 2) == 3")
    assert prompt.startswith("Debug and Refine the Code:")
    assert ("### Problem\nAdd two numbers.\n\n### Buggy Solution\n```python\ndef add(a, b):\n    return a - b\n```\n\n"
            "### Failed Test\n```python\nassert add(1, 2) == 3\n```\n") in prompt
    traced = refine_prompt("p", "c", "t", trace="x = 1 # [STATE]")
    assert "[MONOLOGUE]\n### Execution Simulation\n```python\nx = 1 # [STATE]\n```\n### Root Cause Analysis\n" in traced
