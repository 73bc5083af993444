"""Issue 15 in the chart: secrets wired from Kubernetes Secrets to exactly the pods that need them,
one database role per service in production, /metrics and /health/dependencies off the Ingress and
open to Prometheus only, trusted proxies for the rate limits, and the monthly KEK rotation job."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helm.rendering import (
    CHART_DIR,
    SCENARIOS,
    Manifest,
    PodTemplate,
    by_name,
    load_values,
    of_kind,
    pod_templates,
    render,
    render_scenario,
)

SERVICES = ("ingest", "policy", "scoring", "analytics", "signing", "gdpr", "gateway")
ADMIN_PORT = 9400


def _env(pod: PodTemplate) -> dict[str, dict[str, Any]]:
    (container,) = pod.spec["containers"]
    return {e["name"]: e for e in container.get("env", [])}


def _secret_volumes(pod: PodTemplate) -> dict[str, str]:
    """Mount path -> Secret name, for every Secret volume the container mounts."""
    volumes = {v["name"]: v["secret"]["secretName"] for v in pod.spec["volumes"] if "secret" in v}
    (container,) = pod.spec["containers"]
    return {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"] if m["name"] in volumes}


def _mounted_file(pod: PodTemplate, variable: str) -> str | None:
    """The Secret whose mount holds the file named by ``variable``, if it is set and mounted."""
    value = _env(pod).get(variable, {}).get("value")
    if value is None:
        return None
    for path, secret in _secret_volumes(pod).items():
        if value.startswith(path + "/"):
            return secret
    return None


def _pods(manifests: list[Manifest]) -> dict[str, PodTemplate]:
    return {pod.component: pod for pod in pod_templates(manifests)}


@pytest.mark.parametrize(
    ("variable", "component", "default_secret", "production_secret"),
    [
        (
            "AWARENESS_INGEST_FINGERPRINT_SECRET_FILE",
            "ingest",
            "awareness-ingest-fingerprint",
            "awareness-ingest-fingerprint",
        ),
        ("AWARENESS_GOPHISH_SECRET_FILE", "gateway", "awareness-gophish", "awareness-gophish"),
        ("AWARENESS_KEK_FILE", "gdpr", "awareness-gdpr-keys", "awareness-gdpr-keys"),
    ],
)
@pytest.mark.parametrize("scenario_name", ["default", "production"])
def test_each_secret_is_mounted_from_a_secret_into_exactly_the_pods_that_need_it(
    variable: str, component: str, default_secret: str, production_secret: str, scenario_name: str
) -> None:
    manifests = render_scenario(scenario_name)
    pods = _pods(manifests)
    expected = default_secret if scenario_name == "default" else production_secret
    assert _mounted_file(pods[component], variable) == expected
    for other, pod in pods.items():
        if other not in (component, "kek-rotation"):
            assert variable not in _env(pod), other
            assert expected not in _secret_volumes(pod).values(), other
    if scenario_name == "default":
        secret = by_name(manifests, "Secret")[expected]
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_the_signing_pki_comes_from_its_secret_into_signing_only() -> None:
    manifests = render_scenario("production")
    pods = _pods(manifests)
    signing = pods["signing"]
    pki_dir = _env(signing)["AWARENESS_PKI_DIR"]["value"]
    assert _secret_volumes(signing)[pki_dir] == "awareness-pki"
    for other, pod in pods.items():
        if other != "signing":
            assert "awareness-pki" not in _secret_volumes(pod).values(), other
            assert "AWARENESS_PKI_DIR" not in _env(pod), other


@pytest.mark.parametrize("scenario_name", sorted(SCENARIOS))
def test_pods_know_they_run_in_kubernetes_so_none_generates_a_secret(scenario_name: str) -> None:
    manifests = render_scenario(scenario_name)
    (config,) = [c for c in of_kind(manifests, "ConfigMap") if c["metadata"]["name"] == "awareness-config"]
    assert config["data"]["AWARENESS_ENVIRONMENT"] == "kubernetes"
    for pod in pod_templates(manifests):
        if pod.component != "migrate":  # the hook gets its settings inline and needs no secret
            env_from = pod.spec["containers"][0]["envFrom"]
            assert {"configMapRef": {"name": "awareness-config"}} in env_from, pod.owner


def test_production_gives_each_service_its_own_database_credentials_and_no_shared_url() -> None:
    manifests = render_scenario("production")
    pods = _pods(manifests)
    seen: set[str] = set()
    for service in SERVICES:
        env = _env(pods[service])
        assert "DATABASE_URL" not in env, service
        others = [name for name in env if name.endswith("_DATABASE_URL")]
        assert others == [f"AWARENESS_{service.upper()}_DATABASE_URL"], service
        ref = env[others[0]]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"awareness-db-{service}", "key": "DATABASE_URL"}
        seen.add(ref["name"])
    assert len(seen) == len(SERVICES)
    # The migration hook migrates each schema with that schema's own role.
    migrate = _env(pods["migrate"])
    assert "DATABASE_URL" not in migrate
    for service in SERVICES:
        name = f"AWARENESS_{service.upper()}_DATABASE_URL"
        assert migrate[name]["valueFrom"]["secretKeyRef"]["name"] == f"awareness-db-{service}"


def test_the_ingress_routes_only_the_public_port_and_no_operator_path() -> None:
    manifests = render_scenario("production")
    (ingress,) = of_kind(manifests, "Ingress")
    service = by_name(manifests, "Service")["awareness-gateway"]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"http": 8080, "metrics": ADMIN_PORT, "grpc-door": 8081}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert "metrics" not in path["path"] and "health" not in path["path"]
            backend = path["backend"]["service"]
            assert backend["name"] == "awareness-gateway"
            assert backend["port"] in ({"name": "http"}, {"number": 8080})


@pytest.mark.parametrize("scenario_name", sorted(SCENARIOS))
def test_the_gateway_admin_port_is_open_to_prometheus_only(scenario_name: str) -> None:
    manifests = render_scenario(scenario_name)
    values = load_values(CHART_DIR / "values.yaml", *SCENARIOS[scenario_name])
    gateway = _pods(manifests)["gateway"]
    assert _env(gateway)["AWARENESS_GATEWAY_ADMIN_PORT"]["value"] == str(ADMIN_PORT)
    (container,) = gateway.spec["containers"]
    assert {"name": "metrics", "containerPort": ADMIN_PORT, "protocol": "TCP"} in container["ports"]
    # Probes stay on the public port: the admin port is for Prometheus alone.
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    (policy,) = [
        p for p in of_kind(manifests, "NetworkPolicy") if p["metadata"]["name"] == "awareness-gateway-net"
    ]
    admin_rules = [r for r in policy["spec"]["ingress"] if any(p["port"] == ADMIN_PORT for p in r["ports"])]
    assert len(admin_rules) == 1
    assert admin_rules[0]["from"] == values["networkPolicy"]["prometheusPeers"]
    assert [p["port"] for p in admin_rules[0]["ports"]] == [ADMIN_PORT]
    for rule in policy["spec"]["ingress"]:
        if rule is not admin_rules[0]:
            assert all(p["port"] != ADMIN_PORT for p in rule["ports"])


def test_the_service_monitor_scrapes_the_admin_port() -> None:
    manifests = render_scenario("production")
    (monitor,) = of_kind(manifests, "ServiceMonitor")
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("metrics", "/metrics")]


@pytest.mark.parametrize(
    ("scenario_name", "expected"),
    [
        ("default", "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"),
        ("production", "10.40.0.0/16"),
    ],
)
def test_the_gateway_trusts_forwarded_addresses_from_the_ingress_controller_only(
    scenario_name: str, expected: str
) -> None:
    gateway = _pods(render_scenario(scenario_name))["gateway"]
    assert _env(gateway)["AWARENESS_GATEWAY_FORWARDED_ALLOW_IPS"]["value"] == expected
    none = _pods(render({"ingress": {"trustedProxyCIDRs": []}}))["gateway"]
    assert "AWARENESS_GATEWAY_FORWARDED_ALLOW_IPS" not in _env(none)


@pytest.mark.parametrize("scenario_name", ["default", "production"])
def test_the_kek_rotation_cronjob_runs_monthly_with_a_role_for_one_secret_and_one_deployment(
    scenario_name: str,
) -> None:
    manifests = render_scenario(scenario_name)
    cronjob = by_name(manifests, "CronJob")["awareness-kek-rotation"]
    assert cronjob["spec"]["schedule"] == "0 4 1 * *"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = _pods(manifests)["kek-rotation"]
    assert pod.spec["containers"][0]["args"] == ["gdpr", "rotate-kek", "--kubernetes"]
    env = _env(pod)
    assert env["AWARENESS_KEK_SECRET_NAME"]["value"] == "awareness-gdpr-keys"
    assert env["AWARENESS_GDPR_DEPLOYMENT"]["value"] == "awareness-gdpr"
    (role,) = [r for r in of_kind(manifests, "Role") if r["metadata"]["name"] == "awareness-kek-rotation"]
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["awareness-gdpr-keys"],
            "verbs": ["get", "update"],
        },
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "resourceNames": ["awareness-gdpr"],
            "verbs": ["get", "patch"],
        },
    ]
    (binding,) = of_kind(manifests, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod.spec["serviceAccountName"], "namespace": "awareness"}
    ]
    custom = by_name(render({"cronJobs": {"kekRotation": {"schedule": "0 4 * * 0"}}}), "CronJob")
    assert custom["awareness-kek-rotation"]["spec"]["schedule"] == "0 4 * * 0"
