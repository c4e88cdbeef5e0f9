"""User-given locations: local paths and object-store URLs (``gs://BUCKET/...``) through one path layer.

Every run directory, dataset, tokenizer, checkpoint and export a user names goes through ``path()``, an
``etils.epath.Path``: the ``os`` backend for local paths and fsspec (gcsfs) for ``gs://``.  Orbax uses the
same layer for its step directories, commit markers and cleanup, and TensorStore writes the arrays, so one
set of settings governs the whole stack.  Another scheme is a registration away (``register_scheme``: an
fsspec implementation epath routes to, and what to install).

Before a run does any work its locations are checked (``check``: a known scheme, installed, with a bucket)
and a remote run directory is probed with a small write and delete (``probe_writable``), so a missing
bucket, missing credentials or a missing permission is one line naming what to do, not a traceback after
the first checkpoint interval.

``configure_environment`` sets what the stack needs for gs:// (``data_pipeline.remote.configure``:
``EPATH_USE_TF=false``, so epath does not hand gs:// to TensorFlow's GCS client, which cannot be pointed at
an emulator; gcsfs's zonal-bucket probe off) and, when ``STORAGE_EMULATOR_HOST`` names a local emulator,
points TensorStore at it and keeps the credential lookups off the network.  Object stores have no rename and no append: ``write_text`` writes a
whole object (a single upload is atomic), and callers that append (metrics) rewrite instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

from data_pipeline import remote
from semcoder_jax.errors import UserError

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


class LocationError(UserError):
    """A location that cannot be used: unknown scheme, no bucket, missing bucket, credentials, permission."""


@dataclasses.dataclass(frozen=True)
class Scheme:
    """An object store the path layer serves: the module that implements it and how to install it."""

    name: str
    module: str
    install: str


SCHEMES: dict[str, Scheme] = {
    "gs": Scheme("gs", "gcsfs", "pip install gcsfs google-cloud-storage (both in semcoder-jax's dependencies)"),
}


def register_scheme(scheme: Scheme) -> None:
    """Serves ``scheme.name://`` through epath's fsspec backend (the module must implement it for fsspec)."""
    SCHEMES[scheme.name] = scheme


def object_store_scheme(value: str | None) -> str | None:
    """The scheme of a URL-like location (``gs`` for ``gs://b/x``), None for a local path or None."""
    return remote.scheme(value)


def is_remote(value: Any) -> bool:
    return object_store_scheme(str(value) if value is not None else None) is not None


def split(value: str) -> tuple[str, str, str]:
    """(scheme, bucket, key) of ``scheme://bucket/key``."""
    scheme = object_store_scheme(value) or ""
    rest = value[len(scheme) + 3:]
    bucket, _, key = rest.partition("/")
    return scheme, bucket, key


def check(what: str, value: str | None) -> None:
    """Raises ``LocationError`` (one line naming ``what`` and the value) for a URL this installation cannot
    serve: an unregistered scheme, its module not installed, or no bucket.  Local paths always pass."""
    scheme = object_store_scheme(value)
    if scheme is None:
        return
    entry = SCHEMES.get(scheme)
    if entry is None:
        served = ", ".join(f"{s}://" for s in sorted(SCHEMES))
        raise LocationError(f"{what} {value}: {scheme}:// is not a storage this installation serves ({served} is; "
                            "another fsspec scheme is added with semcoder_jax.locations.register_scheme), or mount "
                            "it and give the mount path")
    if importlib.util.find_spec(entry.module) is None:
        raise LocationError(f"{what} {value}: {scheme}:// needs the {entry.module} package: {entry.install}")
    _, bucket, _ = split(value)
    if not bucket:
        raise LocationError(f"{what} {value}: no bucket name (write {scheme}://BUCKET/path)")
    if scheme == "gs" and not _BUCKET.match(bucket):
        raise LocationError(f"{what} {value}: {bucket!r} is not a valid bucket name (3-222 characters: lowercase "
                            "letters, digits, '-', '_' and '.', starting and ending with a letter or digit)")


def configure_environment() -> None:
    """What the gs:// stack needs in the environment (``data_pipeline.remote.configure``: ``EPATH_USE_TF=false``,
    gcsfs's zonal probe off, and with ``STORAGE_EMULATOR_HOST`` TensorStore pointed at the emulator and
    google-auth kept off the metadata server); defaults only, idempotent."""
    remote.configure()


def path(value: str | os.PathLike, what: str = "location"):
    """The ``epath.Path`` of a user-given location (a local one made absolute); checked first."""
    from etils import epath

    text = os.fspath(value)
    if is_remote(text):
        check(what, text)
        configure_environment()
        return epath.Path(text)
    return epath.Path(os.path.abspath(text))


def absolute(value: str) -> str:
    """A local path made absolute; a URL unchanged."""
    return value if is_remote(value) else os.path.abspath(value)


def join(base: str, *parts: str) -> str:
    """``os.path.join`` for local paths, ``/`` joins for URLs (no ``\\`` on any platform)."""
    if is_remote(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def write_text(target: str | os.PathLike, text: str) -> None:
    """Writes a file whole or not at all: locally through a temporary file and a rename; on an object
    store as one upload (an object appears only once it is complete)."""
    write_bytes(target, text.encode("utf-8"))


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    text = os.fspath(target)
    if is_remote(text):
        path(text).write_bytes(data)
        return
    tmp = f"{text}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, text)


def upload_tree(local_dir: str, target: str) -> int:
    """Copies every file under ``local_dir`` to ``target`` (a URL or a local directory); returns the bytes."""
    if is_remote(target):
        check("location", target)
        return remote.upload_tree(local_dir, target)
    return _copy_local_tree(local_dir, target)


def download_tree(source: str, local_dir: str) -> int:
    """Copies every object (or file) under ``source`` into ``local_dir``; returns the bytes."""
    if is_remote(source):
        check("location", source)
        return remote.download_tree(source, local_dir)
    return _copy_local_tree(source, local_dir)


def _copy_local_tree(source: str, target: str) -> int:
    shutil.copytree(source, target, dirs_exist_ok=True)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(source) for f in files)


# ---- errors a cloud user meets, as one line -------------------------------------------------------------


def explain(exc: BaseException, what: str, value: str, *, writing: bool = True) -> str | None:
    """One line, naming ``what``, for an object-store failure on ``value`` (missing bucket, credentials,
    permission), or None when ``exc`` is not one (``data_pipeline.remote.explain``)."""
    line = remote.explain(exc, value, writing=writing)
    return f"{what} {line}" if line else None


def probe_writable(what: str, value: str) -> None:
    """Writes and deletes a small object under ``value`` (a URL; local paths are left to the caller), so a
    missing bucket, missing credentials or a missing permission stops the run before any work."""
    if not is_remote(value):
        return
    check(what, value)
    try:
        remote.probe_writable(value)
    except remote.RemoteError as e:
        raise LocationError(f"{what} {e}") from None


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Silences a library's logger for a while (a library that logs a traceback for a failure the caller
    reports in one line)."""
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def probe_readable(what: str, value: str) -> None:
    """Checks that ``value`` exists (file or directory), with one-line errors for object stores."""
    if not is_remote(value):
        return
    try:
        found = path(value, what).exists()
    except LocationError:
        raise
    except Exception as e:  # noqa: BLE001
        line = explain(e, what, value, writing=False)
        if line is None:
            raise
        raise LocationError(line) from None
    if not found:
        raise LocationError(f"{what} {value}: not found")
