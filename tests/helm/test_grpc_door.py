"""The gateway's gRPC door in the chart: a named container and Service port, the env the gateway
reads, and a NetworkPolicy rule that opens that port (and no other) to the door's peers."""

from __future__ import annotations

from typing import Any

from tests.helm.rendering import CHART_DIR, Manifest, by_name, load_values, of_kind, pod_templates, render

DOOR_PORT = 8081


def _gateway_container(manifests: list[Manifest]) -> dict[str, Any]:
    (pod,) = [p for p in pod_templates(of_kind(manifests, "Deployment")) if p.component == "gateway"]
    (container,) = pod.spec["containers"]
    return dict(container)


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def _door_rules(manifests: list[Manifest]) -> list[dict[str, Any]]:
    policy = by_name(manifests, "NetworkPolicy")["awareness-gateway-net"]
    return [
        rule
        for rule in policy["spec"]["ingress"]
        if any(port.get("port") == DOOR_PORT for port in rule.get("ports", []))
    ]


def test_the_door_has_a_named_port_on_the_gateway_and_its_service(manifests: list[Manifest]) -> None:
    container = _gateway_container(manifests)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["grpc-door"] == DOOR_PORT
    assert _env(container)["AWARENESS_GATEWAY_GRPC_PORT"] == str(DOOR_PORT)
    service = by_name(manifests, "Service")["awareness-gateway"]
    (door,) = [port for port in service["spec"]["ports"] if port["name"] == "grpc-door"]
    assert door == {
        "name": "grpc-door",
        "port": DOOR_PORT,
        "targetPort": "grpc-door",
        "protocol": "TCP",
        "appProtocol": "grpc",
    }


def test_only_the_gateway_has_a_door(manifests: list[Manifest]) -> None:
    for pod in pod_templates(of_kind(manifests, "Deployment")):
        names = {port["name"] for c in pod.spec["containers"] for port in c.get("ports", [])}
        assert ("grpc-door" in names) == (pod.component == "gateway"), pod.owner


def test_the_network_policy_opens_the_door_to_its_peers_only(manifests: list[Manifest]) -> None:
    (rule,) = _door_rules(manifests)
    assert rule["ports"] == [{"protocol": "TCP", "port": DOOR_PORT}]
    assert rule["from"] == load_values(CHART_DIR / "values.yaml")["networkPolicy"]["doorPeers"]


def test_a_door_turned_off_has_no_port_and_no_rule() -> None:
    manifests = render({"services": {"gateway": {"grpcDoorPort": 0}}})
    container = _gateway_container(manifests)
    assert "grpc-door" not in {port["name"] for port in container["ports"]}
    assert _env(container)["AWARENESS_GATEWAY_GRPC_PORT"] == "0"
    service = by_name(manifests, "Service")["awareness-gateway"]
    assert "grpc-door" not in {port["name"] for port in service["spec"]["ports"]}
    assert _door_rules(manifests) == []


def test_a_tls_secret_is_mounted_and_named_to_the_door() -> None:
    manifests = render({"gatewayDoorTLS": {"secretName": "door-cert"}})
    container = _gateway_container(manifests)
    env = _env(container)
    assert env["AWARENESS_GATEWAY_GRPC_TLS_CERT_FILE"] == "/etc/awareness/door-tls/tls.crt"
    assert env["AWARENESS_GATEWAY_GRPC_TLS_KEY_FILE"] == "/etc/awareness/door-tls/tls.key"
    assert {"name": "door-tls", "mountPath": "/etc/awareness/door-tls", "readOnly": True} in container[
        "volumeMounts"
    ]
    (pod,) = [p for p in pod_templates(of_kind(manifests, "Deployment")) if p.component == "gateway"]
    (volume,) = [v for v in pod.spec["volumes"] if v["name"] == "door-tls"]
    assert volume["secret"]["secretName"] == "door-cert"
    assert "AWARENESS_GATEWAY_GRPC_TLS_CERT_FILE" not in _env(_gateway_container(render()))
