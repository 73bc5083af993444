"""Wiring of the policy service: its servicer, store, evaluation cache, metrics and health probe."""

from __future__ import annotations

from collections.abc import Mapping

from awareness.policy.v1 import policy_pb2, policy_pb2_grpc

from services.policy.api import PolicyServicer
from services.policy.domain.cel import PolicyEvaluator, WorkingHours
from services.policy.service import ActivePolicyCache, EvaluationMetrics, PolicyEvaluation, PolicyOperations
from services.runtime import db
from services.runtime.config import ConfigError, env_float, env_int, env_str
from services.runtime.paging import PageTokens
from services.runtime.server import ServiceApp, ServiceContext

SERVICE_NAME = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name

# One event against every active policy takes microseconds; the buckets resolve that range.
EVALUATION_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1)


def working_hours_from(env: Mapping[str, str]) -> WorkingHours:
    """``AWARENESS_POLICY_WORKING_HOURS`` as ``start-end`` in UTC hours (default 8-18) and
    ``AWARENESS_POLICY_WORKDAYS`` as comma-separated weekday numbers, 0 = Monday (default 0,1,2,3,4)."""
    hours = env_str(env, "AWARENESS_POLICY_WORKING_HOURS", "8-18")
    days = env_str(env, "AWARENESS_POLICY_WORKDAYS", "0,1,2,3,4")
    try:
        start, end = (int(part) for part in hours.split("-", 1))
        workdays = frozenset(int(day) for day in days.split(",") if day.strip())
        return WorkingHours(start_hour=start, end_hour=end, workdays=workdays)
    except ValueError as exc:
        raise ConfigError(f"invalid working hours {hours!r} / workdays {days!r}: {exc}") from exc


def create_app(context: ServiceContext) -> ServiceApp:
    engine, sessions = context.engine, context.sessions
    if engine is None or sessions is None:
        raise ValueError("the policy service needs its database (build the context with_database=True)")
    env = context.settings.env
    metrics = context.metrics
    evaluation_metrics = EvaluationMetrics(
        evaluations=metrics.counter("evaluations_total", "Events evaluated against the active policies"),
        errors=metrics.counter(
            "evaluation_errors_total",
            "Policy rules that failed at run time for an event (recorded, not fatal)",
        ),
        violations=metrics.counter("violations_total", "Policy violations found by evaluation"),
        latency=metrics.histogram(
            "evaluation_duration_seconds",
            "Time to judge one event against every active policy",
            buckets=EVALUATION_BUCKETS,
        ),
        active_policies=metrics.gauge("active_policies", "ACTIVE policy versions being evaluated"),
    )
    evaluator = PolicyEvaluator(
        working_hours=working_hours_from(env),
        chunk_size=env_int(env, "AWARENESS_POLICY_EVALUATION_CHUNK_SIZE", 64, minimum=1),
    )
    cache = ActivePolicyCache(
        sessions=sessions,
        evaluator=evaluator,
        check_interval_seconds=env_float(env, "AWARENESS_POLICY_ACTIVE_SET_CHECK_SECONDS", 1.0),
        on_reload=evaluation_metrics.active_policies.set,
    )
    servicer = PolicyServicer(
        operations=PolicyOperations(sessions=sessions, on_active_set_change=cache.invalidate),
        evaluation=PolicyEvaluation(cache=cache, evaluator=evaluator, metrics=evaluation_metrics),
        page_tokens=PageTokens.from_secret(context.settings.service_secret),
    )

    async def warm_up() -> None:
        # Compile the active rules before the first event arrives; a down database only delays this.
        try:
            await db.run_db(cache.current)
        except Exception:  # the health probe reports the store; evaluation retries on first use
            return

    return ServiceApp(
        name="policy",
        service_names=[SERVICE_NAME],
        register=lambda server: policy_pb2_grpc.add_PolicyServiceServicer_to_server(servicer, server),
        ready=lambda: db.ping(engine),
        on_start=warm_up,
    )
