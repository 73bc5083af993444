"""The scheduled verification CronJob: its command, its identity (ingest's certificate), the databases
it reads, a schedule the stale alert can rely on, and its values in the schema."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helm.rendering import SCENARIOS, load_values, of_kind, render


def _job(values: dict[str, Any] | None = None) -> dict[str, Any] | None:
    for cronjob in of_kind(render(values), "CronJob"):
        if cronjob["metadata"]["labels"]["app.kubernetes.io/component"] == "verification":
            spec: dict[str, Any] = cronjob["spec"]
            return spec
    return None


def _secrets(pod: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_job_runs_the_scheduled_verification_as_ingest(scenario: str) -> None:
    values = load_values(*SCENARIOS[scenario])
    spec = _job(values)
    assert spec is not None
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["verification", "run"]
    env = {item["name"]: item for item in container["env"]}
    assert env["AWARENESS_MTLS_CERT_FILE"]["value"] == "/etc/awareness/mtls/tls.crt"
    # ingest's own certificate and service secret, the very ones ingest's Deployment mounts.
    (ingest,) = [
        d
        for d in of_kind(render(values), "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "ingest"
    ]
    ingest_secrets = _secrets(ingest["spec"]["template"]["spec"])
    assert _secrets(pod) == {name: ingest_secrets[name] for name in ("mtls", "service-secret")}
    # It reads both databases itself: the shared URL, or ingest's and gdpr's own.
    assert "DATABASE_URL" in env or {"AWARENESS_INGEST_DATABASE_URL", "AWARENESS_GDPR_DATABASE_URL"} <= set(
        env
    )
    assert spec["concurrencyPolicy"] == "Forbid"


def test_the_schedule_runs_well_within_the_stale_alerts_threshold() -> None:
    spec = _job()
    assert spec is not None
    minute, hour, day, month, weekday = str(spec["schedule"]).split()
    # Hourly: many missed runs before AwarenessVerificationStale pages (26 h).
    assert minute.isdigit() and (hour, day, month, weekday) == ("*", "*", "*", "*")


def test_the_job_can_be_switched_off_and_the_schema_refuses_unknown_keys() -> None:
    assert _job({"cronJobs": {"verification": {"enabled": False}}}) is None
    with pytest.raises(Exception, match=r"(?i)additional|not allowed|schema"):
        render({"cronJobs": {"verification": {"everyHours": 1}}})
