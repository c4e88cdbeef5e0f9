"""``worker.sh setup`` on a TPU worker: a Python 3.11 venv on images that ship 3.10, gcsfuse from Google's
apt repository, the bucket mounted for Orbax, and the final check of ``jax.local_devices()``.

The fast tests put stand-ins first on PATH for what cannot run here (sudo, apt-get, curl, gcsfuse,
mountpoint, uv's download, interpreters of other versions, a venv whose pip only records and whose jax
reports fake TPU devices); everything else is the real script.  The slow tests run the real script in a
real Ubuntu 22.04 (jammy) chroot that has only Python 3.10.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "launch" / "tpu" / "worker.sh"
UV_VERSION = re.search(r"^UV_VERSION=(\S+)$", WORKER.read_text(), re.M).group(1)
LIBTPU_LINKS = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"

# Real tools the script (and the stand-ins) may run; everything else on PATH is a stand-in, so the
# machine's own python3.11, uv or gcsfuse cannot leak into a test.
REAL_TOOLS = ("bash", "env", "hostname", "cat", "cp", "chmod", "mkdir", "rm", "mv", "ln", "sed", "grep", "head",
              "tail", "tr", "tee", "mktemp", "timeout", "dirname", "basename", "sleep", "ls")

LOG = r"""log() { printf '%q ' "$@" >>"$FAKE_LOG"; echo >>"$FAKE_LOG"; }"""

# sudo: records; runs apt-get (a stand-in) and records what tee would have written, touches nothing else.
FAKE_SUDO = r"""#!/usr/bin/env bash
LOG
log sudo "$@"
[[ $1 == -n ]] && shift
case $1 in
  env|apt-get) exec "$@" ;;
  tee) { printf 'tee %s <<\n' "$2"; cat; printf '>>\n'; } >>"$FAKE_LOG" ;;
esac
exit 0
"""

# apt-get: records; `install` of gcsfuse / python3.11 puts a stand-in of it on PATH.
FAKE_APT_GET = r"""#!/usr/bin/env bash
LOG
log apt-get "$@"
[[ -n ${FAKE_APT_FAIL:-} ]] && exit 100
if [[ " $* " == *" install "* ]]; then
  for a in "$@"; do
    case $a in
      gcsfuse) cp "$FAKE_DIR/tpl/gcsfuse" "$FAKE_DIR/bin/gcsfuse" ;;
      python3.11) "$FAKE_DIR/make-python" "$FAKE_DIR/bin/python3.11" "3.11.0 candidate" ;;
    esac
  done
fi
exit 0
"""

FAKE_CURL = r"""#!/usr/bin/env bash
LOG
log curl "$@"
out=""
prev=""
for a in "$@"; do [[ $prev == -o ]] && out=$a; prev=$a; done
echo "-----BEGIN PGP PUBLIC KEY BLOCK----- (stand-in)" >"$out"
"""

FAKE_ID = r"""#!/usr/bin/env bash
case $1 in -u|-g) echo "${FAKE_UID:-1000}" ;; *) echo "uid=${FAKE_UID:-1000}" ;; esac
"""

FAKE_MOUNTPOINT = r"""#!/usr/bin/env bash
LOG
log mountpoint "$@"
grep -qxF -- "${!#}" "$FAKE_MOUNTED" 2>/dev/null
"""

FAKE_GCSFUSE = r"""#!/usr/bin/env bash
LOG
log gcsfuse "$@"
echo "${!#}" >>"$FAKE_MOUNTED"
"""

# uv: `python install` puts a stand-in CPython 3.11.18 into UV_PYTHON_INSTALL_DIR (or fails like a blocked
# download with FAKE_UV_FAIL), `python find` prints it.
FAKE_UV = r"""#!/usr/bin/env bash
LOG
log "UV_PYTHON_INSTALL_DIR=${UV_PYTHON_INSTALL_DIR:-}" uv "$@"
py=$UV_PYTHON_INSTALL_DIR/cpython-3.11.18-linux-x86_64-gnu/bin/python3.11
case "$1 $2" in
  "--version "*) echo "uv UV_VERSION (x86_64-unknown-linux-gnu)" ;;
  "python install")
    if [[ -n ${FAKE_UV_FAIL:-} ]]; then
      echo "error: Failed to install cpython-3.11.18-linux-x86_64-gnu"
      echo "  cause: failed to lookup address information: Name or service not known"
      exit 1
    fi
    "$FAKE_DIR/make-python" "$py" "3.11.18 final" ;;
  "python find") [[ -x $py ]] && echo "$py" ;;
