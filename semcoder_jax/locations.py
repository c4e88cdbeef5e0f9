"""User-given locations: which ones this installation can serve.

Every run directory, dataset, tokenizer, checkpoint and export is read and written with local file APIs,
so a URL of an object store (``gs://``, ``s3://``, ...) is refused before any work, in one line naming
the setting, instead of becoming a local folder called ``gs:`` that fails at the first checkpoint.  A
mounted bucket (gcsfuse) is a local path and works.  Native object storage is issue 26; what the stack
does against a GCS emulator is in docs/object_storage.md.
"""

from __future__ import annotations

import re

from semcoder_jax.errors import UserError

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def object_store_scheme(value: str | None) -> str | None:
    """The scheme of a URL-like location (``gs`` for ``gs://b/x``), None for a local path or None."""
    match = _URL.match(value or "")
    return match.group(1) if match else None


def unsupported(what: str, value: str) -> str:
    """The one-line refusal for ``what`` (a setting or flag) set to the URL ``value``."""
    return (f"{what} {value}: {object_store_scheme(value)}:// locations are not supported yet (runs, data and "
            "exports go through local file APIs; docs/object_storage.md); mount the bucket (gcsfuse, as "
            "launch/tpu/pod.sh does) and give the mount path")


def require_local(what: str, value: str | None) -> None:
    """Raises ``UserError`` when ``value`` is an object-store URL."""
    if object_store_scheme(value):
        raise UserError(unsupported(what, value or ""))
