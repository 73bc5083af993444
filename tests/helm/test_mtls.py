"""Service identity in the chart: one mTLS certificate and one service secret per component, each
mounted into that component's pods (and its jobs') only, no shared internal secret anywhere, and
kubelet's gRPC probes on a plaintext health port because the gRPC port is mTLS only."""

from __future__ import annotations

import base64
import re
from typing import Any

import helm_python
import kubernetes_validate
import pytest

from tests.helm.rendering import (
    CHART_DIR,
    KUBERNETES_VERSION,
    REPO_ROOT,
    SCENARIOS,
    Manifest,
    PodTemplate,
    allowed_pod_connections,
    by_name,
    load_values,
    of_kind,
    pod_templates,
    render,
    render_raw,
)

COMPONENTS = ("gateway", "ingest", "gdpr", "policy", "scoring", "analytics", "signing")
GRPC_COMPONENTS = ("ingest", "gdpr", "policy", "scoring", "analytics", "signing")
# Whose identity each workload carries; None: it calls no service and gets neither file.
IDENTITY = {
    **{component: component for component in COMPONENTS},
    "retrain": "scoring",
    "retention": "gdpr",
    "report": "analytics",
    "verification": "ingest",
    "migrate": None,
    "backup": None,
    "kek-rotation": None,
}
HEALTH_PORT = 8086
MTLS_ENV = {
    "AWARENESS_MTLS_CERT_FILE": "/etc/awareness/mtls/tls.crt",
    "AWARENESS_MTLS_KEY_FILE": "/etc/awareness/mtls/tls.key",
    "AWARENESS_MTLS_CA_FILE": "/etc/awareness/mtls/ca.crt",
}
SERVICE_SECRET_ENV = {"AWARENESS_SERVICE_SECRET_FILE": "/etc/awareness/service/service-secret"}
EXISTING_CERTIFICATES = {component: f"corp-mtls-{component}" for component in COMPONENTS}
CERT_MANAGER_OFF = {"mtls": {"certManager": {"enabled": False}, "existingSecrets": EXISTING_CERTIFICATES}}


def _values(scenario_name: str) -> dict[str, Any]:
    return load_values(CHART_DIR / "values.yaml", *SCENARIOS[scenario_name])


def _enabled(values: dict[str, Any]) -> set[str]:
    return {component for component in COMPONENTS if values["services"][component]["enabled"]}


def _service_certificates(manifests: list[Manifest]) -> dict[str, Manifest]:
    """The leaf Certificates by the component named in their SPIFFE ID (the CA has no URI)."""
    found: dict[str, Manifest] = {}
    for certificate in of_kind(manifests, "Certificate"):
        uris = certificate["spec"].get("uris")
        if uris:
            (uri,) = uris
            component = uri.removeprefix("spiffe://awareness.internal/service/")
            assert component not in found, component
            found[component] = certificate
    return found


def _env(pod: PodTemplate) -> dict[str, Any]:
    (container,) = pod.spec["containers"]
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _secret_volumes(pod: PodTemplate) -> dict[str, dict[str, Any]]:
    return {v["name"]: v["secret"] for v in pod.spec["volumes"] if "secret" in v}


def _mounts(pod: PodTemplate) -> dict[str, dict[str, Any]]:
    (container,) = pod.spec["containers"]
    return {m["name"]: m for m in container["volumeMounts"]}


def _expected_secrets(values: dict[str, Any], component: str) -> tuple[str, str, str]:
    """(certificate Secret, service Secret, key of the service secret in it) for a component."""
    certificate = values["mtls"].get("existingSecrets", {}).get(component) or f"awareness-{component}-mtls"
    existing = values["serviceSecrets"].get("existingSecrets", {}).get(component)
    if existing:
        return certificate, existing, values["serviceSecrets"]["existingSecretKey"]
    return certificate, f"awareness-{component}-service-secret", "service-secret"


