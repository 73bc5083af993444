"""Benchmark: latency of judging ONE event against 10, 100 and 1,000 active CEL policies.

Run with ``python -m bench policy [--seconds S]``. Each scenario times the whole per-event path
(building the activation, then evaluating every policy) and is compared with two baselines measured in the
same run: building the activation alone, and evaluating one trivial ``true`` policy. The batched evaluator
(rules combined into list expressions) is shown next to plain one-call-per-policy evaluation.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from collections.abc import Callable, Sequence

from services.policy.domain.cel import (
    ActivePolicy,
    CompiledPolicySet,
    EventFacts,
    PolicyEvaluator,
    SubjectFacts,
    build_activation,
)

DEFAULT_POLICY_COUNTS = (10, 100, 1000)

_EVENT_TYPES = ("phishing.clicked", "phishing.reported", "usb.inserted", "mfa.disabled", "training.completed")
_SOURCES = ("gophish", "mail-gateway", "idp", "edr", "lms")


def _rule(index: int) -> str:
    """A realistic rule, cycling through common shapes; constants vary with ``index``."""
    event_type = _EVENT_TYPES[index % len(_EVENT_TYPES)]
    source = _SOURCES[index % len(_SOURCES)]
    threshold = 1 + index % 7
    templates = (
        f'event.type == "{event_type}" && event.outside_hours && subject.training_overdue',
        f'event.type == "{event_type}" && subject.events_24h > {threshold}',
        f'event.source == "{source}" && event.severity_rank >= {1 + index % 4}',
        f'"campaign" in event.details && event.details["campaign"].startsWith("c-{index % 13}")',
        f'event.type in ["usb.inserted", "mfa.disabled"] && event.weekday >= {4 + index % 3}',
        f"subject.violations_30d >= {threshold} || subject.phishing_clicks_30d > {threshold + 2}",
        f'event.occurred_at > timestamp("2024-01-{1 + index % 28:02d}T00:00:00Z")'
        f" && event.hour < {index % 24}",
        f'event.details.exists(key, key.startsWith("x-{index}"))',
        f'event.type.matches("^phishing[.](clicked|submitted)$")'
        f" && subject.phishing_reports_30d < {threshold}",
        f'"risk" in subject.facts && subject.facts["risk"] > {threshold}.5',
    )
    return templates[index % len(templates)]


def _policies(count: int) -> list[ActivePolicy]:
    return [
        ActivePolicy(
            name=f"bench-{index}", version=1, rule=_rule(index), severity="MEDIUM", title=f"rule {index}"
        )
        for index in range(count)
    ]


def _event() -> EventFacts:
    return EventFacts(
        event_type="phishing.clicked",
        source="gophish",
        severity="HIGH",
        occurred_at=datetime.datetime(2024, 5, 15, 21, 42, tzinfo=datetime.UTC),
        details={"campaign": "c-7-q2", "url": "https://login.example.test/x", "user_agent": "Mozilla/5.0"},
        subject=SubjectFacts(
            events_24h=4,
            violations_30d=2,
            phishing_clicks_30d=3,
            phishing_reports_30d=1,
            training_overdue=True,
            facts={"risk": 4.2},
        ),
    )


def _time_calls(call: Callable[[], object], *, seconds: float, min_calls: int = 20) -> list[float]:
    """Per-call latencies in microseconds, repeating ``call`` for about ``seconds``."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(latencies) < min_calls or time.perf_counter() < deadline:
        started = time.perf_counter_ns()
        call()
        latencies.append((time.perf_counter_ns() - started) / 1000)
    return latencies


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def _row(*, scenario: str, policies: int, latencies: list[float], compile_ms: float) -> dict[str, object]:
    ordered = sorted(latencies)
    mean_us = statistics.fmean(ordered)
    return {
        "scenario": scenario,
        "policies": policies,
        "calls": len(ordered),
        "p50_us": round(_percentile(ordered, 0.50), 1),
        "p99_us": round(_percentile(ordered, 0.99), 1),
        "events_per_s": round(1e6 / mean_us),
        "policy_evals_per_s": round(policies * 1e6 / mean_us),
        "compile_ms": round(compile_ms, 1),
    }


def _judge(
    policy_set: CompiledPolicySet, evaluator: PolicyEvaluator, event: EventFacts
) -> Callable[[], object]:
    return lambda: policy_set.evaluate(evaluator.activation(event))


def run(
    *, seconds: float = 3.0, policy_counts: Sequence[int] = DEFAULT_POLICY_COUNTS
) -> list[dict[str, object]]:
    """Measure every scenario for a share of ``seconds``; one row per scenario, with ``x_true_rule``, the p50
    relative to the one-``true``-policy baseline."""
    scenario_count = 2 + 2 * len(policy_counts)
    share = seconds / scenario_count
    event = _event()
    batched = PolicyEvaluator()
    one_by_one = PolicyEvaluator(chunk_size=1)
    rows = [
        _row(
            scenario="baseline: activation only",
            policies=0,
            latencies=_time_calls(lambda: build_activation(event), seconds=share),
            compile_ms=0.0,
        )
    ]
    trivial = batched.policy_set(
        [ActivePolicy(name="true", version=1, rule="true", severity="LOW", title="t")]
    )
    rows.append(
        _row(
            scenario="baseline: one `true` policy",
            policies=1,
            latencies=_time_calls(_judge(trivial, batched, event), seconds=share),
            compile_ms=0.0,
        )
    )
    for count in policy_counts:
        policies = _policies(count)
        for label, evaluator in (("batched", batched), ("one call per policy", one_by_one)):
            started = time.perf_counter()
            policy_set = evaluator.policy_set(policies)
            compile_ms = (time.perf_counter() - started) * 1000
            result = policy_set.evaluate(evaluator.activation(event))
            if result.errors:  # a broken benchmark rule would make the numbers meaningless
                raise RuntimeError(f"benchmark rule failed: {result.errors[0]}")
            latencies = _time_calls(_judge(policy_set, evaluator, event), seconds=share)
            rows.append(_row(scenario=label, policies=count, latencies=latencies, compile_ms=compile_ms))
    true_rule_p50 = float(str(rows[1]["p50_us"]))
    for row in rows:
        row["x_true_rule"] = round(float(str(row["p50_us"])) / true_rule_p50, 1)
    return rows


def _print_table(rows: Sequence[dict[str, object]]) -> None:
    columns = list(rows[0])
    widths = {column: max(len(column), *(len(str(row[column])) for row in rows)) for column in columns}
    print("  ".join(column.ljust(widths[column]) for column in columns))
    for row in rows:
        print("  ".join(str(row[column]).ljust(widths[column]) for column in columns))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0, help="total measuring time (default 3)")
    arguments = parser.parse_args(argv)
    _print_table(run(seconds=arguments.seconds))


if __name__ == "__main__":
    main()
