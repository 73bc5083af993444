"""`make bench-*` goes through services.bench; it must hand each benchmark its own options."""

from __future__ import annotations

import pytest

from services import bench


def test_dispatcher_runs_a_benchmark_with_its_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["policy", "--seconds", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "## policy" in out and "p99_us" in out and "cores" in out
