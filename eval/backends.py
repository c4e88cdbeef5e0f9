"""Generation backends behind one interface: ``hf`` (transformers + torch), ``jax`` (the project's KV-cache
sampler) — and, for scoring existing generations, none at all.

Both follow the same conventions so greedy text is identical on the same model: the prompt is encoded
without special tokens and the bos token is prepended; prompts are left-padded in a batch; greedy when
``temperature == 0``; ``text`` excludes EOS and is cut just before the first stop string (vLLM semantics).
Heavy imports (torch, transformers, jax) happen inside the functions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from semcoder_jax.errors import UserError

DTYPES = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class Generation:
    """One generated continuation (same fields as ``semcoder_jax.generate.Generation``)."""

    text: str
    token_ids: list[int]
    finish_reason: Literal["eos", "stop", "length"]


class Backend(Protocol):
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, stop: Sequence[str] = (),
                 batch_size: int = 8) -> list[Generation]: ...


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut just before the earliest stop string, and whether one occurred."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class HFBackend:
    """transformers ``AutoModelForCausalLM`` on a local HF directory (CPU or CUDA)."""

    def __init__(self, path: str | os.PathLike, dtype: str | None = None, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        from data_pipeline.tokenizer import load_tokenizer

        path = os.fspath(path)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise UserError(f"--model {path}: not an HF model directory (no config.json); use --backend jax "
                            "for a native checkpoint or convert it with `semcoder convert orbax-to-hf`")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or ("float32" if self.device == "cpu" else "bfloat16")
        if dtype not in DTYPES:
            raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(self.device)
        self.model.eval()
        self.tokenizer = load_tokenizer(path)
        self.eos_id = self.tokenizer.eos_id if self.tokenizer.eos_id is not None else self.model.config.eos_token_id
        self.bos_id = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.model.config.bos_token_id
        self.pad_id = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else self.eos_id

    def encode(self, prompt: str) -> list[int]:
        ids = list(self.tokenizer.encode(prompt))
        return ([self.bos_id] if self.bos_id is not None else []) + ids

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, stop: Sequence[str] = (),
                 batch_size: int = 8) -> list[Generation]:
        from transformers import StoppingCriteria, StoppingCriteriaList

        torch = self.torch
        stop = [s for s in stop if s]
        encoded = [self.encode(p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        results: list[Generation | None] = [None] * len(prompts)
        tokenizer, eos_id = self.tokenizer, self.eos_id

        # A stop string of L characters spans at most 4L byte-level tokens, so checking a tail that long
        # at every step finds each occurrence when it completes; _finish then cuts the full text exactly.
        window = 4 * max((len(s) for s in stop), default=0) + 2

        class StopStrings(StoppingCriteria):
            def __init__(self, width: int):
                self.width = width

            def __call__(self, input_ids, scores, **kwargs):
                done = []
                for row in input_ids[:, self.width:].tolist():
                    if eos_id in row:
                        row = row[: row.index(eos_id)]
                    done.append(cut_at_stop(tokenizer.decode(row[-window:]), stop)[1])
                return torch.tensor(done, device=input_ids.device)

        for start in range(0, len(order), batch_size):
            rows = order[start: start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[r, width - len(encoded[i]):] = 1
            torch.manual_seed(seed + start)
            kwargs = {"do_sample": False} if temperature == 0 else {
                "do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                    max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=self.pad_id,
                    stopping_criteria=StoppingCriteriaList([StopStrings(width)]) if stop else None,
                    **kwargs)
            for r, i in enumerate(rows):
                results[i] = self._finish(out[r, width:].tolist(), stop)
        return results  # type: ignore[return-value]

    def _finish(self, new_ids: list[int], stop: Sequence[str]) -> Generation:
        reason: Literal["eos", "stop", "length"] = "length"
        if self.eos_id in new_ids:
            new_ids = new_ids[: new_ids.index(self.eos_id) + 1]
            reason = "eos"
        body = new_ids[:-1] if reason == "eos" else new_ids
        text, hit = cut_at_stop(self.tokenizer.decode(body), stop)
        if hit:
            reason = "stop"
        return Generation(text, new_ids, reason)


def load_backend(kind: str, model: str | os.PathLike, dtype: str | None = None) -> Backend:
    """``hf``: transformers on an HF directory; ``jax``: ``semcoder_jax.generate.load_generator`` on a native
    checkpoint, a training export or an HF directory."""
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if not os.path.exists(model):
        raise UserError(f"--model {model}: no such file or directory")
    if kind == "hf":
        return HFBackend(model, dtype)
    if kind == "jax":
        from semcoder_jax.generate import load_generator

        return load_generator(os.fspath(model), dtype=dtype)
    raise UserError(f"--backend {kind!r}: expected hf or jax")
