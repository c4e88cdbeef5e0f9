"""Data files on an object store (``gs://BUCKET/...``): listing, streamed scans and byte-range reads.

The pipeline reads a remote file twice over, as it reads a local one (``data_pipeline.index``): once in
order when the index is built, then record by record in the epoch's order.  Both go through fsspec
(gcsfs for gs://), never TensorFlow's filesystem (whose GCS client has a compiled-in endpoint):

- ``BlockStream`` streams whole files as ``SCAN_BLOCK`` blocks, ``SCAN_AHEAD`` range requests in flight
  on a thread pool, across file boundaries (many small shards do not each wait out a round trip).
- ``read_ranges`` fetches the records of a window: ranges sorted by file and offset, neighbours less
  than ``MERGE_GAP`` apart read as one request (at most ``MAX_RANGE`` bytes), all of a window's requests
  in flight at once (``READ_CONCURRENCY``) on fsspec's event loop.  tf.data's parallel map runs several
  windows at a time, so several windows' requests overlap too.

Nothing is staged on local disk here; the index keeps a decompressed copy of a ``.gz`` file, as it does
for a local one.  Failures are one line naming the URL (``RemoteError``): no match, a missing object or
bucket, missing credentials, a missing permission, an object changed while it is read.

(The ``semcoder_jax.locations`` layer sits above this package; the environment defaults the whole gs://
stack needs are set here, by ``configure``, which it calls.)
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import logging
import os
import re
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from data_pipeline.errors import UserError

SCAN_BLOCK = 8 << 20  # bytes per request when a file is streamed for the index
SCAN_AHEAD = 8  # requests in flight while streaming (SCAN_BLOCK * SCAN_AHEAD bytes of memory at most)
READ_CONCURRENCY = 64  # range requests in flight per read_ranges call
MERGE_GAP = 64 << 10  # records closer than this are fetched in one request (the gap is read and dropped)
MAX_RANGE = 16 << 20  # the longest merged request

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CLOSED_LOOPBACK = "127.0.0.1:9"


class RemoteError(UserError):
    """A remote data location that cannot be read, in one line naming it."""


def scheme(value: Any) -> str | None:
    match = _URL.match(str(value) if value is not None else "")
    return match.group(1) if match else None


def is_remote(value: Any) -> bool:
    """Whether ``value`` is a URL (``gs://...``) rather than a local path."""
    return scheme(value) is not None


def bucket_of(url: str) -> str:
    return url.split("://", 1)[1].partition("/")[0]


def configure() -> None:
    """Sets (as defaults, never over a user's value) the variables the gs:// stack needs; idempotent.

    Always: ``EPATH_USE_TF=false`` (etils' epath would otherwise hand gs:// to TensorFlow's GCS client,
    which cannot be pointed at an emulator; epath caches that choice on first use, so the cache is cleared
    here) and ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` (gcsfs reads it at import; on, each bucket-layout
    probe waits out a 60 s timeout where the call is not supported).  With ``STORAGE_EMULATOR_HOST`` set:
    ``TENSORSTORE_GCS_HTTP_URL`` (TensorStore's gcs driver has no endpoint setting and reads this once per
    process), and google-auth kept from the metadata server (``NO_GCE_CHECK=true``, ``GCE_METADATA_HOST``/
    ``ROOT``/``IP`` on a closed loopback port), else each credential lookup waits out its retries against a
    server that is not there.  (``semcoder_jax.locations.configure_environment`` is this function.)
    """
    if os.environ.setdefault("EPATH_USE_TF", "false") == "false":
        gpath = sys.modules.get("etils.epath.gpath")
        cached = getattr(gpath, "_is_tf_installed", None)
        if cached is not None and hasattr(cached, "cache_clear"):
            cached.cache_clear()
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if emulator and emulator != "default":
        url = emulator if emulator.startswith(("http://", "https://")) else f"http://{emulator}"
        os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
        os.environ.setdefault("NO_GCE_CHECK", "true")
        for key in ("GCE_METADATA_HOST", "GCE_METADATA_ROOT", "GCE_METADATA_IP"):
            os.environ.setdefault(key, _CLOSED_LOOPBACK)


@functools.cache
def _filesystem(name: str):
    import fsspec

    # finalize_on_close as etils.epath passes it, so this is the instance (and connection pool) epath uses
    return fsspec.filesystem(name, finalize_on_close=True) if name in ("gs", "gcs") else fsspec.filesystem(name)


def filesystem(url: str):
    """The fsspec filesystem serving ``url`` (one instance per scheme, shared with etils.epath for gs://)."""
    configure()
    name = scheme(url) or "file"
    try:
        return _filesystem(name)
    except (ImportError, ValueError) as e:
        raise RemoteError(f"{url}: {name}:// cannot be read here ({e})") from None


class _Quiet(logging.Filter):
    """Drops gcsfs's records while any read of this module is under way (gcsfs logs a traceback for every
    refused request, from its event-loop thread; the caller turns the refusal into one line).  A filter,
    not a level change: concurrent readers cannot leave the logger silenced."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        return self.depth == 0


_QUIET = _Quiet()
logging.getLogger("gcsfs").addFilter(_QUIET)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with _QUIET.lock:
        _QUIET.depth += 1
    try:
        yield
    finally:
        with _QUIET.lock:
            _QUIET.depth -= 1


# ---- errors ----------------------------------------------------------------------------------------------


def _status(exc: BaseException) -> int | None:
    for attr in ("code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def _chain(exc: BaseException | None) -> list[BaseException]:
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def explain(exc: BaseException, url: str, *, writing: bool = False) -> str | None:
    """One line for a refused read (or, with ``writing``, write) of ``url``: credentials, permission, a
    missing object or bucket; None when ``exc`` is none of those."""
    for e in _chain(exc):
        status, text = _status(e), str(e)
        if status == 401 or "Unauthorized" in text:
            method = getattr(getattr(filesystem(url), "credentials", None), "method", None)
            if method == "anon":
                return (f"{url}: no credentials were found for {scheme(url)}:// (run `gcloud auth application-default "
                        "login`, or set GOOGLE_APPLICATION_CREDENTIALS; a TPU or GCE VM uses its service account)")
            return f"{url}: the credentials were refused (401 Unauthorized); refresh or replace them"
        if status == 403 or "Forbidden" in text or "PERMISSION_DENIED" in text:
            if writing:
                return (f"{url}: permission denied (403) writing to bucket {bucket_of(url)}: the account needs "
                        "storage.objects.create, .get, .list and .delete there (e.g. roles/storage.objectAdmin)")
            return (f"{url}: permission denied (403) reading bucket {bucket_of(url)}: the account needs "
                    "storage.objects.get and storage.objects.list there (e.g. roles/storage.objectViewer)")
        if status == 416 and not writing:
            return f"{url}: changed while being read (a byte range is past its end); restart the run"
        if isinstance(e, FileNotFoundError) or status == 404:
            return missing_bucket_line(url) if writing else f"{url}: not found (removed while being read?)"
    return None


def probe_writable(url: str) -> None:
    """Writes and deletes a small object under ``url``, so that a missing bucket, missing credentials or a
    missing permission is one line (``RemoteError``) before any work: both gcsfs and TensorStore fall back
    to anonymous access silently, and a missing bucket shows only at the first write.  (No bucket lookup:
    an account may write objects without the right to read the bucket's metadata.)"""
    fs = filesystem(url)
    probe = f"{url.rstrip('/')}/.semcoder-write-probe-{uuid.uuid4().hex}"
    try:
        with _quiet():
            fs.pipe_file(probe, b"probe")
            fs.rm_file(probe)
    except Exception as e:  # noqa: BLE001 - classified by explain; anything else propagates unchanged
        line = explain(e, url, writing=True)
        if line is None:
            raise
        raise RemoteError(line) from None


def upload_tree(local_dir: str, url: str) -> int:
    """Copies every file under ``local_dir`` to the objects under ``url``; returns the bytes."""
    fs = filesystem(url)
    total = 0
    for root, _, files in os.walk(local_dir):
        for name in sorted(files):
            src = os.path.join(root, name)
            rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
            fs.put_file(src, f"{url.rstrip('/')}/{rel}")
            total += os.path.getsize(src)
    return total


def download_tree(url: str, local_dir: str) -> int:
    """Copies every object under ``url`` (recursively) into ``local_dir``; returns the bytes."""
    fs = filesystem(url)
    prefix = url.split("://", 1)[1].rstrip("/")
    total = 0
    for name in fs.find(prefix):
        rel = name[len(prefix):].lstrip("/")
        if not rel:
            continue
        target = os.path.join(local_dir, *rel.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fs.get_file(name, target)
        total += os.path.getsize(target)
    return total


@contextlib.contextmanager
def mirrored(url: str, what: str) -> Iterator[tuple[str, Callable[[], None]]]:
    """A local temporary copy of the directory at ``url`` (for writers that append or rename, which an
    object store cannot) and a function that uploads it back.  It is probed for writing first, downloaded
    if it exists (so a rerun resumes from what is there), and uploaded at the end, after a failure too;
    ``what`` names the tool in the warning when that last upload fails."""
    probe_writable(url)
    with tempfile.TemporaryDirectory(prefix="semcoder-mirror-") as tmp:
        if filesystem(url).isdir(url):
            download_tree(url, tmp)

        def sync() -> None:
            upload_tree(tmp, url)

        try:
            yield tmp, sync
        except BaseException:
            try:
                sync()
            except Exception as e:  # noqa: BLE001 - the run's own failure is what gets reported
                print(f"{what}: warning: {url}: what this run wrote could not be uploaded ({e})", file=sys.stderr)
            raise
        sync()


def _raise(exc: BaseException, url: str) -> NoReturn:
    line = explain(exc, url)
    if line is None:
        raise exc
    raise RemoteError(line) from None


def bucket_exists(url: str) -> bool:
    fs = filesystem(url)
    try:
        with _quiet():
            fs.info(bucket_of(url))
        return True
    except FileNotFoundError:
        return False
    except Exception as e:  # noqa: BLE001 - a refused bucket lookup is the caller's one line
        _raise(e, url)
    return False


def missing_bucket_line(url: str) -> str:
    bucket = bucket_of(url)
    return f"{url}: bucket {bucket} does not exist (fix the name, or create it: gcloud storage buckets create gs://{bucket})"


# ---- listing -----------------------------------------------------------------------------------------------


def _has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def expand(pattern: str, in_directory: Callable[[str], bool] = lambda name: True) -> list[str]:
    """The objects ``pattern`` names, as sorted URLs: a glob's matches, a "directory"'s objects (those
    ``in_directory`` accepts; not recursive), or the object itself; [] when nothing matches.  A missing
    bucket, missing credentials or permission is a ``RemoteError``."""
    if not bucket_of(pattern):
        raise RemoteError(f"{pattern}: no bucket name (write {scheme(pattern)}://BUCKET/path)")
    fs = filesystem(pattern)
    prefix = f"{scheme(pattern)}://"
    fs.invalidate_cache()  # a listing cached earlier in this process may be stale
    try:
        with _quiet():
            if _has_magic(pattern):
                found = fs.glob(pattern, detail=True)
                names = [name for name, info in found.items() if info.get("type") == "file"]
            else:
                try:
                    info = fs.info(pattern)
                except FileNotFoundError:
                    info = None
                if info is None:
                    names = []
                elif info.get("type") == "directory":
                    names = [e["name"] for e in fs.ls(pattern, detail=True)
                             if e.get("type") == "file" and in_directory(e["name"])]
                else:
                    names = [info["name"]]
    except FileNotFoundError:  # gcsfs: listing a missing bucket
        names = []
    except Exception as e:  # noqa: BLE001 - classified by explain; anything else propagates unchanged
        _raise(e, pattern)
    if not names and not bucket_exists(pattern):
        raise RemoteError(missing_bucket_line(pattern))
    return sorted(prefix + name.lstrip("/") for name in names)


async def _gather_limited(coros: Sequence, limit: int) -> list:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro):
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)


def sizes(urls: Sequence[str]) -> list[int]:
    """The byte size of each object (looked up concurrently); a missing one is a ``RemoteError``."""
    if not urls:
        return []
    fs = filesystem(urls[0])
    with _quiet():
        if getattr(fs, "async_impl", False):
            from fsspec.asyn import sync

            infos = sync(fs.loop, _gather_limited, [fs._info(u) for u in urls], READ_CONCURRENCY)
        else:
            infos = []
            for u in urls:
                try:
                    infos.append(fs.info(u))
                except Exception as e:  # noqa: BLE001 - reported below like the async errors
                    infos.append(e)
    out = []
    for url, info in zip(urls, infos):
        if isinstance(info, FileNotFoundError):
            raise RemoteError(f"{url}: not found" if bucket_exists(url) else missing_bucket_line(url))
        if isinstance(info, BaseException):
            _raise(info, url)
        if info.get("type") != "file":
            raise RemoteError(f"{url}: not a file")
        out.append(int(info["size"]))
    return out


# ---- streaming whole files ---------------------------------------------------------------------------------


class BlockStream:
    """The bytes of several objects in order, as blocks, with ``ahead`` range requests in flight.

    ``blocks(i)`` yields file ``i``'s blocks; call it for increasing ``i`` (blocks of a file left unread
    are dropped when a later file is asked for).  The prefetch runs across file boundaries.
    """

    def __init__(self, urls: Sequence[str], file_sizes: Sequence[int], *, block: int | None = None,
                 ahead: int | None = None):
        block, ahead = block or SCAN_BLOCK, ahead or SCAN_AHEAD
        self.urls = list(urls)
        self._fs = filesystem(self.urls[0]) if self.urls else None
        self._tasks = collections.deque((i, start, min(start + block, size))
                                        for i, size in enumerate(file_sizes) for start in range(0, size, block))
        self._ahead = max(1, ahead)
        self._pool = concurrent.futures.ThreadPoolExecutor(self._ahead, thread_name_prefix="semcoder-data-read")
        self._inflight: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._fill()

    def _fetch(self, url: str, start: int, end: int) -> bytes:
        with _quiet():
            return self._fs.cat_file(url, start=start, end=end)

    def _fill(self) -> None:
        while self._tasks and len(self._inflight) < self._ahead:
            i, start, end = self._tasks.popleft()
            self._inflight.append((i, start, end, self._pool.submit(self._fetch, self.urls[i], start, end)))

    def blocks(self, i: int) -> Iterator[bytes]:
        while self._inflight and self._inflight[0][0] < i:  # a previous file's unread rest
            self._inflight.popleft()[3].cancel()
            self._fill()
        while self._inflight and self._inflight[0][0] == i:
            _, start, end, future = self._inflight.popleft()
            self._fill()
            url = self.urls[i]
            try:
                data = future.result()
            except Exception as e:  # noqa: BLE001 - classified by explain
                _raise(e, url)
            if len(data) != end - start:
                raise RemoteError(f"{url}: changed while being read (bytes {start}-{end} came back as {len(data)})")
            yield data

    def close(self) -> None:
        for *_, future in self._inflight:
            future.cancel()
        self._inflight.clear()
        self._tasks.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BlockStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- byte ranges -------------------------------------------------------------------------------------------


def plan_ranges(urls: Sequence[str], starts: Sequence[int], lengths: Sequence[int], *, gap: int | None = None,
                limit: int | None = None) -> list[tuple[str, int, int, list[tuple[int, int, int]]]]:
    """The requests that fetch ranges ``(url, start, length)``: ``(url, start, end, parts)``, where each
    part ``(slot, offset in the request, length)`` says which range it serves.  Ranges of one object less
    than ``gap`` bytes apart share a request of at most ``limit`` bytes; empty ranges need none."""
    gap = MERGE_GAP if gap is None else gap
    limit = MAX_RANGE if limit is None else limit
    order = sorted((k for k in range(len(urls)) if lengths[k] > 0), key=lambda k: (urls[k], starts[k]))
    requests: list[tuple[str, int, int, list[tuple[int, int, int]]]] = []
    for k in order:
        url, start, end = urls[k], int(starts[k]), int(starts[k]) + int(lengths[k])
        if requests:
            r_url, r_start, r_end, parts = requests[-1]
            if r_url == url and start - r_end <= gap and max(end, r_end) - r_start <= limit:
                parts.append((k, start - r_start, end - start))
                requests[-1] = (r_url, r_start, max(end, r_end), parts)
                continue
        requests.append((url, start, end, [(k, 0, end - start)]))
    return requests


def read_ranges(urls: Sequence[str], starts: Sequence[int], lengths: Sequence[int]) -> list[bytes]:
    """The bytes of each range ``(urls[k], starts[k], lengths[k])``, in the order given: merged into few
    requests (``plan_ranges``), all in flight at once."""
    out = [b""] * len(urls)
    requests = plan_ranges(urls, starts, lengths)
    if not requests:
        return out
    fs = filesystem(requests[0][0])
    with _quiet():
        results = fs.cat_ranges([r[0] for r in requests], [r[1] for r in requests], [r[2] for r in requests],
                                batch_size=READ_CONCURRENCY, on_error="return")
    for (url, start, end, parts), data in zip(requests, results):
        if isinstance(data, BaseException):
            _raise(data, url)
        if len(data) != end - start:
            raise RemoteError(f"{url}: changed while being read (bytes {start}-{end} came back as {len(data)})")
        view = memoryview(data)
        for slot, offset, length in parts:
            out[slot] = bytes(view[offset:offset + length]) if len(parts) > 1 else data
    return out


# ---- whole files ---------------------------------------------------------------------------------------------


def open_binary(url: str, block: int | None = None):
    """``url`` opened for reading bytes (a read-ahead buffer of ``block`` bytes); missing: ``RemoteError``."""
    fs = filesystem(url)
    try:
        with _quiet():
            return fs.open(url, "rb", block_size=block or SCAN_BLOCK, cache_type="readahead")
    except FileNotFoundError:
        raise RemoteError(f"{url}: no such file" if bucket_exists(url) else missing_bucket_line(url)) from None
    except Exception as e:  # noqa: BLE001 - classified by explain
        _raise(e, url)


def kind(url: str) -> str | None:
    """'file', 'directory' or None (not found); a missing bucket, credentials or permission: ``RemoteError``."""
    fs = filesystem(url)
    try:
        with _quiet():
            info = fs.info(url)
    except FileNotFoundError:
        if not bucket_exists(url):
            raise RemoteError(missing_bucket_line(url)) from None
        return None
    except Exception as e:  # noqa: BLE001 - classified by explain
        _raise(e, url)
    return "directory" if info.get("type") == "directory" else "file"


def download(url: str, local_dir: str, want: Callable[[str, int], bool] = lambda name, size: True) -> str:
    """Copies the object ``url``, or the objects directly under it that ``want(name, size)`` accepts (not
    recursive), into ``local_dir``; returns the local path that stands for ``url`` (the file, or
    ``local_dir``)."""
    found = kind(url)
    if found is None:
        raise RemoteError(f"{url}: not found")
    fs = filesystem(url)
    try:
        with _quiet():
            if found == "file":
                target = os.path.join(local_dir, url.rstrip("/").rsplit("/", 1)[-1])
                fs.get_file(url, target)
                return target
            for entry in fs.ls(url, detail=True):
                name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
                if entry.get("type") == "file" and name and want(name, int(entry.get("size") or 0)):
                    fs.get_file(entry["name"], os.path.join(local_dir, name))
    except RemoteError:
        raise
    except Exception as e:  # noqa: BLE001 - classified by explain
        _raise(e, url)
    return local_dir
