"""Training checkpoints: one Orbax ``CheckpointManager`` in ``RUN/checkpoints/``, every step content-verified.

Each step directory holds four Composite items:
- ``params``: StandardSave of the unboxed parameter tree (nothing else; the converter and the JAX
  eval backend read it directly);
- ``opt_state``: StandardSave of the optax state;
- ``meta``: JsonSave of ``step``, ``model_config`` (``dataclasses.asdict(ModelConfig)``), the RNG key
  data, the data pipeline's position (one state per process) and the run config;
- ``manifest``: JsonSave of every array's shape, dtype and content digest (``semcoder_jax.integrity``)
  and the SHA-256 of ``meta``.  It is written with the step and committed with it, so a step either has
  its manifest or is not listed.
Saves are asynchronous; Orbax writes into a temporary directory and renames it when complete.  A state
holding NaN or infinity is never saved.  Restores take abstract targets with shardings, so a checkpoint
written on one mesh restores onto any other, and every restore is checked against its manifest; a step
that fails to restore or to match is moved aside (``checkpoints/corrupt-STEP-TIME``, never deleted) and
the previous one is used.  ``verify_run`` checks steps from the files alone (``semcoder checkpoint verify``).
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np

from semcoder_jax import integrity, locations
from semcoder_jax.config import ModelConfig, model_config_from_dict
from semcoder_jax.errors import UserError

CHECKPOINTS_DIR = "checkpoints"
MANIFEST_VERSION = 1
ITEMS = ("params", "opt_state")


class CheckpointError(UserError):
    """No usable checkpoint where one was expected, or a save that could not be completed."""


class CorruptCheckpoint(CheckpointError):
    """A step whose contents do not match its manifest (or cannot be read at all)."""


class NonFiniteState(CheckpointError):
    """A train state holding NaN or infinity: it is never committed."""


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def checkpoints_dir(run_dir: str) -> str:
    return locations.join(locations.absolute(run_dir), CHECKPOINTS_DIR)


def make_manifest(step: int, params: Any, opt_state: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a train state (raises ``NonFiniteState`` if any float array holds NaN or inf)."""
    arrays, finite, algorithm = integrity.tree_digests({"params": params, "opt_state": opt_state})
    if not finite:
        raise NonFiniteState(f"step {step}: the parameters or optimizer state hold NaN or infinity; "
                             "the checkpoint was not saved")
    return {"version": MANIFEST_VERSION, "step": step, "algorithm": algorithm, "arrays": arrays,
            "meta_sha256": integrity.json_digest(meta)}


def check_against_manifest(manifest: dict[str, Any], params: Any, opt_state: Any, meta: dict[str, Any],
                           verify_files: Any = None) -> list[str]:
    """What of a restored state differs from its manifest, in words (empty when it all matches).

    An ``xxh3-64`` manifest needs every array whole in this process; restored across several processes
    it is checked from the files instead (``verify_files()``, run on process 0)."""
    problems = []
    if integrity.json_digest(meta) != manifest.get("meta_sha256"):
        problems.append("meta: content differs from the manifest")
    algorithm = manifest.get("algorithm")
    if algorithm not in integrity.ALGORITHMS:
        return problems + [f"manifest: unknown digest algorithm {algorithm!r}"]
    tree = {"params": params, "opt_state": opt_state}
    if algorithm == integrity.XXH3 and jax.process_count() > 1:
        return problems + (verify_files() if verify_files is not None else [])
    found, _, _ = integrity.tree_digests(tree, algorithm)
    return problems + integrity.compare(manifest.get("arrays", {}), found)


