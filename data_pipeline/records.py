"""Record schema and validation: released JSON Lines (or tf.train.Example) in, ``Record`` or a ``BadRecord`` out.

Every record has exactly one non-empty *task field* and a non-empty ``response``:

| schema | task field | task    |
|--------|------------|---------|
| PyX    | ``nl``     | nl2code |
| PyX    | ``bwd_mnl``| exec_i  |
| PyX    | ``fwd_mnl``| exec_o  |
| PyX-R  | ``fault``  | refine  |
| chat   | ``instruction`` | chat |

Other fields are metadata and ignored.  A task field that is absent, ``null`` or ``""`` counts as
unset.  Problems are reported as ``FILE:LINE: field 'X': reason`` with a reason code from
``REASONS`` so callers can count them; the policy (raise or skip) belongs to the caller.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import os
import pathlib
import tempfile
import zlib
from collections.abc import Iterator

from data_pipeline import remote
from data_pipeline.errors import UserError
from data_pipeline.prompts import TASKS

TASK_FIELDS: dict[str, str] = {field: task for task, (field, _) in TASKS.items()}
DEFAULT_MAX_RECORD_BYTES = 1 << 20

REASONS: dict[str, str] = {
    "invalid_utf8": "not valid UTF-8",
    "invalid_json": "not valid JSON",
    "not_object": "not a JSON object",
    "missing_field": "missing field",
    "wrong_type": "wrong type",
    "no_task_field": "no task field set",
    "several_task_fields": "several task fields set",
    "empty_response": "empty response",
    "too_large": "over the size limit",
    "invalid_example": "not a tf.train.Example",
    "duplicate_key": "duplicate key",
    "too_deep": "nested too deeply",
    "truncated_file": "truncated or corrupt compressed file",
}


@dataclasses.dataclass(frozen=True)
class Record:
    """One valid training record, reduced to what builds an example."""

    task: str
    instruction: str
    response: str
    source: str  # "FILE:LINE", for messages


class BadRecord(UserError):
    """One invalid record: where it is, which field, and why (``reason`` is a key of ``REASONS``)."""

    def __init__(self, path: str, line: int, reason: str, detail: str, field: str | None = None):
        self.path, self.line, self.reason, self.field, self.detail = path, line, reason, field, detail
        where = f"{path}:{line}: " + (f"field {field!r}: " if field else "")
        super().__init__(f"{where}{REASONS[reason]} ({detail})" if detail else f"{where}{REASONS[reason]}")

    def to_json(self) -> dict:
        return {"file": self.path, "line": self.line, "field": self.field, "reason": self.reason,
                "message": str(self)}


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def record_from_fields(obj: dict, path: str, line: int) -> Record:
    """Validate one decoded record (a dict of fields) and return its ``Record``."""
    set_fields = []
    for field in TASK_FIELDS:
        value = obj.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadRecord(path, line, "wrong_type", f"expected a string, got {_type_name(value)}", field)
        if value.strip():
            set_fields.append(field)
    if "response" not in obj:
        raise BadRecord(path, line, "missing_field", "every record needs a response", "response")
    response = obj["response"]
    if not isinstance(response, str):
        raise BadRecord(path, line, "wrong_type", f"expected a string, got {_type_name(response)}", "response")
    if not set_fields:
        present = [f for f in TASK_FIELDS if f in obj]
        if not present:
            raise BadRecord(path, line, "missing_field", "expected one of " + ", ".join(TASK_FIELDS),
                            "/".join(TASK_FIELDS))
        raise BadRecord(path, line, "no_task_field", "all of " + ", ".join(present) + " are empty",
                        "/".join(present))
    if len(set_fields) > 1:
        raise BadRecord(path, line, "several_task_fields", "exactly one may be non-empty", "/".join(set_fields))
    if not response.strip():
        raise BadRecord(path, line, "empty_response", "", "response")
    field = set_fields[0]
    return Record(task=TASK_FIELDS[field], instruction=obj[field], response=response, source=f"{path}:{line}")


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """json's object hook: a key given twice in one object is an error (``json.loads`` keeps the last)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def parse_json_line(payload: bytes, path: str, line: int, max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Record:
    """Validate one JSON Lines line (raw bytes) into a ``Record``; raises ``BadRecord``."""
    if len(payload) > max_bytes:
        raise BadRecord(path, line, "too_large", f"{len(payload)} bytes > {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecord(path, line, "invalid_utf8", f"byte {e.start}") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise BadRecord(path, line, "invalid_json", f"{e.msg} at column {e.colno}") from None
    except _DuplicateKey as e:
        raise BadRecord(path, line, "duplicate_key", "given twice in one object", e.key) from None
    except RecursionError:
        raise BadRecord(path, line, "too_deep", "JSON nesting beyond the parser's limit") from None
    if not isinstance(obj, dict):
        raise BadRecord(path, line, "not_object", f"got {_type_name(obj)}")
    return record_from_fields(obj, path, line)


def parse_example_proto(payload: bytes, path: str, index: int,
                        max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Record:
    """Validate one serialized ``tf.train.Example`` (bytes features named like the JSON fields)."""
    from tensorflow.core.example import example_pb2

    if len(payload) > max_bytes:
        raise BadRecord(path, index, "too_large", f"{len(payload)} bytes > {max_bytes}")
    example = example_pb2.Example()
    try:
        example.ParseFromString(payload)
    except Exception as e:  # protobuf's DecodeError
        raise BadRecord(path, index, "invalid_example", str(e)) from None
    obj: dict = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "bytes_list" and len(feature.bytes_list.value) == 1:
            try:
                obj[name] = feature.bytes_list.value[0].decode("utf-8")
            except UnicodeDecodeError as e:
                raise BadRecord(path, index, "invalid_utf8", f"byte {e.start}", name) from None
        elif kind is None:
            continue
        else:
            obj[name] = list(getattr(feature, kind).value)
    return record_from_fields(obj, path, index)


def open_binary(path: str | os.PathLike):
    """Open a JSON Lines file for reading bytes, gunzipping ``.gz`` files (``gs://...`` through fsspec)."""
    if remote.is_remote(path):
        f = remote.open_binary(str(path))
        if not str(path).endswith(".gz"):
            return f
        unzipped = gzip.GzipFile(fileobj=f, mode="rb")
        unzipped.myfileobj = f  # closed with it
        return unzipped
    p = pathlib.Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file")
    return gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")


def iter_jsonl(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_RECORD_BYTES
               ) -> Iterator[Record | BadRecord]:
    """Every non-blank line of a JSON Lines file (plain or .gz) as a ``Record`` or a ``BadRecord``."""
    line_no, records = 0, 0
    with open_binary(path) as f:
        lines = iter(f)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except (EOFError, OSError, zlib.error) as e:  # gzip: a truncated or damaged stream
                yield truncated_file(str(path), line_no, records, e)
                return
            line_no += 1
            payload = raw.rstrip(b"\r\n")
            if not payload.strip():
                continue  # blank lines are not records
            records += 1
            try:
                yield parse_json_line(payload, str(path), line_no, max_bytes)
            except BadRecord as bad:
                yield bad


def truncated_file(path: str, lines_read: int, records_read: int, error: BaseException) -> BadRecord:
    """The bad record that stands for the unreadable rest of a compressed file."""
    reason = str(error).strip() or type(error).__name__
    return BadRecord(path, lines_read + 1, "truncated_file",
                     f"{reason}; {records_read} records in {lines_read} lines were read before it")


def check_compressed(path: str) -> BadRecord | None:
    """Read a .gz file to its end; the bad record describing where it breaks, or None if it is whole."""
    lines = records = 0
    try:
        with open_binary(path) as f:
            for raw in f:
                lines += 1
                records += bool(raw.strip())
    except (EOFError, OSError, zlib.error) as e:
        return truncated_file(path, lines, records, e)
    return None


class BadRecordLog:
    """Counts skipped records by reason, keeps their messages, and writes them to a sidecar file."""

    def __init__(self, sidecar: str | os.PathLike | None = None, keep: int = 1000):
        if sidecar and remote.is_remote(sidecar):
            raise UserError(f"bad_records_file {sidecar}: must be a local path (it is appended to, which object "
                            "stores cannot do)")
        self.sidecar = pathlib.Path(sidecar) if sidecar else None
        self.counts: collections.Counter[str] = collections.Counter()
        self.messages: list[str] = []
        self._keep = keep
        self._seen: set[tuple[str, int]] = set()

    def add(self, bad: BadRecord) -> None:
        key = (bad.path, bad.line)
        if key in self._seen:  # a resumed pipeline may re-read the window it stopped in
            return
        self._seen.add(key)
        self.counts[bad.reason] += 1
        if len(self.messages) < self._keep:
            self.messages.append(str(bad))
        if self.sidecar is not None:
            self.sidecar.parent.mkdir(parents=True, exist_ok=True)
            with open(self.sidecar, "a", encoding="utf-8") as f:
                f.write(json.dumps(bad.to_json(), ensure_ascii=False) + "\n")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "no bad records"
        parts = ", ".join(f"{REASONS[r]}: {n}" for r, n in sorted(self.counts.items()))
        where = f"; listed in {self.sidecar}" if self.sidecar else ""
        return f"skipped {self.total} bad records ({parts}){where}"


def default_sidecar(process_index: int = 0) -> pathlib.Path:
    """Where skipped records go when the caller names no file."""
    return pathlib.Path(tempfile.gettempdir()) / f"semcoder_bad_records.p{process_index}.jsonl"
