"""The targets file: loading JSON/YAML files and the file provider that watches them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.model import Target, TargetProvider
from exporter.settings import ConfigError
from exporter.sources import file as targets_module
from exporter.sources.file import FileSource, FileTargetProvider, load_targets_file
from tests.source_tasks import running

POLL = 0.05


# --- files ---------------------------------------------------------------------------------------

WEB_JSON = '[{"app": "web", "ip": "10.0.0.5", "port": 8080}]'
WEB = Target("web-10.0.0.5-8080", "web", "10.0.0.5", "8080", "/health")
API = Target("api-10.0.0.6-9000", "api", "10.0.0.6", "9000", "/ping")
WEB_AND_API_JSON = json.dumps(
    [
        {"app": "web", "ip": "10.0.0.5", "port": 8080},
        {"app": "api", "ip": "10.0.0.6", "port": 9000, "path": "/ping"},
    ]
)


def file_error(path: Path) -> str:
    with pytest.raises(ConfigError) as excinfo:
        load_targets_file(path)
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


def test_json_file_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_text(WEB_AND_API_JSON)
    assert load_targets_file(path) == [WEB, API]


@pytest.mark.parametrize("name", ["targets.yml", "targets.yaml", "targets.YML"])
def test_yaml_file_is_loaded(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(
        "# backends\n- app: web\n  ip: 10.0.0.5\n  port: 8080\n"
        "- {app: api, ip: 10.0.0.6, port: '9000', path: /ping}\n"
    )
    assert load_targets_file(path) == [WEB, API]


def test_yaml_file_accepts_file_sd_groups(tmp_path: Path) -> None:
    path = tmp_path / "sd.yml"
    path.write_text("- targets: ['10.0.0.5:8080']\n  labels: {app: web, team: core}\n")
    assert load_targets_file(path) == [WEB]


@pytest.mark.parametrize(
    ("name", "text"),
    [("targets", WEB_JSON), ("targets.txt", "- {app: web, ip: 10.0.0.5, port: 8080}")],
)
def test_file_with_other_extension_is_read_as_json_or_yaml(
    tmp_path: Path, name: str, text: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert load_targets_file(path) == [WEB]


def test_file_with_byte_order_mark_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_bytes(b"\xef\xbb\xbf" + WEB_JSON.encode())
    assert load_targets_file(path) == [WEB]


def test_file_with_empty_list_gives_no_targets(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text("[]\n")
    assert load_targets_file(path) == []


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
def test_empty_file_is_an_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "targets.json"
    path.write_text(content)
    assert file_error(path) == "file is empty"


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    assert file_error(tmp_path / "nope.json") == "cannot read: No such file or directory"


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_bytes(b'[{"app": "w\xff"}]')
    assert file_error(path) == "not UTF-8 text (bad byte at offset 11)"


def test_json_file_syntax_error_gives_line(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_text('[\n  {"app": "web"},\n  {"app": }\n]')
    assert file_error(path) == "invalid JSON at line 3 column 11: Expecting value"


def test_yaml_file_syntax_error_gives_line(tmp_path: Path) -> None:
    path = tmp_path / "targets.yml"
    path.write_text("- app: web\n  ip: 10.0.0.5\n  port: [8080\n")
    assert file_error(path).startswith("invalid YAML at line 4 column 1: ")


def test_yaml_file_with_python_tags_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "targets.yml"
    path.write_text("- !!python/object/apply:os.system ['true']\n")
    assert file_error(path).startswith("invalid YAML at line 1 column 3: could not determine")


@pytest.mark.parametrize(
    ("text", "reason"), [("app: web\n", "an object"), ("# only a comment\n", "null")]
)
def test_file_top_level_must_be_a_list(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "targets.yml"
    path.write_text(text)
    assert file_error(path) == f"top level must be a list of targets, got {reason}"


def test_file_entry_errors_name_the_file_and_entry(tmp_path: Path) -> None:
    path = tmp_path / "targets.yml"
    path.write_text(
        "- {app: a, ip: h, port: 1}\n- {app: b, ip: h, port: 2}\n- {app: c, adress: h, port: 3}\n"
    )
    assert file_error(path).startswith(
        "entry 3: unknown key 'adress' (expected one of: app, id, ip, path, port, or a check"
    )


def test_yaml_boolean_app_name_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "targets.yml"
    path.write_text("- {app: yes, ip: h, port: 1}\n")
    assert file_error(path) == "entry 1: app must be a string, got a boolean"


# --- bad input: sizes, kinds of file, nesting, huge numbers (issue 13, defects 18-20) -------------


def test_file_larger_than_64_mib_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_text(WEB_JSON)
    os.truncate(path, targets_module.MAX_FILE_BYTES + 1)  # sparse: no disk used
    assert file_error(path) == "file is larger than 64 MiB"


def test_character_device_is_refused_without_reading_it() -> None:
    assert file_error(Path("/dev/zero")) == "not a regular file (a character device)"


def test_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    os.mkfifo(path)
    assert file_error(path) == "not a regular file (a named pipe)"


def test_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.mkdir()
    assert file_error(path) == "not a regular file (a directory)"


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("deep.json", "[" * 100_000 + "]" * 100_000, "invalid JSON: nested too deeply"),
        ("deep.yml", "[" * 5_000 + "]" * 5_000, "invalid YAML at line 1 column 1001: exceeded"),
        ("deep.yaml", "".join("  " * i + "-\n" for i in range(5_000)), "invalid YAML at line"),
    ],
)
def test_deeply_nested_document_is_a_clear_error(
    tmp_path: Path, name: str, text: str, reason: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert file_error(path).startswith(reason)


def test_pure_python_yaml_loader_nesting_is_a_clear_error_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(targets_module, "_YAML_LOADER", yaml.SafeLoader)
    path = tmp_path / "deep.yml"
    path.write_text("[" * 5_000 + "]" * 5_000)
    assert file_error(path).startswith("invalid YAML: nested too deeply")


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        (
            "t.json",
            '[{"app": "w", "ip": "h", "port": %s}]' % ("7" * 5000),
            "invalid JSON: a number",
        ),
        ("t.yml", "- {app: w, ip: h, port: %s}\n" % ("7" * 5000), "invalid YAML: a number"),
        ("t.json", '[{"app": "w", "ip": "h", "port": %s}]' % ("7" * 4000), "entry 1: port of 4000"),
        ("t.json", '[{"app": "w", "ip": "h", "port": "%s"}]' % ("7" * 5000), "entry 1: port '77"),
    ],
)
def test_port_of_thousands_of_digits_is_a_clear_error(
    tmp_path: Path, name: str, text: str, reason: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    message = file_error(path)
    assert message.startswith(reason)
    assert len(message) < 200


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML built without libyaml")
def test_yaml_is_parsed_with_libyaml_when_present() -> None:
    assert targets_module._YAML_LOADER is yaml.CSafeLoader


# Targets-file contents a careless operator or a broken writer produces: every one is either
# safe targets or one ConfigError line naming the file, never another exception.
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["app", "ip", "port", "path", "id", "targets", "labels", "x"]),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


def _load_or_error(directory: Path, name: str, content: bytes) -> None:
    path = directory / name
    path.write_bytes(content)
    try:
        targets = load_targets_file(path)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message
        assert message.startswith(f"{path}: ")
        return
    for target in targets:
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,253}", target.id)
        assert 1 <= int(target.port) <= 65535


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(["t.json", "t.yml", "targets"]),
    content=st.binary(max_size=200)
    | st.text(alphabet=st.sampled_from(list("[]{}:,-\n \t'\"&*!|>#%@`a1.")), max_size=200).map(
        str.encode
    ),
)
def test_random_file_contents_never_crash_the_loader(name: str, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        _load_or_error(Path(directory), name, content)


@settings(max_examples=150, deadline=None)
@given(data=_JSON_VALUES, name=st.sampled_from(["t.json", "t.yaml"]))
def test_random_documents_never_crash_the_loader(data: object, name: str) -> None:
    text = json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data)
    with tempfile.TemporaryDirectory() as directory:
        _load_or_error(Path(directory), name, text.encode())


# --- provider ---------------------------------------------------------------------------------


@pytest.fixture
def logger() -> logging.Logger:
    return logging.getLogger("tests.targets")


@pytest.fixture
def targets_file(tmp_path: Path) -> Path:
    path = tmp_path / "targets.json"
    path.write_text(WEB_JSON)
    return path


@pytest.fixture
def provider(targets_file: Path, logger: logging.Logger) -> FileTargetProvider:
    provider = FileTargetProvider(targets_file, logger, poll_interval=POLL)
    provider.load_initial()
    return provider


def test_file_provider_load_initial_reads_the_file(provider: FileTargetProvider) -> None:
    assert provider.get_health_check_targets() == [WEB]
    assert isinstance(provider, TargetProvider)
    assert provider.reload_successes == 1
    assert provider.reload_failures == 0
    assert provider.last_reload_success_time == pytest.approx(time.time(), abs=5)
    assert provider.last_error is None


@pytest.mark.parametrize("content", [None, "", "[{]"])
def test_file_provider_load_initial_raises_on_a_bad_file(
    tmp_path: Path, logger: logging.Logger, content: str | None
) -> None:
    path = tmp_path / "targets.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: "):
        FileTargetProvider(path, logger).load_initial()


def test_file_provider_get_targets_does_no_io(
    provider: FileTargetProvider, targets_file: Path
) -> None:
    targets_file.unlink()
    assert provider.get_health_check_targets() == [WEB]


def test_file_provider_reload_reports_whether_targets_changed(
    provider: FileTargetProvider, targets_file: Path
) -> None:
    assert provider.reload() is False
    targets_file.write_text(WEB_AND_API_JSON)
    assert provider.reload() is True
    assert provider.get_health_check_targets() == [WEB, API]
    assert provider.reload_successes == 3


def test_file_provider_reload_keeps_previous_targets_on_error(
    provider: FileTargetProvider, targets_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    targets_file.write_text('[{"app": "web"}]')
    with caplog.at_level(logging.ERROR, logger="tests.targets"):
        assert provider.reload() is False
    assert provider.get_health_check_targets() == [WEB]
    assert provider.reload_failures == 1
    assert provider.last_error == f"{targets_file}: entry 1: missing required key 'ip'"
    [record] = caplog.records
    assert record.getMessage() == "targets file invalid, keeping previous targets"
    assert record.__dict__["file"] == str(targets_file)
    assert record.__dict__["error"] == provider.last_error


def test_file_provider_success_after_failure_clears_last_error(
    provider: FileTargetProvider, targets_file: Path
) -> None:
    targets_file.write_text("")
    provider.reload()
    targets_file.write_text(WEB_AND_API_JSON)
    assert provider.reload() is True
    assert provider.last_error is None
    assert (provider.reload_successes, provider.reload_failures) == (2, 1)


# --- watching ------------------------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached before the deadline")
        await asyncio.sleep(0.01)


class ChangeCounter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


class StatCounter:
    """Counts the watcher's stats of the file, optionally running an action before each."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.before_stat: Callable[[], None] | None = None
        real = targets_module._file_signature

        def counting(path: Path) -> tuple[int, int, int] | None:
            if self.before_stat is not None:
                self.before_stat()
            self.calls += 1
            return real(path)

        monkeypatch.setattr(targets_module, "_file_signature", counting)

    async def wait_for_polls(self, count: int) -> None:
        target = self.calls + count
        await wait_until(lambda: self.calls >= target)


