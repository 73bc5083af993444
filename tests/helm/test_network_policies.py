"""NetworkPolicies: default deny, then exactly the calls of docs/architecture.md "Who calls whom"."""

from __future__ import annotations

from tests.helm.rendering import (
    SCENARIOS,
    Manifest,
    allowed_pod_connections,
    load_values,
    of_kind,
    pod_templates,
    render,
    selector_matches,
)

PORTS = {
    "ingest": 50051,
    "policy": 50052,
    "scoring": 50053,
    "signing": 50054,
    "gdpr": 50055,
    "analytics": 50056,
    "gateway": 8080,
}
# docs/architecture.md "Who calls whom", plus the CLI jobs: retraining reads labelled events from
# ingest and registers in scoring; retention asks gdpr; the weekly report asks analytics; the
# verification job records its results in ingest.
ARCHITECTURE_CALLS = {
    "gateway": {"ingest", "policy", "scoring", "signing", "gdpr", "analytics"},
    "ingest": {"gdpr", "signing", "scoring", "policy", "analytics"},
    "scoring": {"gdpr", "ingest"},
    "analytics": {"gdpr", "ingest", "scoring", "signing"},
    "gdpr": {"ingest"},
    "retrain": {"scoring"},
    "retention": {"gdpr"},
    "report": {"analytics"},
    "verification": {"ingest"},
}


def _expected_connections(present: set[str]) -> set[tuple[str, str, int]]:
    return {
        (source, destination, PORTS[destination])
        for source, destinations in ARCHITECTURE_CALLS.items()
        for destination in destinations
        if source in present and destination in present
    }


def _egress_ports_to_cidrs(policy: Manifest) -> set[tuple[str, int]]:
    return {
        (peer["ipBlock"]["cidr"], port["port"])
        for rule in policy["spec"].get("egress") or []
        for peer in rule.get("to", [])
        if "ipBlock" in peer
        for port in rule.get("ports", [])
    }


def test_every_policy_selects_pods_that_the_render_creates(manifests: list[Manifest]) -> None:
    pods = pod_templates(manifests)
    policies = of_kind(manifests, "NetworkPolicy")
    assert policies
    for policy in policies:
        name = policy["metadata"]["name"]
        assert any(selector_matches(policy["spec"]["podSelector"], pod.labels) for pod in pods), name
        # Same-namespace pod peers must name pods that exist as well.
        for rule in [*(policy["spec"].get("ingress") or []), *(policy["spec"].get("egress") or [])]:
            for peer in [*rule.get("from", []), *rule.get("to", [])]:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert any(selector_matches(peer["podSelector"], pod.labels) for pod in pods), name


def test_default_deny_isolates_every_pod_both_ways(manifests: list[Manifest]) -> None:
    deny = [
        p
        for p in of_kind(manifests, "NetworkPolicy")
        if set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        and all(selector_matches(p["spec"]["podSelector"], pod.labels) for pod in pod_templates(manifests))
    ]
    assert len(deny) == 1


def test_pod_to_pod_traffic_is_exactly_the_design_allow_list(manifests: list[Manifest]) -> None:
    present = {pod.component for pod in pod_templates(manifests)}
    assert allowed_pod_connections(manifests) == _expected_connections(present)


def test_the_allow_list_check_sees_a_missing_deny() -> None:
    manifests = [
        m for m in render() if m["kind"] != "NetworkPolicy" or not m["metadata"]["name"].endswith("-net")
    ]
    present = {pod.component for pod in pod_templates(manifests)}
    # Only the default deny and DNS remain: nothing may talk to anything.
    assert allowed_pod_connections(manifests) == set()
    assert _expected_connections(present)


def test_policies_off_means_no_policies() -> None:
    assert of_kind(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy") == []


def test_everyone_may_resolve_names(manifests: list[Manifest]) -> None:
    pods = pod_templates(manifests)
    dns_policies = [
        p
        for p in of_kind(manifests, "NetworkPolicy")
        if any(
            port.get("port") == 53 and port.get("protocol") == "UDP"
            for rule in p["spec"].get("egress") or []
            for port in rule.get("ports", [])
        )
    ]
    for pod in pods:
        assert any(selector_matches(p["spec"]["podSelector"], pod.labels) for p in dns_policies), pod.owner


def test_datastore_egress_goes_only_where_configured() -> None:
    manifests = render(load_values(*SCENARIOS["production"]))
    by_component = {
        p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component"): p
        for p in of_kind(manifests, "NetworkPolicy")
    }
    for component in (
        "ingest",
        "policy",
        "scoring",
        "analytics",
        "signing",
        "gdpr",
        "gateway",
        "migrate",
        "verification",
    ):
        cidrs = _egress_ports_to_cidrs(by_component[component])
        assert ("10.20.0.10/32", 5432) in cidrs, component
        expected_redis = component == "gateway"
        assert (("10.20.0.20/32", 6378) in cidrs) == expected_redis, component
    for component in ("retrain", "retention", "report"):
        assert _egress_ports_to_cidrs(by_component[component]) == set(), component


def test_internet_egress_only_for_an_upstream_tsa_or_jwks_when_configured() -> None:
    def internet_443(manifests: list[Manifest]) -> set[str]:
        return {
            p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for p in of_kind(manifests, "NetworkPolicy")
            if ("0.0.0.0/0", 443) in _egress_ports_to_cidrs(p)
        }

    assert internet_443(render()) == set()
    configured = render(
        {"upstreamTsa": {"enabled": True}, "gatewayAuth": {"jwksUrl": "https://idp.example/jwks"}}
    )
    assert internet_443(configured) == {"signing", "gateway"}


def test_collector_egress_only_when_traces_go_to_otlp() -> None:
    def collector_rules(manifests: list[Manifest]) -> int:
        return sum(
            1
            for p in of_kind(manifests, "NetworkPolicy")
            for rule in p["spec"].get("egress") or []
            if any(port.get("port") == 4317 for port in rule.get("ports", []))
        )

    assert collector_rules(render()) == 0
    production = render(load_values(*SCENARIOS["production"]))
    assert collector_rules(production) == len(pod_templates(production))


def test_prometheus_and_the_ingress_controller_reach_only_their_ports() -> None:
    manifests = render()
    for policy in of_kind(manifests, "NetworkPolicy"):
        component = policy["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component")
        for rule in policy["spec"].get("ingress") or []:
            namespaces = {
                peer["namespaceSelector"].get("matchLabels", {}).get("kubernetes.io/metadata.name", "*")
                for peer in rule["from"]
                if "namespaceSelector" in peer
            }
            ports = {p["port"] for p in rule["ports"]}
            if "monitoring" in namespaces:
                # The gateway's admin port (/metrics), never its public API port.
                assert ports == {9400 if component == "gateway" else 9090}
            if "ingress-nginx" in namespaces:
                assert component == "gateway" and ports == {8080}
            if "*" in namespaces:  # every namespace: the gRPC door's peers, to its port only
                assert component == "gateway" and ports == {8081}
