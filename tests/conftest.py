"""Test environment: CPU only, 8 forced host devices, offline, quiet TensorFlow.

Set before anything imports jax, so every test sees the same simulated mesh of 8 CPU devices.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
    """The benchmark data files beside the checkout (``../shared/data``)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """How many doc blocks ran, were checked and were skipped (tests/docs/test_docs.py)."""
    counts = config.__dict__.get("semcoder_doc_counts")
    if not counts:
        return
    terminalreporter.write_sep("-", "docs")
    terminalreporter.write_line(f"doc blocks: {counts['run']} run, {counts['check']} syntax- and flag-checked, "
                                f"{len(counts['skip'])} skipped")
    for line in counts["skip"]:
        terminalreporter.write_line(f"  skipped {line}")


@pytest.fixture(scope="session")
def gcs_emulator():
    """A local GCS (fake-gcs-server on 127.0.0.1, objects in memory) for the whole session, with
    ``STORAGE_EMULATOR_HOST`` pointing at it in this process and in the subprocesses it starts."""
    from tests.gcs_emulator import GcsEmulator

    emulator = GcsEmulator()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
    from semcoder_jax import locations

    locations.configure_environment()
    if os.environ.get("TENSORSTORE_GCS_HTTP_URL") != emulator.url:
        pytest.skip("TENSORSTORE_GCS_HTTP_URL points elsewhere in this environment")
    yield emulator
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous
    emulator.stop()


@pytest.fixture
def gcs_bucket(gcs_emulator) -> str:
    """``gs://NAME``: a fresh, empty bucket on the session's emulator."""
    return f"gs://{gcs_emulator.bucket()}"
