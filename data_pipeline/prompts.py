"""The release's training templates, byte for byte, and which record field selects which.

The model was trained on these exact strings (typos included: "a a problem"), so they are copied
verbatim from the release (``src/prompts.py`` of ARiSE-Lab/SemCoder, commit edc4ad39); a test
compares them with ``shared/semcoder/prompts.json``.
"""

from __future__ import annotations

NL2CODE_PROMPT = (
    "You are an exceptionally intelligent coding assistant that consistently delivers accurate and reliable "
    "<Code> according to <NL_Description>\n\n<NL_Description>\n{instruction}\n\n<Code>\n{response}"
)
EXEC_I_PROMPT = (
    "Deduce the Semantic Constraints: You are given a Python program and its expected output. Find one input "
    "such that executing the program with the input leads to the given output. Complete the assertion with one "
    "such input in between [ANSWER] and [/ANSWER].\n{instruction}\n{response}"
)
EXEC_O_PROMPT = (
    "Simulate the Execution: You are given a Python function and an assertion containing a function input. "
    "Complete the assertion containing the execution output corresponding to the given input in [ANSWER] and "
    "[/ANSWER] tags.\n{instruction}\n{response}"
)
REFINE_PROMPT = (
    "Debug and Refine the Code: You are given a a problem to be implemented in Python, and a buggy code that "
    "tries to solve the problem but fails the test case.\nYou should firstly simulate the execution with the "
    "buggy code and the failed test to identify the root cause of the failure. \nThen, you should fix the bug "
    "and wrap the refined code in between [Refined] and [/Refined].\n{instruction}\n{response}"
)
SRC_INSTRUCT_INSTRUCTION_PROMPT = "Write a solution to the following coding problem:\n{problem}"

# Names as in the release's prompts.py, for comparison with prompts.json.
TRAINING_TEMPLATES: dict[str, str] = {
    "NL2CODE_PROMPT": NL2CODE_PROMPT,
    "EXEC_I_PROMPT": EXEC_I_PROMPT,
    "EXEC_O_PROMPT": EXEC_O_PROMPT,
    "REFINE_PROMPT": REFINE_PROMPT,
    "SRC_INSTRUCT_INSTRUCTION_PROMPT": SRC_INSTRUCT_INSTRUCTION_PROMPT,
}

# Task name -> (record field holding the instruction, template or None for plain chat records).
TASKS: dict[str, tuple[str, str | None]] = {
    "nl2code": ("nl", NL2CODE_PROMPT),
    "exec_i": ("bwd_mnl", EXEC_I_PROMPT),
    "exec_o": ("fwd_mnl", EXEC_O_PROMPT),
    "refine": ("fault", REFINE_PROMPT),
    "chat": ("instruction", None),
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
TASK_IDS: dict[str, int] = {name: i for i, name in enumerate(TASK_NAMES)}


def render_prompt(task: str, instruction: str) -> str:
    """The prompt text of one example: the task's template with ``{response}`` left empty.

    Substitutes by splitting rather than ``str.format`` (instructions are code full of braces) and
    never rescans the inserted instruction, so its own text is left exactly as written.
    """
    _, template = TASKS[task]
    if template is None:
        return instruction
    before, after = template.split("{instruction}")
    return before + instruction + after.replace("{response}", "", 1)
