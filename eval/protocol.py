"""Generation settings per benchmark: the defaults, the release's protocol as a preset, and how a run's
settings compare with the release's.

``--protocol semcoder`` sets, per benchmark, exactly what the release's evaluation scripts use
(ARiSE-Lab/SemCoder at edc4ad39; each value below names its file and line).  A setting also given
explicitly must equal the preset's value for every benchmark of the run, else it is an error: a preset
that silently gave way to a flag would produce numbers labelled "release" that are not.  Every run's
summary lists how its settings differ from the release's (none: ``"release": true``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from semcoder_jax.errors import UserError

RELEASE = "ARiSE-Lab/SemCoder@edc4ad39"
PROTOCOLS = ("semcoder",)
# Settings that decide what is generated (and so what a resumed run must keep).
GENERATION_KEYS = ("mode", "n_samples", "temperature", "top_p", "max_new_tokens", "max_length")
REFINE_KEYS = ("refine_temperature", "refine_top_p", "refine_max_new_tokens", "refine_trace")
FLAGS = {"mode": "--mode", "n_samples": "--n-samples", "temperature": "--temperature", "top_p": "--top-p",
         "max_new_tokens": "--max-new-tokens", "max_length": "--max-length",
         "refine_temperature": "--refine-temperature", "refine_top_p": "--refine-top-p",
         "refine_max_new_tokens": "--refine-max-new-tokens", "refine_trace": "--refine-trace",
         "self_refine": "--self-refine"}
DEFAULTS: dict[str, Any] = {"mode": "monologue", "n_samples": 1, "temperature": 0.0, "top_p": 1.0,
                            "max_new_tokens": 1024, "max_length": None, "refine_max_new_tokens": 512,
                            "refine_trace": False}
def default_mode(name: str) -> str:
    """The prompt mode a benchmark runs in without ``--mode``: the forward monologue where SemCoder's prompt
    exists (CRUXEval, LiveCodeBench execution), else the benchmark's own direct prompt (LiveCodeBench test
    output has only that; REval's official prompts are direct and CoT)."""
    return "direct" if name.startswith(("reval-", "lcb-testoutput")) else DEFAULTS["mode"]


RELEASE_TASKS = {"humaneval": 164, "humaneval+": 164, "mbpp": 378, "mbpp+": 378, "cruxeval-i": 800, "cruxeval-o": 800}


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str  # file:line in the release


_EVALPLUS_SH = "scripts/eval/eval_evalplus.sh"
_CRUXEVAL_SH = "scripts/eval/eval_cruxeval.sh"
_REFINE_SH = "scripts/eval/eval_finetune_refine.sh"
SEMCODER: dict[str, dict[str, Setting]] = {
    "evalplus": {
        "n_samples": Setting(1, f"{_EVALPLUS_SH}:32 (--n_samples_per_problem 1)"),
        "temperature": Setting(0.0, f"{_EVALPLUS_SH}:35 (--temperature 0.0: greedy)"),
        "top_p": Setting(1.0, f"{_EVALPLUS_SH}:33 (--top_p 1.0)"),
        "max_new_tokens": Setting(1024, f"{_EVALPLUS_SH}:34 (--max_new_tokens 1024)"),
        "max_length": Setting(None, "src/wrapper.py:212-216 (only the model's context bounds prompt + output)"),
    },
    "cruxeval": {
        "mode": Setting("monologue", f"{_CRUXEVAL_SH}:45,98 (--monologue)"),
        "n_samples": Setting(1, f"{_CRUXEVAL_SH}:35,88 (--n_samples 1)"),
        "temperature": Setting(0.2, f"{_CRUXEVAL_SH}:39,92 (--temperature 0.2)"),
        "top_p": Setting(0.95, "experiments/cruxeval_utils.py:46-47 (default top_p 0.95; the script keeps it)"),
        "max_new_tokens": Setting(None, "experiments/cruxeval_utils.py:359 (no cap of its own: the limit "
                                        "below minus the prompt)"),
        "max_length": Setting(4096, f"{_CRUXEVAL_SH}:36,89 (--max_length_generation 4096), "
                                    "experiments/cruxeval_utils.py:352-359 (max_tokens = 4096 - prompt "
                                    "tokens; a prompt over the limit gets an empty answer)"),
    },
}
# Self-refine (EvalPlus sets only): the release's iterative refinement script.
SEMCODER_REFINE: dict[str, Setting] = {
    "self_refine": Setting(5, f"{_REFINE_SH}:59 (for REFINE in 1 2 3 4 5)"),
    "max_new_tokens": Setting(512, f"{_REFINE_SH}:40 (round 0: --max_new_tokens 512, greedy)"),
    "refine_temperature": Setting({"humaneval": 0.6, "mbpp": 0.8}, f"{_REFINE_SH}:85-89 (REFINE_TEMP 0.6 "
                                                                   "HumanEval, 0.8 MBPP)"),
    "refine_top_p": Setting(0.95, f"{_REFINE_SH}:98 (--top_p 0.95)"),
    "refine_max_new_tokens": Setting(512, f"{_REFINE_SH}:99 (--max_new_tokens 512)"),
    "refine_trace": Setting(False, "experiments/run_refine_evalplus.py:65-70,89 (baseline defaults to False: "
                                   "the refine prompt without the execution trace)"),
}


