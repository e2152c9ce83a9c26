"""A real Docker engine for the tests, and the images they run, all made offline on this machine.

A pytest plugin (`pytest_plugins = ("tests.docker_engine",)` in the test modules). The engine is
Debian's `dockerd` on /var/run/docker.sock, started when nothing answers there, and stopped at
the end by the last test session using it (several may run side by side) if a test session
started it. Images are built once per machine and reused by tag:

- `busybox_image`: a root filesystem holding Debian's static busybox, whose `httpd` serves
  /www/health; every target container runs it on the host network, on its own 127.0.0.1 port,
  so every check stays on loopback.
- `python_base_image`: a stand-in for `python:3.11-slim-bookworm` (no registry is reachable):
  `debootstrap --variant=minbase` from the mirror apt uses, with a venv at /usr/local so that
  `python` and `pip` are on PATH as in the official image, and the host's CA bundle and pip
  configuration so that pip reaches the package index the host reaches.

`PrivateEngine` runs a throwaway second `dockerd` (own socket, data and state, no bridge, live
restore) for tests that stop and start the engine under the exporter.

PYTEST_DONT_REWRITE: the test modules import this before pytest loads it as a plugin, too late
for assertion rewriting, so the asserts here carry their own messages.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import fcntl
import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp
import pytest

from tests.observability import require_tool
from tests.servers import unused_port

SOCKET = Path("/var/run/docker.sock")
INSTALL = "scripts/test.sh installs Debian's docker.io, busybox-static, debootstrap, docker-compose"
TEST_LABEL = "healthcheck-exporter-test"  # on every container the tests start, for cleanup
BUSYBOX_IMAGE = "healthcheck-exporter-test/busybox:1"
PYTHON_IMAGE = "healthcheck-exporter-test/python:3.11-slim-bookworm"
HEALTH_BODY = "ok\n"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # where Debian's pip looks
START_TIMEOUT = 60.0  # seconds for a dockerd to answer (its first start sets up its data)
COMMAND_TIMEOUT = 120.0


def _fail_or_skip(reason: str) -> None:
    if os.environ.get("CI"):
        raise AssertionError(f"{reason} (in CI the Docker tests must run)")
    pytest.skip(reason)


def docker_cli() -> str:
    """The client of Debian's docker.io when installed (it matches the engine, BuildKit built
    in), else whatever `docker` is on PATH."""
    return shutil.which("docker", path="/usr/bin:/bin") or require_tool("docker", install=INSTALL)


@dataclass(frozen=True)
class Engine:
    """A reachable engine: `host` for HEALTHCHECK_DOCKER_HOST, `cli` to drive it."""

    host: str
    cli: str

    def argv(self, *args: str) -> list[str]:
        return [self.cli, "--host", self.host, *args]

    def run(
        self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {done.stdout}\n{done.stderr}")
        return done

    def import_image(self, tag: str, rootfs: bytes, *changes: str) -> None:
        """`docker import` of a tar archive, with Dockerfile `changes` (ENV, ENTRYPOINT...)."""
        args = [arg for change in changes for arg in ("--change", change)]
        done = subprocess.run(
            self.argv("import", *args, "-", tag), input=rootfs, capture_output=True, timeout=300
        )
        assert done.returncode == 0, f"docker import {tag}: {done.stderr.decode(errors='replace')}"

    def has_image(self, tag: str) -> bool:
        return self.run("image", "inspect", tag, check=False).returncode == 0

    def answers(self) -> bool:
        return self.run("version", check=False, timeout=10).returncode == 0

    async def arun(self, *args: str) -> str:
        """Run a docker command from an async test; fails on a non-zero exit; returns stdout."""
        proc = await asyncio.create_subprocess_exec(
            *self.argv(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
        assert proc.returncode == 0, f"docker {' '.join(args)}: {err.decode(errors='replace')}"
        return out.decode().strip()


# -- dockerd processes -----------------------------------------------------------------------


@dataclass
class Dockerd:
    """A `dockerd` started here with `args`, its output in `log`."""

    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, engine: Engine) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [require_tool("dockerd", install=INSTALL), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches pytest, not dockerd
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not engine.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
                raise AssertionError(f"dockerd {' '.join(self.args)} did not start:\n{tail}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM and wait for the exit (the engine stops its containerd too)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# Several test sessions may share this machine's engine at once (developers' runs side by side):
# each holds USERS_LOCK shared while it runs; the last one out (it gets the lock alone) stops the
# dockerd a test session started (STARTED_BY_TESTS holds its pid), whichever session that was.
# SETUP_LOCK serializes starting the engine and building images.
LOCK_DIR = Path(tempfile.gettempdir())
USERS_LOCK = LOCK_DIR / "healthcheck-exporter-tests-docker-users.lock"
SETUP_LOCK = LOCK_DIR / "healthcheck-exporter-tests-docker-setup.lock"
STARTED_BY_TESTS = LOCK_DIR / "healthcheck-exporter-tests-dockerd.pid"
SESSION = uuid.uuid4().hex[:12]  # the TEST_LABEL value of this session's containers


@contextlib.contextmanager
def file_lock(path: Path, mode: int = fcntl.LOCK_EX) -> Iterator[IO[bytes]]:
    with path.open("ab") as handle:
        fcntl.flock(handle, mode)
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The engine on /var/run/docker.sock; started if none answers, stopped by the last test
    session using it if a test session started it."""
    engine = Engine(f"unix://{SOCKET}", docker_cli())
    with file_lock(USERS_LOCK, fcntl.LOCK_SH) as users:
        with file_lock(SETUP_LOCK):
            if not engine.answers():
                require_tool("dockerd", install=INSTALL)
                if os.geteuid() != 0:
                    _fail_or_skip("dockerd is not running and starting it needs root")
                dockerd = Dockerd([], tmp_path_factory.mktemp("dockerd") / "dockerd.log")
                dockerd.start(engine)
                assert dockerd.proc is not None
                STARTED_BY_TESTS.write_text(str(dockerd.proc.pid))
        try:
            yield engine
        finally:
            _remove_session_containers(engine)
            with contextlib.suppress(BlockingIOError):
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)  # alone now?
                _stop_dockerd_started_by_tests()


