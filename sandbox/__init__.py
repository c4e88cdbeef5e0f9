"""Isolated execution of untrusted Python, and verdicts the candidate cannot touch.

The bottom of the project's import graph: this package imports nothing of the project, so the eval
harness, the data builder and rewards can all use it.

- ``pool``: ``Sandbox`` (a pool of warm, isolated workers), ``Job``, ``Limits``, ``Outcome``, ``detect_mode``;
- ``codec``: plain data in a canonical, type-tagged JSON form (the only thing a candidate can send back);
- ``drivers``: the trusted programs that run candidate code inside a job;
- ``function_tests``: the batch scoring API (solutions x test inputs -> verdicts, compared here).
"""

from sandbox.codec import PlainDataError
from sandbox.pool import Job, Limits, Outcome, Sandbox, SandboxUnavailable, detect_mode

__all__ = ["Job", "Limits", "Outcome", "PlainDataError", "Sandbox", "SandboxUnavailable", "detect_mode"]
