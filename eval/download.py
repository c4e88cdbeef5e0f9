"""``semcoder eval download``: fetch the official benchmark releases into the local data cache.

Only for users who are online; evaluation itself never downloads.  Every pinned file is checked against the
sha256 recorded in ``shared/data/*/PROVENANCE.md`` and written to a temp name, then renamed.  LiveCodeBench's
datasets change in place, so its code-generation files are not pinned (their digests are printed); its
execution and test-output sets are exported with ``datasets`` (docs/eval.md shows how).
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from semcoder_jax.errors import UserError

_REVAL = "https://raw.githubusercontent.com/r-eval/REval/2f148b913deb4ae0e0ce41f0245ef35054ede8d6"
_LCB = "https://huggingface.co/datasets/livecodebench/code_generation_lite/resolve/main"

# relative path in the data dir -> (url, sha256 of the file as stored; None: not pinned, its digest is printed)
RELEASES: dict[str, tuple[str, str | None]] = {
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
    # REval at the commit shared/data/reval/PROVENANCE.md names (digests of those byte-identical copies)
    "reval/DREval_data.jsonl": (
        f"{_REVAL}/data/DREval_data.jsonl",
        "b8e72ef344cd575b220363e7a361e892ef2bdfcee1cab79f702d60e255844965"),
    "reval/DREval_tasks.jsonl": (
        f"{_REVAL}/data/DREval_tasks.jsonl",
        "a4fea071a4e3108ae00cc8a6a586505bff4237244b2dc8433b22303948fe7fa5"),
    "reval/prompts/direct_coverage.txt": (
        f"{_REVAL}/prompts/direct_coverage.txt",
        "1a96d57e3d7eec08c8b757381ba7d9d3ee4b77dfd631a009aae685f504a7629d"),
    "reval/prompts/direct_state.txt": (
        f"{_REVAL}/prompts/direct_state.txt",
        "eea297983e6bafd51ed950d599efe7151eba01815e744efe243eae647074e353"),
    "reval/prompts/direct_path.txt": (
        f"{_REVAL}/prompts/direct_path.txt",
        "ecf6b4df7c14f2aac495e943a5c531a7f2dca554455440415fccafca08e3d30e"),
    "reval/prompts/direct_output.txt": (
        f"{_REVAL}/prompts/direct_output.txt",
        "4bf741cf64666b4468684f4c08a06a0026586173d1d1df6af138793ebd522ff9"),
    "reval/prompts/cot_coverage.txt": (
        f"{_REVAL}/prompts/cot_coverage.txt",
        "3809a152403f7fd116f5f6724dbdf6abc0479689eb999cad1d814bf6d6214f3b"),
    "reval/prompts/cot_state.txt": (
        f"{_REVAL}/prompts/cot_state.txt",
        "b7627043bb502b260398f0a1f81ceb128027895b4f7c8fd3780aa36b3840e253"),
    "reval/prompts/cot_path.txt": (
        f"{_REVAL}/prompts/cot_path.txt",
        "295f1813facfc67659968e7ba1a00eb6abdab65a9ae930d4e5331406c054c301"),
    "reval/prompts/cot_output.txt": (
        f"{_REVAL}/prompts/cot_output.txt",
        "26c0dc3c18a2c5ec458b619fa359892b55c68dff1e038afc9982beb1535f2a90"),
    # LiveCodeBench code generation: the dataset's release files (the dataset is updated in place: not pinned)
    "livecodebench/code_generation_lite/test.jsonl": (f"{_LCB}/test.jsonl", None),
    "livecodebench/code_generation_lite/test2.jsonl": (f"{_LCB}/test2.jsonl", None),
    "livecodebench/code_generation_lite/test3.jsonl": (f"{_LCB}/test3.jsonl", None),
    "livecodebench/code_generation_lite/test4.jsonl": (f"{_LCB}/test4.jsonl", None),
    "livecodebench/code_generation_lite/test5.jsonl": (f"{_LCB}/test5.jsonl", None),
    "livecodebench/code_generation_lite/test6.jsonl": (f"{_LCB}/test6.jsonl", None),
}


def download(data_dir: Path, timeout_s: float = 60.0) -> list[Path]:
    """Download every release file missing from ``data_dir``; returns the paths written."""
    written = []
    for rel, (url, sha256) in RELEASES.items():
        target = data_dir / rel
        if target.is_file() and (sha256 is None or hashlib.sha256(target.read_bytes()).hexdigest() == sha256):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                body = response.read()
        except OSError as e:
            raise UserError(f"download of {url} failed: {e}") from None
        digest = hashlib.sha256(body).hexdigest()
        if sha256 is None:
            print(f"{rel}: not pinned; downloaded sha256 {digest}")
        elif digest != sha256:
            raise UserError(f"{url}: sha256 {digest} does not match the pinned release {sha256}")
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tmp.write_bytes(body)
        os.replace(tmp, target)
        written.append(target)
    return written
