"""``semcoder eval download``: fetch the official benchmark releases into the local data cache.

Only for users who are online; evaluation itself never downloads.  Every file is checked against the
sha256 recorded in ``shared/data/*/PROVENANCE.md`` and written to a temp name, then renamed.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from semcoder_jax.errors import UserError

# relative path in the data dir -> (url, sha256 of the file as stored)
RELEASES: dict[str, tuple[str, str]] = {
    "humaneval/HumanEval.jsonl.gz": (
        "https://github.com/openai/human-eval/raw/6d43fb980f9fee3c892a914eda09951f772ad10d/data/HumanEval.jsonl.gz",
        "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"),
    "humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz": (
        "https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/HumanEvalPlus.jsonl.gz",
        "272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101"),
    "mbppplus/MbppPlus-v0.2.0.jsonl.gz": (
        "https://github.com/evalplus/mbppplus_release/releases/download/v0.2.0/MbppPlus.jsonl.gz",
        "af43697e8791c4c149bdfd6b489d8b5412507551ac20e28a439f650b8225db63"),
    "cruxeval/cruxeval.jsonl": (
        "https://raw.githubusercontent.com/facebookresearch/cruxeval/190faf16d175b5847b0af05d937872b1fb395942/data/cruxeval.jsonl",
        "8368b81047dc5014e4caf5a2f97604eff7644e0ecd7415e3ceeb184bbc2e0c96"),
}


def download(data_dir: Path, timeout_s: float = 60.0) -> list[Path]:
    """Download every release file missing from ``data_dir``; returns the paths written."""
    written = []
    for rel, (url, sha256) in RELEASES.items():
        target = data_dir / rel
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                body = response.read()
        except OSError as e:
            raise UserError(f"download of {url} failed: {e}") from None
        digest = hashlib.sha256(body).hexdigest()
        if digest != sha256:
            raise UserError(f"{url}: sha256 {digest} does not match the pinned release {sha256}")
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tmp.write_bytes(body)
        os.replace(tmp, target)
        written.append(target)
    return written
