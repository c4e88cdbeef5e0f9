"""Every command line ``launch/tpu/pod.sh`` emits is accepted by the installed ``gcloud``'s argument parser.

``pod.sh ACTION ... --dry-run`` prints each command it would run, one shell-quoted line each. Every ``gcloud``
line among them is run by the real gcloud, isolated: an empty configuration directory (no account, so no
credentials), HOME and TMPDIR in a temporary directory, no prompts, no metadata-server probe, no update check.
gcloud parses the whole command line before it needs an account, so the two outcomes are told apart by exit
status and message (Google Cloud SDK 528.0.0):

* a line it cannot parse exits with status 2 (calliope's ``parser.error``)::

    ERROR: (gcloud.compute.tpus.queued-resources.create) unrecognized arguments: --best-effort ...
    ERROR: (gcloud.compute.tpus.tpu-vm.ssh) argument --zone: expected one argument
    ERROR: (gcloud.compute.tpus.tpu-vm.create) argument --version: Must be specified.
    ERROR: (gcloud.compute.tpus.tpu-vm) Invalid choice: 'sshx'.

* a line it parses exits with status 1, at the first thing the command needs after parsing::

    ERROR: (gcloud.compute.tpus.tpu-vm.ssh) You do not currently have an active account selected.

The project of lines without ``--project`` comes from ``CLOUDSDK_CORE_PROJECT``, as a user's
``gcloud config set project`` gives it; without one gcloud stops earlier, still after parsing, at
"Failed to find attribute [project]". So a parsed line ends in exactly one way, and anything else fails the test
with gcloud's words. gcloud reads ``--format`` only when it prints, after the API answered, so each output format
a line asks for is tried apart, on ``gcloud config list`` (local). Lines pod.sh emits, spoilt, show that the
test catches what gcloud refuses.

Identical lines, which most invocations share, run once. The default suite runs every action, capacity, project
and option variant on one slice type; ``-m slow`` runs the other types. Skipped where gcloud is not installed;
the dry-run itself never runs gcloud (a stub on its PATH would say so).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
POD = REPO / "launch" / "tpu" / "pod.sh"
CONFIG = REPO / "launch" / "configs" / "tiny_cpu.yaml"
GCLOUD = shutil.which("gcloud")

pytestmark = pytest.mark.skipif(
    GCLOUD is None, reason="no gcloud on PATH: the Google Cloud CLI's own parser is what checks pod.sh's command lines")

# ---- what pod.sh is asked to do -----------------------------------------------------------------------------

ACTIONS = ["create", "setup", "run", "up", "status", "logs", "stop", "delete", "supervise"]
# v5e-64 is our alias, emitted as v5litepod-64. The default suite covers it; the other types, which change only
# the values of --accelerator-type and the runtime version, run with -m slow.
FAST_TYPE = "v5e-64"
TYPES = ["v4-64", "v5p-32", FAST_TYPE, "v5litepod-16", "v6e-64"]
CAPACITY = {
    "on-demand": [],
    "spot": ["--spot"],
    "preemptible": ["--preemptible"],
    "queued": ["--queued"],
    "queued-spot": ["--queued", "--spot"],
}
PROJECT = {
    "config-project": [],  # from CLOUDSDK_CORE_PROJECT, as from `gcloud config set project`
    "flag-project": ["--project", "semcoder-test-project"],
}
RUN_DIR = "/mnt/gcs/semcoder-ckpt/runs/sc"
OPTIONS = {
    "defaults": [],
    "every-option": ["--wheel", "WHEEL",  # a wheel file the fixture makes (pod.sh checks that it exists)
                     "--bucket", "semcoder-ckpt", "--export-hf", f"{RUN_DIR}/hf",
                     "--worker", "all", "--lines", "200", "--follow", "--", "train.steps=3"],
}
# Every invocation: a slice named sc, the tiny CPU config, an absolute run directory (as run requires).
COMMON = ["--name", "sc", "--zone", "us-east5-a", "--config", str(CONFIG), "--run-dir", RUN_DIR]


def pod_invocations() -> list:
    return [
        pytest.param(action, slice_type, capacity, project, options,
                     marks=[] if slice_type == FAST_TYPE else [pytest.mark.slow],
                     id=f"{action}-{slice_type}-{capacity}-{project}-{options}")
        for slice_type in TYPES for capacity in CAPACITY for project in PROJECT for options in OPTIONS
        for action in ACTIONS
    ]


# ---- the isolated gcloud ------------------------------------------------------------------------------------

ARGUMENT_ERROR_STATUS = 2
PARSED_STATUS = 1
NO_ACCOUNT = "You do not currently have an active account selected."
ERROR_HEADER = re.compile(r"^ERROR: \(gcloud\.([\w.-]+)\) ", re.MULTILINE)


@dataclass(frozen=True)
class Outcome:
    """How gcloud ended on one command line."""

    argv: tuple[str, ...]
    returncode: int
    stderr: str

    @property
    def command(self) -> list[str]:
        """The command (or group) gcloud says the error is from: ``gcloud.compute.tpus.tpu-vm.ssh``."""
        match = ERROR_HEADER.search(self.stderr)
        return match.group(1).split(".") if match else []

    @property
    def names_a_command_of_the_line(self) -> bool:
        return bool(self.command) and list(self.argv[1:1 + len(self.command)]) == self.command

    @property
    def parsed(self) -> bool:
        """Got past the parser: ran the command the line names, and stopped for want of an account."""
        return (self.returncode == PARSED_STATUS and self.names_a_command_of_the_line
                and f") {NO_ACCOUNT}" in self.stderr)

    @property
    def argument_error(self) -> bool:
        return self.returncode == ARGUMENT_ERROR_STATUS and self.names_a_command_of_the_line

    def __str__(self) -> str:
        return f"$ {shlex.join(self.argv)}\nexit status {self.returncode}\n{self.stderr.strip()}"


class IsolatedGcloud:
    """The installed gcloud with nothing of the user's: no account, no configuration, no home directory."""

    def __init__(self, root: Path, project: str | None = "semcoder-config-project"):
        self.home = root / "home"
        for path in (self.home, root / "config", root / "tmp"):
            path.mkdir()
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.home),
            "TMPDIR": str(root / "tmp"),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "CLOUDSDK_CONFIG": str(root / "config"),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
            "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
            "CLOUDSDK_SURVEY_DISABLE_PROMPTS": "true",
        }
        if project:
            self.env["CLOUDSDK_CORE_PROJECT"] = project
        for key in ("CLOUDSDK_PYTHON", "CLOUDSDK_ROOT_DIR"):  # how gcloud finds itself, where set
            if key in os.environ:
                self.env[key] = os.environ[key]
        self.outcomes: dict[tuple[str, ...], Outcome] = {}

    def run(self, argv: list[str]) -> Outcome:
        """Runs one ``gcloud ...`` line (once per distinct line); a hang fails the test after 60 s."""
        assert argv[0] == "gcloud", argv
        key = tuple(argv)
        if key not in self.outcomes:
            proc = subprocess.run([GCLOUD, *argv[1:]], env=self.env, cwd=self.home, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=60)
            self.outcomes[key] = Outcome(key, proc.returncode, proc.stderr)
            assert not (self.home / ".ssh").exists(), f"gcloud made ssh keys: {shlex.join(argv)}"
        return self.outcomes[key]

    def print_with(self, output_format: str) -> Outcome:
        """Prints the (local) configuration with ``--format=output_format``: exit status 0 if gcloud can."""
        return self.run(["gcloud", "config", "list", f"--format={output_format}"])


