from __future__ import annotations

from bench import policy
from services.policy.domain.cel import compile_rule


def test_bench_run_reports_every_scenario_against_the_baselines() -> None:
    rows = policy.run(seconds=0.05, policy_counts=(3, 12))
    assert [(row["scenario"], row["policies"]) for row in rows] == [
        ("baseline: activation only", 0),
        ("baseline: one `true` policy", 1),
        ("batched", 3),
        ("one call per policy", 3),
        ("batched", 12),
        ("one call per policy", 12),
    ]
    for row in rows:
        assert isinstance(row["calls"], int) and row["calls"] >= 20
        assert float(str(row["p50_us"])) <= float(str(row["p99_us"]))
        assert "x_true_rule" in row
    assert rows[1]["x_true_rule"] == 1.0


def test_bench_rules_all_compile() -> None:
    for index in range(20):
        compile_rule(policy._rule(index))
