"""Random access to the records of a split: where each one is, so a window can read any of them.

A global shuffle needs to read record ``i`` of the epoch without streaming to it.  The index is one
sequential scan of every file at start (each host scans all files: the epoch's permutation, hence
every host's share, needs every record's existence, not its content): for each record its file, line
(or TFRecord ordinal) and byte span.  Compressed files are decompressed once, during the scan, into
an unnamed temporary file that the reads then address (a ``.gz`` cannot be read from the middle).
Blank JSON Lines lines are not records; with ``eval_fraction`` a record is in the held-out split when
the Fingerprint64 bucket of its bytes falls below the fraction (the same records on every host).

Files on an object store (``gs://...``, ``data_pipeline.remote``) are scanned as a stream of blocks
fetched ahead in parallel, and their records then read as byte ranges, merged and fetched concurrently;
a remote ``.gz`` is decompressed during the scan into an unnamed temporary file like a local one.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import threading
import zlib
from collections.abc import Sequence

import numpy as np

from data_pipeline import remote
from data_pipeline.errors import UserError
from data_pipeline.records import BadRecord, truncated_file

HASH_BUCKETS = 1_000_000
_BLOCK = 16 << 20
_WHITESPACE = np.array([9, 10, 11, 12, 13, 32], np.uint8)


class RecordIndex:
    """Where every record of a split is (``len()`` records, in file then line order).

    ``read(ids)`` returns their raw bytes (a JSON line without its newline, or a TFRecord payload);
    ``where(id)`` gives ``(path, line)`` for messages.  ``damaged`` lists the compressed files that
    ended early or failed their check (one ``BadRecord`` each; the records before it are kept)."""

    def __init__(self, files: Sequence[str], kinds: Sequence[str], compressions: Sequence[str], *,
                 heldout: str = "", eval_fraction: float = 0.0):
        self.files = list(files)
        self.kinds = list(kinds)
        self.damaged: list[BadRecord] = []
        self.blank = 0
        self._sources: list[str | int] = []  # a path or URL, or the fd of a decompressed temporary copy
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        # files read by byte ranges from an object store (a remote .gz is read from its local copy)
        self._ranged = [remote.is_remote(p) and not c for p, c in zip(self.files, compressions)]
        remote_files = [f for f, p in enumerate(self.files) if remote.is_remote(p)]
        stream = None
        parts = []
        try:
            if remote_files:
                urls = [self.files[f] for f in remote_files]
                stream = remote.BlockStream(urls, remote.sizes(urls))
            slot = {f: k for k, f in enumerate(remote_files)}
            for f, (path, kind, comp) in enumerate(zip(self.files, self.kinds, compressions)):
                parts.append(self._scan(f, path, kind, comp, stream.blocks(slot[f]) if f in slot else None))
        except BaseException:
            self.close()
            raise
        finally:
            if stream is not None:
                stream.close()
        file_idx = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
        offsets = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        lengths = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int64)
        lines = np.concatenate([p[3] for p in parts]) if parts else np.zeros(0, np.int64)
        if heldout:
            in_eval = self._heldout_mask(file_idx, offsets, lengths, eval_fraction)
            keep = in_eval if heldout == "eval" else ~in_eval
            file_idx, offsets, lengths, lines = file_idx[keep], offsets[keep], lengths[keep], lines[keep]
        self.file_idx, self.offsets, self.lengths, self.lines = file_idx, offsets, lengths, lines

    def __len__(self) -> int:
        return len(self.offsets)

    def records_per_file(self) -> np.ndarray:
        return np.bincount(self.file_idx, minlength=len(self.files))

    # -- scanning -----------------------------------------------------------------------------------

    def _scan(self, f: int, path: str, kind: str, compression: str, blocks=None):
        """Index one file; ``blocks`` streams a remote file's bytes (None: read ``path`` locally)."""
        damage = None
        if compression:
            fd, damage = self._decompress(path, blocks)
            self._sources.append(fd)
            blocks = None  # the records are in the local copy now
        else:
            self._sources.append(path)
        source = self._sources[-1]
        try:
            if kind == "jsonl":
                offsets, lengths, lines = self._scan_lines(source, cut_off=damage is not None, blocks=blocks)
            else:
                offsets, lengths, lines = self._scan_tfrecords(source, path, cut_off=damage is not None,
                                                               blocks=blocks)
        except OSError as e:
            raise UserError(f"{path}: cannot be read ({e.strerror or e})") from None
        if damage is not None:
            read = int(lines[-1]) if len(lines) else 0
            self.damaged.append(truncated_file(path, read, len(offsets), damage))
        return np.full(len(offsets), f, np.int32), offsets, lengths, lines

    def _decompress(self, path: str, blocks=None) -> tuple[int, BaseException | None]:
        """A decompressed copy of ``path`` (of the compressed ``blocks`` when given) in an unnamed temporary
        file (its fd), and the error that stopped a damaged stream (what decompressed before it is kept)."""
        fd, tmp = tempfile.mkstemp(prefix="semcoder-data-")
        os.unlink(tmp)  # unnamed: gone when closed, or when the process ends
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            for chunk in (blocks if blocks is not None else _file_blocks(path, 1 << 20)):
                while chunk:
                    _write_all(fd, decompressor.decompress(chunk))
                    chunk = b""
                    if decompressor.eof:  # a member ended; another may follow (concatenated .gz)
                        chunk = decompressor.unused_data
                        if chunk:
                            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        except zlib.error as e:
            return fd, e
        except OSError as e:
            os.close(fd)
            raise UserError(f"{path}: cannot be read ({e.strerror or e})") from None
        except BaseException:
            os.close(fd)
            raise
        if not decompressor.eof:
            return fd, EOFError("Compressed file ended before the end-of-stream marker was reached")
        return fd, None

    def _read_source(self, source: str | int):
        """Blocks of a source from its start (a path, or an fd read with pread)."""
        if isinstance(source, int):
            pos = 0
            while True:
                block = os.pread(source, _BLOCK, pos)
                if not block:
                    return
                yield block
                pos += len(block)
        else:
            with open(source, "rb") as fh:
                while block := fh.read(_BLOCK):
                    yield block

    def _scan_lines(self, source: str | int, cut_off: bool = False, blocks=None):
        """(offsets, lengths, line numbers) of the non-blank lines.  In a stream that was ``cut_off``, a
        last line without its newline is a fragment, not a record.

        Newlines are found a block at a time; blankness is decided from each line's first byte (a JSON
        record starts with ``{``), and only lines that start with whitespace are read whole.  A local
        source is mapped whole; streamed ``blocks`` are cut after their last newline into chunks of whole
        lines (the rest carried to the next chunk), each scanned the same way."""
        if blocks is not None:
            return self._scan_line_chunks(_whole_lines(blocks), cut_off)
        with _mapped(source) as data:
            return self._scan_line_chunks([data], cut_off)

    def _scan_line_chunks(self, chunks, cut_off: bool):
        """``_scan_lines`` over consecutive chunks that end with a newline (all but the last)."""
        all_starts, all_lengths, all_lines = [], [], []
        base = line_base = 0
        for data in chunks:
            ends = np.concatenate([np.flatnonzero(data[i:i + _BLOCK] == 10) + i for i in range(0, len(data), _BLOCK)]
                                  or [np.zeros(0, np.int64)]).astype(np.int64)
            starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64) if len(ends) else np.zeros(0, np.int64)
            tail = int(ends[-1]) + 1 if len(ends) else 0
            if len(data) > tail and not cut_off:  # a last line without a newline (only the last chunk has one)
                starts = np.append(starts, tail)
                ends = np.append(ends, len(data))
            lengths = ends - starts
            solid = lengths > 0
            first = data[np.minimum(starts, max(len(data) - 1, 0))] if len(data) else np.zeros(0, np.uint8)
            maybe_blank = np.flatnonzero(solid & np.isin(first, _WHITESPACE))
            for i in maybe_blank.tolist():
                solid[i] = not np.isin(data[starts[i]:ends[i]], _WHITESPACE).all()
            self.blank += int((~solid).sum())
            lines = np.arange(line_base + 1, line_base + len(starts) + 1, dtype=np.int64)
            all_starts.append(starts[solid] + base)
            all_lengths.append(lengths[solid])
            all_lines.append(lines[solid])
            base += len(data)
            line_base += len(starts)
        if not all_starts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        return (np.concatenate(all_starts).astype(np.int64), np.concatenate(all_lengths).astype(np.int64),
                np.concatenate(all_lines).astype(np.int64))

    def _scan_tfrecords(self, source: str | int, path: str, cut_off: bool = False, blocks=None):
        """TFRecord framing: length (u64) | crc of length | payload | crc of payload.  In a stream that
        was ``cut_off``, a last record without its end is dropped (the damage is reported once)."""
        offsets, lengths = [], []
        reader = _SequentialReader(blocks if blocks is not None else self._read_source(source))
        pos = 0
        while True:
            header = reader.take(12)
            if not header:
                break
            if len(header) < 12:
                if cut_off:
                    break
                raise UserError(f"{path}: TFRecord {len(offsets) + 1} is cut off (a partial header)")
            (length,) = struct.unpack("<Q", header[:8])
            if not reader.skip(length + 4):
                if cut_off:
                    break
                raise UserError(f"{path}: TFRecord {len(offsets) + 1} is cut off ({length} bytes announced)")
            offsets.append(pos + 12)
            lengths.append(length)
            pos += 12 + length + 4
        return (np.asarray(offsets, np.int64), np.asarray(lengths, np.int64),
                np.arange(1, len(offsets) + 1, dtype=np.int64))

    def _heldout_mask(self, file_idx, offsets, lengths, eval_fraction: float) -> np.ndarray:
        import tensorflow as tf

        cut = int(round(eval_fraction * HASH_BUCKETS))
        out = np.zeros(len(offsets), bool)
        step = 65536
        for start in range(0, len(offsets), step):
            ids = np.arange(start, min(start + step, len(offsets)))
            payloads = self._read_ids(file_idx[ids], offsets[ids], lengths[ids])
            buckets = tf.strings.to_hash_bucket_fast(tf.constant(payloads, tf.string), HASH_BUCKETS).numpy()
            out[ids] = buckets < cut
        return out

    # -- reading ------------------------------------------------------------------------------------

    def _fd(self, f: int) -> int:
        source = self._sources[f]
        if isinstance(source, int):
            return source
        with self._lock:
            if f not in self._fds:
                try:
                    self._fds[f] = os.open(source, os.O_RDONLY)
                except OSError as e:
                    raise UserError(f"{source}: cannot be read ({e.strerror or e})") from None
            return self._fds[f]

    def _read_ids(self, file_idx, offsets, lengths) -> list[bytes]:
        files, offs, ns = file_idx.tolist(), offsets.tolist(), lengths.tolist()
        fetched: dict[int, bytes] = {}
        ranged = [k for k, f in enumerate(files) if self._ranged[f]]
        if ranged:  # object-store files: byte ranges, merged and fetched concurrently
            data = remote.read_ranges([self.files[files[k]] for k in ranged], [offs[k] for k in ranged],
                                      [ns[k] for k in ranged])
            fetched = dict(zip(ranged, data))
        out = []
        for k, (f, off, n) in enumerate(zip(files, offs, ns)):
            data = fetched[k] if k in fetched else os.pread(self._fd(f), n, off)
            if len(data) != n:
                raise UserError(f"{self.files[f]}: changed while reading (a record at byte {off} is cut off)")
            out.append(data.rstrip(b"\r") if self.kinds[f] == "jsonl" else data)
        return out

    def read(self, ids: np.ndarray) -> list[bytes]:
        """The raw bytes of records ``ids`` (in that order; read in file order)."""
        ids = np.asarray(ids, np.int64)
        order = np.lexsort((self.offsets[ids], self.file_idx[ids]))
        data = self._read_ids(self.file_idx[ids[order]], self.offsets[ids[order]], self.lengths[ids[order]])
        out: list[bytes] = [b""] * len(ids)
        for slot, payload in zip(order.tolist(), data):
            out[slot] = payload
        return out

    def where(self, record: int) -> tuple[str, int]:
        return self.files[int(self.file_idx[record])], int(self.lines[record])

    def close(self) -> None:
        for fd in list(self._fds.values()) + [s for s in self._sources if isinstance(s, int)]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        self._sources = [s if isinstance(s, str) else "" for s in self._sources]


