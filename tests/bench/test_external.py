"""bench/external.py: load generators in their own processes, their CPU, and wrk's report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import suite
from bench.external import (
    cpu_seconds,
    parse_wrk,
    run_measured,
    run_wrk,
    tree_cpu_seconds,
    wrk_available,
    wrk_script,
)

WRK_REPORT = """Running 10s test @ http://127.0.0.1:8080/v1/events
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    30.12ms   12.01ms   1.20s    90.00%
    Req/Sec     1.05k   200.00     1.50k    70.00%
  Latency Distribution
     50%  850.00us
     75%   12.50ms
     90%   40.00ms
     99%    1.20s
  10512 requests in 10.01s, 5.12MB read
  Socket errors: connect 0, read 1, write 0, timeout 3
  Non-2xx or 3xx responses: 12
Requests/sec:   1050.15
Transfer/sec:    512.00KB
"""


def test_wrk_report_becomes_numbers() -> None:
    result = parse_wrk(WRK_REPORT)
    assert result.requests == 10512
    assert result.seconds == pytest.approx(10.01)
    assert result.requests_per_second == 1050.15
    assert result.p50_ms == pytest.approx(0.85)
    assert result.p99_ms == pytest.approx(1200.0)
    assert (result.non_2xx, result.socket_errors) == (12, 4)
    assert result.throughput == pytest.approx((10512 - 12) / 10.01)  # refusals are not throughput
    assert result.error_rate == pytest.approx(16 / 10516)


def test_a_clean_wrk_report_has_no_errors() -> None:
    clean = "\n".join(
        line for line in WRK_REPORT.splitlines() if not line.lstrip().startswith(("Socket", "Non-2xx"))
    )
    result = parse_wrk(clean)
    assert (result.non_2xx, result.socket_errors, result.error_rate) == (0, 0, 0.0)


def test_wrk_output_without_latency_or_totals_is_refused() -> None:
    without_latency = "\n".join(
        line for line in WRK_REPORT.splitlines() if "%" not in line or "Stdev" in line
    )
    with pytest.raises(ValueError, match="--latency"):
        parse_wrk(without_latency)
    with pytest.raises(ValueError, match="not a wrk report"):
        parse_wrk("wrk: connection refused")


def test_the_wrk_script_spreads_events_over_the_population() -> None:
    script = wrk_script(api_key="awk_abc.def", subjects=5000, namespace="b1234-wrk-", threads=2)
    assert "local SUBJECTS = 5000" in script
    assert 'local NAMESPACE = "b1234-wrk-"' in script
    assert 'local AUTHORIZATION = "Bearer awk_abc.def"' in script
    assert 'local TYPES = {"phishing.clicked", ' in script
    assert "counter * THREADS + id" in script
    assert '"details":{"location":"wrk","source_event_id":"%d"}}' in script  # the format's braces survived
    with pytest.raises(ValueError):
        wrk_script(api_key='k"\n', subjects=1, namespace="", threads=1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_run_measured_reports_the_childs_own_cpu(tmp_path: Path) -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nprint('done')"
    finished = run_measured([sys.executable, "-c", burn], timeout=20, work_dir=tmp_path, name="burn")
    assert finished.returncode == 0 and finished.stdout.strip() == "done"
    assert finished.cpu_seconds is not None and 0.25 <= finished.cpu_seconds < 5
    with pytest.raises(subprocess.TimeoutExpired):
        run_measured(
            [sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.3, work_dir=tmp_path, name="s"
        )


def test_wrk_saturates_the_edge_for_two_seconds(tmp_path: Path) -> None:
    if not wrk_available():
        if os.environ.get("AWARENESS_REQUIRE_SERVICES") == "1":
            pytest.fail("wrk is required (AWARENESS_REQUIRE_SERVICES=1): apt-get install wrk")
        pytest.skip("wrk is not installed")
    with suite.edge_server(tmp_path) as (url, _pid):  # 127.0.0.1 only
        result = run_wrk(
            url=f"{url}/v1/events",
            api_key="k",
            subjects=50,
            namespace="t-",
            connections=4,
            seconds=2,
            threads=1,
            work_dir=tmp_path,
            name="wrk",
        )
    assert result.requests > 0
    assert result.non_2xx == 0  # every generated body parsed and passed the edge's checks
    assert result.cpu_seconds is not None


def test_a_process_tree_counts_its_live_childrens_cpu() -> None:
    # A supervisor and its worker: the parent sleeps while its child spins for a bounded time.
    spin = "import time; end = time.monotonic() + 20\nwhile time.monotonic() < end: pass"
    script = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {spin!r}])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(20)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        time.sleep(1.5)
        own, tree = cpu_seconds(parent.pid), tree_cpu_seconds(parent.pid)
        assert own is not None and tree is not None
        assert tree - own > 0.5  # the spinning child's second or so
        assert tree_cpu_seconds(2**22 + 1) is None  # no such process
    finally:
        os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait()
