"""Agent mode: the agent's answers over real loopback sockets, its settings, and the HAProxy file
it goes with (every target, agent-check options, changed by membership only)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exporter.haproxy.agent import LINE_LIMIT, AgentServer, AnswerFromState
from exporter.haproxy.membership import MembershipFile
from exporter.haproxy.render import (
    AGENT_HEADER,
    AgentCheck,
    TemplateRenderer,
    build_backends,
    haproxy_time,
    render_default,
)
from exporter.haproxy.state_file import StateSavingReloader
from exporter.haproxy.updater import HAProxyOptions, HAProxyUpdater
from exporter.model import FailureReason, Result, Target, TargetState
from exporter.settings import ConfigError, load_settings
from exporter.shard import Shard, shard_of
from exporter.state import StateTracker
from tests.process import run_cli

DASHBOARD = Path(__file__).parent.parent / "grafana" / "dashboards" / "healthcheck.json"
WEB1 = Target("web-1", "web", "127.0.0.1", "8081")
WEB2 = Target("web-2", "web", "127.0.0.1", "8082")
NEW = Target("web-new", "web", "127.0.0.1", "8083")


def fail(target: Target, reason: FailureReason, status: int = 0) -> Result:
    return Result(target, False, status_code=status, reason=reason, checked_at=1.0)


def tracker_with_states() -> StateTracker:
    """web-1 healthy (checked), web-2 down on a 503, web-new known but not checked yet."""
    tracker = StateTracker(fall=1, rise=1)
    tracker.apply_targets([WEB1, WEB2, NEW])
    tracker.record_result(Result(WEB1, True, 200, checked_at=1.0))
    tracker.record_result(fail(WEB2, FailureReason.HTTP_STATUS, 503))
    return tracker


@pytest.fixture
async def agent() -> AsyncIterator[tuple[AgentServer, int]]:
    tracker = tracker_with_states()
    server = AgentServer(AnswerFromState(tracker), logging.getLogger("test.agent"), timeout=0.3)
    bound = await server.start("127.0.0.1", 0)
    try:
        yield server, int(bound[0].rsplit(":", 1)[1])
    finally:
        await server.stop()


async def ask(port: int, data: bytes, close_after_send: bool = False) -> bytes:
    """Send `data` as HAProxy would and read until the agent closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if close_after_send:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return b"<reset>"
    finally:
        writer.close()


async def test_agent_answers_each_target_state(agent: tuple[AgentServer, int]):
    server, port = agent
    assert await ask(port, b"web-1\n") == b"up\n"
    assert await ask(port, b"web-2\r\n") == b"down #http_status 503\n"
    assert await ask(port, b"web-2\r") == b"down #http_status 503\n"
    assert server.stats.requests["up"] == 1
    assert server.stats.requests["down"] == 2


async def test_agent_leaves_haproxy_alone_for_an_unchecked_target(
    agent: tuple[AgentServer, int],
):
    """An empty line has no state word: HAProxy keeps the server's state (tested on 2.6 in
    test_agent_e2e), so a restarted exporter never says `up` for what it has not checked."""
    server, port = agent
    assert await ask(port, b"web-new\n") == b"\n"
    assert server.stats.requests["pending"] == 1