def _file_blocks(path: str, size: int):
    with open(path, "rb") as fh:
        while block := fh.read(size):
            yield block


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _whole_lines(blocks):
    """Streamed blocks as uint8 arrays that end with a newline (the rest is carried to the next one); the
    last array holds what follows the last newline (no newline; empty arrays are not yielded)."""
    carry = b""
    for block in blocks:
        buf = carry + block if carry else block
        cut = buf.rfind(b"\n") + 1
        if cut:
            yield np.frombuffer(buf, np.uint8, count=cut)
        carry = buf[cut:]
    if carry:
        yield np.frombuffer(carry, np.uint8)


class _mapped:
    """A source (path or fd) as a read-only uint8 array backed by ``mmap`` (empty files give an empty array)."""

    def __init__(self, source: str | int):
        self._fd = source if isinstance(source, int) else os.open(source, os.O_RDONLY)
        self._own = not isinstance(source, int)
        self._map = None

    def __enter__(self) -> np.ndarray:
        size = os.fstat(self._fd).st_size
        if not size:
            return np.zeros(0, np.uint8)
        self._map = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ)
        return np.frombuffer(self._map, np.uint8)

    def __exit__(self, *exc) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still referenced: the map closes when it is collected
                pass
        if self._own:
            os.close(self._fd)


class _SequentialReader:
    """take/skip over a stream of blocks without copying what is skipped."""

    def __init__(self, blocks):
        self._blocks = iter(blocks)
        self._buf = b""
        self._at = 0

    def _fill(self, n: int) -> bool:
        """At least ``n`` bytes buffered after the read position (False at the end of the stream)."""
        while len(self._buf) - self._at < n:
            block = next(self._blocks, None)
            if block is None:
                return False
            self._buf = self._buf[self._at:] + block
            self._at = 0
        return True

    def take(self, n: int) -> bytes:
        self._fill(n)
        out = self._buf[self._at:self._at + n]
        self._at += len(out)
        return out

    def skip(self, n: int) -> bool:
        while n > 0:
            available = len(self._buf) - self._at
            if available >= n:
                self._at += n
                return True
            n -= available
            self._buf, self._at = b"", 0
            block = next(self._blocks, None)
            if block is None:
                return False
            self._buf = block
        return True
