"""grafana/: the dashboard's structure, its provisioning, every query against real Prometheus."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml

from tests.observability import (
    ROOT,
    SESSION_LOOP,
    Demo,
    Prometheus,
    eventually,
    has_finite_value,
    unknown_metrics,
)

pytest_plugins = ("tests.observability",)

GRAFANA = ROOT / "grafana"
DASHBOARD_FILE = GRAFANA / "dashboards" / "healthcheck.json"
DASHBOARD: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
PANELS = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
VARIABLES = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
DATASOURCE_REFS = {"${datasource}", "$datasource"}
GRID_COLUMNS = 24

# Grafana's macros as Grafana would fill them for a 1 s scrape interval and a short time range.
MACROS = {
    "__rate_interval": "15s",
    "__interval": "1s",
    "__interval_ms": "1000",
    "__range": "1m",
    "__range_s": "60",
    "__range_ms": "60000",
}
# Variable values as Grafana formats them for Prometheus: All (allValue) and a multi-value pick.
SELECTIONS = {
    "all": {"app": ".*", "target": ".*"},
    "picked": {"app": "(web|api)", "target": "(web-healthy|api-dead)"},
}
VARIABLE_REF = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def queries(panel: Mapping[str, Any]) -> list[str]:
    return [target["expr"] for target in panel.get("targets", [])]


def all_queries() -> Iterator[str]:
    for panel in PANELS:
        yield from queries(panel)


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with Grafana's macros and the dashboard's variables replaced by `values`."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in MACROS:
            return MACROS[name]
        if name in values:
            return values[name]
        raise AssertionError(f"unknown variable ${name} in {expr}")

    return VARIABLE_REF.sub(value, expr)


def panel_id(panel: Mapping[str, Any]) -> str:
    return f"{panel['id']}-{panel['title']}"


def is_haproxy(panel: Mapping[str, Any]) -> bool:
    return any("healthcheck_haproxy_" in expr for expr in queries(panel))


# -- structure -------------------------------------------------------------------------------


def test_dashboard_has_a_stable_uid_and_title():
    assert DASHBOARD["uid"] == "healthcheck-exporter"
    assert DASHBOARD["title"] == "Health checks"
    assert DASHBOARD["id"] is None  # Grafana assigns ids; a fixed one clashes on import


def test_panel_ids_are_unique():
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def test_panels_fit_the_grid_without_overlapping():
    cells: dict[tuple[int, int], str] = {}
    for panel in DASHBOARD["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] < pos["x"] + pos["w"] <= GRID_COLUMNS, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                other = cells.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']!r} overlaps {other!r}"


def test_every_panel_and_query_uses_the_datasource_variable():
    for panel in PANELS:
        assert panel["datasource"]["uid"] in DATASOURCE_REFS, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in DATASOURCE_REFS, panel["title"]
    for name in ("app", "target"):
        assert VARIABLES[name]["datasource"]["uid"] in DATASOURCE_REFS


def test_hand_import_asks_for_a_prometheus_datasource():
    (source,) = DASHBOARD["__inputs"]
    assert (source["type"], source["pluginId"]) == ("datasource", "prometheus")
    # On import Grafana replaces ${DS_PROMETHEUS}: the datasource variable starts on the choice.
    assert VARIABLES["datasource"]["current"]["value"] == "${" + source["name"] + "}"
    required = {r["id"] for r in DASHBOARD["__requires"] if r["type"] == "panel"}
    assert {panel["type"] for panel in PANELS} == required


def test_variables_are_datasource_app_and_multi_value_target():
    assert list(VARIABLES) == ["datasource", "app", "target"]
    assert (VARIABLES["datasource"]["type"], VARIABLES["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    for name in ("app", "target"):
        variable = VARIABLES[name]
        assert variable["type"] == "query"
        assert variable["definition"].startswith("label_values(")
        assert variable["definition"].endswith(f", {name})")
        assert variable["query"]["query"] == variable["definition"]
        assert variable["includeAll"] and variable["allValue"] == ".*"
    assert VARIABLES["target"]["multi"] is True
    assert '{app=~"$app"}' in VARIABLES["target"]["definition"]  # targets of the chosen apps


def test_queries_match_variables_as_regexes():
    # `="$target"` would break as soon as two targets are picked (Grafana sends `(a|b)`).
    for expr in all_queries():
        for name in ("app", "target"):
            uses = expr.count(f"${name}")
            assert uses == expr.count(f'{name}=~"${name}"'), expr


def test_dashboard_shows_what_the_issue_asks_for():
    def panels_using(kind: str, pattern: str) -> list[str]:
        return [
            p["title"]
            for p in PANELS
            if p["type"] == kind and any(re.search(pattern, e) for e in queries(p))
        ]

    assert panels_using("stat", r"healthcheck_target_up")  # up/down now
    assert panels_using("state-timeline", r"^healthcheck_target_up\{")
    for quantile in ("0.5", "0.95", "0.99"):
        assert panels_using("timeseries", rf"histogram_quantile\({quantile}, .*check_duration")
    assert panels_using("heatmap", r"healthcheck_check_duration_seconds_bucket")
    assert panels_using("timeseries", r"sum by \(result\).*healthcheck_checks_total")
    assert panels_using("timeseries", r"healthcheck_state_transitions_total")
    for haproxy in ("config_writes_total", "reloads_total", "config_check_failures_total"):
        assert panels_using("timeseries", rf"healthcheck_haproxy_{haproxy}")
    for exporter_health in ("schedule_lag_seconds_bucket", "process_cpu", "process_resident"):
        assert panels_using("timeseries", exporter_health)


def test_provisioning_serves_the_dashboards_directory_from_prometheus():
    provisioning = GRAFANA / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    providers = yaml.safe_load((provisioning / "dashboards" / "healthcheck.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    # The docs mount grafana/dashboards/ at the provider's path.
    mount = f"grafana/dashboards:{provider['options']['path']}"
    assert mount in (ROOT / "docs" / "observability.md").read_text()


# -- against Prometheus scraping the demo ----------------------------------------------------


@SESSION_LOOP
async def test_dashboard_reads_only_metrics_the_exporter_exposes(demo: Demo):
    assert await unknown_metrics(all_queries(), demo) == set()


@SESSION_LOOP
async def test_variable_queries_list_the_demo_apps_and_targets(prometheus: Prometheus):
    expected = {"app": {"web", "api"}, "target": {"web-healthy", "web-flapping", "api-dead"}}
    for name, values in expected.items():
        selector, label = re.fullmatch(
            r"label_values\((.+), (\w+)\)", VARIABLES[name]["definition"]
        ).groups()
        series = substitute(selector, SELECTIONS["all"])
        found = await prometheus.api(f"label/{label}/values", **{"match[]": series})
        assert set(found) == values


@SESSION_LOOP
@pytest.mark.parametrize("panel", PANELS, ids=panel_id)
async def test_panel_queries_return_data_from_the_demo(
    panel: dict[str, Any], prometheus: Prometheus, demo: Demo
):
    if is_haproxy(panel) and "healthcheck_haproxy_config_writes_total" not in (
        await demo.sample_names()
    ):
        pytest.fail(
            "the HAProxy writer has not landed in the demo: its /metrics has no "
            "healthcheck_haproxy_config_writes_total, so this panel cannot show data"
        )
    for selection, values in SELECTIONS.items():
        for expr in queries(panel):
            query = substitute(expr, values)
            await eventually(
                functools.partial(prometheus.query, query),
                has_finite_value,
                what=f"data for {query!r} ({selection})",
            )