def test_up_is_said_only_once_the_checks_confirm_it():
    """After a restart (every target back in the initial state), a failure or two below `fall`
    must not turn into an `up`: nothing changes until the thresholds say something."""
    tracker = StateTracker(fall=3, rise=2)
    tracker.apply_targets([WEB1])
    answer = AnswerFromState(tracker)
    ok = Result(WEB1, True, 200, checked_at=1.0)
    refused = fail(WEB1, FailureReason.CONNECTION_REFUSED)
    steps = [
        (refused, "pending"),  # UP 1/3 from the initial state: not verified
        (ok, "pending"),  # one success, rise is 2
        (ok, "up"),  # confirmed
        (refused, "up"),  # UP 1/3 after confirmation: still up (sticky)
        (refused, "up"),
        (refused, "down"),  # fall reached
        (ok, "down"),  # DOWN 1/2
        (ok, "up"),
    ]
    for result, expected in steps:
        tracker.record_result(result)
        assert answer(WEB1.id)[0] == expected, tracker.get_entry(WEB1.id)
    assert answer(WEB1.id) == ("up", b"up\n")
    tracker.apply_targets([])
    assert answer(WEB1.id) == ("unknown", b"\n")
    tracker.apply_targets([WEB1])  # back again: a new entry, confirmed anew
    tracker.record_result(ok)
    assert answer(WEB1.id)[0] == "pending"
    for _ in range(3):
        tracker.record_result(refused)
    assert answer(WEB1.id) == ("down", b"down #connection_refused\n")


async def test_unknown_id_changes_nothing_and_is_logged_once_a_minute(
    agent: tuple[AgentServer, int], caplog: pytest.LogCaptureFixture
):
    server, port = agent
    with caplog.at_level(logging.WARNING, "test.agent"):
        for target_id in (b"nope-1", b"nope-2", b"nope-3"):
            assert await ask(port, target_id + b"\n") == b"\n"
    assert server.stats.requests["unknown"] == 3
    logged = [r for r in caplog.records if "unknown target id" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].__dict__["target"] == "nope-1"


async def test_a_line_sent_in_pieces_is_answered(agent: tuple[AgentServer, int]):
    _, port = agent
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for piece in (b"we", b"b-", b"1\n"):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.02)
    assert await asyncio.wait_for(reader.read(), 5) == b"up\n"
    writer.close()


@pytest.mark.parametrize(
    ("data", "close_after_send"),
    [
        (b"x" * LINE_LIMIT, False),  # no newline within the limit
        (b"x" * (LINE_LIMIT + 10) + b"\n", False),  # a newline, but too late
        (b"web-\xff1\n", False),  # not ASCII
        (b"web-1", True),  # closed before the line ended
        (b"", False),  # sends nothing: dropped after the timeout
    ],
    ids=["endless", "too-long", "not-ascii", "eof", "silent"],
)
async def test_bad_clients_are_dropped_without_an_answer(
    agent: tuple[AgentServer, int], data: bytes, close_after_send: bool
):
    server, port = agent
    answer = await ask(port, data, close_after_send)
    assert answer in (b"", b"<reset>")
    assert server.stats.requests["error"] == 1
    assert sum(server.stats.requests.values()) == 1
    assert await ask(port, b"web-1\n") == b"up\n"  # and the agent goes on serving


async def test_many_concurrent_clients_all_get_answers(agent: tuple[AgentServer, int]):
    server, port = agent
    answers = await asyncio.gather(*(ask(port, b"web-1\n") for _ in range(300)))
    assert set(answers) == {b"up\n"}
    assert server.stats.requests["up"] == 300


# -- the HAProxy file ---------------------------------------------------------------------------


def test_agent_options_point_each_server_at_the_agent_of_its_shard():
    agents = (("10.0.0.1", 9899), ("10.0.0.2", 9899), ("fd00::3", 9900))
    check = AgentCheck(agents, 2.0)
    for target_id in ("web-1", "web-2", "api-1", "api-7", "x"):
        host, port = agents[shard_of(target_id, 3)]
        assert check.server_options(target_id) == (
            f'agent-check agent-addr {host} agent-port {port} agent-send "{target_id}\\n"'
            " agent-inter 2s"
        )


@pytest.mark.parametrize(
    ("seconds", "text"), [(2.0, "2s"), (0.5, "500ms"), (1.25, "1250ms"), (0.0001, "1ms")]
)
def test_haproxy_time(seconds: float, text: str):
    assert haproxy_time(seconds) == text


