"""`make bench*` goes through bench.cli (`python -m bench`); it must hand each benchmark its own options."""

from __future__ import annotations

import pytest

from bench import cli


def test_dispatcher_runs_a_benchmark_with_its_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["policy", "--seconds", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "## policy" in out and "p99_us" in out and "cores" in out


def test_dispatcher_hands_suite_to_make_bench_with_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["suite", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "python -m bench suite" in out and "--rates" in out and "## " not in out
