"""Render the Helm chart offline with Helm's Go SDK (helm-python-sdk) and read the result.

The helpers here only load and interpret manifests; the assertions live in the test modules.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "awareness"
PRODUCTION_VALUES = CHART_DIR / "values-production.yaml"
MINIMAL_VALUES = Path(__file__).resolve().parent / "fixtures" / "values-minimal.yaml"
RELEASE_NAME = "awareness"
NAMESPACE = "awareness"
# kubernetes-validate ships v1.30.0 schemas (kubernetes-json-schema/v1.30.0-local-strict).
KUBERNETES_VERSION = "1.30.0"

Manifest = dict[str, Any]

# The scenarios every structural test runs against: name -> values files, merged in order like `-f a -f b`.
SCENARIOS: dict[str, tuple[Path, ...]] = {
    "default": (),
    "production": (PRODUCTION_VALUES,),
    "minimal": (MINIMAL_VALUES,),
}


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge values the way repeated `-f` files do: maps merge key by key, anything else is replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_values(*files: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in files:
        values = deep_merge(values, yaml.safe_load(path.read_text()) or {})
    return deep_merge(values, overrides or {})


def render_raw(values: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` produces (schema validation included)."""
    with helm_python.Chart.load(CHART_DIR) as chart:
        return chart.render(
            dict(values) if values else None, name=RELEASE_NAME, namespace=NAMESPACE, is_install=True
        )


def render(values: Mapping[str, Any] | None = None) -> list[Manifest]:
    """Every Kubernetes object of the render (NOTES.txt left out)."""
    manifests: list[Manifest] = []
    for template, text in sorted(render_raw(values).items()):
        if template.endswith("NOTES.txt"):
            continue
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return manifests


def render_scenario(name: str) -> list[Manifest]:
    return render(load_values(*SCENARIOS[name]))


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def by_name(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in of_kind(manifests, kind)}


@dataclass(frozen=True)
class PodTemplate:
    """A pod the render would create: from a Deployment, a CronJob or a Job."""

    owner: str
    labels: dict[str, str]
    spec: dict[str, Any]

    @property
    def component(self) -> str:
        return self.labels["app.kubernetes.io/component"]

    def container_ports(self) -> set[int]:
        return {port["containerPort"] for c in self.spec["containers"] for port in c.get("ports", [])}


def pod_templates(manifests: list[Manifest]) -> list[PodTemplate]:
    pods: list[PodTemplate] = []
    for manifest in manifests:
        kind = manifest["kind"]
        if kind in ("Deployment", "Job"):
            template = manifest["spec"]["template"]
        elif kind == "CronJob":
            template = manifest["spec"]["jobTemplate"]["spec"]["template"]
        else:
            continue
        pods.append(
            PodTemplate(
                owner=f"{kind}/{manifest['metadata']['name']}",
                labels=template["metadata"]["labels"],
                spec=template["spec"],
            )
        )
    return pods


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes LabelSelector semantics (matchLabels and matchExpressions); {} matches everything."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_selects_pod(peer: Mapping[str, Any], pod: PodTemplate) -> bool:
    """Whether a NetworkPolicyPeer covers a pod of the release (ipBlock peers never do: pod IPs vary)."""
    if "ipBlock" in peer:
        return False
    namespace_selector = peer.get("namespaceSelector")
    if namespace_selector is not None and not selector_matches(
        namespace_selector, {"kubernetes.io/metadata.name": NAMESPACE}
    ):
        return False
    return selector_matches(peer.get("podSelector") or {}, pod.labels)


def _rule_allows(rule: Mapping[str, Any], *, peers_key: str, pod: PodTemplate, port: int) -> bool:
    peers = rule.get(peers_key)
    ports = rule.get("ports")
    peer_ok = not peers or any(_peer_selects_pod(peer, pod) for peer in peers)
    port_ok = not ports or any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports)
    return peer_ok and port_ok


def _direction_allows(
    policies: list[Manifest], *, direction: str, subject: PodTemplate, peer: PodTemplate, port: int
) -> bool:
    """Egress from subject to peer (or ingress to subject from peer) under the isolating policies."""
    selecting = [
        p
        for p in policies
        if selector_matches(p["spec"]["podSelector"], subject.labels)
        and direction in p["spec"].get("policyTypes", [])
    ]
    if not selecting:
        return True  # not isolated in this direction
    rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    return any(
        _rule_allows(rule, peers_key=peers_key, pod=peer, port=port)
        for policy in selecting
        for rule in policy["spec"].get(rules_key) or []
    )


def allowed_pod_connections(manifests: list[Manifest]) -> set[tuple[str, str, int]]:
    """(source component, destination component, port) for every TCP connection the policies allow
    between pods of the release, on every port a destination container declares."""
    policies = of_kind(manifests, "NetworkPolicy")
    pods = pod_templates(manifests)
    allowed: set[tuple[str, str, int]] = set()
    for source in pods:
        for destination in pods:
            for port in destination.container_ports():
                egress = _direction_allows(
                    policies, direction="Egress", subject=source, peer=destination, port=port
                )
                ingress = _direction_allows(
                    policies, direction="Ingress", subject=destination, peer=source, port=port
                )
                if egress and ingress:
                    allowed.add((source.component, destination.component, port))
    return allowed


def secret_plaintexts(secret: Manifest) -> Iterator[str]:
    """The decoded values a Secret carries (data is base64, stringData is plain)."""
    for value in (secret.get("data") or {}).values():
        yield base64.b64decode(value).decode()
    yield from (secret.get("stringData") or {}).values()