esac
"""

# make-python PATH "X.Y.Z level": an interpreter stand-in.  It answers worker.sh's version probe;
# `-m pip` records (and `--target DIR ... uv==V` puts the uv stand-in into DIR/bin); `-m venv DIR` makes a
# venv whose python runs the real interpreter for the jax check (with a fake jax on its path) and whose
# pip records, creating bin/semcoder when it installs the package.
MAKE_PYTHON = r"""#!/usr/bin/env bash
set -e
mkdir -p "$(dirname "$1")"
cat >"$1" <<EOF
#!/usr/bin/env bash
VERSION="$2"
FAKE_SELF="\$0"
. "\$FAKE_DIR/python-body"
EOF
chmod +x "$1"
"""

PYTHON_BODY = r"""LOG
case $1 in
  -c)
    if [[ $2 == *local_devices* && -n ${VENV:-} ]]; then
      PYTHONPATH=$FAKE_DIR/fakejax exec "$REAL_PYTHON" "$@"
    fi
    echo "$VERSION" ;;
  -m)
    log "$FAKE_SELF" "$@"
    case $2 in
      venv)
        [[ -n ${FAKE_NO_VENV:-} ]] && { echo "Error: ensurepip is not available"; exit 1; }
        dir=${!#}
        mkdir -p "$dir/bin"
        printf '#!/usr/bin/env bash\nVERSION="%s"\nVENV="%s"\nFAKE_SELF="$0"\n. "$FAKE_DIR/python-body"\n' \
          "$VERSION" "$dir" >"$dir/bin/python"
        chmod +x "$dir/bin/python" ;;
      pip)
        [[ -n ${FAKE_NO_PIP:-} && -z ${VENV:-} ]] && exit 1
        prev=""
        for a in "$@"; do
          [[ $prev == --target ]] && { mkdir -p "$a/bin"; cp "$FAKE_DIR/tpl/uv" "$a/bin/uv"; }
          [[ -n ${VENV:-} && $a == *.tar.gz ]] && { cp "$FAKE_DIR/tpl/semcoder" "$VENV/bin/semcoder"; }
          prev=$a
        done ;;
    esac ;;
