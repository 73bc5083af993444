"""The chart's Grafana dashboards: one labelled ConfigMap each for the Grafana sidecar, JSON that
parses, panels with queries and units, and every query valid PromQL by promtool.

That every query names a metric the code exports is checked against a running suite's scrape in
tests/test_metrics_endpoints.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import helm_python
import pytest

from tests.helm.promql import (
    DASHBOARDS_DIR,
    Query,
    dashboard_queries,
    dashboards,
    grafana_to_promql,
    metric_names,
    name_patterns,
    panels,
    recording_rules_file,
)
from tests.helm.rendering import (
    NAMESPACE,
    PRODUCTION_VALUES,
    Manifest,
    load_values,
    of_kind,
    render,
)

ENABLED = {"grafanaDashboards": {"enabled": True}}
CONCERNS = {"overview", "ingest", "enrichment", "model", "gdpr", "signing"}


def dashboard_config_maps(manifests: list[Manifest]) -> dict[str, Manifest]:
    """Dashboard ConfigMaps by the one file each carries."""
    maps = [
        m
        for m in of_kind(manifests, "ConfigMap")
        if m["metadata"]["labels"]["app.kubernetes.io/component"] == "dashboards"
    ]
    by_file: dict[str, Manifest] = {}
    for config_map in maps:
        (file,) = config_map["data"]
        by_file[file] = config_map
    return by_file


def check_rules(promtool: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120, check=False
    )


# --- the chart ---------------------------------------------------------------------------------------


def test_no_dashboards_unless_enabled(manifests: list[Manifest], scenario: str) -> None:
    rendered = dashboard_config_maps(manifests)
    if scenario == "production":
        assert set(rendered) == set(dashboards())
    else:
        assert rendered == {}


def test_each_dashboard_is_a_configmap_the_grafana_sidecar_loads() -> None:
    rendered = dashboard_config_maps(render(ENABLED))
    assert set(rendered) == {f"{concern}.json" for concern in CONCERNS} == set(dashboards())
    for file, config_map in rendered.items():
        metadata = config_map["metadata"]
        assert metadata["name"] == f"awareness-dashboard-{file.removesuffix('.json')}"
        assert metadata["namespace"] == NAMESPACE
        assert metadata["labels"]["grafana_dashboard"] == "1"
        assert "annotations" not in metadata
        # Embedded as the file is, and it parses.
        assert config_map["data"][file] == (DASHBOARDS_DIR / file).read_text().rstrip("\n")
        assert json.loads(config_map["data"][file]) == dashboards()[file]


def test_label_annotations_and_namespace_are_configurable() -> None:
    values = {
        "grafanaDashboards": {
            "enabled": True,
            "labels": {"grafana_dashboard": None, "dashboards": "awareness"},
            "annotations": {"grafana_folder": "Security"},
            "namespace": "monitoring",
        }
    }
    rendered = dashboard_config_maps(render(values))
    assert set(rendered) == set(dashboards())
    for config_map in rendered.values():
        metadata = config_map["metadata"]
        assert metadata["namespace"] == "monitoring"
        assert metadata["labels"]["dashboards"] == "awareness"
        assert "grafana_dashboard" not in metadata["labels"]
        assert metadata["annotations"] == {"grafana_folder": "Security"}


def test_production_loads_the_dashboards_and_the_alerts() -> None:
    production = load_values(PRODUCTION_VALUES)
    assert production["grafanaDashboards"]["enabled"] is True
    assert production["prometheusRules"]["enabled"] is True
    manifests = render(production)
    assert len(of_kind(manifests, "PrometheusRule")) == 1
    assert set(dashboard_config_maps(manifests)) == set(dashboards())


@pytest.mark.parametrize(
    "settings",
    [
        {"folder": "Awareness"},
        {"namespace": "Not_A_Namespace"},
        {"labels": {"grafana_dashboard": 1}},
        {"annotations": ["grafana_folder"]},
    ],
)
def test_the_values_schema_refuses_malformed_dashboard_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        render({"grafanaDashboards": {"enabled": True, **settings}})


# --- the dashboards ----------------------------------------------------------------------------------


def test_each_dashboard_has_a_stable_uid_and_the_datasource_and_namespace_variables() -> None:
    uids = set()
    for file, dashboard in dashboards().items():
        assert dashboard["uid"] == f"awareness-{file.removesuffix('.json')}"
        uids.add(dashboard["uid"])
        assert dashboard["title"].startswith("Awareness / ")
        assert 36 <= dashboard["schemaVersion"] <= 41
        assert "awareness" in dashboard["tags"]
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        namespace = variables["namespace"]
        assert namespace["type"] == "query"
        assert namespace["datasource"]["uid"] == "${datasource}"
    assert len(uids) == len(dashboards())


def test_every_panel_queries_the_chosen_datasource_and_namespace_and_has_a_unit() -> None:
    for file, dashboard in dashboards().items():
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), file
        for panel in panels(dashboard):
            where = f"{file}: {panel['title']}"
            assert panel["datasource"]["uid"] == "${datasource}", where
            assert panel["fieldConfig"]["defaults"]["unit"], where
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, where
            assert panel["targets"], f"{where} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", where
                # Every selector of the query keeps to the chosen namespace.
                selectors = target["expr"].count("{")
                assert target["expr"].count('namespace="$namespace"') == selectors, where


def test_the_overview_covers_routes_rpcs_breakers_and_rate_limits() -> None:
    overview = " ".join(q.expr for q in dashboard_queries() if q.where.startswith("overview.json"))
    for needle in (
        "awareness_gateway_http_requests_total",
        "awareness_gateway_http_request_duration_seconds_bucket",
        "sum by (route)",
        "(grpc_server|door)_requests_total",
        "sum by (job, method)",
        "_circuit_breaker_state",
        "awareness_gateway_ratelimit_rejections_total",
    ):
        assert needle in overview, needle


# --- PromQL ------------------------------------------------------------------------------------------


def test_metric_names_are_what_a_query_reads_by_name() -> None:
    expr = """
      sum by (namespace, job) (rate({__name__=~"awareness_[a-z]+_requests_total", code="OK"}[5m]))
      / on (job) group_left
      histogram_quantile(0.99, sum by (le) (rate(lat_seconds_bucket{le!="+Inf", job="x"}[$__rate_interval])))
      and gauge_a offset 5m > 1e3 # threshold: a comment with words
      or label_replace(gauge_b, "dst", "$1", "src", "(.*)") unless {__name__="gauge_c"}
    """
    assert metric_names(expr) == {"lat_seconds", "gauge_a", "gauge_b", "gauge_c"}
    assert name_patterns(expr) == {"awareness_[a-z]+_requests_total"}


def test_grafana_variables_become_values_promtool_accepts() -> None:
    expr = (
        'rate(x{namespace="$namespace"}[$__rate_interval]) + increase(y{namespace="${namespace}"}[$__range])'
    )
    assert (
        grafana_to_promql(expr)
        == 'rate(x{namespace="awareness"}[2m]) + increase(y{namespace="awareness"}[6h])'
    )
    with pytest.raises(KeyError):
        grafana_to_promql('x{pod="$pod"}')


def test_promtool_accepts_every_dashboard_query(promtool: str, tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 6 * 5
    checked = check_rules(promtool, recording_rules_file(queries, tmp_path / "dashboards.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(queries)} rules found" in checked.stdout


def test_promtool_refuses_a_broken_query(promtool: str, tmp_path: Path) -> None:
    broken = [
        Query("broken", 'sum by (route) (rate(awareness_gateway_http_requests_total{namespace="$namespace"}')
    ]
    checked = check_rules(promtool, recording_rules_file(broken, tmp_path / "broken.yaml"))
    assert checked.returncode != 0
