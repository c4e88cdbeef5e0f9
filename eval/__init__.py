"""Offline evaluation of SemCoder-style models: HumanEval(+), MBPP(+), CRUXEval-I/O.

``benchmarks`` (one module per benchmark family: data, prompts, scoring jobs) · ``prompts`` (the release's
bytes) · ``extract`` (answers, code, EvalPlus sanitize) · ``sandbox`` (+ ``_sandbox_worker``: isolated
execution) · ``backends`` (hf, jax) · ``runner`` (generate -> score -> records -> summary, self-refine) ·
``cli`` (``semcoder eval``) · ``download``.  See docs/eval.md.
"""
