"""The archive volume and the backup CronJob (docs/disaster-recovery.md), as the chart renders them."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest

from tests.helm.rendering import by_name, of_kind, pod_templates, render

ENABLED = {"backup": {"enabled": True}}
ARCHIVE_DIR = "/var/lib/awareness/archive"


def _archive_env(deployment: dict[str, Any]) -> str | None:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    values = [e.get("value") for e in container.get("env", []) if e["name"] == "AWARENESS_ARCHIVE_DIR"]
    return values[0] if values else None


def _claims(pod_spec: dict[str, Any]) -> set[str]:
    return {
        v["persistentVolumeClaim"]["claimName"] for v in pod_spec["volumes"] if "persistentVolumeClaim" in v
    }


def test_off_by_default_nothing_is_mounted_or_scheduled() -> None:
    manifests = render()
    assert of_kind(manifests, "PersistentVolumeClaim") == []
    assert "awareness-backup" not in by_name(manifests, "CronJob")
    assert all(_archive_env(d) is None for d in of_kind(manifests, "Deployment"))


def test_ingest_and_gdpr_write_to_the_archive_volume_the_backup_job_fills() -> None:
    manifests = render(ENABLED)
    (claim,) = of_kind(manifests, "PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    name = claim["metadata"]["name"]
    deployments = by_name(manifests, "Deployment")
    for service, deployment in deployments.items():
        writes = service in ("awareness-ingest", "awareness-gdpr")
        assert (_archive_env(deployment) == ARCHIVE_DIR) == writes, service
        assert (_claims(deployment["spec"]["template"]["spec"]) == {name}) == writes, service
        mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        assert any(m["name"] == "archive" and m["mountPath"] == ARCHIVE_DIR for m in mounts) == writes
    job = by_name(manifests, "CronJob")["awareness-backup"]
    (pod,) = pod_templates([job])
    (container,) = pod.spec["containers"]
    assert container["args"] == ["backup", "create", "--to", f"{ARCHIVE_DIR}/sets", "--keep", "14"]
    assert _claims(pod.spec) == {name}
    # It reaches only the database: no certificate, so no service would accept its calls.
    assert not any(v["name"] == "mtls" for v in pod.spec["volumes"])
    url = next(e for e in container["env"] if e["name"] == "DATABASE_URL")
    assert url["valueFrom"]["secretKeyRef"]["name"] == "awareness-datastores"


def test_an_existing_claim_and_a_backup_role_are_used_as_given() -> None:
    manifests = render(
        {
            "backup": {
                "enabled": True,
                "persistence": {"existingClaim": "dr-nfs"},
                "databaseSecret": "db-backup",
            }
        }
    )
    assert of_kind(manifests, "PersistentVolumeClaim") == []
    job = by_name(manifests, "CronJob")["awareness-backup"]
    (pod,) = pod_templates([job])
    assert _claims(pod.spec) == {"dr-nfs"}
    url = next(e for e in pod.spec["containers"][0]["env"] if e["name"] == "DATABASE_URL")
    assert url["valueFrom"]["secretKeyRef"] == {"name": "db-backup", "key": "DATABASE_URL"}


def test_the_backup_job_may_reach_the_database_and_no_service() -> None:
    manifests = render({**ENABLED, "networkPolicy": {"enabled": True}})
    policy = next(
        p
        for p in of_kind(manifests, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == "backup"
    )
    assert policy["spec"]["ingress"] == []
    (egress,) = policy["spec"]["egress"]
    assert all(set(peer) == {"ipBlock"} for peer in egress["to"])  # no pod of the release
    assert egress["ports"] == [{"protocol": "TCP", "port": 5432}]


@pytest.mark.parametrize("settings", [{"keep": 0}, {"archiveDir": "relative/path"}, {"schedule": "daily"}])
def test_the_values_schema_refuses_malformed_backup_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        render({"backup": {"enabled": True, **settings}})
