"""`semcoder data build` end to end: real code nobody here wrote in, records whose every answer re-executes out.

The seed corpus is a documented slice of the running interpreter's standard library (``STDLIB_SEEDS``).
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_pipeline.builder import monologue as mono
from data_pipeline.builder.build import BuildConfig, build
from sandbox import Job, Sandbox

REPO = Path(__file__).resolve().parents[3]
STDLIB_SEEDS = "stdlib:colorsys,bisect,heapq,textwrap,base64,calendar,statistics"
LIMIT = 24
CHECK = "exec(PAYLOAD['code'], {})\nemit(True)"


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pyx-stdlib")
    build(BuildConfig(seeds=(STDLIB_SEEDS,), out=str(out), limit=LIMIT, workers=1), progress=False)
    return out


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2) as sb:
        yield sb


def _passes(sandbox: Sandbox, programs: list[str]) -> list[bool]:
    """Whether each program (code plus an assertion) runs to the end in the sandbox."""
    return [o.values == [True] for o in sandbox.map([Job(CHECK, {"code": p}, timeout_s=10) for p in programs])]


def _question_code(block: str) -> str:
    """The program of a ``[PYTHON] ... assert f(..) == ?? [/PYTHON]`` block, without the question."""
    body = block.removeprefix("[PYTHON]\n").removesuffix("\n[/PYTHON]")
    return body[:body.rindex("\nassert ")]


def _answer(response: str) -> str:
    return re.search(r"\[ANSWER\]\n(.*?)\n\[/ANSWER\]", response, re.S).group(1)


def test_the_report_counts_every_stage_and_the_yields(built):
    report = json.loads((built / "build_report.json").read_text())
    stages = report["stages"]
    assert list(stages) == ["seeds", "decontam_seeds", "programs", "execute", "monologues", "refine",
                            "nl_tests", "decontam_outputs"]
    assert stages["seeds"]["kept"] == LIMIT
    assert stages["execute"]["programs"] == LIMIT
    assert stages["execute"]["executable"] >= LIMIT // 2
    assert 0.5 < stages["execute"]["line_coverage_mean"] <= 1
    assert 0.4 < stages["execute"]["branch_coverage_mean"] <= 1
    assert report["records"]["fwd_mnl"] > 0 and report["records"]["bwd_mnl"] > 0 and report["records"]["pyx_r"] > 0


def test_every_forward_and_backward_record_reexecutes_to_its_answer(built, sandbox):
    rows = _read(built / "data" / "pyx.jsonl")
    programs = []
    for row in rows:
        block = row["fwd_mnl"] or row["bwd_mnl"]
        if block:
            programs.append(_question_code(block) + "\n" + _answer(row["response"]))
    assert len(programs) == sum(bool(r["fwd_mnl"] or r["bwd_mnl"]) for r in rows) > 10
    verdicts = _passes(sandbox, programs)
    assert all(verdicts), [p for p, ok in zip(programs, verdicts) if not ok][:2]
    # The check can fail: the same answers with their outputs changed do not pass.
    spoilt = [p[:p.rindex("==")] + "== ('not', 'this')" for p in programs[:5]]
    assert not any(_passes(sandbox, spoilt))


def test_every_pyx_r_buggy_program_fails_its_test_and_every_patch_passes_it(built, sandbox):
    rows = _read(built / "data" / "pyx_r.jsonl")
    assert rows
    buggy, fixed = [], []
    for row in rows:
        code = re.search(r"### Buggy Solution\n```python\n(.*?)```", row["fault"], re.S).group(1)
        test = re.search(r"### Failed Test\n```python\n(.*?)```", row["fault"], re.S).group(1)
        patch = re.search(r"\[Refined\]\n```python\n(.*?)```\n\[/Refined\]", row["response"], re.S).group(1)
        buggy.append(code + "\n" + test)
        fixed.append(patch + "\n" + test)
    assert not any(_passes(sandbox, buggy))
    assert all(_passes(sandbox, fixed))


def test_every_record_is_an_rl_task_its_own_response_solves(built, sandbox):
    """What GRPO reads: ``eval.rewards.load_tasks`` on the built file makes forward, backward and NL -> code tasks
    (NL records carry their program's executed calls as tests), and each record's own response earns the reward."""
    from eval.rewards import load_tasks, score

    report = json.loads((built / "build_report.json").read_text())["stages"]["nl_tests"]
    rows = [r for r in _read(built / "data" / "pyx.jsonl") if r["nl"]]
    assert len(rows) == report["records_with_tests"] + report["records_without_tests"] and report["tests"] > 0
    assert all(r["entry_point"].isidentifier() and len(r["tests"]) <= 10 for r in rows)
    counts = {}
    tasks = load_tasks(built / "data" / "pyx.jsonl", counts=counts)
    assert counts["code"] == report["records_with_tests"] > 0
    # every forward and backward record is a task too (their programs call their own names, not f)
    assert counts["forward"] + counts["backward"] + counts.get("records_without_task", 0) == \
        json.loads((built / "build_report.json").read_text())["records"]["fwd_mnl"] + \
        json.loads((built / "build_report.json").read_text())["records"]["bwd_mnl"] + report["records_without_tests"]
    assert any(t.entry_point not in ("", "f") for t in tasks if t.kind == "forward")
    responses = {r["id"]: r["response"] for r in _read(built / "data" / "pyx.jsonl")}
    rewards = score(sandbox, tasks, [responses[t.id.removesuffix(":forward").removesuffix(":backward")]
                                     for t in tasks])
    assert [(t.id, r.status, r.message) for t, r in zip(tasks, rewards) if not r.correct] == []


def test_the_output_passes_data_check(built, capsys):
    from semcoder_jax.cli import main

    assert main(["data", "check", str(built / "data" / "pyx.jsonl"), str(built / "data" / "pyx_r.jsonl")]) == 0
    assert "0 bad records" in capsys.readouterr().out


def test_the_build_is_deterministic_and_a_killed_build_resumes_to_the_same_output(built, tmp_path):
    """The CLI is killed (SIGKILL) once some programs are cached; the rerun ends with the uninterrupted build's
    bytes, having executed only the programs that were missing."""
    out = tmp_path / "resumed"
    command = [sys.executable, "-m", "semcoder_jax.cli", "data", "build", "--seeds", STDLIB_SEEDS, "--out", str(out),
               "--limit", str(LIMIT), "--workers", "1", "--quiet"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cached = out / ".cache" / "execute"
    deadline = time.monotonic() + 120
    while len(list(cached.glob("*/*.json"))) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the build ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(cached.glob("*/*.json")))
    assert 4 <= done_before < LIMIT
    assert not (out / "build_report.json").exists()
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = json.loads((out / "build_report.json").read_text())
    assert report["cache"]["hits"] >= done_before
    for name in ("data/pyx.jsonl", "data/pyx_r.jsonl", "removed.jsonl"):
        assert (out / name).read_bytes() == (built / name).read_bytes(), name


def test_benchmark_functions_planted_in_the_seeds_are_removed_and_listed(tmp_path):
    """HumanEval+ and CRUXEval functions, verbatim, renamed and reformatted, among ordinary functions."""
    crux = [json.loads(line) for line in (REPO / "eval/benchmarks/data/cruxeval/cruxeval.jsonl").read_text()
            .splitlines()]
    sample = next(c for c in crux if c["id"] == "sample_12")
    verbatim = sample["code"]
    tree = ast.parse(verbatim)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in dir(builtins)} | {
        a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
    renamed = verbatim.replace("def f(", "def planted_renamed(")
    for i, name in enumerate(sorted(names)):
        renamed = re.sub(rf"\b{name}\b", f"v{i}_x", renamed)
    reformatted = "\n".join(line.rstrip() + ("  # planted" if line.strip().endswith(":") else "")
                            for line in verbatim.replace("def f(", "def planted_reformatted(").splitlines())
    ordinary = ("def running_total(xs):\n    out = []\n    total = 0\n    for x in xs:\n        total += x\n"
                "        out.append(total)\n    return out\n")
    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds" / "planted.py").write_text("\n\n".join([verbatim, renamed, reformatted, ordinary]) + "\n")
    out = tmp_path / "out"
    report = build(BuildConfig(seeds=(str(tmp_path / "seeds"),), out=str(out), workers=1), progress=False)
    removed = [r for r in _read(out / "removed.jsonl") if r["stage"] == "decontam_seeds"]
    assert sorted(r["id"] for r in removed) == sorted(r["id"] for r in _read(out / "removed.jsonl")
                                                       if r["stage"] == "decontam_seeds")
    assert len(removed) == 3  # verbatim and renamed by their own match, reformatted as an exact copy of one
    assert {r["benchmark_id"] for r in removed} == {"cruxeval/sample_12"}
    assert report["stages"]["decontam_seeds"]["kept"] == 1
    kept_code = [r["response"] for r in _read(out / "data" / "pyx.jsonl")]
    assert all("running_total" in text for text in kept_code)


class ScriptedTeacher:
    """Replies by prompt kind.  Problems: the seed itself as the solution (one seed broken first, fixed when
    asked to debug).  Forward monologues: the trace-rendered one (right), the same with one stated value
    changed (right answer, wrong steps), or a wrong answer, in turn.  Backward: a wrong
    input.  Refine: the buggy code back (its patch must fail the differential test)."""

    def __init__(self, seeds, sandbox):
        self.seeds = {s.entry: s for s in seeds}
        self.sandbox = sandbox
        self.broken = sorted(self.seeds)[0]
        self.asked: list[str] = []

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, seed=0):
        return [self._reply(p) for p in prompts]

    def _reply(self, prompt: str) -> str:
        from data_pipeline.builder import trace as trace_lib

        if prompt.startswith("You write self-contained Python programming exercises"):
            entry = next(e for e in sorted(self.seeds, key=len, reverse=True) if f"def {e}(" in prompt)
            self.asked.append("problem")
            code = self.seeds[entry].code
            if entry == self.broken:
                code = code.replace("return ", "return undefined_name + ", 1)
            return f"[Problem Description]\nImplement `{entry}`.\n\n[Solution]\nPlan: as below.\n```python\n{code}\n```\n"
        if prompt.startswith("The solution below does not run"):
            self.asked.append("debug")
            return "```python\n" + self.seeds[self.broken].code + "\n```\n"
        if prompt.startswith("Propose"):
            return ""
        m = re.search(r"assert (\w+)\((.*)\) == \?\?\n\[/PYTHON\]", prompt)
        if m and "Work out what the call" in prompt:
            seed = self.seeds[m.group(1)]
            trace = trace_lib.trace_calls(self.sandbox, seed, [m.group(2)])[0]
            right = mono.forward_record(seed, trace)["response"].removeprefix("[MONOLOGUE]\n")
            kind = len(self.asked) % 3
            self.asked.append("forward")
            if kind == 1:  # the same answer, one stated value wrong
                claim = re.search(r"`(\w+)` = (-?\d+)", right.split("### Execution Simulation", 1)[1])
                if claim:
                    return right.replace(claim.group(0), f"`{claim.group(1)}` = {int(claim.group(2)) + 7919}", 1)
            if kind == 2:
                return right[:right.rindex("== ")] + "== 'certainly not this'\n[/ANSWER]"
            return right
        if "Find arguments for which" in prompt:
            entry = re.search(r"`(\w+)` returns", prompt).group(1)
            return f"### Reverse Deduction\n- guess\n[/MONOLOGUE]\n[ANSWER]\nassert {entry}(None) == 0\n[/ANSWER]"
        if "Debug and Refine the Code" in prompt:
            buggy = re.search(r"### Buggy Solution\n```python\n(.*?)```", prompt, re.S).group(1)
            return f"### Execution Simulation\n...\n[/MONOLOGUE]\n[Refined]\n```python\n{buggy}```\n[/Refined]"
        raise AssertionError(f"unexpected prompt: {prompt[:200]}")


def test_a_teacher_is_checked_by_execution_and_against_the_trace(tmp_path, sandbox):
    from data_pipeline.builder.seeds import select_seeds, stdlib_corpus

    seeds = select_seeds(stdlib_corpus(["colorsys", "bisect"]), limit=6).seeds
    teacher = ScriptedTeacher(seeds, sandbox)
    out = tmp_path / "teacher"
    report = build(BuildConfig(seeds=("stdlib:colorsys,bisect",), out=str(out), limit=6, workers=1, samples=1,
                               refine_per_program=1), teacher, progress=False)
    programs, mono_counts = report["stages"]["programs"], report["stages"]["monologues"]
    assert programs["executable_round_0"] == 5 and programs["executable_round_1"] == 1
    assert programs["errors"] == {"StaticCheck(unresolved name)": 1}
    assert mono_counts["forward_accepted"] > 0
    assert mono_counts["forward_wrong_steps"] > 0 and mono_counts["forward_wrong_answer"] > 0
    assert mono_counts["right_answer_wrong_steps_rate"] == pytest.approx(
        mono_counts["forward_wrong_steps"] / (mono_counts["forward_accepted"] + mono_counts["forward_wrong_steps"]),
        abs=1e-4)
    assert mono_counts["backward"] == 0 and mono_counts["backward_wrong_answer"] > 0
    assert report["records"]["pyx_r"] == 0 and report["stages"]["refine"]["patch_wrong_output"] > 0
    rows = _read(out / "data" / "pyx.jsonl")
    forward = [r for r in rows if r["fwd_mnl"]]
    assert len(forward) == mono_counts["forward_accepted"]
    assert all(r["response"].startswith("[MONOLOGUE]\n") and r["response"].endswith("[/ANSWER]") for r in forward)
    assert all(_passes(sandbox, [_question_code(r["fwd_mnl"]) + "\n" + _answer(r["response"]) for r in forward]))
    assert len([r for r in rows if r["nl"]]) == 6


def test_the_built_data_trains_the_tiny_model_which_then_serves_as_a_teacher(built, tmp_path):
    """``semcoder train`` on the build's output (tiny model, a few steps), exported to HF; that export is the
    teacher of a second build through the CLI: whatever it writes is checked, and each rejection counted."""
    run, export = tmp_path / "run", tmp_path / "hf"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user's shell has
    train = subprocess.run(
        [sys.executable, "-m", "semcoder_jax.cli", "train", "--config", str(REPO / "launch/configs/tiny_cpu.yaml"),
         "--run-dir", str(run), "--export-hf", str(export), f"data.path={built / 'data'}", "data.seq_len=512",
         "train.steps=4", "optimizer.warmup_steps=0", "train.global_batch=4", "train.eval_every=0",
         "train.log_every=2", "checkpoint.every=4", "run.tensorboard=false"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert train.returncode == 0, train.stderr[-3000:]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m for m in metrics)
    reports = {}
    for programs in ("teacher", "seeds"):
        out = tmp_path / f"with-teacher-{programs}"
        result = subprocess.run(
            [sys.executable, "-m", "semcoder_jax.cli", "data", "build", "--seeds", "stdlib:colorsys", "--limit", "2",
             "--out", str(out), "--teacher", str(export), "--backend", "hf", "--programs", programs,
             "--max-new-tokens", "24", "--samples", "1", "--debug-rounds", "1", "--workers", "1", "--quiet"],
            cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        reports[programs] = json.loads((out / "build_report.json").read_text())
        assert reports[programs]["teacher"] is True
    # A 4-step model writes no usable problem, monologue or patch: every reply is checked and counted.
    problems = reports["teacher"]["stages"]["programs"]
    assert problems["seeds"] == 2
    assert problems.get("reply_unparseable", 0) + problems["programs"] + problems.get("not_executable", 0) >= 2
    monologues = reports["seeds"]["stages"]["monologues"]
    rejected = sum(v for k, v in monologues.items() if k.startswith(("forward_", "backward_"))
                   and not k.endswith("accepted") and isinstance(v, int))
    assert rejected + monologues["forward"] + monologues["backward"] == 2 * monologues["prompts"]
    assert rejected > 0


@pytest.mark.slow
def test_the_ray_data_runner_builds_the_same_bytes_as_the_process_pool(built, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    build(BuildConfig(seeds=(STDLIB_SEEDS,), out=str(out), limit=LIMIT, workers=2, runner="ray"), progress=False)
    for name in ("data/pyx.jsonl", "data/pyx_r.jsonl", "removed.jsonl"):
        assert (out / name).read_bytes() == (built / name).read_bytes(), name


def test_a_backend_teachers_sampling_seed_depends_on_the_prompt_not_its_place_in_the_batch():
    """A resumed build asks only for uncached replies: each prompt must draw the same sample either way."""
    from data_pipeline.builder.teacher import BackendTeacher

    class Recorder:
        def generate(self, prompts, *, max_new_tokens, temperature, seeds, batch_size):
            self.seeds = dict(zip(prompts, seeds))
            return [type("G", (), {"text": p})() for p in prompts]

    backend = Recorder()
    teacher = BackendTeacher(backend)
    teacher.generate(["a", "b", "c"], max_new_tokens=4, temperature=0.8, seed=3)
    together = dict(backend.seeds)
    teacher.generate(["c"], max_new_tokens=4, temperature=0.8, seed=3)
    assert backend.seeds["c"] == together["c"]
    assert len(set(together.values())) == 3
    teacher.generate(["c"], max_new_tokens=4, temperature=0.8, seed=4)
    assert backend.seeds["c"] != together["c"]
