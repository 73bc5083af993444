from __future__ import annotations

from bench import signing


def test_bench_reports_every_operation_with_its_baseline() -> None:
    # Shape only: speed is for `make bench-signing` to report, never for a test to assert.
    rows = signing.run(seconds=0.02)
    operations = {row["operation"] for row in rows}
    assert {"timestamp_respond", "timestamp_verify", "checkpoint_sign", "checkpoint_verify"} <= operations
    for row in rows:
        assert isinstance(row["samples"], int) and row["samples"] >= 1
        baseline = row["baseline"]
        if baseline is not None:
            assert baseline in operations
            assert isinstance(row["ratio_to_baseline"], float)
    table = signing.format_table(rows)
    assert all(str(row["operation"]) in table for row in rows)