def _stop_dockerd_started_by_tests() -> None:
    """SIGTERM the dockerd a test session started, and wait (bounded) until it has exited."""
    if not STARTED_BY_TESTS.exists():
        return
    pid = int(STARTED_BY_TESTS.read_text() or 0)
    STARTED_BY_TESTS.unlink()
    comm = Path(f"/proc/{pid}/comm")
    if not comm.exists() or comm.read_text().strip() != "dockerd":
        return  # gone already (the pid may be another process's by now)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _running(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # our own child: reap it
            time.sleep(0.1)


def _running(pid: int) -> bool:
    """Whether `pid` is alive (a zombie waiting to be reaped is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _remove_session_containers(engine: Engine) -> None:
    mine = f"label={TEST_LABEL}={SESSION}"
    left = engine.run("ps", "-aq", "--filter", mine, check=False).stdout.split()
    if left:
        engine.run("rm", "-f", *left, check=False)


class PrivateEngine:
    """A second, throwaway engine that a test may stop and start at will.

    Own socket, data-root and exec-root under a short temporary directory (socket paths are
    limited to 107 bytes), no bridge and no iptables rules (its containers use the host network),
    vfs storage (works on any filesystem), and live restore: its containers keep running while it
    is down, as on a production host.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        config = directory / "daemon.json"
        config.write_text("{}")
        self.engine = Engine(f"unix://{directory}/docker.sock", docker_cli())
        self.dockerd = Dockerd(
            [
                f"--host={self.engine.host}",
                f"--data-root={directory}/data",
                f"--exec-root={directory}/exec",
                f"--pidfile={directory}/docker.pid",
                f"--config-file={config}",
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--live-restore",
                "--storage-driver=vfs",
            ],
            directory / "dockerd.log",
        )

    def start(self) -> None:
        self.dockerd.start(self.engine)

    def stop(self) -> None:
        self.dockerd.stop()

    def remove(self) -> None:
        """Stop every container, the engine, and delete everything it left."""
        if self.dockerd.proc is None:
            self.start()
        left = self.engine.run("ps", "-aq", check=False).stdout.split()
        if left:
            self.engine.run("rm", "-f", *left, check=False)
        self.stop()
        # dockerd leaves its data-root and default netns mounted; unmount the deepest first.
        for mount_point in sorted(_mount_points_under(self.directory), reverse=True):
            subprocess.run(["umount", "--lazy", mount_point], capture_output=True, check=False)
        shutil.rmtree(self.directory, ignore_errors=True)


