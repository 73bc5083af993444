"""``python -m bench suite`` (``make bench``): every benchmark, one table.

1. The per-service benchmarks (``bench.<name>.run()``), in this process.
2. The whole suite started as separate processes on PostgreSQL (a fresh database, dropped at
   the end) and Redis, and an open-loop load through the gateway at rising offered rates, the
   load generator (bench/loadgen.py) running as its own process.

It prints one table (throughput, p50, p99 and error rate beside what the old portal claimed,
with the machine's core count) and writes the same as JSON to ``bench-results/<time>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SERVICE_BENCHMARKS = ("signing", "policy", "scoring", "ingest")
DEFAULT_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# The bench package is not installed: its own child processes find it here, whatever their cwd.
REPO = Path(__file__).resolve().parents[1]
# What the old portal claimed, with nothing anyone could rerun behind it.
CLAIMED_EVENTS_PER_SECOND = 1022.0
CLAIMED_P50_MS = 5.0
CLAIMED_P99_MS = 50.0
RERUN = "make bench   (or: .venv/bin/python -m bench suite --help)"


# Where a request's time goes: (process, histogram, labels) whose mean over a step is reported.
STAGES: Sequence[tuple[str, str, str, Mapping[str, str]]] = (
    ("gateway", "gateway", "awareness_gateway_http_request_duration_seconds", {"route": "/v1/events"}),
    (
        "ingest",
        "ingest",
        "awareness_ingest_grpc_server_request_duration_seconds",
        {"method": "/awareness.ingest.v1.IngestService/AppendEvent"},
    ),
    (
        "gdpr",
        "gdpr",
        "awareness_gdpr_grpc_server_request_duration_seconds",
        {"method": "/awareness.gdpr.v1.GdprService/GetSubjectKeys"},
    ),
)


@dataclass(frozen=True)
class Row:
    """One line of the table; latencies in milliseconds, throughput per second."""

    section: str
    scenario: str
    offered: str
    throughput: float | None
    p50_ms: float | None
    p99_ms: float | None
    error_rate: float | None
    unit: str = "events/s"
    stages: str = ""
    cpu: str = ""  # CPU ms per acknowledged event, by process (Linux)


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average_at_start": [round(v, 2) for v in load],
    }


# --- per-service benchmarks ---------------------------------------------------------------


def _number(row: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = row.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def service_rows(name: str, rows: Sequence[Mapping[str, Any]]) -> list[Row]:
    """The benchmark's own rows, reduced to throughput and latency where it reports them."""
    if name == "scoring":  # one row per metric, the ONNX runtime's value in "onnxruntime"
        values = {str(r.get("metric", "")).split(",")[0]: _number(r, "onnxruntime") for r in rows}
        p50 = next((v for k, v in values.items() if "latency p50" in k), None)
        p99 = next((v for k, v in values.items() if "latency p99" in k), None)
        rate = next((v for k, v in values.items() if "throughput" in k), None)
        return [
            Row(
                section=name,
                scenario="ONNX inference (p50/p99 single event; throughput batched)",
                offered="-",
                throughput=rate,
                p50_ms=None if p50 is None else p50 / 1000,
                p99_ms=None if p99 is None else p99 / 1000,
                error_rate=None,
            )
        ]
    out = []
    for row in rows:
        label = str(row.get("operation") or row.get("scenario") or row.get("metric") or "?")
        if row.get("policies"):
            label = f"{label}, {row['policies']} policies"
        throughput = _number(row, "ops_per_second", "events_per_s", "events_per_second", "throughput")
        p50_us = _number(row, "p50_us")
        p99_us = _number(row, "p99_us")
        out.append(
            Row(
                section=name,
                scenario=label,
                offered="-",
                throughput=throughput,
                p50_ms=_number(row, "p50_ms") if p50_us is None else p50_us / 1000,
                p99_ms=_number(row, "p99_ms") if p99_us is None else p99_us / 1000,
                error_rate=None,
                unit="ops/s" if "ops_per_second" in row else "events/s",
            )
        )
    return out


def ingest_rows(figures: Any) -> list[Row]:
    """bench.ingest's Figures as table rows (it measures its own processes over gRPC)."""
    stream = f"StreamAppendEvents x{figures.batch_size}"
    return [
        Row(
            "ingest",
            "AppendEvent, concurrent callers",
            "max",
            figures.unary_events_per_second,
            None,
            None,
            None,
        ),
        Row(
            "ingest",
            f"{stream}, acknowledged",
            "max",
            figures.stream_acknowledged_per_second,
            None,
            None,
            None,
        ),
        Row("ingest", f"{stream}, integrated", "max", figures.stream_integrated_per_second, None, None, None),
        Row(
            "ingest",
            "AppendEvent latency at a fixed rate",
            f"{figures.offered_rate:g} events/s",
            None,
            figures.p50_ms,
            figures.p99_ms,
            None,
        ),
        Row(
            "ingest",
            "acknowledgement -> signed checkpoint",
            "-",
            None,
            figures.checkpoint_p50_ms,
            figures.checkpoint_p99_ms,
            None,
        ),
    ]


