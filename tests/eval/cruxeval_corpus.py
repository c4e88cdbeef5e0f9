"""A corpus of CRUXEval generations in the shapes models write them, for comparing extraction rules.

For every task, task kind (-I, -O) and prompt mode, one generation per shape below, with the correct answer
unless the shape says otherwise.  The answer is spelled as a model trained on the release's prompts spells
it: with the prompt's double quotes (``release_quote_swap``); shape ``record_quotes`` uses the record's own
spelling.  The preamble is what the mode's prompt asks for: nothing in direct mode (the prompt ends with
``[ANSWER]``), a ``[THOUGHT]`` in cot mode, ``[L..]`` line notes in monologue mode.  Generations end
where the backends cut them, before ``[/ANSWER]``, except in shape ``closing_tag``.
"""

from __future__ import annotations

from eval.prompts import CRUXEVAL_MODES, cruxeval_prompt, release_quote_swap

PREAMBLE = {
    "direct": "",
    "cot": "Let's execute the code step by step:\n1. The function f is called with the given input.\n"
           "2. It returns the value below.\n[/THOUGHT]\n",
    "monologue": "[L5] f is called; the loop runs over every item.\n[L9] The function returns the value "
                 "below.\n",
}
TAG = {"direct": "", "cot": "[ANSWER]\n", "monologue": "[ANSWER]\n"}


def _wrong(output: str) -> str:
    return "[]" if output != "[]" else "()"


def shapes(task: str, mode: str, call: str, value: str, wrong: str) -> dict[str, str]:
    """shape name -> generation, for one task.  ``call`` is ``f(...)``, ``value`` the output literal."""
    body = PREAMBLE[mode]
    tag = TAG[mode]
    right = f"assert {call} == {value}"
    bad = f"assert {call} == {wrong}" if task == "o" else f"assert f(None) == {value}"
    return {
        "clean": f"{body}{tag}{right}\n",
        "closing_tag": f"{body}{tag}{right}\n[/ANSWER]",
        "whitespace": f"{body}{tag}\n\n   {right}   \n\n",
        "no_assert": f"{body}{tag}{right[len('assert '):]}\n",
        "comment": f"{body}{tag}{right}  # the loop never runs\n",
        "bare_answer": f"{body}{tag}{value if task == 'o' else call}\n",
        "trailing_prose": f"{body}{tag}{right}\nThis is the value the function returns.\n",
        "trailing_prose_with_eq": f"{body}{tag}{right}\nHere len(result) == 3 holds.\n",
        "two_asserts": f"{body}{tag}{right}\n{right}\n",
        "second_assert_other": f"{body}{tag}{right}\nassert f(0) == 0\n",
        "fenced": f"{body}{tag}```python\n{right}\n```\n",
        "no_tags": f"{body}{right}\n",
        "duplicate_blocks_last_right": f"{body}{tag}{bad}\n[ANSWER]\n{right}\n",
        "duplicate_blocks_last_wrong": f"{body}{tag}{right}\n[ANSWER]\n{bad}\n",
        "prose_before_assert": f"{body}{tag}The answer is {right}\n",
        "wrong": f"{body}{tag}{bad}\n",
        "repeated_call": f"{body}{tag}assert {call} == {call}\n",
    }


def build(records: list[dict], modes: tuple[str, ...] = CRUXEVAL_MODES) -> list[dict]:
    """Corpus items: id, task ("i"/"o"), mode, shape, prompt, raw, record (the CRUXEval record)."""
    items = []
    for record in records:
        for task in ("o", "i"):
            for mode in modes:
                prompt = cruxeval_prompt(task, mode, record["code"], record["input"], record["output"])
                call = f"f({release_quote_swap(record['input'])})"
                value = release_quote_swap(record["output"])
                generations = shapes(task, mode, call, value, _wrong(record["output"]))
                generations["record_quotes"] = shapes(task, mode, f"f({record['input']})", record["output"],
                                                      "")["clean"]
                for shape, raw in generations.items():
                    items.append({"id": f"{record['id']}/{task}/{mode}/{shape}", "task": task, "mode": mode,
                                  "shape": shape, "prompt": prompt, "raw": raw, "record": record})
    return items