class Checkpointer:
    """Saves and restores train states of one run (every process calls every method)."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        ocp = _ocp()
        self.directory = locations.absolute(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=True, create=True)
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as e:
            raise CheckpointError(f"{self.directory}: cannot be used for checkpoints ({e.strerror or e})") from None
        self._pending: tuple[int, int] | None = None  # (step, bytes) of the save in flight
        _quiet_storage_failure_echoes()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, params: Any, opt_state: Any, meta: dict[str, Any]) -> bool:
        """Starts saving ``step`` (after the previous save has finished); raises ``NonFiniteState`` for a
        state with NaN/inf and a one-line ``CheckpointError`` when the storage fails (disk full, ...)."""
        ocp = _ocp()
        manifest = make_manifest(step, params, opt_state, meta)
        size = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves((params, opt_state)))
        self._pending = (step, size)
        with self._storage_errors():
            saved = self.manager.save(step, args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(meta),
                manifest=ocp.args.JsonSave(manifest)), force=True)
        return saved

    def restore_meta(self, step: int) -> dict[str, Any]:
        ocp = _ocp()
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def has_manifest(self, step: int) -> bool:
        return locations.path(locations.join(self.directory, str(step), "manifest")).is_dir()

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any) -> tuple[Any, Any, dict]:
        """The state of ``step``, checked against its manifest (raises ``CorruptCheckpoint`` on a mismatch;
        a step written before manifests existed is restored with a warning)."""
        ocp = _ocp()
        items = dict(params=ocp.args.StandardRestore(abstract_params),
                     opt_state=ocp.args.StandardRestore(abstract_opt_state), meta=ocp.args.JsonRestore())
        has_manifest = self.has_manifest(step)
        if has_manifest:
            items["manifest"] = ocp.args.JsonRestore()
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        if not has_manifest:
            _report(f"checkpoint {self.directory}/{step} has no manifest (written before they existed); "
                    "restored without verifying its contents")
            return out["params"], out["opt_state"], out["meta"]
        step_dir = locations.join(self.directory, str(step))
        problems = check_against_manifest(out["manifest"], out["params"], out["opt_state"], out["meta"],
                                          verify_files=lambda: _on_process_0(lambda: verify_step(step_dir)[1]))
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise CorruptCheckpoint(f"{problems[0]}{more}")
        return out["params"], out["opt_state"], out["meta"]

    def restore_latest(self, abstract_params: Any, abstract_opt_state: Any, *, check_meta=None
                       ) -> tuple[int, Any, Any, dict] | None:
        """The newest checkpoint that restores and matches its manifest.

        A step that fails either is moved aside (renamed, never deleted) with a one-line warning, and the
        previous one is tried; the run then saves over the same step numbers as usual.  ``check_meta(meta)``
        may raise ``UserError`` (e.g. a model shape that differs): that is a user mistake, not a damaged
        checkpoint, and propagates.
        """
        failures = []
        for step in reversed(self.steps()):
            try:
                meta = self.restore_meta(step)
            except Exception as e:  # noqa: BLE001 - any read failure means "damaged"
                failures.append(self._set_aside(step, f"{type(e).__name__}: {_first_line(e)}"))
                continue
            if check_meta is not None:
                check_meta(meta)
            try:
                params, opt_state, meta = self.restore(step, abstract_params, abstract_opt_state)
            except CorruptCheckpoint as e:
                failures.append(self._set_aside(step, str(e)))
                continue
            except Exception as e:  # noqa: BLE001
                failures.append(self._set_aside(step, f"{type(e).__name__}: {_first_line(e)}"))
                continue
            return step, params, opt_state, meta
        if failures:
            raise CheckpointError(f"{self.directory}: no checkpoint restores and matches its manifest (moved "
                                  f"aside: {', '.join(failures)}); start afresh in another run directory or "
                                  "restore a copy of the checkpoints")
        return None

    def _set_aside(self, step: int, reason: str) -> str:
        """Moves a damaged step out of the manager's sight (process 0 moves it; everyone reloads).

        Locally a rename.  An object store has no rename: the step's objects are copied (server side) to
        ``corrupt-STEP-TIME/``, then its commit marker is deleted — one request after which Orbax no longer
        counts the step — and then the rest of it.  A kill in between leaves the copy and an uncommitted
        step, which Orbax's start-up cleanup removes: the evidence is never lost."""
        src = locations.join(self.directory, str(step))
        dst = locations.join(self.directory, f"corrupt-{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        if jax.process_index() == 0:
            _report(f"checkpoint {src} is damaged ({reason}); moved to {dst}, trying the previous one")
            if locations.is_remote(src):
                _move_remote_step(src, dst)
            else:
                os.rename(src, dst)
        _barrier(f"semcoder-set-aside-{step}")
        self.manager.reload()
        return f"{step} -> {dst.rsplit('/', 1)[-1]}"

    def wait(self) -> None:
        with self._storage_errors():
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()

    # -- storage failures ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _storage_errors(self) -> Iterator[None]:
        """Turns a storage failure anywhere below (disk full, quota, read-only) into one line."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - classified below; anything else propagates unchanged
            reason = _storage_failure(e)
            if reason is None:
                raise
            raise self._save_failed(reason) from None

    def _save_failed(self, reason: str) -> CheckpointError:
        """One line for a save the storage refused; its temporary directory is removed at once."""
        step, size = self._pending or (None, 0)
        with contextlib.suppress(Exception):  # let Orbax's writer threads stop before cleaning up after them
            self.manager.wait_until_finished()
        _join_orbax_threads(timeout_s=60.0)
        # the failed save's abandoned coroutines would each warn at exit; the one line below says it all
        warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)
        if isinstance(sys.unraisablehook, _StorageFailureEcho):
            sys.unraisablehook.after_failure = True
        local = not locations.is_remote(self.directory)
        for name in os.listdir(self.directory) if local and os.path.isdir(self.directory) else []:
            if ".orbax-checkpoint-tmp" in name or (step is not None and name.startswith(f"{step}.")
                                                   and not name.isdigit()):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        if not local:  # an object store: the step without its commit marker is removed by Orbax's cleanup
            return CheckpointError(f"{self.directory}: saving step {step} failed ({reason}); rerun to resume "
                                   "from the last committed step")
        free = shutil.disk_usage(self.directory).free if os.path.isdir(self.directory) else 0
        kept = [s for s in self.steps() if s != step]
        where = f"step {step} " if step is not None else ""
        return CheckpointError(
            f"{self.directory}: saving {where}failed ({reason}); it needs about {_size(size)}, {_size(free)} "
            f"are free. The unfinished step was removed; "
            + (f"step {kept[-1]} is intact, rerun to resume from it" if kept else "no earlier step exists"))


def _move_remote_step(src: str, dst: str) -> None:
    """``_set_aside`` on an object store: copy, drop the commit marker, drop the rest."""
    from etils.epath import backend as backend_lib

    fs = backend_lib.fsspec_backend.fs(src)
    fs.copy(src, dst, recursive=True)
    marker = locations.path(locations.join(src, "commit_success.txt"))
    if marker.exists():
        marker.unlink()
    fs.rm(src, recursive=True)


class _StorageFailureEcho:
    """Drops what Orbax's worker threads print about a storage failure that ``_save_failed`` reports
    in one line: their ``logging.exception`` records (absl and asyncio ``ERROR``s with a traceback per
    thread) and the "Event loop is closed" errors that tensorstore's completion callbacks raise once
    Orbax has closed the loop they were meant for.  Anything else is printed as before."""

    def __init__(self, unraisablehook):
        self.unraisablehook = unraisablehook

    def filter(self, record) -> bool:  # logging.Filter protocol
        cause = record.exc_info[1] if record.exc_info else None
        return _storage_failure(cause) is None and _storage_failure(Exception(record.getMessage())) is None

    after_failure = False  # set once a save failed: its abandoned coroutines are then closed at exit

    def __call__(self, unraisable) -> None:  # sys.unraisablehook
        if _is_orphaned_loop_callback(unraisable.exc_value, unraisable.exc_traceback):
            return
        if self.after_failure and inspect.iscoroutine(unraisable.object):
            return
        self.unraisablehook(unraisable)


def _is_orphaned_loop_callback(value: BaseException | None, tb) -> bool:
    """A callback from native code into an event loop that no longer exists (nothing awaits it)."""
    return (isinstance(value, RuntimeError) and str(value) == "Event loop is closed" and tb is not None
            and tb.tb_frame.f_code.co_name == "call_soon_threadsafe")


def _quiet_storage_failure_echoes() -> None:
    import logging

    if isinstance(sys.unraisablehook, _StorageFailureEcho):
        return
    echo = _StorageFailureEcho(sys.unraisablehook)
    sys.unraisablehook = echo
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(echo)


def _join_orbax_threads(timeout_s: float) -> None:
    """Waits for Orbax's own background threads (e.g. the one writing array metadata after the data
    commits), which a failed save can leave running after ``wait_until_finished`` has returned."""
    import threading

    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and type(thread).__module__.startswith("orbax."):
            with contextlib.suppress(Exception):  # Orbax's join re-raises the thread's (already reported) error
                thread.join(max(0.0, deadline - time.monotonic()))


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO}


def _storage_failure(exc: BaseException) -> str | None:
    """A one-line reason when ``exc`` (or what caused it) is the storage failing, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
            return exc.strerror or str(exc)
        text = str(exc)
        for marker, reason in (("No space left on device", "No space left on device"),
                               ("Disk quota exceeded", "Disk quota exceeded"),
                               ("File too large", "File too large"),
                               ("Read-only file system", "Read-only file system"),
                               ("RESOURCE_EXHAUSTED", "the storage is full")):
            if marker in text:
                return reason
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                found = _storage_failure(inner)
                if found:
                    return found
        exc = exc.__cause__ or exc.__context__
    return None


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _on_process_0(fn) -> list[str]:
    """``fn()`` (a list of problems) run on process 0, its answer broadcast to every process."""
    problems = fn() if jax.process_index() == 0 else []
    if jax.process_count() == 1:
        return problems
    from jax.experimental import multihost_utils

    text = json.dumps(problems).encode()
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(text))))
    buf = np.zeros(size, np.uint8)
    buf[: len(text)] = np.frombuffer(text, np.uint8)[:size]
    return json.loads(bytes(multihost_utils.broadcast_one_to_all(buf)).decode())


