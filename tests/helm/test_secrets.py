"""Secret values reach pods only through Secrets: never a ConfigMap, never inline in a workload."""

from __future__ import annotations

import base64

import yaml

from tests.helm.rendering import (
    SCENARIOS,
    Manifest,
    by_name,
    load_values,
    of_kind,
    pod_templates,
    render,
    secret_plaintexts,
)

SERVICES = ("ingest", "policy", "scoring", "analytics", "signing", "gdpr", "gateway")

KNOWN_SECRETS = {
    "database": "postgresql://awareness:db-S3cret-7f1c@db.internal:5432/awareness",
    "ingest_database": "postgresql://ingest:ingest-S3cret-0a9d@db.internal:5432/ingest",
    "redis": "rediss://:redis-S3cret-55e2@redis.internal:6378/0",
    "gophish": "gophish-hmac-S3cret-c0ffee",
    "kek": base64.b64encode(b"k" * 32).decode(),
    "lookup": base64.b64encode(b"l" * 32).decode(),
    "pki": "-----BEGIN PRIVATE KEY-----\npki-S3cret-d00d\n-----END PRIVATE KEY-----\n",
}

SECRET_VALUES = {
    "database": {
        "url": KNOWN_SECRETS["database"],
        "perServiceUrls": {"ingest": KNOWN_SECRETS["ingest_database"]},
    },
    "redis": {"url": KNOWN_SECRETS["redis"]},
    "gophishSecret": {"value": KNOWN_SECRETS["gophish"]},
    "gdprKeys": {"kek": KNOWN_SECRETS["kek"], "lookupSecret": KNOWN_SECRETS["lookup"]},
    "pki": {"files": {"tsa-key.pem": KNOWN_SECRETS["pki"]}},
}


def _text(manifest: Manifest) -> str:
    return yaml.safe_dump(manifest)


def _containers_anywhere(text: str, secret: str) -> bool:
    """A secret could leak plain or base64-encoded."""
    return secret in text or base64.b64encode(secret.encode()).decode() in text


def test_known_secrets_land_in_secrets_and_nowhere_else() -> None:
    manifests = render(SECRET_VALUES)
    secrets = of_kind(manifests, "Secret")
    carried = {value for secret in secrets for value in secret_plaintexts(secret)}
    for label, value in KNOWN_SECRETS.items():
        assert value in carried, f"{label} is not in any Secret"
    config_maps = of_kind(manifests, "ConfigMap")
    assert config_maps
    for manifest in manifests:
        if manifest["kind"] == "Secret":
            continue
        text = _text(manifest)
        for label, value in KNOWN_SECRETS.items():
            assert not _containers_anywhere(text, value), f"{label} leaked into {manifest['kind']}"


def test_the_leak_check_would_see_a_secret_in_a_configmap() -> None:
    # Extra env is meant for non-secrets; putting a password there is the mistake the check must catch.
    manifests = render(
        {**SECRET_VALUES, "services": {"gateway": {"env": {"LEAK": KNOWN_SECRETS["gophish"]}}}}
    )
    leaked = [
        m
        for m in manifests
        if m["kind"] != "Secret" and _containers_anywhere(_text(m), KNOWN_SECRETS["gophish"])
    ]
    assert leaked


def _certificate_secrets(manifests: list[Manifest]) -> set[str]:
    """The Secrets cert-manager writes for the chart's Certificates: the services' and the gRPC door's
    (the CA's is mounted nowhere)."""
    return {c["spec"]["secretName"] for c in of_kind(manifests, "Certificate") if not c["spec"].get("isCA")}


def test_services_read_secrets_by_reference() -> None:
    manifests = render(SECRET_VALUES)
    secret_names = {s["metadata"]["name"] for s in of_kind(manifests, "Secret")}
    secret_names |= _certificate_secrets(manifests)
    for pod in pod_templates(manifests):
        for container in pod.spec["containers"]:
            for env in container.get("env", []):
                if env["name"].endswith("_URL") and env["name"] != "AWARENESS_GATEWAY_JWKS_URL":
                    assert env["valueFrom"]["secretKeyRef"]["name"] in secret_names, (pod.owner, env["name"])
        for volume in pod.spec["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secret_names, (pod.owner, volume["name"])
    ingest = by_name(manifests, "Deployment")["awareness-ingest"]
    env_names = {e["name"] for e in ingest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "AWARENESS_INGEST_DATABASE_URL" in env_names


def test_existing_secrets_replace_every_chart_secret() -> None:
    values = load_values(*SCENARIOS["production"])
    manifests = render(values)
    assert of_kind(manifests, "Secret") == []
    referenced: set[str] = set()
    for pod in pod_templates(manifests):
        for container in pod.spec["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["name"])
        referenced |= {v["secret"]["secretName"] for v in pod.spec["volumes"] if "secret" in v}
    # The service certificates' Secrets are written by cert-manager, from the chart's Certificates.
    certificates = _certificate_secrets(manifests)
    assert certificates
    assert referenced == {
        *certificates,
        *values["database"]["perServiceSecrets"].values(),
        *values["serviceSecrets"]["existingSecrets"].values(),
        values["redis"]["existingSecret"],
        values["ingestFingerprintSecret"]["existingSecret"],
        values["gophishSecret"]["existingSecret"],
        values["gdprKeys"]["existingSecret"],
        values["pki"]["existingSecret"],
        values["backup"]["databaseSecret"],
    }


def test_generated_keys_are_random_32_bytes_and_kept_on_uninstall() -> None:
    first = {s["metadata"]["name"]: s for s in of_kind(render(), "Secret")}
    second = {s["metadata"]["name"]: s for s in of_kind(render(), "Secret")}
    for name, key in (
        ("awareness-gdpr-keys", "kek"),
        ("awareness-gdpr-keys", "lookup-secret"),
        *((f"awareness-{service}-service-secret", "service-secret") for service in SERVICES),
        ("awareness-ingest-fingerprint", "fingerprint-secret"),
        ("awareness-gophish", "gophish-secret"),
    ):
        secret = first[name]
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        file_content = base64.b64decode(secret["data"][key])
        assert len(base64.b64decode(file_content)) == 32
        # Offline renders cannot look up the cluster, so each render draws fresh bytes.
        assert secret["data"][key] != second[name]["data"][key]
    # Every service has a secret of its own: no two are equal.
    service_secrets = {
        first[f"awareness-{service}-service-secret"]["data"]["service-secret"] for service in SERVICES
    }
    assert len(service_secrets) == len(SERVICES)
