"""Settings from HEALTHCHECK_* variables, duration parsing and the error messages."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from exporter.model import Config
from exporter.settings import (
    ConfigError,
    Settings,
    environment_variables,
    format_duration,
    load_settings,
    parse_duration,
)

SECONDS_PER_UNIT = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),
    "μs": Decimal("1e-6"),
    "ms": Decimal("1e-3"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
FIELD_NAMES = list(Settings.model_fields)


def config_error(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(environ)
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- parse_duration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("15s", 15.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("2.5s", 2.5),
        ("1m0.5s", 60.5),
        ("1h2m3s", 3723.0),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("250μs", 0.00025),
        ("1500ns", 0.0000015),
        (".5s", 0.5),
        ("1.5h", 5400.0),
    ],
)
def test_duration_accepts_go_style_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "seconds"), [("15", 15.0), ("0.5", 0.5), ("120", 120.0)])
def test_duration_accepts_plain_numbers_as_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_duration_strips_surrounding_whitespace() -> None:
    assert parse_duration("  1m30s\n") == 90.0


@pytest.mark.parametrize("text", ["", "   "])
def test_duration_rejects_empty_text(text: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["-1s", "-5", "-0.5m"])
def test_duration_rejects_negative(text: str) -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0", "0s", "0ms", "0h0m0s", "0.0"])
def test_duration_rejects_zero(text: str) -> None:
    with pytest.raises(ValueError, match="greater than zero"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["15x", "15sec", "1d", "10S"])
def test_duration_rejects_unknown_unit(text: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid duration '.*': unknown unit"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["15 s", "1m 30s"])
def test_duration_rejects_whitespace_inside(text: str) -> None:
    with pytest.raises(ValueError, match="whitespace"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["s", "ms", "1ms s"])
def test_duration_rejects_unit_without_number(text: str) -> None:
    with pytest.raises(ValueError, match=r"(expected a number|whitespace)"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["1.2.3s", ".", "..5s"])
def test_duration_rejects_malformed_number(text: str) -> None:
    with pytest.raises(ValueError, match="malformed number"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "+inf", "infinity"])
def test_duration_rejects_nan_and_infinity(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_duration_rejects_number_without_unit_after_a_unit() -> None:
    with pytest.raises(ValueError, match="missing unit after '30'"):
        parse_duration("1m30")


def test_duration_rejects_values_too_large_for_a_float() -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_duration("9" * 400 + "h")


_components = st.tuples(
    st.integers(min_value=0, max_value=10**6),
    st.none() | st.integers(min_value=0, max_value=999),
    st.sampled_from(sorted(SECONDS_PER_UNIT)),
)


@given(st.lists(_components, min_size=1, max_size=4))
def test_duration_round_trips_generated_go_style_durations(
    components: list[tuple[int, int | None, str]],
) -> None:
    text = ""
    expected = Decimal(0)
    for whole, fraction, unit in components:
        number = str(whole) if fraction is None else f"{whole}.{fraction:03d}"
        text += number + unit
        expected += Decimal(number) * SECONDS_PER_UNIT[unit]
    assume(expected > 0)
    assert math.isclose(parse_duration(text), float(expected), rel_tol=1e-12)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (15, "15s"),
        (90, "1m30s"),
        (0.5, "500ms"),
        (3600, "1h"),
        (3600.5, "1h0.5s"),
        (0.0015, "1.5ms"),
    ],
)
def test_format_duration_writes_go_style_text(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=1, max_value=10**15))
def test_formatted_durations_parse_back(nanoseconds: int) -> None:
    seconds = nanoseconds / 1e9
    assert math.isclose(parse_duration(format_duration(seconds)), seconds, rel_tol=1e-12)


# --- load_settings: sources ----------------------------------------------------------------------


def test_defaults_match_the_seed_config() -> None:
    settings = load_settings({})
    assert settings.monitor_config() == Config()
    assert settings.listen_address == "0.0.0.0:9898"
    assert settings.log_level == "info"
    assert settings.log_format == "logfmt"
    assert settings.targets is None
    assert settings.targets_file is None


def test_monitor_config_carries_the_configured_values() -> None:
    settings = load_settings(
        {
            "HEALTHCHECK_ENABLED": "false",
            "HEALTHCHECK_INTERVAL": "1m",
            "HEALTHCHECK_TIMEOUT": "2.5s",
            "HEALTHCHECK_FALL": "5",
            "HEALTHCHECK_RISE": "4",
            "HEALTHCHECK_MAX_CONCURRENT": "7",
        }
    )
    assert settings.monitor_config() == Config(
        enabled=False, interval=60.0, fall=5, rise=4, timeout=2.5, max_concurrent=7
    )


def test_variable_names_are_case_insensitive() -> None:
    settings = load_settings({"healthcheck_fall": "6", "HealthCheck_Rise": "5"})
    assert (settings.fall, settings.rise) == (6, 5)


def test_given_mapping_is_the_only_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHCHECK_FALL", "7")
    monkeypatch.setenv("HEALTHCHECK_INTERVALL", "1s")  # would be an error if it were read
    assert load_settings({}).fall == 3


def test_process_environment_is_read_when_no_mapping_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HEALTHCHECK_FALL", "7")
    assert load_settings().fall == 7


def test_dotenv_file_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("HEALTHCHECK_FALL=9\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings({}).fall == 3


def test_empty_variable_counts_as_unset() -> None:
    settings = load_settings({"HEALTHCHECK_FALL": "", "HEALTHCHECK_TARGETS": ""})
    assert settings.fall == 3
    assert settings.targets is None


def test_other_variables_are_ignored() -> None:
    settings = load_settings({"PATH": "/bin", "HEALTHCHECKS_FOO": "1", "MY_HEALTHCHECK_X": "1"})
    assert settings.fall == 3


def test_settings_accept_keyword_arguments() -> None:
    arguments: dict[str, Any] = {"interval": "1m30s", "timeout": 0.25, "fall": 1}
    settings = Settings(**arguments)
    assert (settings.interval, settings.timeout, settings.fall) == (90.0, 0.25, 1)


# --- load_settings: values -----------------------------------------------------------------------


def test_durations_are_parsed_from_go_style_text() -> None:
    settings = load_settings({"HEALTHCHECK_INTERVAL": "1m30s", "HEALTHCHECK_TIMEOUT": "500ms"})
    assert (settings.interval, settings.timeout) == (90.0, 0.5)


def test_malformed_duration_is_named() -> None:
    message = config_error({"HEALTHCHECK_INTERVAL": "15x"})
    assert message.startswith("HEALTHCHECK_INTERVAL: invalid duration '15x': unknown unit 'x'")


@pytest.mark.parametrize("value", ["0", "0s", "-1s"])
def test_timeout_must_be_positive(value: str) -> None:
    assert config_error({"HEALTHCHECK_TIMEOUT": value}).startswith(
        f"HEALTHCHECK_TIMEOUT: invalid duration '{value}'"
    )


def test_fall_below_one_is_rejected() -> None:
    assert (
        config_error({"HEALTHCHECK_FALL": "0"}) == "HEALTHCHECK_FALL: must be at least 1 (got '0')"
    )


def test_rise_below_one_is_rejected() -> None:
    assert config_error({"HEALTHCHECK_RISE": "-2"}) == (
        "HEALTHCHECK_RISE: must be at least 1 (got '-2')"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "HEALTHCHECK_MAX_CONCURRENT: must be at least 1 (got '0')"),
        ("100001", "HEALTHCHECK_MAX_CONCURRENT: must be at most 100000 (got '100001')"),
    ],
)
def test_max_concurrent_out_of_range_is_rejected(value: str, message: str) -> None:
    assert config_error({"HEALTHCHECK_MAX_CONCURRENT": value}) == message


@pytest.mark.parametrize("value", ["1", "100000"])
def test_max_concurrent_accepts_its_bounds(value: str) -> None:
    assert load_settings({"HEALTHCHECK_MAX_CONCURRENT": value}).max_concurrent == int(value)


@pytest.mark.parametrize("value", ["three", "2.5", "0x10"])
def test_int_variable_must_be_a_whole_number(value: str) -> None:
    assert config_error({"HEALTHCHECK_FALL": value}) == (
        f"HEALTHCHECK_FALL: must be a whole number (got '{value}')"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[(value, True) for value in ("true", "TRUE", "yes", "on", "1")],
        *[(value, False) for value in ("false", "no", "off", "0")],
    ],
)
def test_bool_variable_accepts_common_spellings(value: str, expected: bool) -> None:
    assert load_settings({"HEALTHCHECK_ENABLED": value}).enabled is expected


def test_unparseable_bool_is_rejected() -> None:
    assert config_error({"HEALTHCHECK_ENABLED": "maybe"}).startswith(
        "HEALTHCHECK_ENABLED: must be a boolean"
    )


@pytest.mark.parametrize("value", ["DEBUG", "Info", " warning ", "error"])
def test_log_level_is_case_insensitive_and_stored_lowercase(value: str) -> None:
    assert load_settings({"HEALTHCHECK_LOG_LEVEL": value}).log_level == value.strip().lower()


def test_unknown_log_level_is_rejected() -> None:
    assert config_error({"HEALTHCHECK_LOG_LEVEL": "verbose"}) == (
        "HEALTHCHECK_LOG_LEVEL: must be one of 'debug', 'info', 'warning' or 'error'"
        " (got 'verbose')"
    )


@pytest.mark.parametrize("value", ["logfmt", "json", "JSON"])
def test_log_format_accepts_logfmt_and_json(value: str) -> None:
    assert load_settings({"HEALTHCHECK_LOG_FORMAT": value}).log_format == value.lower()


def test_unknown_log_format_is_rejected() -> None:
    assert config_error({"HEALTHCHECK_LOG_FORMAT": "text"}).startswith(
        "HEALTHCHECK_LOG_FORMAT: must be one of 'logfmt' or 'json'"
    )


def test_targets_text_and_file_are_kept_as_given() -> None:
    assert load_settings({"HEALTHCHECK_TARGETS": "web=a:80"}).targets == "web=a:80"
    settings = load_settings({"HEALTHCHECK_TARGETS_FILE": "/etc/targets.yml"})
    assert settings.targets_file == Path("/etc/targets.yml")


def test_targets_and_targets_file_may_be_set_together() -> None:
    settings = load_settings(
        {"HEALTHCHECK_TARGETS": "web=a:80", "HEALTHCHECK_TARGETS_FILE": "/etc/targets.yml"}
    )
    assert (settings.targets, settings.targets_file) == ("web=a:80", Path("/etc/targets.yml"))


# --- listen address ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("0.0.0.0:9898", "0.0.0.0", 9898),
        (":9898", None, 9898),
        ("[::1]:8080", "::1", 8080),
        ("[::]:9898", "::", 9898),
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("localhost:65535", "localhost", 65535),
        (" 10.0.0.1:80 ", "10.0.0.1", 80),
    ],
)
def test_listen_address_forms(address: str, host: str | None, port: int) -> None:
    settings = load_settings({"HEALTHCHECK_LISTEN_ADDRESS": address})
    assert (settings.listen_host, settings.listen_port) == (host, port)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("9898", "missing ':port'"),
        ("::1:9898", "put IPv6 addresses in brackets"),
        ("[::1]9898", "expected ':port' after ']'"),
        ("[::1:9898", "missing ']'"),
        ("[127.0.0.1]:80", "only IPv6 addresses go in brackets"),
        ("host:65536", "port 65536 out of range 0-65535"),
        ("host:-1", "port '-1' is not a number"),
        ("host:", "missing port"),
        ("bad host:80", "invalid host 'bad host'"),
    ],
)
def test_listen_address_rejects_malformed_values(address: str, reason: str) -> None:
    message = config_error({"HEALTHCHECK_LISTEN_ADDRESS": address})
    assert message.startswith(f"HEALTHCHECK_LISTEN_ADDRESS: invalid address {address!r}: ")
    assert reason in message


# --- unknown variables and error shape -----------------------------------------------------------


def test_unknown_healthcheck_variable_is_named_with_suggestion() -> None:
    assert config_error({"HEALTHCHECK_INTERVALL": "15s"}) == (
        "HEALTHCHECK_INTERVALL: unknown variable (did you mean HEALTHCHECK_INTERVAL?)"
    )


def test_unknown_lowercase_variable_is_named_as_written() -> None:
    assert config_error({"healthcheck_tiemout": "1s"}) == (
        "healthcheck_tiemout: unknown variable (did you mean HEALTHCHECK_TIMEOUT?)"
    )


def test_unknown_variable_without_close_match_lists_known_names() -> None:
    message = config_error({"HEALTHCHECK_XYZZY": "1"})
    assert message.startswith("HEALTHCHECK_XYZZY: unknown variable (known: HEALTHCHECK_ENABLED, ")
    assert "HEALTHCHECK_TARGETS_FILE" in message


def test_unknown_variable_is_rejected_even_when_empty() -> None:
    assert config_error({"HEALTHCHECK_FAL": ""}).startswith("HEALTHCHECK_FAL: unknown variable")


def test_variable_set_twice_in_different_case_is_rejected() -> None:
    message = config_error({"HEALTHCHECK_FALL": "2", "healthcheck_fall": "4"})
    assert message == "healthcheck_fall: set twice with different case (also as HEALTHCHECK_FALL)"


def test_several_errors_are_reported_on_one_line() -> None:
    message = config_error({"HEALTHCHECK_FALL": "0", "HEALTHCHECK_RISE": "x"})
    assert message == (
        "HEALTHCHECK_FALL: must be at least 1 (got '0');"
        " HEALTHCHECK_RISE: must be a whole number (got 'x')"
    )


def test_values_with_newlines_are_quoted_on_one_line() -> None:
    assert config_error({"HEALTHCHECK_FALL": "1\n2"}) == (
        "HEALTHCHECK_FALL: must be a whole number (got '1\\n2')"
    )


def test_config_error_collapses_line_breaks() -> None:
    assert str(ConfigError("first\nsecond")) == "first second"


@given(st.sampled_from(FIELD_NAMES), st.text(max_size=30))
def test_any_value_gives_settings_or_a_one_line_error_naming_the_variable(
    field: str, value: str
) -> None:
    variable = "HEALTHCHECK_" + field.upper()
    try:
        load_settings({variable: value})
    except ConfigError as exc:
        message = str(exc)
    else:
        return
    assert "\n" not in message
    assert message.startswith(f"{variable}: ")


# --- documentation of the variables --------------------------------------------------------------


def test_every_field_is_documented_as_a_variable() -> None:
    variables = environment_variables()
    assert [variable.name for variable in variables] == [
        "HEALTHCHECK_" + name.upper() for name in FIELD_NAMES
    ]
    for variable in variables:
        assert variable.description
        assert "\n" not in variable.description


def test_documented_defaults_are_written_as_a_user_would() -> None:
    defaults = {variable.name: variable.default for variable in environment_variables()}
    assert defaults["HEALTHCHECK_ENABLED"] == "true"
    assert defaults["HEALTHCHECK_INTERVAL"] == "15s"
    assert defaults["HEALTHCHECK_TIMEOUT"] == "5s"
    assert defaults["HEALTHCHECK_FALL"] == "3"
    assert defaults["HEALTHCHECK_LISTEN_ADDRESS"] == "0.0.0.0:9898"
    assert defaults["HEALTHCHECK_TARGETS"] is None


def test_documented_defaults_load_as_the_defaults() -> None:
    environ = {
        variable.name: variable.default
        for variable in environment_variables()
        if variable.default is not None
    }
    assert load_settings(environ) == load_settings({})
