"""alerts/healthcheck.rules.yml: promtool, its unit tests, real Prometheus and Alertmanager."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability import (
    RULES,
    SESSION_LOOP,
    Demo,
    Prometheus,
    Webhook,
    eventually,
    promtool,
    require_tool,
    run_tool,
    unknown_metrics,
)

pytest_plugins = ("tests.observability",)

UNIT_TESTS = sorted((RULES.parent / "tests").glob("*.yml"))
RUNBOOKS = RULES.parent.parent / "docs" / "runbooks.md"
SEVERITIES = {"critical", "warning"}


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_anchors() -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    return {github_anchor(h) for h in headings}


async def test_promtool_check_rules_passes():
    code, out = await run_tool(promtool(), "check", "rules", str(RULES))
    assert code == 0, out
    assert f"SUCCESS: {len(alert_rules())} rules found" in out, out


async def test_promtool_unit_tests_pass():
    assert UNIT_TESTS, "no unit tests under alerts/tests/"
    code, out = await run_tool(promtool(), "test", "rules", *map(str, UNIT_TESTS))
    assert code == 0, out


def test_every_alert_is_unit_tested_firing_and_staying_quiet():
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown staying quiet"


def test_every_alert_has_severity_text_and_a_runbook_section():
    anchors = runbook_anchors()
    for rule in alert_rules():
        name, annotations = rule["alert"], rule["annotations"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        # Whoever is paged must see which app, target or exporter the alert is about.
        assert re.search(r"\$labels\.(app|target|instance)", annotations["description"]), name
        url, _, anchor = annotations["runbook_url"].partition("#")
        assert url.endswith("docs/runbooks.md"), name
        assert anchor == github_anchor(name) and anchor in anchors, f"{name}: no runbook section"


def test_group_and_alert_names_are_unique():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    names = [group["name"] for group in groups]
    assert len(names) == len(set(names))
    alerts = [rule["alert"] for rule in alert_rules()]
    assert len(alerts) == len(set(alerts))


@SESSION_LOOP
async def test_rules_read_only_metrics_the_exporter_exposes(demo: Demo):
    assert await unknown_metrics((rule["expr"] for rule in alert_rules()), demo) == set()


@SESSION_LOOP
async def test_promtool_check_metrics_reports_nothing_on_the_demo(demo: Demo):
    body = await demo.exporter.metrics()
    assert "healthcheck_target_up{" in body
    assert await run_tool(promtool(), "check", "metrics", stdin=body.encode()) == (0, "")


@SESSION_LOOP
async def test_rules_evaluate_cleanly_on_the_demo_and_fire_for_its_dead_backend(
    prometheus: Prometheus,
):
    # api-dead never answers: its target and its one-target app must alert; the exporter itself
    # and the HAProxy writer (healthy, or absent) must not.
    def firing(alerts: list[dict[str, Any]]) -> set[tuple[str, str]]:
        return {
            (a["labels"]["alertname"], a["labels"].get("target") or a["labels"].get("app", ""))
            for a in alerts
            if a["state"] == "firing"
        }

    expected = {("HealthcheckTargetDown", "api-dead"), ("HealthcheckAppNoHealthyTarget", "api")}
    alerts = await eventually(
        lambda: prometheus.api("alerts"),
        lambda data: expected <= firing(data["alerts"]),
        what=f"alerts {expected}",
    )
    quiet_prefixes = ("HealthcheckExporter", "HealthcheckHAProxy", "HealthcheckChecksSlow")
    assert not [a for a, _ in firing(alerts["alerts"]) if a.startswith(quiet_prefixes)]
    rules = await prometheus.api("rules")
    unhealthy = [
        (rule["name"], rule.get("lastError"))
        for group in rules["groups"]
        for rule in group["rules"]
        if rule["health"] != "ok"
    ]
    assert unhealthy == []


@SESSION_LOOP
async def test_killed_backend_alerts_through_alertmanager_and_resolves(
    demo: Demo, webhook: Webhook
):
    labels = {"alertname": "HealthcheckTargetDown", "app": "web", "target": "web-healthy"}
    await demo.switch("web-healthy", "stop")
    try:
        alert = await webhook.wait_for_alert("firing", labels)
    finally:
        await demo.switch("web-healthy", "start")  # the other tests share the demo
    assert alert["labels"]["severity"] == "warning"
    assert alert["labels"]["address"].startswith("127.0.0.1:")
    assert "web-healthy" in alert["annotations"]["summary"]
    assert alert["annotations"]["runbook_url"].endswith("#healthchecktargetdown")
    await webhook.wait_for_alert("resolved", labels)


def test_a_missing_tool_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(AssertionError, match="missing in CI"):
        require_tool("no-such-tool-here", install="nothing")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_tool("no-such-tool-here", install="nothing")


def test_unit_tests_refer_to_the_rules_file():
    for path in UNIT_TESTS:
        files = yaml.safe_load(path.read_text())["rule_files"]
        assert [(path.parent / f).resolve() for f in files] == [Path(RULES).resolve()]
