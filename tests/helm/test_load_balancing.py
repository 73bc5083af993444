"""Calls between services are balanced per call: headless Services, dns:/// targets, a maximum
connection age. A ClusterIP Service balances connections, and gRPC sends every call of a channel
down one connection, so without these, replicas added by the autoscaler would get no calls."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest

from services.gateway.config import DEFAULT_METHOD_TIMEOUTS
from services.runtime.config import load_settings
from services.runtime.server import connection_age_options
from services.scoring.cli import TRAIN_TIMEOUT_SECONDS
from tests.helm.rendering import (
    NAMESPACE,
    SCENARIOS,
    Manifest,
    by_name,
    load_values,
    of_kind,
    pod_templates,
    render,
    render_raw,
    selector_matches,
)

GRPC_PORTS = {
    "ingest": 50051,
    "policy": 50052,
    "scoring": 50053,
    "signing": 50054,
    "gdpr": 50055,
    "analytics": 50056,
}


def _config(manifests: list[Manifest]) -> dict[str, str]:
    (config,) = [
        c
        for c in of_kind(manifests, "ConfigMap")
        if c["metadata"]["labels"]["app.kubernetes.io/component"] == "config"
    ]
    data: dict[str, str] = config["data"]
    return data


def _grpc_components(manifests: list[Manifest]) -> set[str]:
    return {
        pod.component
        for pod in pod_templates(of_kind(manifests, "Deployment"))
        if any(port.get("name") == "grpc" for c in pod.spec["containers"] for port in c.get("ports", []))
    }


def test_every_grpc_service_has_a_headless_service_beside_its_cluster_ip_service(
    manifests: list[Manifest],
) -> None:
    services = by_name(manifests, "Service")
    pods = pod_templates(of_kind(manifests, "Deployment"))
    components = _grpc_components(manifests)
    assert components and components <= set(GRPC_PORTS)
    for component in components:
        # The ClusterIP Service stays: the ServiceMonitor, port-forwards and outside callers use it.
        cluster_ip = services[f"awareness-{component}"]
        assert cluster_ip["spec"].get("clusterIP") != "None"
        headless = services[f"awareness-{component}-headless"]
        spec = headless["spec"]
        assert spec["clusterIP"] == "None"
        assert spec.get("publishNotReadyAddresses", False) is False  # DNS lists ready pods only
        assert spec["ports"] == [
            {
                "name": "grpc",
                "port": GRPC_PORTS[component],
                "targetPort": "grpc",
                "protocol": "TCP",
                "appProtocol": "grpc",
            }
        ]
        selected = {
            pod.component for pod in pods if selector_matches({"matchLabels": spec["selector"]}, pod.labels)
        }
        assert selected == {component}
        assert spec["selector"] == cluster_ip["spec"]["selector"]
        assert headless["metadata"]["labels"]["app.kubernetes.io/component"] == component
    # The gateway is HTTP behind the ingress controller, which balances requests itself.
    assert "awareness-gateway-headless" not in services
    headless_names = {name for name, s in services.items() if s["spec"].get("clusterIP") == "None"}
    assert headless_names == {f"awareness-{component}-headless" for component in components}


def test_targets_name_the_headless_services_with_the_dns_scheme(manifests: list[Manifest]) -> None:
    services = by_name(manifests, "Service")
    config = _config(manifests)
    components = _grpc_components(manifests)
    targets = {key: value for key, value in config.items() if key.endswith("_TARGET")}
    assert set(targets) == {f"AWARENESS_{component.upper()}_TARGET" for component in components}
    for component in components:
        headless = f"awareness-{component}-headless"
        port = GRPC_PORTS[component]
        assert targets[f"AWARENESS_{component.upper()}_TARGET"] == (
            f"dns:///{headless}.{NAMESPACE}.svc.cluster.local:{port}"
        )
        assert services[headless]["spec"]["clusterIP"] == "None"
        assert port in {p["port"] for p in services[headless]["spec"]["ports"]}


def test_headless_services_publish_no_port_the_service_monitor_scrapes() -> None:
    manifests = render(load_values(*SCENARIOS["production"]))
    (monitor,) = of_kind(manifests, "ServiceMonitor")
    scraped = {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]}
    for service in of_kind(manifests, "Service"):
        names = {port["name"] for port in service["spec"]["ports"]}
        if service["spec"].get("clusterIP") == "None":
            # The monitor selects every Service of the release: a metrics port here would scrape
            # each pod twice.
            assert not names & scraped, service["metadata"]["name"]
        elif service["metadata"]["labels"]["app.kubernetes.io/component"] in GRPC_PORTS:
            assert "metrics" in names


def test_the_runtime_reads_the_rendered_targets_and_connection_age() -> None:
    config = _config(render())
    settings = load_settings("ingest", config)
    assert settings.target("gdpr") == "dns:///awareness-gdpr-headless.awareness.svc.cluster.local:50055"
    assert dict(connection_age_options(settings)) == {
        "grpc.max_connection_age_ms": 300_000,
        "grpc.max_connection_age_grace_ms": 1_800_000,
    }


def test_the_grace_outlasts_the_longest_call_deadline_in_the_suite() -> None:
    grace = int(_config(render())["AWARENESS_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS"])
    # A connection may reach its age right after a call started on it: the call must still be
    # allowed its whole deadline (retraining's TrainModel, the gateway's per-method deadlines,
    # the gdpr CLI's 600 s for shredding and re-wrapping).
    method_deadlines = [float(item.split("=")[1]) for item in DEFAULT_METHOD_TIMEOUTS.split(",") if item]
    assert grace >= max(TRAIN_TIMEOUT_SECONDS, 600.0, *method_deadlines)


def test_connection_age_can_be_turned_off_and_the_cluster_domain_changed() -> None:
    manifests = render({"grpc": {"maxConnectionAgeSeconds": 0, "clusterDomain": "corp.example"}})
    config = _config(manifests)
    assert config["AWARENESS_GRPC_MAX_CONNECTION_AGE_SECONDS"] == "0"
    settings = load_settings("gateway", config)
    assert connection_age_options(settings) == []
    assert (
        config["AWARENESS_INGEST_TARGET"]
        == "dns:///awareness-ingest-headless.awareness.svc.corp.example:50051"
    )


def test_headless_names_stay_valid_dns_labels_with_a_long_release_name() -> None:
    manifests = render({"fullnameOverride": "a" * 63})
    services = by_name(manifests, "Service")
    assert all(len(name) <= 63 for name in services)
    config = _config(manifests)
    for component in _grpc_components(manifests):
        host = config[f"AWARENESS_{component.upper()}_TARGET"].removeprefix("dns:///").split(".")[0]
        assert host.endswith(f"-{component}-headless")
        assert services[host]["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"grpc": {"maxConnectionAgeSeconds": -1}}, "maxConnectionAgeSeconds"),
        ({"grpc": {"maxConnectionAgeGraceSeconds": "long"}}, "maxConnectionAgeGraceSeconds"),
        ({"grpc": {"clusterDomain": "Cluster Local"}}, "clusterDomain"),
        ({"grpc": {"lbPolicy": "pick_first"}}, "lbPolicy"),
    ],
    ids=["negative-age", "grace-not-a-number", "bad-domain", "unknown-key"],
)
def test_values_schema_checks_the_grpc_block(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        render_raw(values)
    assert message in str(caught.value)
