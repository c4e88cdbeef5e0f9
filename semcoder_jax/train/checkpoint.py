"""Training checkpoints: one Orbax ``CheckpointManager`` in ``RUN/checkpoints/``.

Each step directory holds three Composite items:
- ``params``: StandardSave of the unboxed parameter tree (nothing else; the converter and the JAX
  eval backend read it directly);
- ``opt_state``: StandardSave of the optax state;
- ``meta``: JsonSave of ``step``, ``model_config`` (``dataclasses.asdict(ModelConfig)``), the RNG key
  data, the data pipeline's position (one state per process) and the run config.
Saves are asynchronous; Orbax writes into a temporary directory and renames it when complete, so a
step directory either is whole or is not listed.  Restores take abstract targets with shardings, so
a checkpoint written on one mesh restores onto any other.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import numpy as np

from semcoder_jax.config import ModelConfig, model_config_from_dict
from semcoder_jax.errors import UserError

CHECKPOINTS_DIR = "checkpoints"


class CheckpointError(UserError):
    """No usable checkpoint where one was expected."""


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def checkpoints_dir(run_dir: str) -> str:
    return os.path.join(os.path.abspath(run_dir), CHECKPOINTS_DIR)


class Checkpointer:
    """Saves and restores train states of one run (every process calls every method)."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        ocp = _ocp()
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=True, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, params: Any, opt_state: Any, meta: dict[str, Any]) -> bool:
        ocp = _ocp()
        return self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta)), force=True)

    def restore_meta(self, step: int) -> dict[str, Any]:
        ocp = _ocp()
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any) -> tuple[Any, Any, dict]:
        ocp = _ocp()
        out = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params),
            opt_state=ocp.args.StandardRestore(abstract_opt_state),
            meta=ocp.args.JsonRestore()))
        return out["params"], out["opt_state"], out["meta"]

    def restore_latest(self, abstract_params: Any, abstract_opt_state: Any, *, check_meta=None
                       ) -> tuple[int, Any, Any, dict] | None:
        """The newest readable checkpoint; an unreadable one is reported and the previous one tried.

        ``check_meta(meta)`` may raise ``UserError`` (e.g. a model shape that differs): that is a
        user mistake, not a damaged checkpoint, and propagates.
        """
        steps = self.steps()
        failures = []
        for step in reversed(steps):
            try:
                meta = self.restore_meta(step)
            except Exception as e:  # noqa: BLE001 - any read failure means "damaged", reported below
                failures.append(step)
                _report(f"checkpoint {self.directory}/{step} is unreadable ({type(e).__name__}: "
                        f"{_first_line(e)}); trying the previous one")
                continue
            if check_meta is not None:
                check_meta(meta)
            try:
                params, opt_state, meta = self.restore(step, abstract_params, abstract_opt_state)
            except Exception as e:  # noqa: BLE001
                failures.append(step)
                _report(f"checkpoint {self.directory}/{step} is unreadable ({type(e).__name__}: "
                        f"{_first_line(e)}); trying the previous one")
                continue
            return step, params, opt_state, meta
        if failures:
            raise CheckpointError(f"{self.directory}: no readable checkpoint (unreadable steps: "
                                  f"{', '.join(map(str, failures))})")
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


def _report(message: str) -> None:
    if jax.process_index() == 0:
        print(f"semcoder train: warning: {message}", file=sys.stderr, flush=True)


def _read_json(path: str) -> Any:
    import json

    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _meta_file(step_dir: str) -> str | None:
    for candidate in (os.path.join(step_dir, "meta", "metadata"), os.path.join(step_dir, "meta")):
        if os.path.isfile(candidate):
            return candidate
    return None


def latest_params_step(run_or_checkpoints_dir: str) -> tuple[str, ModelConfig]:
    """(step directory, ModelConfig) of the newest complete checkpoint of a run.

    Accepts a run directory, its ``checkpoints/`` directory or one step directory.  The step's
    parameters are in ``STEP/params`` (an Orbax PyTree of the unboxed parameter tree).
    """
    path = os.path.abspath(run_or_checkpoints_dir)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: directory not found")
    if _meta_file(path) is not None:
        candidates = [path]
    else:
        ckpts = os.path.join(path, CHECKPOINTS_DIR) if os.path.isdir(os.path.join(path, CHECKPOINTS_DIR)) else path
        steps = sorted((int(name) for name in os.listdir(ckpts) if name.isdigit()), reverse=True)
        candidates = [os.path.join(ckpts, str(s)) for s in steps]
        if not candidates:
            raise CheckpointError(f"{path}: no training checkpoints found (expected {CHECKPOINTS_DIR}/<step>/)")
    for step_dir in candidates:
        meta_file = _meta_file(step_dir)
        if meta_file is None or not os.path.isdir(os.path.join(step_dir, "params")):
            _report(f"{step_dir}: incomplete checkpoint (no meta or params); skipped")
            continue
        try:
            meta = _read_json(meta_file)
            return step_dir, model_config_from_dict(meta["model_config"], source=meta_file)
        except (ValueError, KeyError, TypeError) as e:
            _report(f"{meta_file}: unreadable ({e}); skipped")
    raise CheckpointError(f"{path}: no complete training checkpoint")


def rng_to_json(key_data: Any) -> list[int]:
    return [int(x) for x in np.asarray(jax.device_get(key_data)).reshape(-1)]


def rng_from_json(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.uint32)
