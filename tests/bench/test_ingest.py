"""bench/ingest.py's table: the door's streamed run beside the direct run it is compared with."""

from __future__ import annotations

import dataclasses

from bench.ingest import Figures, ReadRun, StreamRun, door_compared, format_table

FIGURES = Figures(
    backend="PostgreSQL",
    ingest_processes=2,
    streams=4,
    unary_events_per_second=1000.0,
    stream_runs=(
        StreamRun("cold", 5000, 100_000, 2500.0, 2400.0),
        StreamRun("warm", 5000, 100_000, 8000.0, 7500.0),
    ),
    stream_events=100_000,
    batch_size=500,
    offered_rate=200.0,
    p50_ms=4.5,
    p99_ms=16.8,
    checkpoint_p50_ms=544.0,
    checkpoint_p99_ms=1150.0,
    door_run=StreamRun("warm", 5000, 100_000, 6000.0, 5900.0),
    door="one gateway process, plaintext",
)


def test_the_door_row_sits_under_the_direct_row_of_its_temperature_with_their_ratio() -> None:
    lines = format_table(FIGURES).splitlines()
    direct = next(i for i, line in enumerate(lines) if "(500/message), 5,000 people, warm, ack" in line)
    door = lines[direct + 1]
    assert door.startswith("streamed via the gateway's gRPC door (500/message), 5,000 people, warm,")
    assert door.split()[-3:] == ["6,000", "1,022", "5.87x"]  # against the old portal, as every row
    assert "gRPC door: one gateway process, plaintext" in lines
    assert lines[-1] == "door / direct (5,000 people, warm, acknowledged, same run): 0.75"
    # One column for the figures, however long a label is.
    header = next(line for line in lines if line.startswith("metric"))
    right_edge = header.index("old portal") + len("old portal")
    assert {line.index(" 1,022 ") + len(" 1,022") for line in lines if " 1,022 " in line} == {right_edge}


def test_without_a_door_run_the_table_is_the_direct_one() -> None:
    figures = dataclasses.replace(FIGURES, door_run=None, door="")
    table = format_table(figures)
    assert "door" not in table
    assert door_compared(figures) is None
    # A door run with no direct run of its temperature (--cold alone never makes one) has no ratio.
    cold_only = dataclasses.replace(FIGURES, stream_runs=FIGURES.stream_runs[:1])
    assert door_compared(cold_only) is None
    assert "door / direct" not in format_table(cold_only)


def test_read_rows_show_both_reads_and_their_ratio_from_the_same_run() -> None:
    figures = dataclasses.replace(
        FIGURES,
        personal_reads=ReadRun(per_second=900.0, p50_ms=6.0, p99_ms=20.0),
        pseudonymous_reads=ReadRun(per_second=1200.0, p50_ms=5.0, p99_ms=15.0),
    )
    lines = format_table(figures).splitlines()
    personal = next(line for line in lines if line.startswith("GetEvent decrypted, access record queued"))
    assert personal.split()[-3:] == ["900", "-", "-"]
    assert any(line.startswith("GetEvent pseudonymous, no record (policy_author), p99 ms") for line in lines)
    assert lines[-1] == "decrypted + recorded / pseudonymous GetEvent (same run): reads/s 0.75, p50 1.20"
    # Without reads (an older run), no read rows.
    assert "GetEvent" not in format_table(FIGURES)