@pytest.fixture
def stats(monkeypatch: pytest.MonkeyPatch) -> StatCounter:
    return StatCounter(monkeypatch)


@pytest.fixture
async def watch(
    provider: FileTargetProvider,
) -> AsyncIterator[tuple[ChangeCounter, asyncio.Task[None]]]:
    on_change = ChangeCounter()
    task = asyncio.create_task(provider.run(on_change))
    yield on_change, task
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# What another process does to the file while the exporter watches it (tiny, synchronous).


def write_in_place(path: Path, text: str) -> None:
    path.write_text(text)


def replace_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def delete(path: Path) -> None:
    path.unlink()


def inode(path: Path) -> int:
    return path.stat().st_ino


async def test_file_provider_picks_up_in_place_edit(
    provider: FileTargetProvider,
    targets_file: Path,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
) -> None:
    on_change, _ = watch
    write_in_place(targets_file, WEB_AND_API_JSON)
    await wait_until(lambda: on_change.calls == 1)
    assert provider.get_health_check_targets() == [WEB, API]


async def test_file_provider_picks_up_atomic_rename(
    provider: FileTargetProvider,
    targets_file: Path,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
) -> None:
    on_change, _ = watch
    old_inode = inode(targets_file)
    replace_atomically(targets_file, WEB_AND_API_JSON)
    assert inode(targets_file) != old_inode
    await wait_until(lambda: on_change.calls == 1)
    assert provider.get_health_check_targets() == [WEB, API]


