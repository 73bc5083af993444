"""Pods run one worker process each: in Kubernetes replicas and the HPA play that role, so a change of
the image's default (AWARENESS_<SERVICE>_WORKERS) never multiplies processes inside a pod."""

from __future__ import annotations

from services.runtime.config import WORKER_SERVICES, workers_var
from tests.helm.rendering import Manifest, pod_templates, render


def _service_env(manifests: list[Manifest]) -> dict[str, dict[str, str]]:
    """Each Deployment's container env (name -> value), by component."""
    env: dict[str, dict[str, str]] = {}
    for pod in pod_templates(manifests):
        if not pod.owner.startswith("Deployment/"):
            continue
        (container,) = pod.spec["containers"]
        env[pod.component] = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    return env


def test_gateway_and_ingest_pods_set_one_worker_explicitly(manifests: list[Manifest]) -> None:
    env = _service_env(manifests)
    for service in WORKER_SERVICES:
        assert env[service][workers_var(service)] == "1", service
    for component, variables in env.items():
        if component not in WORKER_SERVICES:
            assert not any(name.endswith("_WORKERS") for name in variables), component


def test_a_value_set_in_the_service_env_is_not_duplicated() -> None:
    manifests = render({"services": {"ingest": {"env": {"AWARENESS_INGEST_WORKERS": "2"}}}})
    (pod,) = [pod for pod in pod_templates(manifests) if pod.owner.endswith("-ingest")]
    (container,) = pod.spec["containers"]
    names = [e["name"] for e in container["env"]]
    assert names.count("AWARENESS_INGEST_WORKERS") == 1
