"""The chart's alerts: promtool checks the rules file and runs its unit tests, every alert is tested
firing and quiet, documented in docs/runbook.md and built on metrics the code exports (or on a
named contract), and the chart renders exactly that file as a PrometheusRule, with its overrides."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from services.runtime.config import SERVICES
from tests.helm.rendering import (
    CHART_DIR,
    KUBERNETES_VERSION,
    NAMESPACE,
    REPO_ROOT,
    Manifest,
    load_values,
    of_kind,
    render,
)

RULES_FILE = CHART_DIR / "rules" / "awareness-alerts.yaml"
PROMTOOL_TESTS = Path(__file__).resolve().parent / "alert_rules_test.yaml"
RUNBOOKS = REPO_ROOT / "docs" / "runbook.md"
RUNBOOK_BASE = "https://github.com/awareness/awareness/blob/main/docs/runbook.md"
SEVERITIES = {"critical", "warning"}
# Metrics the rules fix the names of for a producer that is not in the code yet (the runbook states
# each contract). None today: tests/test_metrics_endpoints.py checks every name against a scrape.
CONTRACT_METRICS: frozenset[str] = frozenset()
# Label names the rules make up (label_replace targets) that the metric-name pattern also matches.
RULE_LABELS = {"awareness_service"}
THRESHOLD_MARK = re.compile(r"([<>]=?\s*)([0-9.]+)(\s*#\s*threshold)")


def rules_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(RULES_FILE.read_text())
    return document


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rules_document()["groups"] for rule in group["rules"]]


def alert_named(name: str) -> dict[str, Any]:
    return next(rule for rule in alerts() if rule["alert"] == name)


def run_promtool(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


# --- the rules file, by promtool -------------------------------------------------------------------


def test_promtool_checks_the_rules_file(promtool: str) -> None:
    checked = run_promtool(promtool, "check", "rules", RULES_FILE)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


def test_every_alert_fires_on_bad_series_and_stays_quiet_on_healthy_ones(promtool: str) -> None:
    tested = run_promtool(promtool, "test", "rules", PROMTOOL_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_test_rules_fails_when_an_alert_does_not_fire(promtool: str, tmp_path: Path) -> None:
    # The unit tests are not vacuous: with one threshold out of reach, its firing test fails.
    rules = RULES_FILE.read_text().replace("> 0.25 # threshold: PSI", "> 25 # threshold: PSI", 1)
    (tmp_path / "rules.yaml").write_text(rules)
    tests = yaml.safe_load(PROMTOOL_TESTS.read_text())
    tests["rule_files"] = ["rules.yaml"]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    tested = run_promtool(promtool, "test", "rules", tmp_path / "tests.yaml")
    assert tested.returncode != 0
    assert "AwarenessFeatureDriftHigh" in tested.stdout + tested.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases = [
        case
        for test in yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    names = {rule["alert"] for rule in alerts()}
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert fired == names
    assert quiet == names


# --- what each alert carries -----------------------------------------------------------------------


def runbook_anchors() -> set[str]:
    """GitHub's anchors of the runbook's second-level headings."""
    headings = re.findall(r"^## (.+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook_section() -> None:
    anchors = runbook_anchors()
    for rule in alerts():
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, rule["alert"]
        assert annotations["runbook_url"] == f"{RUNBOOK_BASE}#{rule['alert'].lower()}"
        assert rule["alert"].lower() in anchors, f"docs/runbook.md has no section {rule['alert']}"


def test_a_rule_marks_at_most_one_threshold() -> None:
    marked = {rule["alert"]: len(THRESHOLD_MARK.findall(rule["expr"])) for rule in alerts()}
    assert max(marked.values()) == 1
    assert {name for name, count in marked.items() if count} >= {
        "AwarenessCheckpointLagHigh",
        "AwarenessGatewayHttpErrorsHigh",
        "AwarenessFeatureDriftHigh",
        "AwarenessNoAnalystLabels",
    }


def exported_metric_names() -> set[str]:
    """awareness_<service>_<name> for every metric name literal in that service's code or the runtime's.

    ServiceMetrics prefixes `awareness_<service>_` to the names the code passes it; the runtime's own
    gauges spell the prefix as an f-string."""
    runtime = _name_literals(REPO_ROOT / "services" / "runtime")
    # Names spelled whole, outside any one service's prefix (the scheduled verification's).
    # A counter family named "x" (prometheus_client's CounterMetricFamily) is exported as "x_total".
    literals = _name_literals(REPO_ROOT / "services")
    whole = {literal for literal in literals if literal.startswith("awareness_")}
    names = whole | {f"{literal}_total" for literal in whole}
    for service in (*SERVICES, "gateway"):
        literals = runtime | _name_literals(REPO_ROOT / "services" / service)
        names.update(f"awareness_{service}_{literal}" for literal in literals)
    return names


def _name_literals(directory: Path) -> set[str]:
    literals: set[str] = set()
    for path in directory.rglob("*.py"):
        text = path.read_text()
        literals.update(re.findall(r'"([a-z][a-z0-9_]*)"', text))
        literals.update(re.findall(r'\{prefix\}_([a-z0-9_]+)"', text))
    return literals


def test_rules_name_only_metrics_the_code_exports_or_a_stated_contract() -> None:
    exported = exported_metric_names()
    for rule in alerts():
        expr = rule["expr"]
        patterns = re.findall(r'__name__=~"([^"]+)"', expr)
        literal = set(re.findall(r"\bawareness_[a-z0-9_]*[a-z0-9]\b", re.sub(r'"[^"]*"', '""', expr)))
        for name in literal - RULE_LABELS:
            assert name in exported or name in CONTRACT_METRICS, f"{rule['alert']}: {name} is not exported"
        for pattern in patterns:
            assert any(re.fullmatch(pattern, name) for name in exported), f"{rule['alert']}: {pattern}"
    # A few names the check must know, or it proves nothing.
    assert {
        "awareness_ingest_checkpoint_age_seconds",
        "awareness_ingest_integrator_leader",
        "awareness_gateway_circuit_breaker_state",
        "awareness_signing_certificate_expiry_timestamp_seconds",
        "awareness_gdpr_erasure_log_pending",
    } <= exported
    assert "awareness_ingest_checkpoint_age_secs" not in exported


# --- the chart -------------------------------------------------------------------------------------

ENABLED = {"prometheusRules": {"enabled": True}}


def prometheus_rule(values: dict[str, Any]) -> Manifest:
    rules = of_kind(render(values), "PrometheusRule")
    assert len(rules) == 1
    return rules[0]


def threshold_of(expr: str) -> str:
    marked = THRESHOLD_MARK.search(expr)
    assert marked is not None, expr
    return marked.group(2)


def rule_in(manifest: Manifest, name: str) -> dict[str, Any]:
    return next(
        rule for group in manifest["spec"]["groups"] for rule in group["rules"] if rule["alert"] == name
    )


def test_no_prometheus_rule_unless_enabled(manifests: list[Manifest], scenario: str) -> None:
    # values-production.yaml enables the rules.
    assert len(of_kind(manifests, "PrometheusRule")) == (1 if scenario == "production" else 0)


def test_the_rendered_rules_are_the_rules_file() -> None:
    manifest = prometheus_rule(ENABLED)
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["metadata"]["namespace"] == NAMESPACE
    assert manifest["metadata"]["labels"]["app.kubernetes.io/instance"] == "awareness"
    assert manifest["spec"]["groups"] == rules_document()["groups"]
    assert set(manifest["spec"]) == {"groups"}


def test_the_production_values_with_rules_lint_clean() -> None:
    report = helm_python.lint(
        CHART_DIR,
        load_values(CHART_DIR / "values-production.yaml", overrides=ENABLED),
        strict=True,
        kube_version=f"v{KUBERNETES_VERSION}",
    )
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_overrides_reach_the_rendered_rules_and_promtool_accepts_them(promtool: str, tmp_path: Path) -> None:
    manifest = prometheus_rule(
        {
            "prometheusRules": {
                "enabled": True,
                "labels": {"release": "kube-prometheus-stack"},
                "alertLabels": {"team": "security-operations", "severity": "info"},
                "runbookBaseUrl": "https://wiki.example.org/awareness/runbooks",
                "alerts": {
                    "AwarenessCheckpointLagHigh": {"threshold": 120, "for": "2m", "severity": "warning"},
                    "AwarenessLiveF1BelowCard": {"threshold": 0.15},
                    "AwarenessNoAnalystLabels": {"enabled": False},
                },
            }
        }
    )
    assert manifest["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    names = {rule["alert"] for group in manifest["spec"]["groups"] for rule in group["rules"]}
    assert names == {rule["alert"] for rule in alerts()} - {"AwarenessNoAnalystLabels"}

    lag, source = rule_in(manifest, "AwarenessCheckpointLagHigh"), alert_named("AwarenessCheckpointLagHigh")
    assert threshold_of(lag["expr"]) == "120"
    assert THRESHOLD_MARK.sub("", lag["expr"]) == THRESHOLD_MARK.sub("", source["expr"])
    assert lag["for"] == "2m"
    assert lag["labels"] == {"severity": "warning", "team": "security-operations"}
    f1 = rule_in(manifest, "AwarenessLiveF1BelowCard")
    assert threshold_of(f1["expr"]) == "0.15"
    # alertLabels never override an alert's own severity.
    assert rule_in(manifest, "AwarenessGatewayHttpErrorsHigh")["labels"]["severity"] == "critical"
    assert (
        rule_in(manifest, "AwarenessErasureStuckPending")["annotations"]["runbook_url"]
        == "https://wiki.example.org/awareness/runbooks#awarenesserasurestuckpending"
    )

    rendered = tmp_path / "rendered-rules.yaml"
    rendered.write_text(yaml.safe_dump({"groups": manifest["spec"]["groups"]}))
    checked = run_promtool(promtool, "check", "rules", rendered)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("alerts_values", "message"),
    [
        (
            {"AwarenessNoSuchAlert": {"enabled": False}},
            "prometheusRules.alerts.AwarenessNoSuchAlert: no such alert",
        ),
        ({"AwarenessErasureStuckPending": {"threshold": 3}}, "has no threshold to set"),
    ],
)
def test_an_override_that_cannot_apply_fails_the_render(alerts_values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render({"prometheusRules": {"enabled": True, "alerts": alerts_values}})
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "settings",
    [
        {"alerts": {"AwarenessCheckpointLagHigh": {"severity": "page"}}},
        {"alerts": {"AwarenessCheckpointLagHigh": {"for": "five minutes"}}},
        {"alerts": {"AwarenessCheckpointLagHigh": {"threshold": "60"}}},
        {"alerts": {"AwarenessCheckpointLagHigh": {"treshold": 60}}},
        {"ruleLabels": {}},
    ],
)
def test_the_values_schema_refuses_malformed_rule_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        render({"prometheusRules": {"enabled": True, **settings}})
