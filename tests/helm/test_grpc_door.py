"""The gateway's gRPC door in the chart: a named container and Service port, the env the gateway
reads, a NetworkPolicy rule that opens that port (and no other) to the door's peers, and its TLS
certificate from a Secret or from a cert-manager Certificate the chart renders."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest

from tests.helm.rendering import (
    CHART_DIR,
    PRODUCTION_VALUES,
    Manifest,
    by_name,
    deep_merge,
    load_values,
    of_kind,
    pod_templates,
    render,
    render_raw,
)

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


# A cert-manager Certificate for the door ------------------------------------------------------------

DOOR_CERT_MANAGER = {"gatewayDoorTLS": {"certManager": {"enabled": True}}}
DOOR_SECRET = "awareness-gateway-door-tls"
SERVICE_NAMES = [
    "awareness-gateway",
    "awareness-gateway.awareness",
    "awareness-gateway.awareness.svc",
    "awareness-gateway.awareness.svc.cluster.local",
]


def _door_certificate(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = by_name(manifests, "Certificate")[DOOR_SECRET]["spec"]
    return spec


def _gateway_pod_volumes(manifests: list[Manifest]) -> list[dict[str, Any]]:
    (pod,) = [p for p in pod_templates(of_kind(manifests, "Deployment")) if p.component == "gateway"]
    return list(pod.spec["volumes"])


def _door_volume(manifests: list[Manifest]) -> dict[str, Any]:
    (volume,) = [v for v in _gateway_pod_volumes(manifests) if v["name"] == "door-tls"]
    return volume


def test_a_door_certificate_names_the_gateway_service_and_is_mounted() -> None:
    manifests = render(DOOR_CERT_MANAGER)
    spec = _door_certificate(manifests)
    assert spec["secretName"] == DOOR_SECRET
    assert spec["dnsNames"] == SERVICE_NAMES
    # A server certificate only: no SPIFFE ID, so it is no service identity and no client certificate.
    assert "uris" not in spec
    assert spec["usages"] == ["server auth", "digital signature", "key encipherment"]
    assert spec["privateKey"] == {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}
    assert (spec["duration"], spec["renewBefore"]) == ("2160h", "720h")
    # Without an issuer of its own it comes from the one that issues the mTLS certificates.
    assert spec["issuerRef"] == {"name": "awareness-mtls-ca", "kind": "Issuer", "group": "cert-manager.io"}
    env = _env(_gateway_container(manifests))
    assert env["AWARENESS_GATEWAY_GRPC_TLS_CERT_FILE"] == "/etc/awareness/door-tls/tls.crt"
    assert env["AWARENESS_GATEWAY_GRPC_TLS_KEY_FILE"] == "/etc/awareness/door-tls/tls.key"
    assert {"name": "door-tls", "mountPath": "/etc/awareness/door-tls", "readOnly": True} in (
        _gateway_container(manifests)["volumeMounts"]
    )
    assert _door_volume(manifests)["secret"]["secretName"] == DOOR_SECRET


def test_the_door_certificate_takes_its_issuer_names_and_lifetimes_from_values() -> None:
    door = {
        "enabled": True,
        "issuerRef": {"name": "corp-internal-ca", "kind": "ClusterIssuer"},
        "dnsNames": ["door.example.internal", "awareness-gateway"],
        "duration": "720h",
        "renewBefore": "240h",
    }
    manifests = render({"gatewayDoorTLS": {"certManager": door}})
    spec = _door_certificate(manifests)
    assert spec["issuerRef"] == {
        "name": "corp-internal-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    # Extra names come after the Service's, each once.
    assert spec["dnsNames"] == [*SERVICE_NAMES, "door.example.internal"]
    assert (spec["duration"], spec["renewBefore"]) == ("720h", "240h")
    # The mTLS certificates keep their own issuer.
    mtls = by_name(manifests, "Certificate")["awareness-ingest-mtls"]
    assert mtls["spec"]["issuerRef"]["name"] == "awareness-mtls-ca"


def test_the_door_certificate_follows_the_mtls_issuer_ref_and_needs_one() -> None:
    mtls_issuer = {"mtls": {"certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}}
    spec = _door_certificate(render({**mtls_issuer, **DOOR_CERT_MANAGER}))
    assert spec["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    # With the services' certificates from Secrets there is no chart issuer to borrow: name one.
    existing = {
        c: f"corp-mtls-{c}"
        for c in ("gateway", "ingest", "gdpr", "policy", "scoring", "analytics", "signing")
    }
    no_issuer = {
        "mtls": {"certManager": {"enabled": False}, "existingSecrets": existing},
        **DOOR_CERT_MANAGER,
    }
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render_raw(no_issuer)
    assert "gatewayDoorTLS.certManager.issuerRef" in str(caught.value)
    named = deep_merge(no_issuer, {"gatewayDoorTLS": {"certManager": {"issuerRef": {"name": "corp-ca"}}}})
    assert _door_certificate(render(named))["issuerRef"]["name"] == "corp-ca"


def test_production_serves_the_door_with_a_cert_manager_certificate() -> None:
    manifests = render(load_values(PRODUCTION_VALUES))
    assert _door_certificate(manifests)["dnsNames"] == SERVICE_NAMES
    assert _door_volume(manifests)["secret"]["secretName"] == DOOR_SECRET
    assert _env(_gateway_container(manifests))["AWARENESS_GATEWAY_GRPC_TLS_CERT_FILE"]


def test_no_door_certificate_by_default_with_a_secret_or_with_the_door_off() -> None:
    def door_certificates(values: dict[str, Any]) -> list[str]:
        names = by_name(render(values), "Certificate")
        return [name for name in names if "door" in name]

    assert door_certificates({}) == []
    assert door_certificates({"gatewayDoorTLS": {"secretName": "door-cert"}}) == []
    door_off = {**DOOR_CERT_MANAGER, "services": {"gateway": {"grpcDoorPort": 0}}}
    assert door_certificates(door_off) == []
    assert "door-tls" not in {v["name"] for v in _gateway_pod_volumes(render(door_off))}


def test_a_secret_and_a_certificate_together_are_refused() -> None:
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render_raw({"gatewayDoorTLS": {"secretName": "door-cert", "certManager": {"enabled": True}}})
    assert "not both" in str(caught.value)


@pytest.mark.parametrize(
    ("door", "message"),
    [
        ({"issuerRef": {"kind": "ClusterIssuer"}}, "issuerRef"),
        ({"duration": "90 days"}, "duration"),
        ({"renewBefore": "soon"}, "renewBefore"),
        ({"enabled": "yes"}, "enabled"),
        ({"dnsNames": ["Door_Host"]}, "dnsNames"),
        ({"dnsNames": ["door.internal", "door.internal"]}, "dnsNames"),
        ({"commonName": "door"}, "commonName"),
    ],
    ids=[
        "issuer-kind-without-name",
        "bad-duration",
        "bad-renew-before",
        "enabled-not-boolean",
        "dns-name-not-a-hostname",
        "dns-name-twice",
        "unknown-key",
    ],
)
def test_values_schema_checks_the_door_certificate(door: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        render_raw({"gatewayDoorTLS": {"certManager": door}})
    assert message in str(caught.value)
