"""The templates are the release's bytes, and rendering never touches the instruction's own text."""

import json
import pathlib

import pytest

from data_pipeline.prompts import TASKS, TRAINING_TEMPLATES, render_prompt

PROMPTS_JSON = pathlib.Path(__file__).resolve().parents[3] / "shared" / "semcoder" / "prompts.json"


def test_training_templates_match_the_release_byte_for_byte():
    if not PROMPTS_JSON.is_file():
        pytest.skip(f"{PROMPTS_JSON} not present")
    released = json.loads(PROMPTS_JSON.read_text(encoding="utf-8"))["training_templates"]
    assert TRAINING_TEMPLATES == released


@pytest.mark.parametrize("task", sorted(TASKS))
def test_prompt_is_the_template_with_instruction_filled_and_response_empty(task):
    field, template = TASKS[task]
    text = render_prompt(task, "INSTR")
    if template is None:
        assert text == "INSTR"
    else:
        assert text == template.format(instruction="INSTR", response="")


def test_braces_and_placeholders_inside_the_instruction_are_kept_verbatim():
    instruction = "def f(d):\n    return {'a': d}  # {response} {instruction}"
    text = render_prompt("exec_o", instruction)
    assert instruction in text
    assert text.endswith(instruction + "\n")