def test_agent_file_lists_every_target_and_never_disables_one():
    check = AgentCheck((("127.0.0.1", 9899),), 0.5)
    states = [(WEB1, TargetState.HEALTHY), (WEB2, TargetState.HEALTHY)]
    text = render_default(build_backends(states, agent=check), "maxconn 10")
    assert re.findall(r"^    server .*$", text, re.MULTILINE) == [
        "    server web-1 127.0.0.1:8081 maxconn 10 agent-check agent-addr 127.0.0.1 agent-port"
        ' 9899 agent-send "web-1\\n" agent-inter 500ms',
        "    server web-2 127.0.0.1:8082 maxconn 10 agent-check agent-addr 127.0.0.1 agent-port"
        ' 9899 agent-send "web-2\\n" agent-inter 500ms',
    ]


class Fleet:
    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets

    def get_health_check_targets(self) -> list[Target]:
        return list(self.targets)


async def test_agent_file_changes_with_membership_never_with_health(tmp_path: Path):
    """The updater renders from MembershipFile (as the service wires it in agent mode): health
    flips write nothing; an added target is written within a period."""
    config = tmp_path / "backends.cfg"
    options = HAProxyOptions(config, agent=AgentCheck((("127.0.0.1", 9899),), 2.0))
    updater = HAProxyUpdater(options, logging.getLogger("test.agent"))
    provider = Fleet([WEB1, WEB2])
    membership = MembershipFile(provider, updater, logging.getLogger("test.agent"), period=0.05)
    updater.track(membership.states)
    await updater.start()
    task = asyncio.create_task(membership.run())
    try:
        deadline = time.monotonic() + 10
        while not config.exists():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        first = config.read_text()
        assert first.startswith(AGENT_HEADER)
        assert "server web-1 " in first and "server web-2 " in first
        await asyncio.sleep(0.2)  # several periods with the same targets
        assert updater.stats.writes == {"success": 1, "failure": 0, "unchanged": 0}
        await asyncio.to_thread(updater.on_health_change, [WEB1])  # a flip: same text
        assert updater.stats.writes["success"] == 1 and config.read_text() == first
        provider.targets = [WEB1, WEB2, NEW]
        while updater.stats.writes["success"] < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert "server web-new " in config.read_text()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await updater.stop()


# -- settings -----------------------------------------------------------------------------------

SHARDED = {
    "HEALTHCHECK_AGENT_LISTEN_ADDRESS": ":9899",
    "HEALTHCHECK_SHARD": "1/2",
    "HEALTHCHECK_HAPROXY_CONFIG": "/tmp/backends.cfg",
    "HEALTHCHECK_AGENT_SHARD_ADDRESSES": "10.0.0.1:9899, [fd00::2]:9899",
}


def test_sharded_agent_addresses_are_parsed_in_shard_order():
    settings = load_settings(SHARDED)
    assert settings.agent_addresses() == (("10.0.0.1", 9899), ("fd00::2", 9899))
    assert settings.agent_host_port() == (None, 9899)