esac
"""

FAKE_JAX = '''\
import os
import time

__version__ = "0.10.2"


class Device:
    def __init__(self, id, platform):
        self.id, self.platform = id, platform

    def __repr__(self):
        return f"{self.platform.upper()}Device(id={self.id})"


def local_devices():
    time.sleep(float(os.environ.get("FAKE_JAX_SLEEP", "0")))
    platform = os.environ.get("FAKE_PLATFORM", "tpu")
    return [Device(i, platform) for i in range(int(os.environ.get("FAKE_DEVICES", "4")))]
'''


class Worker:
    """worker.sh setup against the stand-ins, in a fresh HOME."""

    def __init__(self, root: Path):
        self.root = root
        self.bin = root / "bin"
        self.home = root / "home"
        self.venv = self.home / "semcoder" / "venv"
        self.log = root / "calls"
        tools, tpl = root / "tools", root / "tpl"
        for d in (self.bin, self.home, tools, tpl, root / "fakejax" / "jax"):
            d.mkdir(parents=True)
        for name in REAL_TOOLS:
            path = shutil.which(name)
            assert path, f"{name} not found"
            (tools / name).symlink_to(path)

        def put(path: Path, text: str) -> None:
            path.write_text(text.replace("LOG", LOG, 1).replace("UV_VERSION", UV_VERSION))
            path.chmod(0o755)

        for name, text in (("sudo", FAKE_SUDO), ("apt-get", FAKE_APT_GET), ("curl", FAKE_CURL), ("id", FAKE_ID),
                           ("mountpoint", FAKE_MOUNTPOINT)):
            put(self.bin / name, text)
        put(tpl / "gcsfuse", FAKE_GCSFUSE)
        put(tpl / "uv", FAKE_UV)
        put(tpl / "semcoder", "#!/usr/bin/env bash\necho semcoder\n")
        put(root / "make-python", MAKE_PYTHON)
        (root / "python-body").write_text(PYTHON_BODY.replace("LOG", LOG, 1))
        (root / "fakejax" / "jax" / "__init__.py").write_text(FAKE_JAX)
        self.package = root / "semcoder-src.tar.gz"
        self.package.write_bytes(b"")
        self.env = {"PATH": f"{self.bin}:{tools}", "HOME": str(self.home), "LANG": "C.UTF-8",
                    "FAKE_LOG": str(self.log), "FAKE_DIR": str(root), "FAKE_MOUNTED": str(root / "mounted"),
                    "REAL_PYTHON": sys.executable}

    def python(self, name: str, version: str) -> None:
        """An interpreter of the image: python3, python3.11 reporting e.g. "3.10.12 final"."""
        subprocess.run([str(self.root / "make-python"), str(self.bin / name), version], check=True, env=self.env)

    def setup(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        argv = [shutil.which("bash"), str(WORKER), "setup", "--venv", str(self.venv),
                "--jax-spec", "jax[tpu]==0.10.2", "--package", str(self.package), *args]
        self.log.write_text("")
        return subprocess.run(argv, env={**self.env, **env}, capture_output=True, text=True, timeout=120)

    def calls(self) -> list[list[str]]:
        """The recorded calls, without the text that tee was given (``tee FILE <<`` ... ``>>``)."""
        calls, in_tee = [], False
        for line in self.log.read_text().splitlines():
            if in_tee:
                in_tee = line != ">>"
            elif line.startswith("tee ") and line.endswith(" <<"):
                in_tee = True
            elif line.strip():
                calls.append(shlex.split(line))
        return calls

    def index(self, *prefix: str) -> int:
        """Position of the first call that starts with these words (a word ending in * is a prefix)."""
        for i, call in enumerate(self.calls()):
            if len(call) >= len(prefix) and all(
                    c.startswith(p[:-1]) if p.endswith("*") else c == p for c, p in zip(call, prefix)):
                return i
        raise AssertionError(f"no call {prefix} in\n{self.log.read_text()}")


@pytest.fixture
def worker(tmp_path):
    return Worker(tmp_path)


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def assert_installed(worker: Worker, proc: subprocess.CompletedProcess, python: str) -> None:
    """The venv was made by `python`, pip installed jax and the package, and the check passed."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert worker.index(python, "-m", "venv", "--clear", str(worker.venv)) >= 0
    pip = [str(worker.venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    calls = worker.calls()
    assert [*pip, "--upgrade", "pip"] in calls
    assert [*pip, "jax[tpu]==0.10.2", "-f", LIBTPU_LINKS] in calls
    assert [*pip, str(worker.package)] in calls
    last = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"setup done: python 3\.11\.\d+, jax 0\.10\.2, 4 tpu devices: \[TPUDevice\(id=0\), ", last), last


# ---- which Python -----------------------------------------------------------------------------------

def test_auto_uses_the_images_python3_when_it_is_311(worker):
    worker.python("python3", "3.11.4 final")
    proc = worker.setup()
    assert f"python: {worker.bin / 'python3'} (3.11.4, image)" in proc.stdout
    assert_installed(worker, proc, str(worker.bin / "python3"))
    assert not any("uv" in " ".join(c) for c in worker.calls())
    assert not any(c[0] in ("sudo", "apt-get") for c in worker.calls())  # no bucket, no apt


def test_auto_on_a_310_image_installs_cpython_311_with_uv(worker):
    worker.python("python3", "3.10.12 final")
    proc = worker.setup()
    uv_dir, py_dir = worker.home / "semcoder" / "uv", worker.home / "semcoder" / "python"
    py = py_dir / "cpython-3.11.18-linux-x86_64-gnu" / "bin" / "python3.11"
    assert f"python: {py} (3.11.18, uv {UV_VERSION})" in proc.stdout
    assert_installed(worker, proc, str(py))
    boot = str(worker.bin / "python3")
    order = [worker.index(boot, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target",
                          str(uv_dir), f"uv=={UV_VERSION}"),
             worker.index(f"UV_PYTHON_INSTALL_DIR={py_dir}", "uv", "python", "install", "--no-bin", "3.11"),
             worker.index(f"UV_PYTHON_INSTALL_DIR={py_dir}", "uv", "python", "find", "--system", "--managed-python",
                          "3.11"),
             worker.index(str(py), "-m", "venv")]
    assert order == sorted(order)

    # Again: uv is there (not re-installed), `uv python install` is a no-op, the venv is kept.
    proc = worker.setup()
    assert proc.returncode == 0, proc.stderr
    assert f"keeping {worker.venv} (Python 3.11.18)" in proc.stdout
    assert not any("--target" in c for c in worker.calls())
    assert not any(c[1:3] == ["-m", "venv"] for c in worker.calls())


def test_auto_passes_over_a_prerelease_python311_and_system_takes_it(worker):
    worker.python("python3", "3.10.12 final")
    worker.python("python3.11", "3.11.0 candidate")  # what Ubuntu 22.04's python3.11 package is
    proc = worker.setup()
    assert f"uv {UV_VERSION})" in proc.stdout, proc.stdout + proc.stderr
    proc = worker.setup("--python", "system")
    assert f"python: {worker.bin / 'python3.11'} (3.11.0 candidate, image)" in proc.stdout
    assert proc.returncode == 0, proc.stderr


def test_system_without_311_fails_in_one_line(worker):
    worker.python("python3", "3.10.12 final")
    line = one_line(worker.setup("--python", "system"))
    assert "no Python 3.11 (python3 is 3.10.12 final); use --python uv or --python apt" in line
    assert not worker.venv.exists()


def test_uv_without_pip_or_without_a_download_fails_in_one_line(worker):
    worker.python("python3", "3.10.12 final")
    line = one_line(worker.setup(FAKE_NO_PIP="1"))
    assert f"python3 has no pip to install uv {UV_VERSION} with" in line
    line = one_line(worker.setup(FAKE_UV_FAIL="1"))
    assert "uv could not install Python 3.11 (error: Failed to install cpython-3.11.18" in line
    assert "without github.com use --python apt" in line
    assert not worker.venv.exists()


def test_apt_installs_ubuntus_python311_with_sudo(worker):
    worker.python("python3", "3.10.12 final")
    proc = worker.setup("--python", "apt")
    assert f"python: {worker.bin / 'python3.11'} (3.11.0 candidate, apt python3.11)" in proc.stdout
    assert_installed(worker, proc, str(worker.bin / "python3.11"))
    apt = ["sudo", "-n", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-o", "DPkg::Lock::Timeout=300", "-qq"]
    assert worker.index(*apt, "update") < worker.index(*apt, "install", "-y", "python3.11", "python3.11-venv")
    worker.python("python3.11", "3.11.0 candidate")
    line = one_line(worker.setup("--python", "apt", FAKE_APT_FAIL="1"))
    assert "--python apt: apt-get update failed" in line


def test_an_explicit_interpreter_and_a_venv_failure(worker, tmp_path):
    worker.python("python3", "3.10.12 final")
    custom = tmp_path / "opt-python3.11"
    subprocess.run([str(tmp_path / "make-python"), str(custom), "3.11.9 final"], check=True, env=worker.env)
    proc = worker.setup("--python", str(custom))
    assert f"python: {custom} (3.11.9, given)" in proc.stdout
    assert_installed(worker, proc, str(custom))
    line = one_line(worker.setup("--python", str(worker.bin / "python3")))
    assert line.endswith(f"{worker.bin / 'python3'} (given) is Python 3.10.12, not 3.11")
    shutil.rmtree(worker.venv)
    line = one_line(worker.setup("--python", str(custom), FAKE_NO_VENV="1"))
    assert line.endswith(f"{custom} -m venv {worker.venv}: Error: ensurepip is not available")


def test_devices_of_another_platform_fail_the_setup(worker):
    worker.python("python3", "3.11.4 final")
    line = one_line(worker.setup(FAKE_PLATFORM="cpu"))
    assert line.endswith("jax 0.10.2 sees cpu devices, not tpu: [CPUDevice(id=0), CPUDevice(id=1), "
                         "CPUDevice(id=2), CPUDevice(id=3)]")
    proc = worker.setup("--expect-platform", "cpu", FAKE_PLATFORM="cpu", FAKE_DEVICES="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].endswith("jax 0.10.2, 1 cpu devices: [CPUDevice(id=0)]")
    line = one_line(worker.setup("--check-timeout", "1", FAKE_JAX_SLEEP="5"))
    assert "jax.local_devices() did not answer within 1s (a multi-host slice needs every worker to run it" in line


def test_find_links_can_be_dropped(worker):
    worker.python("python3", "3.11.4 final")
    proc = worker.setup("--find-links", "")
    assert proc.returncode == 0, proc.stderr
    assert [str(worker.venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "jax[tpu]==0.10.2"] in worker.calls()


# ---- gcsfuse ----------------------------------------------------------------------------------------

def os_codename() -> str:
    text = Path("/etc/os-release").read_text()
    return re.search(r"^VERSION_CODENAME=\"?([^\"\n]*)", text, re.M).group(1)


def test_bucket_adds_googles_apt_source_before_installing_gcsfuse_then_mounts_for_orbax(worker):
    worker.python("python3", "3.11.4 final")
    proc = worker.setup("--bucket", "my-bucket")
    assert proc.returncode == 0, proc.stderr
    log = worker.log.read_text()
    keyring, listfile = "/usr/share/keyrings/cloud.google.asc", "/etc/apt/sources.list.d/gcsfuse.list"
    assert (f"tee {listfile} <<\ndeb [signed-by={keyring}] https://packages.cloud.google.com/apt "
            f"gcsfuse-{os_codename()} main\n>>") in log
    assert f"tee {keyring} <<\n-----BEGIN PGP PUBLIC KEY BLOCK----- (stand-in)\n>>" in log
    apt = ["sudo", "-n", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-o", "DPkg::Lock::Timeout=300", "-qq"]
    mount = "/mnt/gcs/my-bucket"
    order = [worker.index("curl", "-fsSL", "-o", "*", "https://packages.cloud.google.com/apt/doc/apt-key.gpg"),
             worker.index("sudo", "-n", "tee", keyring),
             worker.index("sudo", "-n", "tee", listfile),
             worker.index(*apt, "update"),
             worker.index(*apt, "install", "-y", "gcsfuse"),
             worker.index("mountpoint", "-q", mount),
             worker.index("sudo", "-n", "mkdir", "-p", mount),
             worker.index("sudo", "-n", "chown", "1000:1000", mount),
             worker.index("gcsfuse", "--implicit-dirs", "--rename-dir-limit=200000", "my-bucket", mount)]
    assert order == sorted(order)
    assert f"mounted gs://my-bucket at {mount} (--implicit-dirs --rename-dir-limit=200000)" in proc.stdout
    assert worker.index(*apt, "install", "-y", "gcsfuse") < worker.index(str(worker.bin / "python3"), "-m", "venv")

    # Again: gcsfuse is installed and the bucket mounted, so nothing is added, installed or mounted.
    proc = worker.setup("--bucket", "my-bucket")
    assert proc.returncode == 0, proc.stderr
    assert f"{mount} is mounted already: left as it is" in proc.stdout
    assert not [c for c in worker.calls() if c[0] in ("curl", "sudo", "apt-get", "gcsfuse")]


def test_bucket_mount_as_root_with_another_rename_limit(worker):
    worker.python("python3", "3.11.4 final")
    (worker.bin / "gcsfuse").write_text((worker.root / "tpl" / "gcsfuse").read_text())
    (worker.bin / "gcsfuse").chmod(0o755)
    mount = "/mnt/gcs/b"
    # as root nothing goes through sudo: mkdir and chown of /mnt/... are recorded, not run
    for name in ("mkdir", "chown"):
        real = shutil.which(name)
        (worker.bin / name).write_text(f"#!/usr/bin/env bash\n{LOG}\n"
                                       f'[[ ${{!#}} == /mnt/* ]] || exec {real} "$@"\nlog {name} "$@"\n')
        (worker.bin / name).chmod(0o755)
    proc = worker.setup("--bucket", "b", "--rename-dir-limit", "5000", FAKE_UID="0")
    assert proc.returncode == 0, proc.stderr
    assert worker.index("mkdir", "-p", mount) < worker.index("gcsfuse", "--implicit-dirs", "--rename-dir-limit=5000",
                                                             "b", mount)
    assert not [c for c in worker.calls() if c[0] in ("sudo", "apt-get", "curl")]


# ---- the real thing in an Ubuntu 22.04 chroot (slow) ------------------------------------------------

CACHE = Path(os.environ.get("SEMCODER_TEST_CACHE", Path.home() / ".cache" / "semcoder-tests"))
ROOTFS = CACHE / "jammy-rootfs"
ROOTFS_RECIPE = "minbase,main+universe,python3,python3-pip,ca-certificates;v1"
ARCHIVE = "http://archive.ubuntu.com/ubuntu"
# Ubuntu Archive Automatic Signing Key (2018), which signs jammy's Release file.
UBUNTU_ARCHIVE_KEY = "F6ECB3762474EDA9D21B7022871920D1991BC93C"
KEYRING_DEB = f"{ARCHIVE}/pool/main/u/ubuntu-keyring/ubuntu-keyring_2021.03.26_all.deb"


def _run(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)


def _ubuntu_keyring() -> Path:
    """Ubuntu's archive keyring: the system's, or ubuntu-keyring's .deb, checked against the 2018 key."""
    system = Path("/usr/share/keyrings/ubuntu-archive-keyring.gpg")
    if system.exists():
        return system
    cached = CACHE / "ubuntu-archive-keyring.gpg"
    if not cached.exists():
        if not (shutil.which("dpkg-deb") and shutil.which("gpg")):
            pytest.skip("no Ubuntu archive keyring, and no dpkg-deb/gpg to take it from ubuntu-keyring's .deb")
        work = CACHE / f"keyring.{uuid.uuid4().hex}"
        work.mkdir(parents=True)
        try:
            deb = work / "ubuntu-keyring.deb"
            with urllib.request.urlopen(KEYRING_DEB, timeout=60) as r:
                deb.write_bytes(r.read())
            _run("dpkg-deb", "-x", deb, work / "x", check=True)
            ring = work / "x" / "usr" / "share" / "keyrings" / "ubuntu-archive-keyring.gpg"
            (work / "gnupg").mkdir(mode=0o700)
            listing = _run("gpg", "--homedir", work / "gnupg", "--no-default-keyring", "--keyring", ring,
                           "--with-colons", "--fingerprint", check=True).stdout
            assert f":{UBUNTU_ARCHIVE_KEY}:" in listing, "ubuntu-keyring's .deb lacks the 2018 archive key"
            shutil.copy(ring, cached)
        finally:
            shutil.rmtree(work)
    return cached


@pytest.fixture(scope="session")
def jammy_rootfs() -> Path:
    """Ubuntu 22.04 minbase with python3 (3.10) and pip, the apt sources of a cloud image (jammy,
    -updates, -security; main, universe), cached in ~/.cache/semcoder-tests/jammy-rootfs."""
    if os.geteuid() != 0 or not shutil.which("chroot"):
        pytest.skip("needs root and chroot")
    if not shutil.which("debootstrap"):
        pytest.skip("needs debootstrap (apt-get install debootstrap)")
    marker = ROOTFS / ".semcoder-recipe"
    if marker.exists() and marker.read_text() == ROOTFS_RECIPE:
        return ROOTFS
    try:
        urllib.request.urlopen(f"{ARCHIVE}/dists/jammy/Release", timeout=20).close()
    except OSError as e:
        pytest.skip(f"{ARCHIVE} unreachable: {e}")
    keyring = _ubuntu_keyring()
    tmp = CACHE / f"jammy-rootfs.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    proc = _run("debootstrap", "--variant=minbase", "--components=main,universe", f"--keyring={keyring}",
                "--include=python3,python3-pip,ca-certificates", "jammy", tmp, ARCHIVE, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (tmp / "etc" / "apt" / "sources.list").write_text("".join(
        f"deb {ARCHIVE} {suite} main universe\n" for suite in ("jammy", "jammy-updates", "jammy-security")))
    _run("chroot", tmp, "apt-get", "clean", check=True)
    (tmp / ".semcoder-recipe").write_text(ROOTFS_RECIPE)
    shutil.rmtree(ROOTFS, ignore_errors=True)
    tmp.rename(ROOTFS)
    return ROOTFS


def _mounts_under(root: Path) -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == str(root) or p.startswith(f"{root}/")]


class Chroot:
    def __init__(self, root: Path):
        self.root = root

    def run(self, script: str, timeout: float = 900) -> subprocess.CompletedProcess:
        env = ["HOME=/root", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
               # pip and uv read the system store (with this machine's extra CAs, copied in) as on a worker
               "PIP_CERT=/etc/ssl/certs/ca-certificates.crt", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"]
        env += [f"{k}={os.environ[k]}" for k in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                                                  "NO_PROXY", "PIP_DEFAULT_TIMEOUT") if k in os.environ]
        return _run("chroot", self.root, "/usr/bin/env", "-i", *env, "bash", "-c", script, timeout=timeout)


@pytest.fixture
def jammy(jammy_rootfs):
    """A throw-away copy of the cached rootfs with /proc and /dev mounted (unmounted before it is removed)."""
    root = CACHE / "runs" / uuid.uuid4().hex
    root.parent.mkdir(parents=True, exist_ok=True)
    _run("cp", "-a", "--reflink=auto", jammy_rootfs, root, check=True)
    resolv = root / "etc" / "resolv.conf"
    resolv.unlink(missing_ok=True)  # a symlink would be followed, maybe out of the chroot
    shutil.copy("/etc/resolv.conf", resolv)
    for crt in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy(crt, root / "usr" / "local" / "share" / "ca-certificates" / crt.name)
    try:
        _run("mount", "-t", "proc", "proc", root / "proc", check=True)
        _run("mount", "--bind", "/dev", root / "dev", check=True)
        box = Chroot(root)
        assert box.run("update-ca-certificates >/dev/null").returncode == 0
        yield box
    finally:
        for point in reversed(_mounts_under(root)):
            if _run("umount", point).returncode != 0:
                _run("umount", "-l", point)
        left = _mounts_under(root)
        assert not left, f"still mounted, {root} left in place: {left}"
        shutil.rmtree(root)


def _stub_package(root: Path) -> str:
    """A small package in place of ours, as pod.sh ships it (a source archive pip builds): our real package's
    dependencies (tensorflow, torch, transformers, ...) would take many minutes to download; this one has
    the same requires-python and the `semcoder` console script that `worker.sh start` runs."""
    src = root / "opt" / "stub" / "semcoder-stub"
    (src / "semcoder_stub").mkdir(parents=True)
    (src / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "semcoder-stub"
        version = "0.1.0"
        requires-python = ">=3.11,<3.12"

        [project.scripts]
        semcoder = "semcoder_stub:main"
        """))
    (src / "semcoder_stub" / "__init__.py").write_text("def main():\n    print('semcoder stub')\n")
    _run("tar", "czf", root / "opt" / "semcoder-src.tar.gz", "-C", src.parent, src.name, check=True)
    shutil.copy(WORKER, root / "opt" / "worker.sh")
    return "/opt/semcoder-src.tar.gz"


SETUP = "bash /opt/worker.sh setup --venv /root/semcoder/venv --jax-spec jax==0.10.2 --package {pkg} " \
        "--expect-platform cpu --find-links '' {extra}"

VENV_CHECK = ("/root/semcoder/venv/bin/python -c 'import sys, jax; print(sys.version_info[:2], jax.devices())'"
              " && /root/semcoder/venv/bin/semcoder")


def _assert_only_python_310(box: Chroot) -> None:
    proc = box.run("python3 --version; command -v python3.11 || echo no-python3.11; ls /usr/bin | grep '^python'")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Python 3.10."), proc.stdout
    assert "no-python3.11" in proc.stdout and "python3.11" not in proc.stdout.replace("no-python3.11", "")


@pytest.mark.slow
def test_setup_in_ubuntu_2204_with_only_python_310_ends_with_a_python_311_venv_from_apt(jammy):
    """`--python apt` end to end: apt-get installs Ubuntu's python3.11 + python3.11-venv (3.11.0~rc1 from
    jammy-updates), the venv gets jax 0.10.2 (the CPU wheel: the real libtpu needs a TPU to show devices,
    hence --expect-platform cpu and no libtpu find-links) and a small stub package in place of ours: our
    real package's full dependency set (tensorflow, torch, transformers) would take too long to download;
    the stub has the same requires-python (>=3.11,<3.12) and the `semcoder` console script.

    This is the interpreter path that can run here.  The default for 3.10 images, uv, downloads CPython
    from github.com (python-build-standalone), which this machine cannot reach: its command construction is
    tested with stand-ins (test_auto_on_a_310_image_installs_cpython_311_with_uv), and the next test runs
    the real uv as far as it gets here."""
    _assert_only_python_310(jammy)
    pkg = _stub_package(jammy.root)
    t0 = time.monotonic()
    proc = jammy.run(SETUP.format(pkg=pkg, extra="--python apt"))
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "(3.11.0 candidate, apt python3.11)" in proc.stdout
    assert re.search(r"setup done: python 3\.11\.0, jax 0\.10\.2, 1 cpu devices: \[CpuDevice\(id=0\)\]", proc.stdout)
    check = jammy.run(VENV_CHECK)
    assert check.returncode == 0, check.stderr
    assert check.stdout.splitlines() == ["(3, 11) [CpuDevice(id=0)]", "semcoder stub"]
    print(f"setup took {took:.0f}s")


@pytest.mark.slow
def test_setup_in_ubuntu_2204_by_default_takes_python_311_from_uv(jammy):
    """The default (`--python auto`) on a 3.10 image: the image's pip installs uv (from PyPI) and uv
    installs CPython 3.11.  uv downloads that from github.com (python-build-standalone): where it can, the
    venv must end up 3.11 from uv; where it cannot (as on the machine these tests were written on), setup
    must stop in one line that says so and names --python apt, after uv itself was installed."""
    _assert_only_python_310(jammy)
    pkg = _stub_package(jammy.root)
    proc = jammy.run(SETUP.format(pkg=pkg, extra=""))
    if proc.returncode == 0:
        assert re.search(rf"\(3\.11\.\d+, uv {re.escape(UV_VERSION)}\)", proc.stdout), proc.stdout
        check = jammy.run(VENV_CHECK)
        assert check.returncode == 0, check.stderr
        assert check.stdout.splitlines() == ["(3, 11) [CpuDevice(id=0)]", "semcoder stub"]
        print(proc.stdout)
    else:
        line = one_line(proc)
        print(line)
        assert "--python uv: uv could not install Python 3.11 (error: Failed to install cpython-3.11" in line
        assert line.endswith("without github.com use --python apt")
        uv = jammy.run("/root/semcoder/uv/bin/uv --version && test ! -e /root/semcoder/venv")
        assert uv.returncode == 0 and uv.stdout.startswith(f"uv {UV_VERSION}"), uv.stdout + uv.stderr
