"""Every workload the chart renders is hardened, probed, sized, labelled, spread and scaled."""

from __future__ import annotations

import pytest

from tests.helm.rendering import (
    SCENARIOS,
    Manifest,
    PodTemplate,
    by_name,
    load_values,
    of_kind,
    pod_templates,
    render,
    selector_matches,
)

RUN_AS_USER = 10001
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
GRPC_PORTS = {
    "ingest": 50051,
    "policy": 50052,
    "scoring": 50053,
    "signing": 50054,
    "gdpr": 50055,
    "analytics": 50056,
}
HEALTH_PORT = 8086


def _deployment_component(deployment: Manifest) -> str:
    component: str = deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
    return component


def test_every_pod_and_container_runs_hardened(manifests: list[Manifest]) -> None:
    pods = pod_templates(manifests)
    kinds = {pod.owner.split("/")[0] for pod in pods}
    assert kinds >= {"Deployment", "Job"}
    for pod in pods:
        pod_security = pod.spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, pod.owner
        assert pod_security["runAsUser"] == RUN_AS_USER, pod.owner
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, pod.owner
        # Only the KEK rotation job holds a token (its Role: one Secret, one Deployment).
        assert pod.spec["automountServiceAccountToken"] is (pod.component == "kek-rotation"), pod.owner
        tmp_volumes = {v["name"] for v in pod.spec["volumes"] if "emptyDir" in v}
        for container in pod.spec["containers"]:
            where = f"{pod.owner}/{container['name']}"
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, where
            assert security["runAsUser"] == RUN_AS_USER, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in security["capabilities"], where
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
            tmp_mounts = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert len(tmp_mounts) == 1 and tmp_mounts[0]["name"] in tmp_volumes, where
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            assert "memory" in resources["limits"] and "cpu" in resources["limits"], where


def test_cronjobs_are_hardened_too() -> None:
    cronjobs = of_kind(render(), "CronJob")
    assert {c["metadata"]["labels"]["app.kubernetes.io/component"] for c in cronjobs} == {
        "retrain",
        "retention",
        "report",
        "verification",
        "kek-rotation",
    }
    pods = pod_templates(cronjobs)
    assert len(pods) == 5
    for pod in pods:
        assert pod.spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_deployment_containers_have_startup_liveness_and_readiness_probes(manifests: list[Manifest]) -> None:
    deployments = of_kind(manifests, "Deployment")
    assert deployments
    for deployment in deployments:
        component = _deployment_component(deployment)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container[probe_name]
            if component == "gateway":
                assert probe["httpGet"]["port"] in container_ports, probe_name
                expected_path = "/health/ready" if probe_name == "readinessProbe" else "/health/live"
                assert probe["httpGet"]["path"] == expected_path
            else:
                # Native gRPC probes against grpc.health.v1 on the plaintext health port: the gRPC
                # port is mTLS only, and kubelet's gRPC probes cannot do TLS.
                assert probe["grpc"]["port"] == HEALTH_PORT == container_ports["health"], probe_name
                assert container_ports["grpc"] == GRPC_PORTS[component]
        if component != "gateway":
            assert container["livenessProbe"]["grpc"]["service"] == ""
            assert container["readinessProbe"]["grpc"]["service"].startswith(f"awareness.{component}.v1.")


def test_services_run_the_one_image_with_serve_and_listen_on_their_ports(manifests: list[Manifest]) -> None:
    images = set()
    for deployment in of_kind(manifests, "Deployment"):
        component = _deployment_component(deployment)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        images.add(container["image"])
        assert container["args"] == ["serve", component]
        env = {e["name"]: e for e in container["env"]}
        # The shared URL, or (production values) the service's own role only.
        assert ("DATABASE_URL" in env) != (f"AWARENESS_{component.upper()}_DATABASE_URL" in env)
        if component != "gateway":
            assert "REDIS_URL" not in env, component
        listen_port = container["ports"][0]["containerPort"]
        if component == "gateway":
            assert env["AWARENESS_GATEWAY_PORT"]["value"] == str(listen_port)
        else:
            assert env["AWARENESS_GRPC_PORT"]["value"] == str(listen_port) == str(GRPC_PORTS[component])
            assert env["AWARENESS_METRICS_PORT"]["value"] == "9090"
    assert len(images) == 1