# Certificates ------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario_name", sorted(SCENARIOS))
def test_every_component_has_its_own_certificate(scenario_name: str) -> None:
    values = _values(scenario_name)
    certificates = _service_certificates(render(load_values(*SCENARIOS[scenario_name])))
    enabled = _enabled(values)
    assert set(certificates) == enabled
    for component, certificate in certificates.items():
        spec = certificate["spec"]
        assert certificate["apiVersion"] == "cert-manager.io/v1"
        assert certificate["metadata"]["name"] == spec["secretName"] == f"awareness-{component}-mtls"
        assert certificate["metadata"]["labels"]["app.kubernetes.io/component"] == component
        assert spec["uris"] == [f"spiffe://awareness.internal/service/{component}"]
        assert spec["dnsNames"] == [f"{component}.awareness.internal"]
        assert spec["usages"] == ["server auth", "client auth", "digital signature", "key encipherment"]
        assert spec["privateKey"] == {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}
        assert spec["duration"] == values["mtls"]["certManager"]["duration"] == "2160h"
        assert spec["renewBefore"] == values["mtls"]["certManager"]["renewBefore"] == "720h"
        assert "isCA" not in spec and "commonName" not in spec
    # A disabled service has no certificate (minimal: scoring).
    if scenario_name == "minimal":
        assert "scoring" not in certificates


