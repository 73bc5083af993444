"""Every /metrics endpoint of a running suite, scraped after a little traffic.

The suite runs as separate processes on PostgreSQL and Redis; the test names every metric an
operator relies on (docs/operations.md explains each) and checks that the traffic it drove
shows up in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import LoadConfig, run_load
from services.runtime.config import SERVICES
from tests.helm.promql import dashboard_queries, metric_names, name_patterns, rule_queries, shipped_queries
from tests.resilience.harness import (
    PrivateRedis,
    ProcessSuite,
    http_json,
    metric_value,
    parse_metrics,
    wait_until,
)
from tests.support.resources import temporary_database

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

APPEND = "/awareness.ingest.v1.IngestService/AppendEvent"

# (process, metric name, what it tells an operator). Runtime metrics exist in every process.
RUNTIME_METRICS = (
    ("grpc_server_requests_total", "request rate and errors, by method and gRPC code"),
    ("grpc_server_request_duration_seconds", "request latency, by method"),
    ("circuit_breaker_state", "breaker state per downstream target"),
    ("circuit_breaker_transitions_total", "breaker state changes per target"),
    ("grpc_client_calls_total", "outgoing calls by target, method and code"),
    ("grpc_client_retries_total", "retried idempotent outgoing calls"),
    ("health_serving", "1 while the service reports SERVING"),
)
SERVICE_METRICS: tuple[tuple[str, str, str], ...] = (
    ("gateway", "awareness_gateway_http_requests_total", "HTTP request rate and errors by route"),
    ("gateway", "awareness_gateway_http_request_duration_seconds", "HTTP latency by route"),
    ("gateway", "awareness_gateway_ratelimit_rejections_total", "429s by scope"),
    ("gateway", "awareness_gateway_ratelimit_fallback_total", "in-process limiting while Redis fails"),
    ("gateway", "awareness_gateway_auth_failures_total", "401s by reason"),
    ("gateway", "awareness_gateway_circuit_breaker_state", "gateway breakers (services, Redis)"),
    ("gateway", "awareness_gateway_circuit_breaker_transitions_total", "gateway breaker changes"),
    ("ingest", "awareness_ingest_queue_depth", "appends waiting for the group commit"),
    ("ingest", "awareness_ingest_enrichment_queue_depth", "committed events waiting for scoring/policy"),
    ("ingest", "awareness_ingest_integrator_lag_leaves", "acknowledged but not yet checkpointed"),
    ("ingest", "awareness_ingest_checkpoint_age_seconds", "time since the latest signed checkpoint"),
    ("ingest", "awareness_ingest_tree_size_leaves", "leaves in the Merkle tree"),
    ("ingest", "awareness_ingest_checkpoint_tree_size_leaves", "tree size of the latest checkpoint"),
    ("ingest", "awareness_ingest_checkpoint_failures_total", "failed checkpoint signings"),
    ("ingest", "awareness_ingest_enrichment_results_total", "scoring/policy outcomes"),
    ("ingest", "awareness_ingest_reconciler_backfills_total", "pending metadata back-filled"),
    ("ingest", "awareness_ingest_integrator_leader", "1 on the replica that leads integration"),
    ("signing", "awareness_signing_timestamps_issued_total", "RFC 3161 tokens issued"),
    ("signing", "awareness_signing_checkpoints_signed_total", "checkpoints signed, by TSA"),
    ("signing", "awareness_signing_upstream_tsa_requests_total", "upstream TSA outcomes"),
    ("signing", "awareness_signing_operation_duration_seconds", "signing latency"),
    (
        "signing",
        "awareness_signing_certificate_expiry_timestamp_seconds",
        "when each signing certificate expires",
    ),
    ("policy", "awareness_policy_evaluations_total", "events evaluated"),
    ("policy", "awareness_policy_violations_total", "violations found"),
    ("policy", "awareness_policy_evaluation_duration_seconds", "evaluation latency"),
    ("policy", "awareness_policy_active_policies", "active policy versions"),
    ("scoring", "awareness_scoring_model_info", "champion model version (label)"),
    ("scoring", "awareness_scoring_inference_duration_seconds", "model inference latency"),
    ("scoring", "awareness_scoring_scored_total", "events scored by the champion"),
    ("gdpr", "awareness_gdpr_erasures_total", "subjects erased"),
    ("gdpr", "awareness_gdpr_exports_total", "subject exports"),
    ("gdpr", "awareness_gdpr_keys_issued_total", "data keys handed to ingest"),
)
# Provided by the scheduled verification (issue 22, item 4), which ingest runs and exports.
SCHEDULED_VERIFICATION_METRICS = (
    ("ingest", "awareness_verification_failures_total", "failed scheduled verifications, by check"),
    ("ingest", "awareness_verification_last_success_timestamp_seconds", "last passed verification, by check"),
)
EXPECTED = (
    *SERVICE_METRICS,
    *SCHEDULED_VERIFICATION_METRICS,
    *(
        (service, f"awareness_{service}_{name}", what)
        for service in SERVICES
        for name, what in RUNTIME_METRICS
    ),
)


def declared_names(text: str) -> set[str]:
    """Every metric a scrape declares, samples or not (a labelled metric may have none yet)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        names.update(sample.name for sample in family.samples)
    return {name for name in names if not name.endswith("_created")}


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, request: pytest.FixtureRequest
) -> Iterator[tuple[ProcessSuite, str]]:
    directory = tmp_path_factory.mktemp("metrics-suite")
    redis: PrivateRedis | None = None
    if PrivateRedis.available():
        redis = PrivateRedis(directory=Path(directory) / "redis")
        redis.start()
        redis_url = redis.url
    else:
        redis_url = str(request.getfixturevalue("redis_url"))
    with contextlib.ExitStack() as stack:
        if redis is not None:
            stack.callback(redis.kill)
        database = stack.enter_context(temporary_database(postgres_url))
        suite = ProcessSuite(data_dir=Path(directory) / "data", database_url=database, redis_url=redis_url)
        stack.callback(suite.stop_all)
        suite.start_all(timeout=180)
        yield suite, suite.create_api_key(name="metrics", roles=("admin",))