def test_every_enabled_deployment_has_its_hpa_and_pdb(manifests: list[Manifest]) -> None:
    deployments = by_name(manifests, "Deployment")
    hpas = by_name(manifests, "HorizontalPodAutoscaler")
    pdbs = of_kind(manifests, "PodDisruptionBudget")
    assert deployments
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == set(deployments)
    for name, deployment in deployments.items():
        hpa = hpas[name]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert any(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
        # With an HPA the Deployment must not pin replicas, or every upgrade resets the scale.
        assert "replicas" not in deployment["spec"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [p for p in pdbs if selector_matches(p["spec"]["selector"], pod_labels)]
        assert len(matching) == 1, name


def test_default_replica_ranges() -> None:
    hpas = of_kind(render(), "HorizontalPodAutoscaler")
    ranges = {
        h["metadata"]["labels"]["app.kubernetes.io/component"]: (
            h["spec"]["minReplicas"],
            h["spec"]["maxReplicas"],
        )
        for h in hpas
    }
    assert ranges == {
        "gateway": (3, 10),
        "ingest": (3, 10),
        "policy": (2, 6),
        "scoring": (2, 6),
        "analytics": (2, 6),
        "signing": (2, 6),
        "gdpr": (2, 6),
    }
    memory_targets = {
        h["metadata"]["labels"]["app.kubernetes.io/component"]
        for h in hpas
        if any(m["resource"]["name"] == "memory" for m in h["spec"]["metrics"])
    }
    assert memory_targets == {"scoring"}


def test_autoscaling_off_pins_replicas_and_drops_the_hpa() -> None:
    values = {"services": {"policy": {"replicas": 4, "autoscaling": {"enabled": False}}}}
    manifests = render(values)
    deployment = by_name(manifests, "Deployment")["awareness-policy"]
    assert deployment["spec"]["replicas"] == 4
    assert "awareness-policy" not in by_name(manifests, "HorizontalPodAutoscaler")


def test_pods_spread_across_nodes(manifests: list[Manifest]) -> None:
    for deployment in of_kind(manifests, "Deployment"):
        template = deployment["spec"]["template"]
        (constraint,) = template["spec"]["topologySpreadConstraints"]
        assert constraint["topologyKey"] == "kubernetes.io/hostname"
        assert selector_matches(constraint["labelSelector"], template["metadata"]["labels"])
        assert not selector_matches(constraint["labelSelector"], {"app.kubernetes.io/component": "other"})


def test_every_object_carries_the_standard_labels(manifests: list[Manifest]) -> None:
    for manifest in manifests:
        labels = manifest["metadata"]["labels"]
        missing = [key for key in STANDARD_LABELS if key not in labels]
        assert not missing, f"{manifest['kind']}/{manifest['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "awareness"


def test_service_account_does_not_mount_a_token(manifests: list[Manifest]) -> None:
    accounts = [
        a
        for a in of_kind(manifests, "ServiceAccount")
        if "helm.sh/hook" not in a["metadata"].get("annotations", {})
    ]
    # The shared one and the KEK rotation job's; a token is mounted only where a pod asks for it.
    assert {a["metadata"]["name"] for a in accounts} == {"awareness", "awareness-kek-rotation"}
    for account in accounts:
        assert account["automountServiceAccountToken"] is False
    for pod in pod_templates(manifests):
        assert pod.spec["serviceAccountName"] in {
            a["metadata"]["name"] for a in of_kind(manifests, "ServiceAccount")
        }


def test_migrations_run_as_a_pre_install_and_pre_upgrade_hook(manifests: list[Manifest]) -> None:
    (job,) = of_kind(manifests, "Job")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate", "--all"]
    # Hooks run before the release's own Secrets and ConfigMap exist: everything the Job reads must be
    # a hook itself (weighted earlier) or a Secret the user created.
    hook_objects = {
        (m["kind"], m["metadata"]["name"])
        for m in manifests
        if "helm.sh/hook" in m["metadata"].get("annotations", {})
        and int(m["metadata"]["annotations"].get("helm.sh/hook-weight", "0")) < 0
    }
    pod_spec = job["spec"]["template"]["spec"]
    assert ("ServiceAccount", pod_spec["serviceAccountName"]) in hook_objects
    assert "envFrom" not in container
    release_secrets = {
        m["metadata"]["name"]
        for m in of_kind(manifests, "Secret")
        if "helm.sh/hook" not in m["metadata"].get("annotations", {})
    }
    for env in container["env"]:
        secret = env.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
        assert secret is None or secret not in release_secrets, env["name"]
    assert all("secret" not in volume for volume in pod_spec["volumes"])


def test_cronjobs_run_daily_cli_commands() -> None:
    cronjobs = {
        c["metadata"]["labels"]["app.kubernetes.io/component"]: c for c in of_kind(render(), "CronJob")
    }
    expected = {
        "retrain": ["model", "train", "--register", "--decide"],
        "retention": ["gdpr", "apply-retention"],
    }
    for component, args in expected.items():
        spec = cronjobs[component]["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        minute, hour, day, month, weekday = spec["schedule"].split()
        assert (day, month, weekday) == ("*", "*", "*") and minute.isdigit() and hour.isdigit()
        (container,) = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        assert container["args"] == args


def test_a_disabled_service_leaves_no_trace() -> None:
    manifests = render(load_values(*SCENARIOS["minimal"]))
    names = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    assert not any(name.endswith("-scoring") for _, name in names)
    assert "retrain" not in {p.component for p in pod_templates(manifests)}
    (config,) = [c for c in of_kind(manifests, "ConfigMap") if c["metadata"]["name"] == "awareness-config"]
    assert "AWARENESS_SCORING_TARGET" not in config["data"]
    assert config["data"]["AWARENESS_INGEST_TARGET"] == (
        "dns:///awareness-ingest-headless.awareness.svc.cluster.local:50051"
    )


def test_configmap_points_each_service_at_its_kubernetes_service(manifests: list[Manifest]) -> None:
    (config,) = [c for c in of_kind(manifests, "ConfigMap") if c["metadata"]["name"] == "awareness-config"]
    services = {s["metadata"]["name"]: s for s in of_kind(manifests, "Service")}
    targets = {k: v for k, v in config["data"].items() if k.endswith("_TARGET")}
    assert targets
    for key, target in targets.items():
        # dns:///<headless Service>.<namespace>.svc.cluster.local:<port> (tests/helm/test_load_balancing.py)
        fqdn, port = target.removeprefix("dns:///").rsplit(":", 1)
        host = fqdn.split(".")[0]
        assert key == f"AWARENESS_{host.removeprefix('awareness-').removesuffix('-headless').upper()}_TARGET"
        assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}
    assert config["data"]["AWARENESS_HOST"] == "0.0.0.0"
    assert config["data"]["AWARENESS_DATA_DIR"].startswith("/tmp/")


def test_production_sends_traces_to_the_collector_and_exposes_tls_ingress() -> None:
    manifests = render(load_values(*SCENARIOS["production"]))
    (config,) = [c for c in of_kind(manifests, "ConfigMap") if c["metadata"]["name"] == "awareness-config"]
    assert config["data"]["AWARENESS_TRACES_EXPORTER"] == "otlp"
    assert config["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4317")
    (ingress,) = of_kind(manifests, "Ingress")
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"
    assert ingress["spec"]["tls"][0]["hosts"] == [r["host"] for r in ingress["spec"]["rules"]]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "awareness-gateway", "port": {"name": "http"}}
    (monitor,) = of_kind(manifests, "ServiceMonitor")
    # Every process's /metrics is on its "metrics" port (the gateway's admin port); never "http".
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics"}
    scraped_ports = {p["name"] for s in of_kind(manifests, "Service") for p in s["spec"]["ports"]}
    assert {"metrics", "http"} <= scraped_ports
    for service in of_kind(manifests, "Service"):
        assert selector_matches(monitor["spec"]["selector"], service["metadata"]["labels"])


@pytest.mark.parametrize("component", ["signing", "gdpr"])
def test_key_material_is_mounted_read_only(component: str) -> None:
    manifests = render(load_values(*SCENARIOS["production"]))
    deployment = by_name(manifests, "Deployment")[f"awareness-{component}"]
    pod: PodTemplate = next(p for p in pod_templates([deployment]))
    (container,) = pod.spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    secret_volumes = {v["name"]: v["secret"]["secretName"] for v in pod.spec["volumes"] if "secret" in v}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"] if m["name"] in secret_volumes}
    file_vars = (
        ["AWARENESS_PKI_DIR"]
        if component == "signing"
        else ["AWARENESS_KEK_FILE", "AWARENESS_LOOKUP_SECRET_FILE"]
    )
    identity_vars = ["AWARENESS_SERVICE_SECRET_FILE", "AWARENESS_MTLS_KEY_FILE", "AWARENESS_MTLS_CERT_FILE"]
    for var in [*file_vars, *identity_vars]:
        path = env[var]
        assert path is not None
        mount = next(m for p, m in mounts.items() if path == p or path.startswith(p + "/"))
        assert mount["readOnly"] is True
    expected_secret = "awareness-pki" if component == "signing" else "awareness-gdpr-keys"
    assert expected_secret in secret_volumes.values()


def test_signing_without_a_pki_secret_gets_no_pki_dir_and_so_refuses_to_start() -> None:
    # Each pod would otherwise generate a PKI of its own (services/signing/app.py refuses in Kubernetes).
    manifests = render()
    deployment = by_name(manifests, "Deployment")["awareness-signing"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "AWARENESS_PKI_DIR" not in env
    assert not any(m["mountPath"] == "/etc/awareness/pki" for m in container["volumeMounts"])
    (config,) = [c for c in of_kind(manifests, "ConfigMap") if c["metadata"]["name"] == "awareness-config"]
    assert config["data"]["AWARENESS_ENVIRONMENT"] == "kubernetes"
