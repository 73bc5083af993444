"""bench.suite's own arithmetic (CPU per event by process, the table that shows it) and its load steps."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from bench import suite
from tests.support.resources import free_port

# What format_table is told about the run and the machine.
RUN_INFO = {
    "date": "today",
    "machine": {
        "cores": 2,
        "arch": "x86_64",
        "system": "Linux",
        "python": "3.11",
        "load_average_at_start": [1.0],
    },
    "store": "PostgreSQL + Redis",
}


def test_cpu_per_event_divides_each_process_by_the_acknowledged_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    before = {"ingest": 10.0, "gateway": 4.0, "idle": 1.0, "loadgen": 0.5}
    after = {"ingest": 12.0, "gateway": 5.0, "idle": 1.0, "loadgen": 0.7, "new": 3.0}
    # 3.2 ms per event in all: two cores doing nothing else could serve 2,000 / 3.2 = 625 events/s.
    assert (
        suite.format_cpu(suite.cpu_costs(before, after, 1000))
        == "ingest 2.0 / gateway 1.0 / loadgen 0.20 / total 3.2 (625/s)"
    )
    assert suite.format_cpu(suite.cpu_costs(before, after, 0)) == ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_process_cpu_reads_live_processes_and_the_reaped_load_generator() -> None:
    totals = suite.process_cpu({"me": os.getpid(), "gone": 2**22 + 12345})
    assert totals["me"] > 0
    assert "gone" not in totals
    assert totals["loadgen"] >= 0
    if os.environ.get("AWARENESS_REQUIRE_SERVICES") == "1":  # PostgreSQL and Redis run here
        assert totals["postgres"] > 0 and totals["redis"] > 0
    assert {"postgres", "redis"}.isdisjoint(suite.process_cpu({"me": os.getpid()}, stores=False))


def test_the_table_has_a_cpu_column() -> None:
    row = suite.Row(
        section="end-to-end",
        scenario="POST /v1/events",
        offered="100 events/s",
        throughput=99.0,
        p50_ms=12.0,
        p99_ms=40.0,
        error_rate=0.0,
        stages="gateway 6.0 / ingest 4.0",
        cpu="ingest 9.0 / gateway 5.0",
    )
    table = suite.format_table([row], info=RUN_INFO)
    assert "CPU ms per event" in table
    assert "ingest 9.0 / gateway 5.0" in table


def test_make_bench_runs_the_ingest_benchmark_with_the_options_it_builds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # make bench once passed the ingest benchmark a hand-made argument list that lacked an option.
    from bench import ingest

    monkeypatch.delenv("DATABASE_URL", raising=False)  # the embedded SQLite: quick
    arguments = suite._ingest_arguments(1.0)
    arguments.events, arguments.seconds, arguments.rate, arguments.concurrency = 1000, 1.0, 20.0, 4
    arguments.subjects = 200
    arguments.key_cache_seconds = 1.0  # the warm run waits the cache lifetime + 1 s
    figures = ingest.run(arguments)
    assert figures.stream_events == 1000
    assert [run.temperature for run in figures.stream_runs] == ["cold", "warm"]
    assert all(run.integrated_per_second > 0 for run in figures.stream_runs)
    # The warm stream again through the gateway's gRPC door, in the same run.
    assert figures.door_run is not None
    assert figures.door_run.temperature == "warm"
    assert figures.door_run.events == 1000
    assert figures.door_run.acknowledged_per_second > 0
    rows = suite.ingest_rows(figures)
    assert [row.section for row in rows] == ["ingest"] * 10
    # Reads with and without decryption (and so an access record), in the same run.
    assert figures.personal_reads is not None and figures.personal_reads.per_second > 0
    assert figures.pseudonymous_reads is not None and figures.pseudonymous_reads.per_second > 0
    assert any(row.scenario.startswith("GetEvent, decrypted, access record queued") for row in rows)
    assert any("200 people, cold (20% first sight), acknowledged" in row.scenario for row in rows)
    assert any("200 people, warm, acknowledged" in row.scenario for row in rows)
    assert any("via the gateway's gRPC door, 200 people, warm, acknowledged" in row.scenario for row in rows)


def test_a_load_step_finds_the_generator_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bench/ is not installed: the generator's own process must still import bench.loadgen.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    port = free_port()  # nobody listens there: every request is refused
    out = tmp_path / "outcomes.jsonl"
    summary = suite.run_loadgen(
        url=f"http://127.0.0.1:{port}", api_key="k", rate=20, seconds=0.1, connections=1, batch=0, out=out
    )
    assert summary["requests"] == summary["events"] == 2
    assert summary["acknowledged"] == 0
    assert len(out.read_text().splitlines()) == 2


def test_suite_over_edge_compares_rows_of_the_same_kind() -> None:
    def row(section: str, throughput: float, key: str) -> suite.Row:
        return suite.Row(section, "s", "-", throughput, None, None, None, edge_key=key)

    rows = suite.with_edge_ratios(
        [
            row("end-to-end", 450.0, "single-500"),
            row("end-to-end", 300.0, "single-1000"),
            row("end-to-end", 900.0, ""),
            row("edge", 500.0, "single-500"),
            row("end-to-end", 400.0, "saturation"),
            row("edge", 1600.0, "saturation"),
            row("floor", 800.0, "saturation"),
            row("floor", 1000.0, "single-500"),
            row("end-to-end", 2000.0, "batch-50"),
            row("floor", 8000.0, "batch-50"),
        ]
    )
    assert [r.versus_edge for r in rows] == ["0.90", "", "", "", "0.25", "", "", "", "", ""]
    assert [r.versus_floor for r in rows] == ["0.45", "", "", "", "0.50", "", "", "", "0.25", ""]
    assert suite.edge_ratio(None, 10.0) == suite.edge_ratio(5.0, 0.0) == ""


def test_the_load_generators_cpu_is_shown_beside_its_share_of_a_core() -> None:
    assert suite.generator_cpu(2.5, 10.0) == "2.5 s (25% of a core)"
    assert suite.generator_cpu(None, 10.0) == "n/a (no /proc)"


def test_the_table_shows_suite_over_edge_and_the_generators_cpu() -> None:
    row = suite.Row(
        "end-to-end",
        "POST /v1/events, 5,000 people, cold",
        "500 events/s",
        480.0,
        4.0,
        40.0,
        0.0,
        loadgen_cpu="1.2 s (12% of a core)",
        versus_edge="0.96",
    )
    table = suite.format_table([row], info=RUN_INFO)
    assert "suite / edge / floor" in table and "| 0.96 / - " in table
    assert "load generator CPU" in table and "1.2 s (12% of a core)" in table
    assert "5,000 people, cold" in table


def test_make_bench_options_default_to_5000_people_cold_and_warm() -> None:
    args = suite.build_parser().parse_args([])
    assert args.subjects == 5000 and not args.cold and not args.warm
    assert 500.0 in [float(r) for r in args.rates.split(",")]
    assert args.wrk_connections == 32 and args.batch == 50


def test_the_budget_sets_the_floor_and_the_work_outside_it_against_each_offered_rate() -> None:
    def row(section: str, offered: str, key: str, cpu: dict[str, float], p50: float = 1.0) -> suite.Row:
        rate = float(offered.split(" ")[0]) if offered.endswith("events/s") else None
        return suite.Row(
            section,
            f"{section} {key}",
            offered,
            1.0,
            p50,
            None,
            0.0,
            edge_key=key,
            cpu_ms=cpu,
            offered_events=rate,
        )

    shape = {"gateway": 1.0, "ingest": 1.5, "postgres": 1.0, "loadgen": 0.5}
    rows = [
        row("end-to-end", "1000 events/s", "single-1000", {**shape, "gdpr": 0.8, "policy": 0.2}),
        row("end-to-end", "250 events/s", "single-250", {**shape, "gdpr": 0.8, "redis": 0.1}),
        row("end-to-end", "500 events/s", "single-500", shape),  # no floor row at 500
        row("end-to-end", "closed loop", "saturation", shape),
        row("floor", "1000 events/s", "single-1000", {"edge": 0.5, "store": 0.6, "postgres": 0.2}, p50=7.0),
        row("floor", "250 events/s", "single-250", {"edge": 0.9, "store": 1.1}, p50=3.5),
        row("floor", "closed loop", "saturation", {"edge": 0.3}),
    ]
    budget = suite.budget_rows(rows, cores=2)
    assert [r[1:] for r in budget] == [
        ("1000 events/s", "2.0", "1.3", "-", "1.0", "2.3", "over by 0.30", "7.00"),
        ("250 events/s", "8.0", "2.0", "-", "0.90", "2.9", "within", "3.50"),
    ]
    # Ingest's own work comes on top of the floor; past the budget with the floor alone, the verdict
    # says so: out of reach whatever the other services cost.
    with_work = suite.budget_rows(rows, cores=2, work_ms=0.8)
    assert [r[1:] for r in with_work] == [
        ("1000 events/s", "2.0", "1.3", "0.800", "1.0", "3.1", "over by 1.1 (0.10 without the rest)", "7.00"),
        ("250 events/s", "8.0", "2.0", "0.800", "0.90", "3.7", "within", "3.50"),
    ]
    text = suite.format_budget(rows, cores=2, work_ms=0.8)
    assert "2,000 ms of CPU per second" in text and "over by 1.1" in text and "bench/work.py" in text
    assert suite.format_budget(rows[:4], cores=2) == ""  # no floor measured: nothing to say