def family(name: str) -> str:
    """``cruxeval``: an answer predicted from a prompt with a mode (CRUXEval, LiveCodeBench execution and
    test output, REval); ``evalplus``: code generation (EvalPlus, LiveCodeBench code generation)."""
    return "cruxeval" if name.startswith(("cruxeval", "reval-", "lcb-execution", "lcb-testoutput")) else "evalplus"


def release_settings(name: str, self_refine: int = 0) -> dict[str, Any]:
    """The release's settings for benchmark ``name`` (with its self-refine settings when refining)."""
    out = {k: s.value for k, s in SEMCODER[family(name)].items()}
    if self_refine and family(name) == "evalplus":
        out["max_new_tokens"] = SEMCODER_REFINE["max_new_tokens"].value
        out["refine_temperature"] = SEMCODER_REFINE["refine_temperature"].value[name.rstrip("+")]
        for key in ("refine_top_p", "refine_max_new_tokens", "refine_trace"):
            out[key] = SEMCODER_REFINE[key].value
    return out


def source_of(name: str, key: str, self_refine: int = 0) -> str:
    if self_refine and family(name) == "evalplus" and key in SEMCODER_REFINE:
        return SEMCODER_REFINE[key].source
    return SEMCODER[family(name)][key].source


def resolve(name: str, explicit: dict[str, Any], protocol: str | None, self_refine: int = 0) -> dict[str, Any]:
    """The generation settings of benchmark ``name``: ``explicit`` values (None = not given), else the
    protocol's, else the defaults.  Under a protocol an explicit value that differs is an error."""
    if protocol is not None and protocol not in PROTOCOLS:
        raise UserError(f"--protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if protocol is not None and name not in RELEASE_TASKS:
        raise UserError(f"--protocol {protocol}: the release's scripts have no settings for {name}; drop --protocol "
                        "and give the generation flags")
    keys = [k for k in GENERATION_KEYS if k != "mode" or family(name) == "cruxeval"]
    refine = bool(self_refine) and family(name) == "evalplus"
    if refine:
        keys += REFINE_KEYS
    if protocol is not None:
        preset = release_settings(name, self_refine)
        for key in keys:
            given = explicit.get(key)
            if given is not None and given != preset[key] and not (key == "refine_trace" and given is False):
                raise UserError(f"--protocol {protocol} sets {FLAGS[key]} to {_show(preset[key])} for {name} "
                                f"({source_of(name, key, self_refine)}); drop {FLAGS[key]} {_show(given)}, or "
                                "drop --protocol to choose every setting yourself")
        return {key: preset[key] for key in keys}
    out = {key: explicit.get(key) if explicit.get(key) is not None else DEFAULTS.get(key) for key in keys}
    if "mode" in out and explicit.get("mode") is None:
        out["mode"] = default_mode(name)
    if explicit.get("max_new_tokens") is None and out["max_length"] is not None:
        out["max_new_tokens"] = None  # a prompt + output limit alone
    if refine:
        out["refine_temperature"] = _first(explicit.get("refine_temperature"), out["temperature"])
        out["refine_top_p"] = _first(explicit.get("refine_top_p"), out["top_p"])
    return out


def differences(name: str, settings: dict[str, Any], *, self_refine: int, limit: int | None) -> list[str]:
    """How a run of benchmark ``name`` differs from the release's protocol, one short phrase each."""
    out = []
    if limit is not None and limit < RELEASE_TASKS[name]:
        out.append(f"tasks: the first {limit} of {RELEASE_TASKS[name]}")
    release = release_settings(name, self_refine)
    for key, value in release.items():
        if key in settings and settings[key] != value:
            out.append(f"{key} {_show(settings[key])} (release: {_show(value)})")
    if self_refine and family(name) == "evalplus" and self_refine != SEMCODER_REFINE["self_refine"].value:
        out.append(f"self_refine {self_refine} rounds (release: {SEMCODER_REFINE['self_refine'].value})")
    return out


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _show(value: Any) -> str:
    return "none" if value is None else str(value)
