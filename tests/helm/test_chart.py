"""The chart lints clean, renders, validates against Kubernetes 1.30 schemas and enforces its values."""

from __future__ import annotations

import helm_python
import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions

from tests.helm.rendering import (
    CHART_DIR,
    KUBERNETES_VERSION,
    SCENARIOS,
    Manifest,
    load_values,
    of_kind,
    render,
    render_raw,
)

# Custom resources have no schema in kubernetes-validate (it bundles only the core API), so they are
# the one thing left out of schema validation; the test below proves the library really cannot check
# them (tests/helm/test_mtls.py checks the cert-manager objects' fields instead).
CUSTOM_RESOURCE_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
}

SERVICES = ("ingest", "policy", "scoring", "analytics", "signing", "gdpr", "gateway")


def test_bundled_schemas_include_kubernetes_1_30() -> None:
    assert KUBERNETES_VERSION in all_versions()


@pytest.mark.parametrize("scenario_name", sorted(SCENARIOS))
def test_helm_lint_strict_is_clean(scenario_name: str) -> None:
    report = helm_python.lint(
        CHART_DIR,
        load_values(*SCENARIOS[scenario_name]),
        strict=True,
        kube_version=f"v{KUBERNETES_VERSION}",
    )
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # severity 2 = warning, 3 = error; strict mode treats warnings as failures too.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_helm_lint_reports_schema_violations() -> None:
    report = helm_python.lint(CHART_DIR, {"services": {"ingest": {"replicas": "three"}}}, strict=True)
    assert report["errors"] or any(m["severity"] >= 2 for m in report["messages"])


def test_every_document_validates_strictly_against_kubernetes_1_30(manifests: list[Manifest]) -> None:
    assert manifests
    for manifest in manifests:
        if (manifest["apiVersion"], manifest["kind"]) in CUSTOM_RESOURCE_KINDS:
            continue
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    deployment = of_kind(render(), "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_custom_resources_are_the_only_kinds_without_a_bundled_schema() -> None:
    manifests = render(load_values(*SCENARIOS["production"]))
    custom = [m for m in manifests if (m["apiVersion"], m["kind"]) in CUSTOM_RESOURCE_KINDS]
    # Production renders each of them: the ServiceMonitor, the PrometheusRule, the service Certificates
    # and the CA Issuers.
    assert {(m["apiVersion"], m["kind"]) for m in custom} == CUSTOM_RESOURCE_KINDS
    assert len(of_kind(custom, "ServiceMonitor")) == 1
    for manifest in custom:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_default_render_has_one_of_each_service_and_no_service_monitor(manifests: list[Manifest]) -> None:
    deployments = {
        m["metadata"]["labels"]["app.kubernetes.io/component"] for m in of_kind(manifests, "Deployment")
    }
    services = {m["metadata"]["labels"]["app.kubernetes.io/component"] for m in of_kind(manifests, "Service")}
    assert deployments == services
    assert deployments <= set(SERVICES)
    assert "gateway" in deployments and "ingest" in deployments


def test_service_monitor_is_off_by_default() -> None:
    assert of_kind(render(), "ServiceMonitor") == []


def test_notes_are_rendered() -> None:
    notes = next(text for path, text in render_raw().items() if path.endswith("NOTES.txt"))
    assert "awareness-gateway" in notes


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"services": {"ingest": {"replicas": "three"}}}, "replicas"),
        ({"replicaCount": 3}, "replicaCount"),
        ({"services": {"gateway": {"replica": 3}}}, "replica"),
        ({"services": {"search": {"enabled": True}}}, "search"),
        ({"tracing": {"exporter": "jaeger"}}, "exporter"),
        ({"services": {"policy": {"autoscaling": {"minReplicas": 0}}}}, "minReplicas"),
        ({"services": {"signing": {"port": 70000}}}, "port"),
        ({"image": {"digest": "latest"}}, "digest"),
    ],
    ids=[
        "wrong-type",
        "unknown-top-level-key",
        "unknown-service-key",
        "unknown-service",
        "bad-enum",
        "below-minimum",
        "above-maximum",
        "bad-pattern",
    ],
)
def test_values_schema_makes_helm_template_fail(values: dict[str, object], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        render_raw(values)
    assert message in str(caught.value)


def test_schema_is_strict_at_top_level_and_in_service_blocks() -> None:
    with helm_python.Chart.load(CHART_DIR) as chart:
        schema = chart.schema
    assert schema is not None
    assert schema["additionalProperties"] is False
    assert schema["definitions"]["service"]["additionalProperties"] is False
    assert set(schema["properties"]["services"]["properties"]) == set(SERVICES)


def test_docs_values_table_covers_every_top_level_and_service_key() -> None:
    table = (CHART_DIR.parents[1] / "docs" / "helm.md").read_text()
    with helm_python.Chart.load(CHART_DIR) as chart:
        values = chart.values
    missing = [key for key in values if f"`{key}" not in table]
    missing += [
        key
        for key in values["services"]["ingest"]
        if f"`services.<name>.{key}" not in table and f"`{key}`" not in table
    ]
    assert missing == []