def _mount_points_under(directory: Path) -> list[str]:
    prefix = str(directory) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    return points


@contextlib.contextmanager
def private_engine(busybox_rootfs: bytes) -> Iterator[PrivateEngine]:
    """A started `PrivateEngine` holding the busybox image; removed afterwards."""
    if os.geteuid() != 0:
        _fail_or_skip("a private dockerd needs root")
    directory = Path(f"/tmp/hc-dockerd-{uuid.uuid4().hex[:8]}")
    directory.mkdir(mode=0o700)
    private = PrivateEngine(directory)
    try:
        private.start()
        private.engine.import_image(BUSYBOX_IMAGE, busybox_rootfs, *BUSYBOX_CHANGES)
        yield private
    finally:
        private.remove()


# -- the busybox image -----------------------------------------------------------------------

BUSYBOX_CHANGES = ('ENTRYPOINT ["/bin/busybox"]',)


def busybox_rootfs() -> bytes:
    """A tar archive of a root filesystem: /bin/busybox (static) and /www/health."""
    busybox = Path(require_tool("busybox", install=INSTALL)).resolve()
    # Alone in the image, it must not need a dynamic loader: `ldd` says so for a static binary.
    dynamic = subprocess.run(["ldd", str(busybox)], capture_output=True).returncode == 0
    assert not dynamic, f"{busybox} is linked dynamically: install busybox-static"
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for directory in ("bin", "www"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        health = HEALTH_BODY.encode()
        info = tarfile.TarInfo("www/health")
        info.size, info.mode = len(health), 0o644
        tar.addfile(info, io.BytesIO(health))
    return archive.getvalue()


@pytest.fixture(scope="session")
def busybox_image(docker_engine: Engine) -> str:
    """The busybox image's tag, imported once per machine."""
    with file_lock(SETUP_LOCK):
        if not docker_engine.has_image(BUSYBOX_IMAGE):
            docker_engine.import_image(BUSYBOX_IMAGE, busybox_rootfs(), *BUSYBOX_CHANGES)
    return BUSYBOX_IMAGE


@dataclass
class Httpd:
    """A busybox httpd container on the host network, serving /health on 127.0.0.1:`port`."""

    id: str
    name: str
    port: int

    @property
    def short_id(self) -> str:
        return self.id[:12]


@dataclass
class Containers:
    """Starts httpd containers for one test and removes them all at its end."""

    engine: Engine
    started: list[str] = field(default_factory=list)

    async def httpd(
        self,
        app: str | None,
        *,
        labels: Mapping[str, str] | None = None,
        name: str | None = None,
        port: int | None = None,
    ) -> Httpd:
        """Run one and wait until it serves; labelled `healthcheck.app=app` and
        `healthcheck.port` (unless app is None), then `labels` (which may override those).

        A free port can be taken by another process between its choice and httpd's bind (other
        test sessions run beside this one): then httpd exits, and a new port is tried.
        """
        name = name or f"hc-test-{uuid.uuid4().hex[:10]}"
        for _ in range(5):
            chosen = port or unused_port()
            wanted = {"healthcheck.app": app, "healthcheck.port": str(chosen)} if app else {}
            wanted |= {**(labels or {}), TEST_LABEL: SESSION}
            label_args = [f"--label={key}={value}" for key, value in wanted.items()]
            run = ["run", "--detach", "--init", "--network=host", f"--name={name}", *label_args]
            serve = ["httpd", "-f", "-p", f"127.0.0.1:{chosen}", "-h", "/www"]
            container_id = await self.engine.arun(*run, BUSYBOX_IMAGE, *serve)
            self.started.append(container_id)
            if await self._serves(container_id, chosen):
                return Httpd(container_id, name, chosen)
            await self.engine.arun("rm", "--force", container_id)
        raise AssertionError(f"httpd container {name} never served on 127.0.0.1")

    async def _serves(self, container_id: str, port: int) -> bool:
        """Whether the container answers on `port` (False once it has exited)."""
        deadline = time.monotonic() + 15
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.monotonic() < deadline:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                        if resp.status == 200 and await resp.text() == HEALTH_BODY:
                            return True
                except (aiohttp.ClientError, TimeoutError):
                    pass
                running = await self.engine.arun(
                    "inspect", "--format={{.State.Running}}", container_id
                )
                if running != "true":
                    return False
                await asyncio.sleep(0.05)
        return False

    def remove_all(self) -> None:
        if self.started:
            self.engine.run("rm", "--force", *self.started, check=False)
            self.started.clear()


@pytest.fixture
def containers(docker_engine: Engine, busybox_image: str) -> Iterator[Containers]:
    del busybox_image  # built, under the tag Containers uses
    made = Containers(docker_engine)
    try:
        yield made
    finally:
        made.remove_all()


# -- the python base image -------------------------------------------------------------------


def apt_mirror() -> str:
    """The first Debian mirror apt uses (deb822 `URIs:` or one-line `deb` sources)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file() or path.suffix not in ("", ".list", ".sources"):
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split()
            if path.suffix == ".sources" and words[:1] == ["URIs:"]:
                uri = words[1]
            elif words[:1] == ["deb"]:
                uri = next(w for w in words[1:] if not w.startswith("["))
            else:
                continue
            if uri.rstrip("/").endswith("/debian"):
                return uri
    raise AssertionError("no Debian mirror in /etc/apt/sources.list*")


def host_ca_bundle() -> Path:
    """The CA bundle pip trusts here (PIP_CERT, /etc/pip.conf's `cert`, or Debian's)."""
    named = os.environ.get("PIP_CERT") or _pip_conf().get("cert")
    return Path(named) if named else CA_BUNDLE


def _pip_conf() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read("/etc/pip.conf")
    return dict(parser["global"]) if parser.has_section("global") else {}


def host_pip_config() -> str:
    """pip.conf for the image: the index settings the host uses, trusting the copied CA bundle.

    Local paths (find-links, constraints, file: indexes) are left out: not inside the image.
    """
    settings = {
        key: value
        for key, value in _pip_conf().items()
        if key in ("index-url", "extra-index-url", "trusted-host", "timeout")
    }
    for variable, key in (
        ("PIP_INDEX_URL", "index-url"),
        ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
        ("PIP_TRUSTED_HOST", "trusted-host"),
        ("PIP_DEFAULT_TIMEOUT", "timeout"),
    ):
        if value := os.environ.get(variable):
            settings[key] = value
    for key in ("index-url", "extra-index-url"):
        urls = [url for url in settings.get(key, "").split() if not url.startswith("file:")]
        settings.pop(key, None)
        if urls:
            settings[key] = " ".join(urls)
    settings["cert"] = str(CA_BUNDLE)
    return "[global]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items())


def build_python_rootfs(root: Path) -> None:
    """debootstrap a minimal bookworm with Python, then a venv at /usr/local as pip's home."""
    debootstrap = require_tool("debootstrap", install=INSTALL)
    packages = "--include=python3,python3-venv,ca-certificates"
    done = subprocess.run(
        [debootstrap, "--variant=minbase", packages, "bookworm", str(root), apt_mirror()],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"debootstrap failed:\n{done.stdout[-3000:]}\n{done.stderr}"
    venv = subprocess.run(
        ["chroot", str(root), "/usr/bin/python3", "-m", "venv", "/usr/local"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert venv.returncode == 0, f"venv at /usr/local failed: {venv.stderr}"
    # Trust what the host trusts, reach the index the host reaches.
    shutil.copyfile(host_ca_bundle(), root / CA_BUNDLE.relative_to("/"))
    (root / "etc/pip.conf").write_text(host_pip_config())
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (root / cache).glob("*"):
            if path.is_file():
                path.unlink()


PYTHON_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)


@pytest.fixture(scope="session")
def python_base_image(docker_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The stand-in for python:3.11-slim-bookworm, built once per machine."""
    with file_lock(SETUP_LOCK):
        if docker_engine.has_image(PYTHON_IMAGE):
            return PYTHON_IMAGE
        if os.geteuid() != 0:
            _fail_or_skip("debootstrap needs root")
        root = tmp_path_factory.mktemp("python-rootfs") / "root"
        build_python_rootfs(root)
        archive = subprocess.run(
            ["tar", "-C", str(root), "--numeric-owner", "-c", "."], capture_output=True, check=True
        ).stdout
        docker_engine.import_image(PYTHON_IMAGE, archive, *PYTHON_CHANGES)
        shutil.rmtree(root, ignore_errors=True)
    return PYTHON_IMAGE
