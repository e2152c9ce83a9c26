"""Bad input over every HEALTHCHECK_* variable (hypothesis): a bad value always ends in exit 2 and
one line naming the variable, never a traceback; a value accepted is kept as given, never altered.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import cli
from exporter.settings import (
    ConfigError,
    environment_variables,
    is_duration_field,
    load_settings,
    parse_duration,
)

VARIABLES = [v.name for v in environment_variables()]
BASE = {"HEALTHCHECK_TARGETS": "web=127.0.0.1:8080"}
HAPROXY = {"HEALTHCHECK_HAPROXY_CONFIG": "backends.cfg"}  # relative: in the test's directory

numbers = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.integers(0, 600).map(lambda n: "9" * n),  # up to 600 digits (Python's limit is 4300)
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.from_regex(r"\s?[+-]?[0-9]{0,4}(\.[0-9]{0,3})?(e[0-9]{1,3})?%?\s?", fullmatch=True),
)
durations = st.from_regex(
    r"\s?[+-]?[0-9.]{0,5}(ns|us|µs|ms|s|m|h|d|)([0-9.]{0,4}(ms|s|m|h))?\s?", fullmatch=True
)
words = st.sampled_from(
    ["true", "false", "TRUE", "yes", "no", "on", "off", "1", "0", "maybe", "healthy",
     "UNHEALTHY", "unhealthy ", "debug", "json", "maint", "drain", "runtime-api", "none", "-"]
)  # fmt: skip
paths = st.sampled_from(
    ["f.cfg", "missing/f.cfg", ".", "/", "/dev/null", "/proc/self/status", "dir", "fifo",
     "binary.cfg", "a\nb", "/nonexistent/x", "n" * 300]
)  # fmt: skip
values = st.one_of(st.text(max_size=40), numbers, durations, words, paths)


@contextlib.contextmanager
def sandbox(directory: Path) -> Iterator[None]:
    """Relative paths resolve in `directory`, which holds a directory, a FIFO and a binary file."""
    old = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fuzz")
    (directory / "dir").mkdir()
    os.mkfifo(directory / "fifo")
    (directory / "binary.cfg").write_bytes(b"\xff\xfe\x00")
    return directory


def environment(variable: str, value: str) -> dict[str, str]:
    env = dict(BASE)
    if variable.startswith("HEALTHCHECK_HAPROXY_"):
        env.update(HAPROXY)  # so that the value itself is judged, not the missing config
    if variable == "HEALTHCHECK_TARGETS_FILE":
        env.pop("HEALTHCHECK_TARGETS")
    env[variable] = value
    return env


# Variables whose `validate` would query a DNS server, an HTTP SD URL or a Docker engine given
# by the value: fuzzed through load_settings only, so no lookup ever leaves the machine.
NETWORK = {"HEALTHCHECK_DNS_SD", "HEALTHCHECK_DNS_SERVER", "HEALTHCHECK_HTTP_SD_URL",
           "HEALTHCHECK_DOCKER_HOST", "HEALTHCHECK_DOCKER_NETWORK"}  # fmt: skip


def validate(env: dict[str, str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["validate"], env)
    return code, err.getvalue()


def settings_only(env: dict[str, str]) -> tuple[int, str]:
    try:
        load_settings(env)
    except ConfigError as err:
        return 2, f"healthcheck-exporter: error: {err}\n"
    return 0, ""


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VARIABLES), values)
def test_any_value_of_any_variable_validates_or_exits_2_with_one_line_naming_it(
    workdir: Path, variable: str, value: str
):
    if variable == "HEALTHCHECK_TARGETS_FILE" and value in ("/dev/null", "fifo"):
        value = "dir"  # reading those is the sources' business (issue 13, defect 18)
    env = environment(variable, value)
    with sandbox(workdir):
        if variable in NETWORK:
            code, err = settings_only(env)
        else:
            code, err = validate(env)  # any exception (a traceback) fails the test
    assert code in (0, 2), err
    if code == 2:
        lines = err.splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("healthcheck-exporter: error: "), lines[0]
        if variable == "HEALTHCHECK_TARGETS_FILE":  # the file and the entry are named instead
            one_line = " ".join(value.strip().splitlines())  # as ConfigError writes it
            assert variable in lines[0] or one_line in lines[0], lines[0]
        else:
            assert lines[0].startswith("healthcheck-exporter: error: HEALTHCHECK_"), lines[0]
        if variable not in ("HEALTHCHECK_TARGETS", "HEALTHCHECK_TARGETS_FILE"):
            named = variable in lines[0] or (
                variable.startswith("HEALTHCHECK_HAPROXY_")
                and "HEALTHCHECK_HAPROXY_" in lines[0]  # e.g. RELOAD=signal needs PIDFILE
            )
            assert named, lines[0]


def kept_as_given(field: str, value: str, parsed: Any) -> bool:
    """Whether `parsed` is `value` as written (trimmed, case aside), not a value made up."""
    text = value.strip()
    if is_duration_field(field):
        return math.isclose(parsed, parse_duration(value), rel_tol=1e-12)
    if isinstance(parsed, bool):
        return text.lower() in (("true", "1", "yes", "on", "t", "y") if parsed else
                                ("false", "0", "no", "off", "f", "n"))  # fmt: skip
    if isinstance(parsed, int):
        return parsed == float(text)  # "1.0" is 1, "1.5" must have been refused
    if isinstance(parsed, Path):
        return parsed == Path(value)
    if field == "panic_threshold":
        return parsed.rstrip("%") in text or float(parsed.rstrip("%")) == float(text.rstrip("% "))
    if isinstance(parsed, str):
        return parsed.lower() == text.lower() or parsed == value
    return parsed is None


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(VARIABLES), values)
def test_an_accepted_value_is_never_silently_altered(variable: str, value: str):
    env = environment(variable, value)
    try:
        loaded = load_settings(env)
    except ConfigError:
        return
    field = variable.removeprefix("HEALTHCHECK_").lower()
    parsed = getattr(loaded, field)
    if not value.strip():
        return  # empty counts as unset: the default
    assert kept_as_given(field, value, parsed), (variable, value, parsed)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HEALTHCHECK_INTERVAL": "1ns", "HEALTHCHECK_ENABLED": "false"},
         "HEALTHCHECK_INTERVAL: must be at least 10ms (got '1ns')"),
        ({"HEALTHCHECK_INTERVAL": "9ms"}, "HEALTHCHECK_INTERVAL: must be at least 10ms"),
        ({"HEALTHCHECK_FALL": "9" * 400}, "HEALTHCHECK_FALL: must be at most 10000"),
        ({"HEALTHCHECK_RISE": "10001"}, "HEALTHCHECK_RISE: must be at most 10000"),
        ({"HEALTHCHECK_TIMEOUT": "25h"}, "HEALTHCHECK_TIMEOUT: must be at most 24h"),
        ({"HEALTHCHECK_FASTINTER": "1ns"}, "HEALTHCHECK_FASTINTER: must be at least 10ms"),
        ({"HEALTHCHECK_DOWNINTER": "48h"}, "HEALTHCHECK_DOWNINTER: must be at most 24h"),
        ({"HEALTHCHECK_PANIC_THRESHOLD": "150%"}, "HEALTHCHECK_PANIC_THRESHOLD: percentage"),
        ({"HEALTHCHECK_INITIAL_STATE": "up"}, "HEALTHCHECK_INITIAL_STATE: must be one of"),
        ({"HEALTHCHECK_DNS_SD": "web=SRV:_h._tcp.example.test", "HEALTHCHECK_DNS_REFRESH": "1ns"},
         "HEALTHCHECK_DNS_REFRESH: must be at least 10ms"),
        ({"HEALTHCHECK_HTTP_SD_URL": "http://127.0.0.1:1/sd", "HEALTHCHECK_HTTP_SD_REFRESH": "25h"},
         "HEALTHCHECK_HTTP_SD_REFRESH: must be at most 24h"),
        ({"HEALTHCHECK_AGENT_LISTEN_ADDRESS": "127.0.0.1:0", "HEALTHCHECK_AGENT_TIMEOUT": "2h"},
         "HEALTHCHECK_AGENT_TIMEOUT: must be at most 1h"),
        ({**HAPROXY, "HEALTHCHECK_HAPROXY_RELOAD_TIMEOUT": "2h"},
         "HEALTHCHECK_HAPROXY_RELOAD_TIMEOUT: must be at most 1h"),
    ],
)  # fmt: skip
def test_out_of_range_values_are_refused_not_clamped(env: dict[str, str], message: str):
    with pytest.raises(ConfigError) as caught:
        load_settings({**BASE, **env})
    assert str(caught.value).startswith(message), str(caught.value)


def test_the_smallest_interval_is_accepted_as_is():
    assert load_settings({**BASE, "HEALTHCHECK_INTERVAL": "10ms"}).interval == 0.01