@pytest.fixture(scope="module")
def scrapes(running: tuple[ProcessSuite, str]) -> dict[str, str]:
    suite, key = running
    config = LoadConfig(url=suite.gateway_url, api_key=key, rate=10, seconds=3, connections=4)
    result = asyncio.run(run_load(config))
    assert result.acknowledged, f"no event acknowledged: {result.summary()}"
    http_json("GET", f"{suite.gateway_url}/v1/events?pageSize=5", api_key="awk_not_a_key")  # one 401
    # Let the integrator sign a checkpoint over the new leaves.
    wait_until(
        lambda: (
            metric_value(
                parse_metrics(suite.scrape("ingest")), "awareness_ingest_checkpoint_tree_size_leaves"
            )
            >= len(result.acknowledged)
        ),
        timeout=60,
        what="a checkpoint over the new events",
    )
    time.sleep(1.0)
    return {service: suite.scrape(service) for service in (*SERVICES, "gateway")}


def test_every_expected_metric_is_exported(scrapes: dict[str, str]) -> None:
    declared = {service: declared_names(text) for service, text in scrapes.items()}
    missing = [
        f"{service}: {name} ({what})" for service, name, what in EXPECTED if name not in declared[service]
    ]
    assert not missing, "missing metrics:\n" + "\n".join(missing)


def test_at_least_25_meaningful_metrics_across_the_services(scrapes: dict[str, str]) -> None:
    families = {
        family.name
        for text in scrapes.values()
        for family in text_string_to_metric_families(text)
        if family.name.startswith("awareness_")
    }
    assert len(families) >= 25, sorted(families)
    # The scheduled verification's names are fixed by the alert rules' contract, not by a service.
    contract = {name.removesuffix("_total") for _, name, _ in SCHEDULED_VERIFICATION_METRICS}
    for name in families - contract:  # Prometheus conventions: awareness_<service>_<thing>[_<unit>]
        assert name == name.lower() and name.split("_")[1] in (*SERVICES, "gateway"), name


def test_the_traffic_shows_in_the_metrics(scrapes: dict[str, str]) -> None:
    gateway = parse_metrics(scrapes["gateway"])
    ingest = parse_metrics(scrapes["ingest"])
    signing = parse_metrics(scrapes["signing"])
    assert (
        metric_value(gateway, "awareness_gateway_http_requests_total", route="/v1/events", status="200") > 0
    )
    assert metric_value(gateway, "awareness_gateway_auth_failures_total") >= 1
    assert metric_value(ingest, "awareness_ingest_grpc_server_requests_total", method=APPEND, code="OK") > 0
    assert (
        metric_value(ingest, "awareness_ingest_grpc_server_request_duration_seconds_count", method=APPEND) > 0
    )
    assert metric_value(ingest, "awareness_ingest_tree_size_leaves") > 0
    assert metric_value(ingest, "awareness_ingest_grpc_client_calls_total", target="gdpr", code="OK") > 0
    assert metric_value(signing, "awareness_signing_checkpoints_signed_total") > 0
    for service in SERVICES:
        samples = parse_metrics(scrapes[service])
        assert metric_value(samples, f"awareness_{service}_health_serving") == 1, service


def test_every_dashboard_and_alert_query_names_a_metric_the_suite_exports(scrapes: dict[str, str]) -> None:
    """The chart's Grafana dashboards and alert rules read only metrics that a running suite declares."""
    exported = set().union(*(declared_names(text) for text in scrapes.values()))
    unknown: list[str] = []
    for query in shipped_queries():
        unknown.extend(f"{query.where}: {name}" for name in sorted(metric_names(query.expr) - exported))
        unknown.extend(
            f"{query.where}: no metric matches {pattern}"
            for pattern in sorted(name_patterns(query.expr))
            if not any(re.fullmatch(pattern, name) for name in exported)
        )
    assert not unknown, "queries naming metrics the suite does not export:\n" + "\n".join(unknown)
    # The extraction finds the names, or the check above proves nothing.
    dashboard_names = set().union(*(metric_names(q.expr) for q in dashboard_queries()))
    assert len(dashboard_names) >= 50, sorted(dashboard_names)
    assert "awareness_gateway_http_request_duration_seconds" in dashboard_names  # a histogram's family
    assert "awareness_scoring_feature_psi" in dashboard_names
    assert "awareness_ingest_checkpoint_age_seconds" in set().union(
        *(metric_names(q.expr) for q in rule_queries())
    )