def test_without_an_issuer_ref_the_chart_brings_a_private_ca() -> None:
    manifests = render()
    issuers = by_name(manifests, "Issuer")
    assert set(issuers) == {"awareness-mtls-selfsigned", "awareness-mtls-ca"}
    assert issuers["awareness-mtls-selfsigned"]["spec"] == {"selfSigned": {}}
    ca = by_name(manifests, "Certificate")["awareness-mtls-ca"]["spec"]
    assert ca["isCA"] is True
    assert ca["privateKey"]["algorithm"] == "ECDSA" and ca["privateKey"]["size"] == 256
    assert ca["issuerRef"] == {
        "name": "awareness-mtls-selfsigned",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    assert "uris" not in ca and ca["commonName"]
    # The CA Issuer issues from the CA Certificate's Secret; every service certificate names it.
    assert issuers["awareness-mtls-ca"]["spec"] == {"ca": {"secretName": ca["secretName"]}}
    for certificate in _service_certificates(manifests).values():
        assert certificate["spec"]["issuerRef"] == {
            "name": "awareness-mtls-ca",
            "kind": "Issuer",
            "group": "cert-manager.io",
        }


def test_an_issuer_ref_replaces_the_private_ca() -> None:
    manifests = render({"mtls": {"certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}})
    assert of_kind(manifests, "Issuer") == []
    certificates = _service_certificates(manifests)
    assert set(certificates) == set(COMPONENTS)
    assert len(of_kind(manifests, "Certificate")) == len(COMPONENTS)  # no CA Certificate
    for certificate in certificates.values():
        assert certificate["spec"]["issuerRef"] == {
            "name": "corp-ca",
            "kind": "ClusterIssuer",
            "group": "cert-manager.io",
        }
    # kind and group default to a namespaced cert-manager Issuer.
    default_kind = _service_certificates(render({"mtls": {"certManager": {"issuerRef": {"name": "ns-ca"}}}}))
    assert default_kind["ingest"]["spec"]["issuerRef"] == {
        "name": "ns-ca",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }


def test_durations_come_from_values() -> None:
    manifests = render(
        {"mtls": {"certManager": {"duration": "720h", "renewBefore": "240h", "caDuration": "43800h"}}}
    )
    for certificate in _service_certificates(manifests).values():
        assert (certificate["spec"]["duration"], certificate["spec"]["renewBefore"]) == ("720h", "240h")
    assert by_name(manifests, "Certificate")["awareness-mtls-ca"]["spec"]["duration"] == "43800h"


# Mounts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario_name", sorted(SCENARIOS))
def test_each_pod_mounts_only_its_own_certificate_and_service_secret(scenario_name: str) -> None:
    values = _values(scenario_name)
    manifests = render(load_values(*SCENARIOS[scenario_name]))
    pods = pod_templates(manifests)
    assert {pod.component for pod in pods} <= set(IDENTITY)
    identity_secrets = {name for c in _enabled(values) for name in _expected_secrets(values, c)[:2]}
    for pod in pods:
        identity = IDENTITY[pod.component]
        env = _env(pod)
        volumes = _secret_volumes(pod)
        mounted = {secret["secretName"] for secret in volumes.values()}
        if identity is None:
            assert not set(env) & {*MTLS_ENV, *SERVICE_SECRET_ENV}, pod.owner
            assert not mounted & identity_secrets, pod.owner
            continue
        certificate, service_secret, key = _expected_secrets(values, identity)
        assert {k: env.get(k) for k in (*MTLS_ENV, *SERVICE_SECRET_ENV)} == {**MTLS_ENV, **SERVICE_SECRET_ENV}
        # Its own certificate and its own service secret; no other component's.
        assert mounted & identity_secrets == {certificate, service_secret}, pod.owner
        assert volumes["mtls"] == {
            "secretName": certificate,
            "defaultMode": 0o440,
            "items": [{"key": k, "path": k} for k in ("tls.crt", "tls.key", "ca.crt")],
        }
        assert volumes["service-secret"] == {
            "secretName": service_secret,
            "defaultMode": 0o440,
            "items": [{"key": key, "path": "service-secret"}],
        }
        mounts = _mounts(pod)
        for name, path in (("mtls", "/etc/awareness/mtls"), ("service-secret", "/etc/awareness/service")):
            # A whole-volume mount (never subPath), so the kubelet swaps a renewed certificate in.
            assert mounts[name] == {"name": name, "mountPath": path, "readOnly": True}, pod.owner


def test_the_jobs_carry_the_identity_of_the_service_they_belong_to() -> None:
    pods = {pod.component: pod for pod in pod_templates(render())}

    def identity_secrets(job: str) -> dict[str, str]:
        volumes = _secret_volumes(pods[job])
        return {name: volumes[name]["secretName"] for name in ("mtls", "service-secret") if name in volumes}

    assert identity_secrets("retrain") == {
        "mtls": "awareness-scoring-mtls",
        "service-secret": "awareness-scoring-service-secret",
    }
    assert identity_secrets("retention") == {
        "mtls": "awareness-gdpr-mtls",
        "service-secret": "awareness-gdpr-service-secret",
    }
    # The migration hook and the KEK rotation job call no service.
    assert identity_secrets("migrate") == identity_secrets("kek-rotation") == {}


def test_each_component_gets_its_own_generated_service_secret() -> None:
    manifests = render()
    secrets = by_name(manifests, "Secret")
    values = []
    for component in COMPONENTS:
        secret = secrets[f"awareness-{component}-service-secret"]
        assert secret["metadata"]["labels"]["app.kubernetes.io/component"] == component
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert set(secret["data"]) == {"service-secret"}
        assert len(base64.b64decode(base64.b64decode(secret["data"]["service-secret"]))) == 32
        values.append(secret["data"]["service-secret"])
    assert len(set(values)) == len(COMPONENTS)
    # A disabled service gets none.
    minimal = by_name(render(load_values(*SCENARIOS["minimal"])), "Secret")
    assert "awareness-scoring-service-secret" not in minimal


def test_an_existing_service_secret_replaces_the_generated_one() -> None:
    manifests = render({"serviceSecrets": {"existingSecrets": {"gdpr": "my-gdpr"}, "existingSecretKey": "k"}})
    secrets = by_name(manifests, "Secret")
    assert "awareness-gdpr-service-secret" not in secrets
    assert "awareness-ingest-service-secret" in secrets
    for pod in pod_templates(manifests):
        volume = _secret_volumes(pod).get("service-secret")
        if IDENTITY[pod.component] == "gdpr":
            assert volume is not None
            assert volume["secretName"] == "my-gdpr"
            assert volume["items"] == [{"key": "k", "path": "service-secret"}]
        elif volume is not None:
            assert volume["items"] == [{"key": "service-secret", "path": "service-secret"}]


# existingSecrets mode ----------------------------------------------------------------------------


def test_existing_certificate_secrets_render_no_certificate_and_are_mounted() -> None:
    manifests = render(CERT_MANAGER_OFF)
    assert of_kind(manifests, "Certificate") == []
    assert of_kind(manifests, "Issuer") == []
    pods = pod_templates(manifests)
    for pod in pods:
        identity = IDENTITY[pod.component]
        if identity is not None:
            assert _secret_volumes(pod)["mtls"]["secretName"] == EXISTING_CERTIFICATES[identity], pod.owner
    # Nothing left that kubernetes-validate cannot check.
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_an_existing_secret_replaces_one_components_certificate_only() -> None:
    manifests = render({"mtls": {"existingSecrets": {"gateway": "gateway-cert"}}})
    certificates = _service_certificates(manifests)
    assert set(certificates) == set(COMPONENTS) - {"gateway"}
    (gateway,) = [p for p in pod_templates(manifests) if p.component == "gateway"]
    assert _secret_volumes(gateway)["mtls"]["secretName"] == "gateway-cert"


def test_a_component_without_a_certificate_fails_with_a_clear_message() -> None:
    missing = dict(EXISTING_CERTIFICATES)
    del missing["signing"]
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render_raw({"mtls": {"certManager": {"enabled": False}, "existingSecrets": missing}})
    message = str(caught.value)
    assert "mtls.certManager.enabled is false" in message
    assert "missing: mtls.existingSecrets.signing" in message
    # A disabled component needs none.
    without_signing = {**CERT_MANAGER_OFF["mtls"], "existingSecrets": missing}
    assert render({"mtls": without_signing, "services": {"signing": {"enabled": False}}})


# Health port -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario_name", sorted(SCENARIOS))
def test_grpc_probes_target_the_declared_plaintext_health_port(scenario_name: str) -> None:
    manifests = render(load_values(*SCENARIOS[scenario_name]))
    deployments = {pod.component: pod for pod in pod_templates(of_kind(manifests, "Deployment"))}
    for component, pod in deployments.items():
        (container,) = pod.spec["containers"]
        ports = {port["name"]: port for port in container["ports"]}
        env = _env(pod)
        if component == "gateway":
            assert "health" not in ports and "AWARENESS_HEALTH_PORT" not in env
            continue
        assert ports["health"] == {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"}
        assert env["AWARENESS_HEALTH_PORT"] == str(HEALTH_PORT)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["grpc"]["port"] == HEALTH_PORT, (component, probe)
        assert ports["grpc"]["containerPort"] != HEALTH_PORT
    # No Service publishes it, and no pod of the release may reach another's health port.
    for service in of_kind(manifests, "Service"):
        assert HEALTH_PORT not in {port["port"] for port in service["spec"]["ports"]}
    assert not {c for c in allowed_pod_connections(manifests) if c[2] == HEALTH_PORT}


def test_the_health_port_is_configured_once() -> None:
    manifests = render({"grpc": {"healthPort": 9099}})
    for pod in pod_templates(of_kind(manifests, "Deployment")):
        if pod.component in GRPC_COMPONENTS:
            (container,) = pod.spec["containers"]
            assert container["readinessProbe"]["grpc"]["port"] == 9099
            assert _env(pod)["AWARENESS_HEALTH_PORT"] == "9099"
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render_raw({"grpc": {"healthPort": 9090}})
    assert "grpc.healthPort (9090) must differ" in str(caught.value)


# The shared internal secret is gone --------------------------------------------------------------

_INTERNAL_SECRET = re.compile(r"internal[-_ ]?secret", re.IGNORECASE)


@pytest.mark.parametrize("scenario_name", sorted(SCENARIOS))
def test_no_render_mentions_an_internal_secret(scenario_name: str) -> None:
    for template, text in render_raw(load_values(*SCENARIOS[scenario_name])).items():
        assert not _INTERNAL_SECRET.search(text), template


def test_no_chart_file_or_value_mentions_an_internal_secret() -> None:
    for path in CHART_DIR.rglob("*"):
        if path.is_file():
            assert not _INTERNAL_SECRET.search(path.read_text()), path
    with helm_python.Chart.load(CHART_DIR) as chart:
        assert "internalSecret" not in chart.values
    # An old values file that still sets it is refused rather than silently ignored.
    with pytest.raises(helm_python.HelmValuesError) as caught:
        render_raw({"internalSecret": {"value": "x" * 32}})
    assert "internalSecret" in str(caught.value)
    # The docs describe the per-service identities; only the upgrade note may name the old value.
    docs = (REPO_ROOT / "docs" / "helm.md").read_text()
    assert "AWARENESS_INTERNAL_SECRET" not in docs
    assert "| `internalSecret" not in docs
    assert "| `mtls.certManager.enabled`" in docs and "| `serviceSecrets.existingSecrets`" in docs


# Schema ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mtls": {"certManager": {"issuerRef": {"kind": "ClusterIssuer"}}}}, "issuerRef"),
        ({"mtls": {"certManager": {"duration": "90 days"}}}, "duration"),
        ({"mtls": {"certManager": {"enabled": "yes"}}}, "enabled"),
        ({"mtls": {"existingSecrets": {"search": "x"}}}, "search"),
        ({"mtls": {"caBundle": "x"}}, "caBundle"),
        ({"serviceSecrets": {"existingSecrets": {"retrain": "x"}}}, "retrain"),
        ({"serviceSecrets": {"existingSecretKey": ""}}, "existingSecretKey"),
        ({"grpc": {"healthPort": 0}}, "healthPort"),
    ],
    ids=[
        "issuer-kind-without-name",
        "bad-duration",
        "enabled-not-boolean",
        "unknown-certificate-component",
        "unknown-mtls-key",
        "unknown-service-secret-component",
        "empty-secret-key",
        "health-port-below-minimum",
    ],
)
def test_values_schema_checks_the_identity_blocks(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        render_raw(values)
    assert message in str(caught.value)