def test_agent_address_defaults_to_a_specific_listen_address():
    env = {"HEALTHCHECK_AGENT_LISTEN_ADDRESS": "127.0.0.2:9899", "HEALTHCHECK_HAPROXY_CONFIG": "/f"}
    assert load_settings(env).agent_addresses() == (("127.0.0.2", 9899),)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"HEALTHCHECK_AGENT_INTER": "1s"},
            "HEALTHCHECK_AGENT_INTER: needs HEALTHCHECK_AGENT_LISTEN",
        ),
        (
            {"HEALTHCHECK_AGENT_LISTEN_ADDRESS": ":9899", "HEALTHCHECK_HAPROXY_CONFIG": "/f"},
            "HEALTHCHECK_AGENT_ADDRESS: required",
        ),
        (
            {"HEALTHCHECK_AGENT_LISTEN_ADDRESS": "127.0.0.1:0", "HEALTHCHECK_HAPROXY_CONFIG": "/f"},
            "HEALTHCHECK_AGENT_ADDRESS: required",
        ),
        (
            {"HEALTHCHECK_AGENT_LISTEN_ADDRESS": ":9899", "HEALTHCHECK_AGENT_ADDRESS": "[::]:1"},
            "HEALTHCHECK_AGENT_ADDRESS: invalid address '[::]:1': :: is a wildcard",
        ),
        (
            {"HEALTHCHECK_AGENT_LISTEN_ADDRESS": ":9899", "HEALTHCHECK_AGENT_ADDRESS": "h:99999"},
            "HEALTHCHECK_AGENT_ADDRESS: invalid address 'h:99999': port 99999 out of range",
        ),
        (
            {"HEALTHCHECK_AGENT_LISTEN_ADDRESS": "nohost"},
            "HEALTHCHECK_AGENT_LISTEN_ADDRESS: invalid address 'nohost'",
        ),
        (
            {"HEALTHCHECK_AGENT_LISTEN_ADDRESS": ":1", "HEALTHCHECK_AGENT_SHARD_ADDRESSES": "a:1"},
            "HEALTHCHECK_AGENT_SHARD_ADDRESSES: needs HEALTHCHECK_SHARD",
        ),
        (
            {**SHARDED, "HEALTHCHECK_AGENT_SHARD_ADDRESSES": "a:1,b:2,c:3"},
            "HEALTHCHECK_SHARD=1/2 needs 2 addresses, one per shard (got 3)",
        ),
        (
            {**SHARDED, "HEALTHCHECK_AGENT_SHARD_ADDRESSES": "a:1,:2"},
            "HEALTHCHECK_AGENT_SHARD_ADDRESSES: invalid address ':2': missing host",
        ),
        (
            {**SHARDED, "HEALTHCHECK_AGENT_SHARD_ADDRESSES": None},
            "HEALTHCHECK_AGENT_SHARD_ADDRESSES: required with HEALTHCHECK_SHARD",
        ),
        (
            {**SHARDED, "HEALTHCHECK_AGENT_ADDRESS": "10.0.0.1:9899"},
            "HEALTHCHECK_AGENT_ADDRESS: 10.0.0.1:9899 differs from entry 1",
        ),
        (
            {
                "HEALTHCHECK_AGENT_LISTEN_ADDRESS": "127.0.0.1:9899",
                "HEALTHCHECK_HAPROXY_CONFIG": "/f",
                "HEALTHCHECK_HAPROXY_RELOAD": "runtime-api",
                "HEALTHCHECK_HAPROXY_RUNTIME_SOCKET": "/s",
            },
            "HEALTHCHECK_HAPROXY_RELOAD: runtime-api sets server states itself",
        ),
    ],
)
def test_bad_agent_settings_are_named(env: dict[str, str | None], message: str):
    given = {k: v for k, v in env.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        load_settings(given)
    assert message in str(err.value)


async def test_bad_agent_settings_exit_2_at_startup():
    code, _, err = await run_cli(
        "validate",
        env={
            "HEALTHCHECK_TARGETS": "web=127.0.0.1:1",
            "HEALTHCHECK_AGENT_LISTEN_ADDRESS": ":9899",
            "HEALTHCHECK_SHARD": "0/2",
            "HEALTHCHECK_AGENT_SHARD_ADDRESSES": "127.0.0.1:1",
        },
    )
    assert code == 2
    assert "HEALTHCHECK_AGENT_SHARD_ADDRESSES: HEALTHCHECK_SHARD=0/2 needs 2 addresses" in err


async def test_an_agent_port_in_use_exits_2_naming_the_variable():
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        code, _, err = await run_cli(
            env={
                "HEALTHCHECK_TARGETS": "web=127.0.0.1:1",
                "HEALTHCHECK_AGENT_LISTEN_ADDRESS": f"127.0.0.1:{port}",
            }
        )
    finally:
        blocker.close()
    assert code == 2
    assert f"HEALTHCHECK_AGENT_LISTEN_ADDRESS: cannot listen on 127.0.0.1:{port}" in err


def test_shard_of_the_agent_file_matches_the_checking_replica():
    """The file's agent for a target is the replica whose ShardedProvider keeps it."""
    check = AgentCheck((("a", 1), ("b", 2)), 2.0)
    for i in range(50):
        target = Target(f"t-{i}", "web", "127.0.0.1", "80")
        owner = next(k for k in range(2) if Shard(k, 2).keeps(target))
        assert f"agent-addr {'ab'[owner]} agent-port {owner + 1} " in check.server_options(
            target.id
        )


@pytest.mark.parametrize(
    "metric", ["healthcheck_agent_requests_total", "healthcheck_passive_triggers_total"]
)
def test_dashboard_shows_agent_and_passive_metrics_in_the_agent_range(metric: str):
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [
        p for p in dashboard["panels"] if any(metric in t["expr"] for t in p.get("targets", []))
    ]
    assert panels and all(200 <= p["id"] <= 219 for p in panels)


def test_a_template_gets_the_agent_options_and_the_agent_header(tmp_path: Path):
    template = tmp_path / "backends.j2"
    template.write_text(
        "{{ header }}{% for b in backends %}{% for s in b.servers %}"
        "server {{ s.name }} {{ s.address }} {{ s.agent }} {{ agent_mode }}\n"
        "{% endfor %}{% endfor %}"
    )
    check = AgentCheck((("127.0.0.1", 9899),), 2.0)
    backends = build_backends([(WEB1, TargetState.HEALTHY)], agent=check)
    assert TemplateRenderer(template).render(backends, True, agent_mode=True) == (
        AGENT_HEADER + "server web-1 127.0.0.1:8081 " + check.server_options("web-1") + " True\n"
    )


# -- the server state file (closes the window after a reload) ------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "HEALTHCHECK_HAPROXY_SERVER_STATE_FILE: needs HEALTHCHECK_HAPROXY_RUNTIME_SOCKET"),
        (
            {"HEALTHCHECK_HAPROXY_RUNTIME_SOCKET": "/s", "HEALTHCHECK_HAPROXY_RELOAD": "none"},
            "HEALTHCHECK_HAPROXY_SERVER_STATE_FILE: the exporter makes no reload",
        ),
    ],
)
def test_server_state_file_needs_the_socket_and_a_reload(
    tmp_path: Path, env: dict[str, str], message: str
):
    base = {
        "HEALTHCHECK_HAPROXY_CONFIG": str(tmp_path / "backends.cfg"),
        "HEALTHCHECK_HAPROXY_RELOAD": "signal",
        "HEALTHCHECK_HAPROXY_PIDFILE": "/run/haproxy.pid",
        "HEALTHCHECK_HAPROXY_SERVER_STATE_FILE": str(tmp_path / "server-state"),
    }
    with pytest.raises(ConfigError, match=message):
        load_settings({**base, **env})


def test_server_state_file_in_a_missing_directory_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"SERVER_STATE_FILE: directory .*/nope does not exist"):
        load_settings(
            {
                "HEALTHCHECK_HAPROXY_CONFIG": str(tmp_path / "backends.cfg"),
                "HEALTHCHECK_HAPROXY_RELOAD": "signal",
                "HEALTHCHECK_HAPROXY_PIDFILE": "/run/haproxy.pid",
                "HEALTHCHECK_HAPROXY_RUNTIME_SOCKET": "/s",
                "HEALTHCHECK_HAPROXY_SERVER_STATE_FILE": str(tmp_path / "nope" / "state"),
            }
        )


async def test_a_failed_state_save_removes_the_stale_file_and_still_reloads(tmp_path: Path):
    class Counting:
        mode = "signal"
        reloads = 0

        async def reload(self) -> None:
            self.reloads += 1

    stale = tmp_path / "server-state"
    stale.write_text("1\n# stale\n")
    inner = Counting()
    reloader = StateSavingReloader(inner, tmp_path / "no.sock", stale, 1.0, logging.getLogger("p"))
    await reloader.reload()
    assert inner.reloads == 1 and reloader.failures == 1 and not stale.exists()
