"""Shared fixtures of the sandbox tests: one pool per mode for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SECRET = "semcoder-sandbox-test-secret-4242"


@pytest.fixture(scope="session")
def secret() -> str:
    """A string that is in the harness's environment (``SEMCODER_TEST_SECRET``) and nowhere a candidate can look."""
    return SECRET


@pytest.fixture(scope="session")
def sandbox():
    """A namespaces-mode pool; the harness's environment holds a secret no candidate may see."""
    from sandbox import Sandbox

    os.environ["SEMCODER_TEST_SECRET"] = SECRET
    with Sandbox(workers=2, mode="namespaces") as sb:
        yield sb
    os.environ.pop("SEMCODER_TEST_SECRET", None)


@pytest.fixture(scope="session")
def fallback():
    """A pool without namespaces (what a machine without user namespaces gets)."""
    from sandbox import Sandbox

    with pytest.warns(UserWarning, match="mode 'none'"):
        sb = Sandbox(workers=2, mode="none")
    with sb:
        yield sb


@pytest.fixture
def secret_in_home(secret):
    """A file in the harness user's home directory holding the secret."""
    path = Path.home() / f".semcoder-sandbox-secret-{os.getpid()}"
    path.write_text(secret)
    yield path
    path.unlink()