async def test_file_provider_keeps_previous_targets_when_file_becomes_empty(
    provider: FileTargetProvider,
    targets_file: Path,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
) -> None:
    on_change, _ = watch
    write_in_place(targets_file, "")
    await wait_until(lambda: provider.reload_failures == 1)
    assert provider.get_health_check_targets() == [WEB]
    assert provider.last_error == f"{targets_file}: file is empty"
    replace_atomically(targets_file, WEB_AND_API_JSON)
    await wait_until(lambda: on_change.calls == 1)
    assert provider.get_health_check_targets() == [WEB, API]
    assert provider.last_error is None


async def test_file_provider_keeps_previous_targets_when_file_is_deleted_and_logs_once(
    provider: FileTargetProvider,
    targets_file: Path,
    stats: StatCounter,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    on_change, _ = watch
    with caplog.at_level(logging.ERROR, logger="tests.targets"):
        delete(targets_file)
        await wait_until(lambda: provider.reload_failures == 1)
        await stats.wait_for_polls(5)
    assert provider.reload_failures == 1
    assert len(caplog.records) == 1
    assert "No such file or directory" in caplog.records[0].__dict__["error"]
    assert provider.get_health_check_targets() == [WEB]
    write_in_place(targets_file, WEB_AND_API_JSON)
    await wait_until(lambda: on_change.calls == 1)
    assert provider.get_health_check_targets() == [WEB, API]


async def test_file_provider_does_not_read_an_unchanged_file(
    provider: FileTargetProvider,
    stats: StatCounter,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
) -> None:
    on_change, _ = watch
    await stats.wait_for_polls(5)
    assert provider.reload_successes == 1  # the initial load only
    assert on_change.calls == 0


async def test_file_provider_does_not_report_a_change_when_targets_are_equal(
    provider: FileTargetProvider,
    targets_file: Path,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
) -> None:
    on_change, _ = watch
    write_in_place(targets_file, WEB_JSON.replace(", ", ",\n  ") + "\n")
    await wait_until(lambda: provider.reload_successes == 2)
    assert on_change.calls == 0


async def test_file_provider_waits_until_the_file_has_settled(
    provider: FileTargetProvider,
    targets_file: Path,
    stats: StatCounter,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
) -> None:
    on_change, _ = watch
    pieces = [WEB_AND_API_JSON[i : i + 20] for i in range(0, len(WEB_AND_API_JSON), 20)]
    written: list[str] = []

    def write_next_piece() -> None:  # the writer gets ahead of every stat until it is done
        if len(written) < len(pieces):
            written.append(pieces[len(written)])
            write_in_place(targets_file, "".join(written))

    stats.before_stat = write_next_piece
    await wait_until(lambda: on_change.calls == 1)
    assert len(written) == len(pieces) > 3
    assert provider.reload_failures == 0
    assert provider.reload_successes == 2
    assert provider.get_health_check_targets() == [WEB, API]


async def test_file_provider_watch_survives_a_failing_on_change(
    provider: FileTargetProvider, targets_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def failing_on_change() -> None:
        calls.append(len(calls))
        raise RuntimeError("callback broke")

    task = asyncio.create_task(provider.run(failing_on_change))
    try:
        with caplog.at_level(logging.ERROR, logger="tests.targets"):
            write_in_place(targets_file, WEB_AND_API_JSON)
            await wait_until(lambda: len(calls) == 1)
            replace_atomically(targets_file, "[]")
            await wait_until(lambda: len(calls) == 2)
        assert not task.done()
        assert any(record.exc_info for record in caplog.records)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_file_provider_watch_survives_an_unexpected_error(
    provider: FileTargetProvider,
    targets_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
) -> None:
    on_change, task = watch
    attempts: list[Path] = []

    def broken_loader(path: Path, **_: object) -> list[Target]:
        attempts.append(path)
        raise RuntimeError("unexpected")

    monkeypatch.setattr(targets_module, "read_targets_file", broken_loader)
    write_in_place(targets_file, WEB_AND_API_JSON)
    await wait_until(lambda: len(attempts) == 1)
    monkeypatch.undo()
    replace_atomically(targets_file, "[]")
    await wait_until(lambda: on_change.calls == 1)
    assert not task.done()
    assert provider.get_health_check_targets() == []


async def test_file_provider_watch_stops_when_cancelled(
    provider: FileTargetProvider,
) -> None:
    task = asyncio.create_task(provider.run(ChangeCounter()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- sources that fail (issue 13) ----------------------------------------------------------------


def empty(path: Path) -> None:
    write_in_place(path, "")


def half_write(path: Path) -> None:
    write_in_place(path, WEB_AND_API_JSON[: len(WEB_AND_API_JSON) // 2])


def replace_by_a_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def remove_its_directory(path: Path) -> None:
    shutil.rmtree(path.parent)


def repair(path: Path) -> None:
    if path.is_dir():
        path.rmdir()
    path.parent.mkdir(exist_ok=True)
    replace_atomically(path, WEB_AND_API_JSON)


@pytest.mark.parametrize(
    "breakage", [delete, empty, half_write, replace_by_a_directory, remove_its_directory]
)
async def test_broken_file_keeps_last_good_targets_with_one_failure_and_log_line(
    tmp_path: Path,
    logger: logging.Logger,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    breakage: Callable[[Path], None],
) -> None:
    path = tmp_path / "conf" / "targets.json"
    path.parent.mkdir()
    path.write_text(WEB_JSON)
    source = FileSource(path, logger, poll_interval=POLL)
    source.load_initial()
    stats = StatCounter(monkeypatch)
    on_change = ChangeCounter()
    async with running(source, on_change):
        with caplog.at_level(logging.ERROR, logger="tests.targets"):
            breakage(path)
            await wait_until(lambda: source.health.failures == 1)
            await stats.wait_for_polls(10)
        assert source.health.failures == 1
        assert len(caplog.records) == 1
        assert source.health.last_error == caplog.records[0].__dict__["error"]
        assert source.get_health_check_targets() == [WEB]
        assert source.health.targets == 1
        repair(path)
        await wait_until(lambda: on_change.calls == 1)
        assert source.get_health_check_targets() == [WEB, API]
        assert source.health.last_error is None
        assert (source.health.failures, source.health.targets) == (1, 2)


async def test_kubernetes_configmap_update_is_picked_up(
    tmp_path: Path, logger: logging.Logger
) -> None:
    """A ConfigMap volume: targets.json -> ..data/targets.json, ..data -> ..<timestamp>."""

    def publish(version: int, text: str) -> None:
        data = tmp_path / f"..2026_11_27_{version}"
        data.mkdir()
        (data / "targets.json").write_text(text)
        link = tmp_path / "..data_tmp"
        link.symlink_to(data.name)
        os.replace(link, tmp_path / "..data")  # what the kubelet does: one atomic rename

    publish(1, WEB_JSON)
    path = tmp_path / "targets.json"
    path.symlink_to("..data/targets.json")
    source = FileSource(path, logger, poll_interval=POLL)
    source.load_initial()
    on_change = ChangeCounter()
    async with running(source, on_change):
        publish(2, WEB_AND_API_JSON)
        shutil.rmtree(tmp_path / "..2026_11_27_1")
        await wait_until(lambda: on_change.calls == 1)
        assert source.get_health_check_targets() == [WEB, API]
        assert source.health.failures == 0


def yaml_targets(count: int) -> str:
    return "".join(f"- {{app: web, ip: 10.0.0.{n}, port: 8080}}\n" for n in range(1, count + 1))


async def test_writer_pausing_mid_file_is_not_read_half_way(
    tmp_path: Path, logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 defect 4: a valid YAML prefix (2 of 5 targets) must not replace the targets."""
    path = tmp_path / "targets.yml"
    path.write_text(yaml_targets(5))
    source = FileSource(path, logger, poll_interval=POLL)
    source.load_initial()
    stats = StatCounter(monkeypatch)
    seen: list[int] = []
    async with running(source, lambda: seen.append(len(source._targets))):
        with path.open("w") as writer:  # rewritten in place, as `cat > file` or an editor does
            writer.write(yaml_targets(2))
            writer.flush()
            await stats.wait_for_polls(20)  # the writer pauses for many polls
            writer.write(yaml_targets(6)[len(yaml_targets(2)) :])
        await wait_until(lambda: seen == [6])
        assert source.health.failures == 0


async def test_file_held_open_without_change_is_read_after_the_writer_grace(
    tmp_path: Path, logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "targets.json"
    path.write_text(WEB_JSON)
    source = FileSource(path, logger, poll_interval=POLL, writer_grace=0.3)
    source.load_initial()
    on_change = ChangeCounter()
    async with running(source, on_change):
        with caplog.at_level(logging.WARNING, logger="tests.targets"), path.open("w") as writer:
            writer.write(WEB_AND_API_JSON)
            writer.flush()  # ...and a stuck writer never closes it
            await wait_until(lambda: on_change.calls == 1)
        assert source.get_health_check_targets() == [WEB, API]
        assert "still open for writing" in caplog.text


async def test_file_is_read_and_parsed_off_the_event_loop(
    provider: FileTargetProvider,
    targets_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
) -> None:
    """Issue 13 defect 5: a large file must not stall checks and /metrics while it parses."""
    threads: list[threading.Thread] = []
    real = targets_module.read_targets_file

    def spy(path: Path, **options: Any) -> Any:
        threads.append(threading.current_thread())
        return real(path, **options)

    monkeypatch.setattr(targets_module, "read_targets_file", spy)
    on_change, _ = watch
    write_in_place(targets_file, WEB_AND_API_JSON)
    await wait_until(lambda: on_change.calls == 1)
    provider.refresh()
    await wait_until(lambda: len(threads) == 2)
    assert threading.main_thread() not in threads


async def test_refresh_reads_at_once_even_an_unchanged_file(
    provider: FileTargetProvider, watch: tuple[ChangeCounter, asyncio.Task[None]]
) -> None:
    provider.refresh()
    await wait_until(lambda: provider.reload_successes == 2)


async def test_permission_change_alone_is_a_new_version(
    provider: FileTargetProvider,
    targets_file: Path,
    watch: tuple[ChangeCounter, asyncio.Task[None]],
) -> None:
    """Issue 13 defect 6: chmod changes only the ctime; fixing permissions must be noticed."""
    targets_file.chmod(0o600)
    await wait_until(lambda: provider.reload_successes == 2)


def test_deeply_nested_version_while_running_is_a_counted_failure(
    provider: FileTargetProvider, targets_file: Path
) -> None:
    """Defect 19: no RecursionError traceback; one failed reload, the targets kept."""
    targets_file.write_text("[" * 100_000 + "]" * 100_000)
    assert provider.reload() is False
    assert provider.reload_failures == 1
    assert provider.last_error is not None and "nested too deeply" in provider.last_error
    assert provider.get_health_check_targets() == [WEB]