def _ingest_arguments(seconds: float) -> argparse.Namespace:
    # The ingest benchmark's own parser, so that every option it has gets its default.
    from bench.ingest import parse_arguments

    return parse_arguments(["--seconds", str(max(seconds, 5.0)), "--events", "20000"])


def run_service_benchmarks(*, seconds: float) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    for name in SERVICE_BENCHMARKS:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{name}":
                raise
            raw[name] = {"skipped": "no benchmark module"}
            continue
        run = getattr(module, "run", None)
        if run is None:
            raw[name] = {"skipped": "the module has no run()"}
            continue
        print(f"bench: {name} benchmark ({seconds:g} s per measurement)...", file=sys.stderr, flush=True)
        try:
            result = run(_ingest_arguments(seconds)) if name == "ingest" else run(seconds=seconds)
        except Exception as exc:  # one broken benchmark must not hide the others
            traceback.print_exc()
            raw[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        if isinstance(result, list):
            raw[name] = result
            rows.extend(service_rows(name, result))
        elif dataclasses.is_dataclass(result) and not isinstance(result, type):
            raw[name] = dataclasses.asdict(result)
            rows.extend(ingest_rows(result))
    return rows, raw


# --- the suite under load -----------------------------------------------------------------


def _redis_reachable(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        client.ping()
        client.close()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    from tests.resilience.harness import temporary_database

    with temporary_database(server_url, prefix="awareness_bench") as url:
        yield url


def _histogram_totals(suite: Any) -> dict[str, tuple[float, float]]:
    """(sum, count) of each stage's histogram right now."""
    from tests.resilience.harness import metric_value, parse_metrics

    totals: dict[str, tuple[float, float]] = {}
    for label, process, name, labels in STAGES:
        try:
            samples = parse_metrics(suite.scrape(process))
        except OSError:
            continue
        totals[label] = (
            metric_value(samples, f"{name}_sum", **labels),
            metric_value(samples, f"{name}_count", **labels),
        )
    return totals


def stage_means(before: Mapping[str, tuple[float, float]], after: Mapping[str, tuple[float, float]]) -> str:
    """Mean server-side time per call of each stage during one step, e.g. ``gateway 12.0 / ingest 8.1``."""
    parts = []
    for label, (total, count) in after.items():
        earlier_total, earlier_count = before.get(label, (0.0, 0.0))
        calls = count - earlier_count
        if calls > 0:
            parts.append(f"{label} {(total - earlier_total) / calls * 1000:.1f}")
    return " / ".join(parts)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process (Linux /proc); None elsewhere or once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each process, plus the load generator (reaped children)."""
    import resource

    totals = {name: seconds for name, pid in pids.items() if (seconds := _cpu_seconds(pid)) is not None}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    totals["loadgen"] = children.ru_utime + children.ru_stime
    return totals


def cpu_per_event(before: Mapping[str, float], after: Mapping[str, float], events: int) -> str:
    """CPU ms per acknowledged event of each process that used any, e.g. ``ingest 9.8 / gateway 5.1``.

    On a shared, noisy machine this is steadier than throughput: it says what an event costs, not
    how much CPU happened to be left over.
    """
    if events <= 0:
        return ""
    spent = {name: after[name] - before[name] for name in after if name in before}
    parts = [f"{name} {seconds / events * 1000:.1f}" for name, seconds in spent.items() if seconds > 0]
    return " / ".join(parts)


def run_loadgen(
    *, url: str, api_key: str, rate: float, seconds: float, connections: int, batch: int, out: Path
) -> dict[str, Any]:
    """One load step, the generator in its own process; its JSON summary."""
    command = [
        sys.executable,
        "-m",
        "bench.loadgen",
        f"--url={url}",
        f"--api-key={api_key}",
        f"--rate={rate:g}",
        f"--seconds={seconds:g}",
        f"--connections={connections}",
        f"--batch={batch}",
        "--timeout=10",
        f"--out={out}",
    ]
    path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
        env={**os.environ, "PYTHONPATH": path},
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"loadgen failed ({completed.returncode}): {completed.stderr[-2000:]}")
    summary: dict[str, Any] = json.loads(lines[-1])
    return summary


def run_end_to_end(
    *,
    database_url: str,
    redis_url: str | None,
    rates: Sequence[float],
    seconds: float,
    connections: int,
    batch: int,
    work_dir: Path,
) -> tuple[list[Row], list[dict[str, Any]]]:
    from tests.resilience.harness import ProcessSuite

    rows: list[Row] = []
    summaries: list[dict[str, Any]] = []
    with fresh_database(database_url) as url:
        suite = ProcessSuite(
            data_dir=work_dir / "data",
            database_url=url,
            redis_url=redis_url,
            tuning={},  # production defaults, except that the limits below must not cap the bench
            extra_env={
                "AWARENESS_GATEWAY_RATE_PRINCIPAL_PER_MIN": "100000000",
                "AWARENESS_GATEWAY_RATE_IP_PER_MIN": "100000000",
                "AWARENESS_GATEWAY_RATE_GLOBAL_PER_MIN": "100000000",
                "AWARENESS_GATEWAY_RATE_KEY_PREFIX": f"awareness-bench-{os.getpid()}",
                "PYTHONUNBUFFERED": "1",
            },
        )
        try:
            print("bench: starting the suite on PostgreSQL...", file=sys.stderr, flush=True)
            suite.start_all(timeout=240)
            # Scoring trains its default model on first start; measure the suite with it serving.
            if not suite.wait_for_champion_model(timeout=300):
                print("bench: scoring has no champion model yet; scores stay pending", file=sys.stderr)
            key = suite.create_api_key(name="bench", roles=("admin",))
            load = functools.partial(run_loadgen, url=suite.gateway_url, api_key=key, connections=connections)
            load(rate=20, seconds=3, batch=0, out=work_dir / "warmup.jsonl")
            steps = [(rate, 0) for rate in rates] + ([(max(rates) / batch, batch)] if batch else [])
            for rate, size in steps:
                label = f"POST /v1/events:batchAppend x{size}" if size else "POST /v1/events"
                print(f"bench: {label} at {rate:g} req/s for {seconds:g} s...", file=sys.stderr, flush=True)
                before = _histogram_totals(suite)
                pids = {name: process.pid for name, process in suite.processes.items()}
                cpu_before = process_cpu(pids)
                try:
                    summary = load(
                        rate=rate,
                        seconds=seconds,
                        batch=size,
                        out=work_dir / f"load-{rate:g}-{size}.jsonl",
                    )
                except (RuntimeError, subprocess.TimeoutExpired) as exc:  # keep the steps measured so far
                    print(f"bench: the {rate:g} req/s step failed: {exc}", file=sys.stderr, flush=True)
                    summaries.append({"offered_rate": rate, "batch_size": size, "error": str(exc)[-500:]})
                    break
                stages = stage_means(before, _histogram_totals(suite))
                summary["server_side_mean_ms"] = stages
                time.sleep(2)  # enrichment runs after the acknowledgement: count its CPU too
                cpu = cpu_per_event(cpu_before, process_cpu(pids), int(summary["acknowledged"]))
                summary["cpu_ms_per_event"] = cpu
                summaries.append(summary)
                rows.append(
                    Row(
                        section="end-to-end",
                        scenario=label,
                        offered=f"{rate * max(size, 1):g} events/s",
                        throughput=float(summary["throughput_events_per_s"]),
                        p50_ms=float(summary["p50_ms"]),
                        p99_ms=float(summary["p99_ms"]),
                        error_rate=float(summary["error_rate"]),
                        stages=stages,
                        cpu=cpu,
                    )
                )
        finally:
            suite.stop_all()
    return rows, summaries


# --- the table ----------------------------------------------------------------------------


def _fmt(value: float | None, *, digits: int = 1) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _versus(value: float | None, claim: float, *, higher_is_better: bool) -> str:
    if value is None or value <= 0:
        return ""
    ratio = value / claim
    return f" ({ratio:.2f}x)" if higher_is_better else f" ({ratio:.1f}x)"


def format_table(rows: Sequence[Row], *, info: Mapping[str, Any]) -> str:
    header = (
        "section",
        "scenario",
        "offered",
        f"throughput/s (claim {CLAIMED_EVENTS_PER_SECOND:,.0f})",
        f"p50 ms (claim {CLAIMED_P50_MS:g})",
        f"p99 ms (claim {CLAIMED_P99_MS:g})",
        "errors",
        "server-side mean ms",
        "CPU ms per event",
    )
    cells = []
    for row in rows:
        end_to_end = row.section == "end-to-end"
        cells.append(
            (
                row.section,
                row.scenario,
                row.offered,
                _fmt(row.throughput)
                + (" " + row.unit if row.unit != "events/s" else "")
                + (
                    _versus(row.throughput, CLAIMED_EVENTS_PER_SECOND, higher_is_better=True)
                    if end_to_end
                    else ""
                ),
                _fmt(row.p50_ms, digits=3)
                + (_versus(row.p50_ms, CLAIMED_P50_MS, higher_is_better=False) if end_to_end else ""),
                _fmt(row.p99_ms, digits=3)
                + (_versus(row.p99_ms, CLAIMED_P99_MS, higher_is_better=False) if end_to_end else ""),
                "-" if row.error_rate is None else f"{row.error_rate * 100:.1f}%",
                row.stages or "-",
                row.cpu or "-",
            )
        )
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    title = (
        f"Awareness benchmarks, {info['date']}: {info['machine']['cores']} cores ({info['machine']['arch']}, "
        f"{info['machine']['system']}, Python {info['machine']['python']}, load average at start "
        f"{info['machine']['load_average_at_start'][0]}); store: {info['store']}"
    )
    return "\n".join(
        [
            title,
            "",
            line(header),
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
            *(line(c) for c in cells),
            "",
            "Old portal's claims: 1,022 events/s, 5 ms p50, 50 ms p99 (never reproducible).",
            "(Nx) = ours / claim: above 1 is better for throughput, worse for latency.",
            "End-to-end latency is measured from each request's scheduled send time (open loop).",
            "Server-side mean ms: time per call inside each process during the step (from its histograms).",
            "CPU ms per event: CPU each process used during the step (and 2 s after it, for enrichment)"
            " per acknowledged event; loadgen is the load generator.",
            f"Rerun: {RERUN}",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench suite", description=__doc__)
    parser.add_argument("--rates", default="100,200,400,800", help="offered req/s steps (100,200,400,800)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per load step (10)")
    parser.add_argument("--connections", type=int, default=16, help="load-generator connections (16)")
    parser.add_argument("--batch", type=int, default=50, help="events per :batchAppend step (50; 0 skips it)")
    parser.add_argument("--service-seconds", type=float, default=2.0, help="seconds per service measurement")
    parser.add_argument("--skip-services", action="store_true", help="only the end-to-end load")
    parser.add_argument("--skip-suite", action="store_true", help="only the per-service benchmarks")
    parser.add_argument(
        "--database-url", default=None, help=f"PostgreSQL server (DATABASE_URL or {DEFAULT_DATABASE_URL})"
    )
    parser.add_argument("--redis-url", default=None, help=f"Redis (REDIS_URL or {DEFAULT_REDIS_URL})")
    parser.add_argument("--out-dir", type=Path, default=Path("bench-results"), help="where the JSON goes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    started = datetime.now(UTC)
    database_url = args.database_url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    if not database_url.startswith("postgresql"):
        print(f"bench: needs PostgreSQL, got {database_url!r}", file=sys.stderr)
        return 2
    redis_url = args.redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    if not _redis_reachable(redis_url):
        print(f"bench: Redis at {redis_url} is not reachable; in-process limits", file=sys.stderr)
        redis_url = None
    info: dict[str, Any] = {
        "date": f"{started:%Y-%m-%d %H:%M} UTC",
        "machine": machine(),
        "store": "PostgreSQL" + (" + Redis" if redis_url else " (no Redis)"),
        "rerun": RERUN,
        "claims": {
            "events_per_s": CLAIMED_EVENTS_PER_SECOND,
            "p50_ms": CLAIMED_P50_MS,
            "p99_ms": CLAIMED_P99_MS,
        },
    }
    rows: list[Row] = []
    document: dict[str, Any] = {"info": info}
    if not args.skip_services:
        os.environ["DATABASE_URL"] = database_url  # the ingest benchmark starts its own processes on it
        service, document["services"] = run_service_benchmarks(seconds=args.service_seconds)
        rows += service
    failed = False
    if not args.skip_suite:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="awareness-bench-") as directory:
            try:
                e2e, document["end_to_end"] = run_end_to_end(
                    database_url=database_url,
                    redis_url=redis_url,
                    rates=rates,
                    seconds=args.seconds,
                    connections=args.connections,
                    batch=args.batch,
                    work_dir=Path(directory),
                )
                rows += e2e
            except Exception as exc:
                traceback.print_exc()
                document["end_to_end_error"] = f"{type(exc).__name__}: {exc}"
                failed = True
    document["table"] = [row.__dict__ for row in rows]
    table = format_table(rows, info=info)
    print(table, flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nwritten: {path}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