def output_formats(argv: list[str]) -> list[str]:
    """The values of ``--format=VALUE`` and ``--format VALUE`` in a command line."""
    return [word.removeprefix("--format=") if word.startswith("--format=") else following
            for word, following in zip(argv, [*argv[1:], ""])
            if word.startswith("--format=") or word == "--format"]


@pytest.fixture(scope="module")
def gcloud(tmp_path_factory) -> IsolatedGcloud:
    return IsolatedGcloud(tmp_path_factory.mktemp("gcloud"))


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    """``pod(action, *options)``: the gcloud lines of ``pod.sh ACTION ... --dry-run``, each split into words.

    The dry-run runs with a stub gcloud first on PATH, which records a call and fails, so that it cannot reach
    the real one, and without the TPU_* and GCP_PROJECT defaults of the environment."""
    root = tmp_path_factory.mktemp("pod")
    (root / "bin").mkdir()
    calls = root / "gcloud-calls"
    stub = root / "bin" / "gcloud"
    stub.write_text(f"#!/bin/sh\necho \"gcloud $*\" >>'{calls}'\nexit 99\n")
    stub.chmod(0o755)
    env = {key: value for key, value in os.environ.items()
           if key not in ("TPU_NAME", "TPU_ZONE", "TPU_TYPE", "TPU_RUNTIME", "GCP_PROJECT")}
    env.update(PATH=f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}", SEMCODER_DIST_DIR=str(root / "dist"))

    wheel = root / "dist" / "semcoder_jax-0.1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"")

    def emitted(action: str, *options: str) -> list[list[str]]:
        options = tuple(str(wheel) if option == "WHEEL" else option for option in options)
        argv = [str(POD), action, *COMMON, "--dry-run", *options]
        proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (f"the dry-run failed (exit status {proc.returncode}): {shlex.join(argv)}\n"
                                      f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        lines = [shlex.split(line) for line in proc.stdout.splitlines() if line.startswith("gcloud ")]
        assert lines, f"{shlex.join(argv)} printed no gcloud command:\n{proc.stdout}"
        assert not calls.exists(), f"{shlex.join(argv)} ran gcloud:\n{calls.read_text()}"
        return lines

    return emitted


# ---- the specification ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("action", "slice_type", "capacity", "project", "options"), pod_invocations())
def test_gcloud_accepts_every_command_line_pod_sh_emits(pod, gcloud, action, slice_type, capacity, project,
                                                       options):
    """Each gcloud line parses, and each output --format in it is one gcloud can print: gcloud reads --format
    only when it prints, after the API answered, so parsing the line does not check it."""
    lines = pod(action, "--type", slice_type, *CAPACITY[capacity], *PROJECT[project], *OPTIONS[options])
    rejected = [outcome for outcome in map(gcloud.run, lines) if not outcome.parsed]
    assert not rejected, "gcloud did not parse:\n\n" + "\n\n".join(map(str, rejected))
    formats = sorted({output_format for line in lines for output_format in output_formats(line)})
    unprintable = [outcome for outcome in map(gcloud.print_with, formats) if outcome.returncode != 0]
    assert not unprintable, "gcloud cannot print with:\n\n" + "\n\n".join(map(str, unprintable))


def _without(words: list[str], *drop: str) -> list[str]:
    return [word for word in words if word not in drop]


def _replace(words: list[str], old: str, new: str) -> list[str]:
    assert old in words, words
    return [new if word == old else word for word in words]


def _the_line(lines: list[list[str]], *command: str) -> list[str]:
    """The one line of ``gcloud compute tpus COMMAND ...`` among the lines."""
    (line,) = [line for line in lines if line[3:3 + len(command)] == list(command)]
    return line


def _queued_create(pod):
    return _the_line(pod("create", "--type", FAST_TYPE, "--queued", "--spot"), "queued-resources", "create")


def _create(pod):
    return _the_line(pod("create", "--type", FAST_TYPE), "tpu-vm", "create")


def _ssh(pod):
    return _the_line(pod("stop"), "tpu-vm", "ssh")


# Lines pod.sh emits, spoilt as a careless edit would: the test must catch each as an argument error.
SPOILT = {
    "an alpha-only flag on GA queued-resources create": (
        lambda pod: _replace(_queued_create(pod), "--spot", "--best-effort"),
        r"(?s)\) unrecognized arguments:.*--best-effort flag is available in one or more alternate release tracks"),
    "--preemptible on queued-resources (pod.sh refuses it)": (
        lambda pod: [*_queued_create(pod), "--preemptible"],
        r"\) unrecognized arguments: --preemptible"),
    "tpu-vm create without its runtime version": (
        lambda pod: _without(_create(pod), "--version", "v2-alpha-tpuv5-lite"),
        r"\) argument --version: Must be specified\."),
    "a flag without its value": (
        lambda pod: _without(_ssh(pod), "us-east5-a"),
        r"\) argument --zone: expected one argument"),
    "a command gcloud does not have": (
        lambda pod: _replace(_ssh(pod), "ssh", "sshx"),
        r"\(gcloud\.compute\.tpus\.tpu-vm\) Invalid choice: 'sshx'"),
}


@pytest.mark.parametrize("spoilt", SPOILT)
def test_a_command_line_gcloud_cannot_parse_is_caught_as_an_argument_error(pod, gcloud, spoilt):
    make, message = SPOILT[spoilt]
    outcome = gcloud.run(make(pod))
    assert not outcome.parsed, str(outcome)
    assert outcome.argument_error, str(outcome)
    assert re.search(message, outcome.stderr), str(outcome)


def test_without_a_configured_project_gcloud_stops_after_parsing_at_the_project(pod, tmp_path):
    """Why lines without --project get one from CLOUDSDK_CORE_PROJECT: without it a TPU command stops at the
    project, before the account; a parsed line still, but not the one outcome the test accepts."""
    outcome = IsolatedGcloud(tmp_path, project=None).run(_create(pod))
    assert outcome.returncode == PARSED_STATUS and outcome.names_a_command_of_the_line, str(outcome)
    assert "Failed to find attribute [project]" in outcome.stderr, str(outcome)


def test_an_output_format_gcloud_cannot_print_is_caught(pod, gcloud):
    """pod.sh's own format prints; the same, spoilt, does not."""
    output_format = next(fmt for line in pod("status") for fmt in output_formats(line))
    assert gcloud.print_with(output_format).returncode == 0, str(gcloud.print_with(output_format))
    spoilt = gcloud.print_with(output_format.removesuffix(")"))
    assert spoilt.returncode == 1 and "More tokens expected" in spoilt.stderr, str(spoilt)