# ---- checking steps from the files alone ------------------------------------------------------------


def _array_keys(item_dir: str) -> list[tuple[str, ...]]:
    """The key paths of every array an Orbax PyTree item holds (from its ``_METADATA``)."""
    from semcoder_jax.convert import _pytree_dir

    tree = json.loads(locations.path(locations.join(_pytree_dir(item_dir), "_METADATA")).read_text())["tree_metadata"]
    keys = []
    for entry in tree.values():
        if entry.get("value_metadata", {}).get("skip_deserialize"):
            continue
        keys.append(tuple(str(k["key"]) for k in entry["key_metadata"]))
    return keys


def verify_step(step_dir: str) -> tuple[str, list[str]]:
    """(``ok`` | ``corrupt`` | ``unverifiable``, the problems or why) for one step, from its files: every
    array is read back (block by block) and digested with the manifest's algorithm."""
    from semcoder_jax.convert import open_native_leaf, read_leaf_blocks

    manifest_file = locations.path(locations.join(step_dir, "manifest", "metadata"))
    if not manifest_file.is_file():
        return "unverifiable", ["no manifest (written before manifests existed, or not a training step)"]
    try:
        manifest = json.loads(manifest_file.read_text())
        algorithm, recorded = manifest["algorithm"], manifest["arrays"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return "corrupt", [f"manifest: unreadable ({e})"]
    if algorithm not in integrity.ALGORITHMS:
        return "unverifiable", [f"manifest: unknown digest algorithm {algorithm!r}"]
    problems = []
    meta_file = locations.path(locations.join(step_dir, "meta", "metadata"))
    try:
        if integrity.json_digest(json.loads(meta_file.read_text())) != manifest.get("meta_sha256"):
            problems.append("meta: content differs from the manifest")
    except (OSError, ValueError) as e:
        problems.append(f"meta: unreadable ({e})")
    leaves = []
    for item in ITEMS:
        item_dir = locations.join(step_dir, item)
        try:
            leaves += [(item_dir, "/".join((item, *key)), key) for key in _array_keys(item_dir)]
        except (OSError, ValueError, KeyError, TypeError, UserError) as e:
            problems.append(f"{item}: unreadable metadata ({_first_line(e)})")

    def digest(leaf: tuple[str, str, tuple]) -> tuple[str, dict[str, Any] | None, str | None]:
        item_dir, name, key = leaf
        try:
            store = open_native_leaf(item_dir, key)
            block = integrity.BlockDigest(algorithm)
            for data in read_leaf_blocks(store, 256 << 20):
                block.add(data)
            return name, {"shape": list(store.shape), "dtype": str(store.dtype.numpy_dtype),
                          "digest": block.hexdigest()}, None
        except Exception as e:  # noqa: BLE001 - unreadable data is corruption, whatever raised it
            return name, None, f"{name}: unreadable ({type(e).__name__}: {_first_line(e)})"

    found: dict[str, dict[str, Any] | None] = {}
    # two leaves at a time: a leaf stored as one chunk decodes on one thread (TensorStore releases the GIL)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for name, entry, problem in pool.map(digest, leaves):
            found[name] = entry
            if problem:
                problems.append(problem)
    readable = {k: v for k, v in found.items() if v is not None}
    problems += integrity.compare(recorded, readable, names=[k for k in set(recorded) | set(readable)
                                                            if found.get(k, "missing") is not None])
    return ("corrupt" if problems else "ok"), problems


def verify_run(run_or_checkpoints_dir: str, step: int | None = None) -> list[tuple[int | str, str, list[str]]]:
    """(step, status, problems) for every step of a run (or one), newest first, from the files."""
    path = locations.absolute(run_or_checkpoints_dir)
    ckpts = _checkpoints_of(path)
    if not locations.path(ckpts).is_dir():
        raise CheckpointError(f"{path}: directory not found")
    steps = sorted((int(p.name) for p in locations.path(ckpts).iterdir() if p.name.isdigit()), reverse=True)
    if step is not None:
        if step not in steps:
            raise CheckpointError(f"{ckpts}: no step {step} (steps: {', '.join(map(str, steps)) or 'none'})")
        steps = [step]
    if not steps:
        raise CheckpointError(f"{path}: no training checkpoints found (expected {CHECKPOINTS_DIR}/<step>/)")
    return [(s, *verify_step(locations.join(ckpts, str(s)))) for s in steps]


def _checkpoints_of(path: str) -> str:
    """``path/checkpoints`` when a run directory was given, else ``path`` itself."""
    inner = locations.join(path, CHECKPOINTS_DIR)
    return inner if locations.path(inner).is_dir() else path


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


def _report(message: str) -> None:
    if jax.process_index() == 0:
        print(f"semcoder train: warning: {message}", file=sys.stderr, flush=True)


def _read_json(path: str) -> Any:
    return json.loads(locations.path(path).read_text())


def _meta_file(step_dir: str) -> str | None:
    for candidate in (locations.join(step_dir, "meta", "metadata"), locations.join(step_dir, "meta")):
        if locations.path(candidate).is_file():
            return candidate
    return None


def latest_params_step(run_or_checkpoints_dir: str) -> tuple[str, ModelConfig]:
    """(step directory, ModelConfig) of the newest complete checkpoint of a run.

    Accepts a run directory, its ``checkpoints/`` directory or one step directory.  The step's
    parameters are in ``STEP/params`` (an Orbax PyTree of the unboxed parameter tree).
    """
    path = locations.absolute(run_or_checkpoints_dir)
    if not locations.path(path).is_dir():
        raise CheckpointError(f"{path}: directory not found")
    if _meta_file(path) is not None:
        candidates = [path]
    else:
        ckpts = _checkpoints_of(path)
        steps = sorted((int(p.name) for p in locations.path(ckpts).iterdir() if p.name.isdigit()), reverse=True)
        candidates = [locations.join(ckpts, str(s)) for s in steps]
        if not candidates:
            raise CheckpointError(f"{path}: no training checkpoints found (expected {CHECKPOINTS_DIR}/<step>/)")
    for step_dir in candidates:
        meta_file = _meta_file(step_dir)
        if meta_file is None or not locations.path(locations.join(step_dir, "params")).is_dir():
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
