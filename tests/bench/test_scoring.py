from __future__ import annotations

from bench import scoring
from services.scoring.domain.generator import GeneratorConfig, generate
from services.scoring.domain.training import train


def test_bench_run_has_the_drift_tracking_row_in_the_table_format() -> None:
    small = GeneratorConfig(people=60, days=21, seed=5)
    dataset = generate(small)
    model = train(
        events=dataset.inputs,
        labels=dataset.labels,
        seed=small.seed,
        folds=2,
        algorithms=("gradient_boosting",),
    )
    rows = scoring.run(seconds=0.05, model=model)
    assert [list(row) for row in rows] == [list(rows[0])] * len(rows)  # one set of columns
    drift = rows[-1]
    assert str(drift["metric"]).startswith("drift tracking per scored event, batches of 64")
    assert drift["unit"] == "µs" and drift["sklearn"] == "-"
    cost = drift["onnxruntime"]
    assert isinstance(cost, float) and cost >= 0.0
    assert drift["meets target"] == (cost < scoring.TARGET_DRIFT_MICROSECONDS)
    assert str(drift["target (onnxruntime)"]).startswith("< 5 (at ")
    assert "drift tracking" in scoring.format_table(rows)
