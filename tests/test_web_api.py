"""The JSON API of a real exporter process: targets and summaries, long polling, forced checks
through the admin API, and POST /-/reload."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from exporter.model import FailureReason, Result, Target
from exporter.state import StateTracker
from exporter.web import views
from tests.loop_turns import turns_during
from tests.process import ExporterProcess, exporter, value
from tests.servers import target_server

FAST = {"HEALTHCHECK_INTERVAL": "100ms", "HEALTHCHECK_TIMEOUT": "1s", "HEALTHCHECK_FALL": "2"}
# No scheduled check comes within half an interval of the first round: only forced ones count.
QUIET = {"HEALTHCHECK_INTERVAL": "1h", "HEALTHCHECK_TIMEOUT": "5s"}
JSON_HEADERS = {"Content-Type": "application/json"}


async def call(
    proc: ExporterProcess,
    method: str,
    path: str,
    body: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any, Mapping[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, proc.base_url + path, data=body, headers=headers) as resp,
    ):
        return resp.status, json.loads(await resp.text()), resp.headers


async def get_data(proc: ExporterProcess, path: str) -> Any:
    status, body, _ = await call(proc, "GET", path)
    assert status == 200 and body["status"] == "success", body
    return body["data"]


def by_id(data: Any) -> dict[str, Any]:
    return {t["id"]: t for t in data["targets"]}


async def wait_for_target(
    proc: ExporterProcess, target_id: str, field: str, wanted: object
) -> dict[str, Any]:
    for _ in range(300):  # bounded: 15 s
        target = by_id(await get_data(proc, "/api/v1/targets")).get(target_id)
        if target is not None and target[field] == wanted:
            return target
        await asyncio.sleep(0.05)
    raise AssertionError(f"{target_id} never had {field}={wanted!r}: {target}")


async def test_targets_api_lists_each_target_with_its_state_and_a_summary_per_app():
    async with target_server() as srv:
        entries = [
            {"id": "web-1", "app": "web", "ip": "127.0.0.1", "port": srv.port},
            {
                "id": "web-2",
                "app": "web",
                "ip": "127.0.0.1",
                "port": srv.port,
                "path": "/status/503",
            },
            {"id": "api-1", "app": "api", "ip": "127.0.0.1", "port": srv.port, "path": "/flip"},
        ]
        async with exporter({**FAST, "HEALTHCHECK_TARGETS": json.dumps(entries)}) as proc:
            down = await wait_for_target(proc, "web-2", "state", "unhealthy")
            assert down["progress"] == "DOWN" and down["checked"] is True
            assert down["consecutive_failures"] >= 2 and down["consecutive_successes"] == 0
            assert down["last_check"]["reason"] == "http_status"
            assert down["last_check"]["status_code"] == 503
            assert down["last_check"]["error"]
            assert down["last_change"] >= down["last_check"]["time"] - 60
            assert down["address"] == f"127.0.0.1:{srv.port}" and down["scheme"] == "http"
            assert down["path"] == "/status/503"
            assert set(down["history"]) == {"http_status"}
            up = by_id(await get_data(proc, "/api/v1/targets"))["web-1"]
            assert (up["state"], up["progress"], up["last_change"]) == ("healthy", "UP", None)
            assert up["last_check"]["status_code"] == 200 and up["last_check"]["reason"] is None
            assert up["history"][-1] == "success"

            data = await get_data(proc, "/api/v1/targets?app=web")
            assert sorted(by_id(data)) == ["web-1", "web-2"]
            assert data["apps"] == [
                {"app": "web", "total": 2, "healthy": 1, "unhealthy": 1, "checked": 2,
                 "panic": False}
            ]  # fmt: skip
            data = await get_data(proc, "/api/v1/targets?state=unhealthy")
            assert sorted(by_id(data)) == ["web-2"]
            assert [a["app"] for a in data["apps"]] == ["api", "web"]
            data = await get_data(proc, "/api/v1/targets?state=healthy&app=api")
            assert sorted(by_id(data)) == ["api-1"]

            status, body, _ = await call(proc, "GET", "/api/v1/targets?state=sick")
            assert status == 400 and body["status"] == "error"
            assert body["errorType"] == "bad_data" and "state" in body["error"]
            status, body, _ = await call(proc, "GET", "/api/v1/targets?index=-1")
            assert status == 400 and "index" in body["error"]
            status, body, _ = await call(proc, "GET", "/api/v1/targets?index=1&wait=soon")
            assert status == 400 and "wait" in body["error"]
            status, body, _ = await call(proc, "GET", "/api/v1/nothing")
            assert (status, body["status"], body["errorType"]) == (404, "error", "not_found")


async def test_long_poll_answers_when_a_target_moves_and_when_wait_runs_out():
    async with target_server() as srv:
        env = {**FAST, "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{srv.port}/flip"}
        async with exporter(env) as proc:
            await wait_for_target(proc, (await first_id(proc)), "checked", True)
            _, body, headers = await call(proc, "GET", "/api/v1/targets")
            index = body["data"]["index"]
            assert headers["X-Healthcheck-Index"] == str(index)
            # Nothing changes while the target stays up: the wait runs out, same index.
            data = await get_data(proc, f"/api/v1/targets?index={index}&wait=300ms")
            assert data["index"] == index and data["targets"][0]["progress"] == "UP"

            poll = asyncio.create_task(get_data(proc, f"/api/v1/targets?index={index}&wait=60s"))
            await asyncio.sleep(0.3)
            assert not poll.done()  # blocked: nothing has moved yet
            srv.flip.healthy = False
            data = await asyncio.wait_for(poll, 30)
            assert data["index"] > index
            assert data["targets"][0]["progress"] == "UP 1/2"  # the first failure moves it

            seen = [data["targets"][0]["progress"]]
            while seen[-1] != "DOWN":  # bounded: each poll returns on a change or in 10 s
                assert len(seen) < 10, seen
                data = await get_data(proc, f"/api/v1/targets?index={data['index']}&wait=10s")
                seen.append(data["targets"][0]["progress"])
            srv.flip.healthy = True
            while seen[-1] != "UP":
                assert len(seen) < 20, seen
                data = await get_data(proc, f"/api/v1/targets?index={data['index']}&wait=10s")
                seen.append(data["targets"][0]["progress"])
            assert seen == ["UP 1/2", "DOWN", "DOWN 1/2", "UP"]

            # An index from before a restart (ahead of ours) answers at once.
            data = await get_data(proc, f"/api/v1/targets?index={data['index'] + 1000}&wait=60s")
            assert data["index"] < index + 1000


async def first_id(proc: ExporterProcess) -> str:
    data = await get_data(proc, "/api/v1/targets")
    return str(data["targets"][0]["id"])


async def test_admin_check_is_forbidden_unless_enabled_and_reload_unless_lifecycle():
    async with target_server() as srv:
        env = {**QUIET, "HEALTHCHECK_TARGETS": f"web=127.0.0.1:{srv.port}"}
        async with exporter(env) as proc:
            status, body, _ = await call(proc, "POST", "/api/v1/admin/check", "{}", JSON_HEADERS)
            assert (status, body["status"], body["errorType"]) == (403, "error", "forbidden")
            assert "HEALTHCHECK_WEB_ENABLE_ADMIN_API" in body["error"]
            status, body, _ = await call(proc, "POST", "/-/reload")
            assert status == 403 and "HEALTHCHECK_WEB_ENABLE_LIFECYCLE" in body["error"]
            status, body, headers = await call(proc, "GET", "/api/v1/admin/check")
            assert status == 405 and body["status"] == "error" and "POST" in headers["Allow"]


async def test_admin_check_checks_now_counts_in_the_state_machine_and_joins_concurrent_calls():
    async with target_server() as srv:
        entries = [
            {"id": "slow-1", "app": "slow", "ip": "127.0.0.1", "port": srv.port,
             "path": "/slow?delay=0.5"},
            {"id": "web-1", "app": "web", "ip": "127.0.0.1", "port": srv.port, "path": "/t/w1"},
            {"id": "web-2", "app": "web", "ip": "127.0.0.1", "port": srv.port, "path": "/t/w2"},
        ]  # fmt: skip
        env = {
            **QUIET,
            "HEALTHCHECK_WEB_ENABLE_ADMIN_API": "true",
            "HEALTHCHECK_TARGETS": json.dumps(entries),
        }
        async with exporter(env) as proc:
            assert srv.hits == {"w1": 1, "w2": 1}  # the first round
            # Only JSON: an HTML form on another site cannot post it (CSRF).
            form = {"Content-Type": "application/x-www-form-urlencoded"}
            status, body, _ = await call(proc, "POST", "/api/v1/admin/check", "app=web", form)
            assert status == 415 and body["errorType"] == "bad_data"
            for bad, code in [
                ("[]", 400),
                ("{nope", 400),
                ('{"app": "web", "target": "web-1"}', 400),
                ('{"color": "red"}', 400),
                ('{"app": 3}', 400),
                ('{"app": "nope"}', 404),
            ]:
                status, body, _ = await call(proc, "POST", "/api/v1/admin/check", bad, JSON_HEADERS)
                assert (status, body["status"]) == (code, "error"), (bad, body)
            assert srv.hits == {"w1": 1, "w2": 1}

            status, body, _ = await call(
                proc, "POST", "/api/v1/admin/check", '{"app": "web"}', JSON_HEADERS
            )
            assert status == 200 and body["status"] == "success"
            assert sorted(by_id(body["data"])) == ["web-1", "web-2"]
            assert srv.hits == {"w1": 2, "w2": 2}
            assert all(t["consecutive_successes"] == 2 for t in body["data"]["targets"])
            _, body, _ = await call(
                proc, "POST", "/api/v1/admin/check", '{"target": "web-2"}', JSON_HEADERS
            )
            assert sorted(by_id(body["data"])) == ["web-2"] and srv.hits == {"w1": 2, "w2": 3}
            line = await proc.wait_for_log(r'forced check.*scope="target=web-2"')
            assert "client=127.0.0.1" in line

            body = await proc.metrics()
            before = value(body, "healthcheck_checks_total", target="slow-1", result="success")
            calls = [
                call(proc, "POST", "/api/v1/admin/check", '{"app": "slow"}', JSON_HEADERS)
                for _ in range(3)
            ]
            answers = await asyncio.gather(*calls)
            times = {a[1]["data"]["targets"][0]["last_check"]["time"] for a in answers}
            assert len(times) == 1  # one check, three answers
            body = await proc.metrics()
            after = value(body, "healthcheck_checks_total", target="slow-1", result="success")
            assert (before, after) == (1, 2)
            joined = [x for x in proc.log if "forced check" in x and 'scope="app=slow"' in x]
            assert sorted("joined=true" in x for x in joined) == [False, True, True], joined

            _, body, _ = await call(proc, "POST", "/api/v1/admin/check", "{}", JSON_HEADERS)
            assert len(body["data"]["targets"]) == 3 and srv.hits == {"w1": 3, "w2": 4}


async def test_reload_endpoint_rereads_the_targets_file_and_reports_a_bad_one(tmp_path: Path):
    async with target_server() as srv:
        targets = tmp_path / "targets.json"
        one = [{"id": "a", "app": "web", "ip": "127.0.0.1", "port": srv.port}]
        targets.write_text(json.dumps(one))
        env = {
            **QUIET,
            "HEALTHCHECK_WEB_ENABLE_LIFECYCLE": "true",
            "HEALTHCHECK_TARGETS_FILE": str(targets),
        }
        async with exporter(env) as proc:
            targets.write_text("[{broken")
            status, body, _ = await call(proc, "POST", "/-/reload")
            assert (status, body["status"], body["errorType"]) == (500, "error", "execution")
            assert str(targets) in body["error"]
            two = [*one, {"id": "b", "app": "web", "ip": "127.0.0.1", "port": srv.port}]
            targets.write_text(json.dumps(two))
            status, body, _ = await call(proc, "POST", "/-/reload")
            assert (status, body["status"]) == (200, "success")
            await wait_for_target(proc, "b", "app", "web")
            assert (await proc.get("/-/reload"))[0] == 405
            await proc.wait_for_log(r"reload requested over HTTP.*client=127.0.0.1")


async def test_an_app_in_panic_says_so_in_its_summary_and_sources_report_their_state():
    async with target_server() as srv:
        entries = [
            {"id": f"web-{i}", "app": "web", "ip": "127.0.0.1", "port": srv.port,
             "path": "/status/503"}
            for i in (1, 2)
        ] + [{"id": "api-1", "app": "api", "ip": "127.0.0.1", "port": srv.port}]  # fmt: skip
        env = {
            **FAST,
            "HEALTHCHECK_PANIC_THRESHOLD": "50%",
            "HEALTHCHECK_TARGETS": json.dumps(entries),
        }
        async with exporter(env) as proc:
            await wait_for_target(proc, "web-2", "state", "unhealthy")
            for _ in range(100):  # bounded: the panic view follows the next evaluation
                apps = {a["app"]: a for a in (await get_data(proc, "/api/v1/targets"))["apps"]}
                if apps["web"]["panic"]:
                    break
                await asyncio.sleep(0.05)
            assert apps["web"]["panic"] is True and apps["api"]["panic"] is False
            status = await get_data(proc, "/api/v1/status")
            assert [s["targets"] for s in status["sources"]] == [3]
            assert status["haproxy"] is None


# -- the targets' JSON at fleet scale (in process) ---------------------------------------------


def fleet(n: int) -> StateTracker:
    tracker = StateTracker(fall=2, rise=1)
    targets = [Target(f"t{i}", f"app{i % 7}", "10.0.0.1", str(1000 + i)) for i in range(n)]
    tracker.sync_targets(targets)
    for i, target in enumerate(targets):
        healthy = i % 3 != 0
        reason = None if healthy else FailureReason.TIMEOUT
        tracker.record_result(Result(target, healthy, 200 if healthy else 0, None, 0.01, reason))
    return tracker


async def test_targets_json_is_the_views_as_one_array_in_any_number_of_chunks():
    for n in (0, 1, views.CHUNK, 2 * views.CHUNK + 3):
        entries = fleet(n).entries()
        whole = json.loads(await views.targets_json(entries))
        assert whole == [views.target_view(e) for e in entries]


async def test_building_many_targets_json_yields_to_the_event_loop():
    entries = fleet(3 * views.CHUNK).entries()
    assert await turns_during(views.targets_json(entries)) >= 2  # other tasks ran between chunks
