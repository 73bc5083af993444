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
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from bench import profile
from bench.external import run_measured, run_wrk, store_cpu_seconds, tree_cpu_seconds, wrk_available
from bench.population import (
    BENCH_KEY_CACHE_SECONDS,
    DEFAULT_SUBJECTS,
    KEY_CACHE_VARIABLE,
    Population,
    Temperature,
    describe,
    ingest_key_cache_seconds,
    run_namespace,
    temperatures,
    warm_ready_at,
)
from bench.population import (
    add_arguments as add_population_arguments,
)
from services.runtime.config import workers_var

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


# Where a request's time goes: (label, process, histogram, labels) whose mean over a step is
# reported in ms.
STAGES: Sequence[tuple[str, str, str, Mapping[str, str]]] = (
    ("gateway", "gateway", "awareness_gateway_http_request_duration_seconds", {"route": "/v1/events"}),
    (
        "ingest alone",
        "ingest",
        "awareness_ingest_grpc_server_request_duration_seconds",
        {"method": "/awareness.ingest.v1.IngestService/AppendEvent"},
    ),
    (
        "ingest shared",
        "ingest",
        "awareness_ingest_grpc_server_request_duration_seconds",
        {"method": "/awareness.ingest.v1.IngestService/AppendEvents"},
    ),
    (
        "gdpr",
        "gdpr",
        "awareness_gdpr_grpc_server_request_duration_seconds",
        {"method": "/awareness.gdpr.v1.GdprService/GetSubjectKeys"},
    ),
)
# Reported beside them as a mean count: how many single events shared each call to ingest.
EVENTS_PER_CALL: Final[tuple[str, str, str, Mapping[str, str]]] = (
    "events per call",
    "gateway",
    "awareness_gateway_append_events_per_call",
    {},
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
    cpu_ms: Mapping[str, float] = dataclasses.field(default_factory=dict)  # the same, as numbers
    loadgen_cpu: str = ""  # the load generator's own CPU during the step
    versus_edge: str = ""  # throughput as a fraction of the edge alone's, same kind of step
    versus_floor: str = ""  # the same, of the floor's (bench/floor.py)
    offered_events: float | None = None  # events/s offered by an open-loop step (None: closed loop)
    edge_key: str = ""  # which edge and floor rows this row compares with ("" for none)


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
    door = figures.door_run  # the warm stream again, through the gateway's gRPC door
    door_rows = (
        []
        if door is None
        else [
            Row(
                "ingest",
                f"{stream} via the gateway's gRPC door, {door.label}, acknowledged",
                "max",
                door.acknowledged_per_second,
                None,
                None,
                None,
            )
        ]
    )
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
        *(
            row
            for run in figures.stream_runs
            for row in (
                Row(
                    "ingest",
                    f"{stream}, {run.label}, acknowledged",
                    "max",
                    run.acknowledged_per_second,
                    None,
                    None,
                    None,
                ),
                Row(
                    "ingest",
                    f"{stream}, {run.label}, integrated",
                    "max",
                    run.integrated_per_second,
                    None,
                    None,
                    None,
                ),
            )
        ),
        *door_rows,
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
        *(
            Row(
                "ingest",
                f"GetEvent, {label}, concurrent callers",
                "max",
                reads.per_second,
                reads.p50_ms,
                reads.p99_ms,
                None,
            )
            for label, reads in (
                ("decrypted, access record queued (analyst)", figures.personal_reads),
                ("pseudonymous, no record (policy_author)", figures.pseudonymous_reads),
            )
            if reads is not None
        ),
    ]


def _ingest_arguments(
    seconds: float,
    *,
    subjects: int = DEFAULT_SUBJECTS,
    only: Temperature | None = None,
    key_cache_seconds: float = BENCH_KEY_CACHE_SECONDS,
) -> argparse.Namespace:
    # The ingest benchmark's own parser, so that every option it has gets its default: 100,000
    # events a stream, long enough to be sustained (20,000 lasted under two seconds, mostly ramp-up).
    from bench.ingest import parse_arguments

    chosen = [f"--{only}"] if only else []
    cache = ["--key-cache-seconds", f"{key_cache_seconds:g}"]
    return parse_arguments(
        [
            "--seconds",
            str(max(seconds, 5.0)),
            "--subjects",
            str(subjects),
            *chosen,
            *cache,
        ]
    )


def run_service_benchmarks(
    *,
    seconds: float,
    subjects: int = DEFAULT_SUBJECTS,
    only: Temperature | None = None,
    key_cache_seconds: float = BENCH_KEY_CACHE_SECONDS,
) -> tuple[list[Row], dict[str, Any]]:
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
            result = (
                run(
                    _ingest_arguments(
                        seconds, subjects=subjects, only=only, key_cache_seconds=key_cache_seconds
                    )
                )
                if name == "ingest"
                else run(seconds=seconds)
            )
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


def redis_reachable(url: str) -> bool:
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
    from tests.support.resources import temporary_database

    with temporary_database(server_url, prefix="awareness_bench") as url:
        yield url


def _histogram_totals(suite: Any) -> dict[str, tuple[float, float]]:
    """(sum, count) of each stage's histogram right now."""
    from tests.resilience.harness import metric_value, parse_metrics

    totals: dict[str, tuple[float, float]] = {}
    for label, process, name, labels in (*STAGES, EVENTS_PER_CALL):
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
            scale = 1 if label == EVENTS_PER_CALL[0] else 1000
            parts.append(f"{label} {(total - earlier_total) / calls * scale:.1f}")
    return " / ".join(parts)


def process_cpu(pids: Mapping[str, int], *, stores: bool = True) -> dict[str, float]:
    """CPU seconds used so far by each process, the stores (PostgreSQL, Redis) unless ``stores`` is
    False, and the load generator (reaped children): with the stores, all an event costs here."""
    import resource

    # A process's tree: with several workers, the pid is their supervisor's.
    totals = {name: seconds for name, pid in pids.items() if (seconds := tree_cpu_seconds(pid)) is not None}
    if stores:
        totals.update(store_cpu_seconds())
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    totals["loadgen"] = children.ru_utime + children.ru_stime
    return totals


def cpu_costs(before: Mapping[str, float], after: Mapping[str, float], events: int) -> dict[str, float]:
    """CPU ms per acknowledged event of each process that used any (empty without events)."""
    if events <= 0:
        return {}
    spent = {name: after[name] - before[name] for name in after if name in before}
    return {name: seconds / events * 1000 for name, seconds in spent.items() if seconds > 0}


def format_cpu(costs: Mapping[str, float]) -> str:
    """``cpu_costs`` as the table's column: each process, their total, and the rate that total
    allows on this machine's cores, e.g. ``ingest 3.1 / gateway 1.6 / total 4.7 (425/s)``.

    On a shared, noisy machine this is steadier than throughput: it says what an event costs, not
    how much CPU happened to be left over. The ceiling assumes every core busy with nothing else.
    """
    if not costs:
        return ""
    parts = [f"{name} {_milliseconds(ms)}" for name, ms in costs.items()]
    total = sum(costs.values())
    if total > 0:
        parts.append(f"total {_milliseconds(total)} ({(os.cpu_count() or 1) * 1000 / total:,.0f}/s)")
    return " / ".join(parts)


def _milliseconds(value: float) -> str:
    """Two decimals below 1 ms, where batched events' costs are, else one."""
    return f"{value:.2f}" if value < 1 else f"{value:.1f}"


def run_loadgen(
    *,
    url: str,
    api_key: str,
    rate: float,
    seconds: float,
    connections: int,
    batch: int,
    out: Path,
    subjects: int = DEFAULT_SUBJECTS,
    namespace: str = "",
) -> dict[str, Any]:
    """One load step, the generator in its own process; its JSON summary, with the CPU it used."""
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
        f"--subjects={subjects}",
        f"--namespace={namespace}",
        "--timeout=10",
        f"--out={out}",
    ]
    path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    finished = run_measured(
        command,
        timeout=seconds + 120,
        work_dir=out.parent,
        name=out.stem,
        env={**os.environ, "PYTHONPATH": path},
    )
    lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
    if finished.returncode != 0 or not lines:
        raise RuntimeError(f"loadgen failed ({finished.returncode}): {finished.stderr[-2000:]}")
    summary: dict[str, Any] = json.loads(lines[-1])
    summary["loadgen_cpu_seconds"] = finished.cpu_seconds
    summary["loadgen_wall_seconds"] = round(finished.wall_seconds, 3)
    return summary


def generator_cpu(cpu: float | None, wall_seconds: float) -> str:
    """The load generator's own CPU in a step, e.g. ``2.1 s (21% of a core)``."""
    if cpu is None:
        return "n/a (no /proc)"
    share = f" ({cpu / wall_seconds:.0%} of a core)" if wall_seconds > 0 else ""
    return f"{cpu:.1f} s{share}"


def edge_ratio(suite_value: float | None, edge_value: float | None) -> str:
    """The suite's throughput as a fraction of the edge alone's, e.g. ``0.42``."""
    if suite_value is None or not edge_value:
        return ""
    return f"{suite_value / edge_value:.2f}"


def with_edge_ratios(rows: Sequence[Row]) -> list[Row]:
    """Each suite row with ``suite / edge`` and ``suite / floor`` filled in where an edge or floor
    row of the same kind was measured."""

    def throughputs(section: str) -> dict[str, float | None]:
        return {row.edge_key: row.throughput for row in rows if row.section == section and row.edge_key}

    edge, floor = throughputs("edge"), throughputs("floor")
    return [
        dataclasses.replace(
            row,
            versus_edge=edge_ratio(row.throughput, edge.get(row.edge_key)),
            versus_floor=edge_ratio(row.throughput, floor.get(row.edge_key)),
        )
        if row.section == "end-to-end" and row.edge_key
        else row
        for row in rows
    ]


@contextlib.contextmanager
def bench_process(work_dir: Path, name: str, argv: Sequence[str]) -> Iterator[tuple[int, int]]:
    """``python argv --port=N`` in a process of its own, once it listens: (N, its pid); stopped
    (this pid only) after. Its output goes to ``work_dir/<name>.log``."""
    from tests.support.resources import free_port

    port = free_port()
    path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    log_path = work_dir / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, *argv, f"--port={port}"],
            env={**os.environ, "PYTHONPATH": path},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the {name} exited; see {log_path}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {name} did not listen within 30 s")
            time.sleep(0.1)
        yield port, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def edge_server(work_dir: Path) -> Iterator[tuple[str, int]]:
    """bench/edge.py: (its URL, its pid)."""
    with bench_process(work_dir, "edge", ["-m", "bench.edge"]) as (port, pid):
        yield f"http://127.0.0.1:{port}", pid


@contextlib.contextmanager
def floor_servers(work_dir: Path, database_url: str) -> Iterator[tuple[str, dict[str, int]]]:
    """bench/floor.py's store on ``database_url`` and its edge: (the edge's URL, both pids)."""
    store_argv = ["-m", "bench.floor", "store", f"--database-url={database_url}"]
    with bench_process(work_dir, "floor-store", store_argv) as (store_port, store_pid):
        edge_argv = ["-m", "bench.floor", "edge", f"--store=127.0.0.1:{store_port}"]
        with bench_process(work_dir, "floor-edge", edge_argv) as (edge_port, edge_pid):
            yield f"http://127.0.0.1:{edge_port}", {"edge": edge_pid, "store": store_pid}


FLOOR = "edge, one gRPC hop, PostgreSQL commit"


@dataclass(frozen=True, kw_only=True)
class LoadPlan:
    """What the end-to-end part offers, and to how many people."""

    rates: Sequence[float]  # single events, requests (= events) per second
    seconds: float
    connections: int
    batch: int  # events per :batchAppend request; 0 skips that step
    batch_events_per_second: float
    subjects: int
    temperatures: Sequence[Temperature]
    edge: bool = True
    floor: bool = True
    wrk_connections: int = 32  # 0 skips the saturation rows
    wrk_seconds: float = 10.0
    wrk_threads: int = 1
    key_cache_seconds: float = BENCH_KEY_CACHE_SECONDS  # ingest's, while benchmarked
    workers: int = 1  # worker processes of the gateway and of ingest (AWARENESS_<SERVICE>_WORKERS)
    profile_dir: Path | None = None  # py-spy every suite process during each load step, stacks here


@dataclass
class _Steps:
    """The load steps of one run and what they produced."""

    plan: LoadPlan
    work_dir: Path
    rows: list[Row] = dataclasses.field(default_factory=list)
    summaries: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    failed: bool = False

    def offer(
        self,
        *,
        section: str,
        scenario: str,
        edge_key: str,
        url: str,
        api_key: str,
        rate: float,
        batch: int,
        people: Population,
        pids: Mapping[str, int],
        stages: Callable[[], dict[str, tuple[float, float]]] | None = None,
        record: bool = True,
    ) -> bool:
        """One open-loop step by bench/loadgen.py in its own process; False if it failed."""
        plan = self.plan
        print(f"bench: {scenario} at {rate:g} req/s for {plan.seconds:g} s...", file=sys.stderr, flush=True)
        before = stages() if stages else {}
        stores = section != "edge"  # the edge app alone uses no store (the floor uses PostgreSQL)
        cpu_before = process_cpu(pids, stores=stores)
        people_name = people.namespace.rstrip("-").rsplit("-", 1)[-1]
        name = f"{len(self.summaries):02d}-{section}-{rate:g}-{batch}-{people_name}"  # warm reuses people
        empty: dict[str, Path] = {}
        spying: contextlib.AbstractContextManager[dict[str, Path]] = (
            profile.recording(pids, seconds=plan.seconds, out_dir=plan.profile_dir, step=name)
            if plan.profile_dir is not None
            else contextlib.nullcontext(empty)
        )
        try:
            with spying as profile_paths:
                summary = run_loadgen(
                    url=url,
                    api_key=api_key,
                    rate=rate,
                    seconds=plan.seconds,
                    connections=plan.connections,
                    batch=batch,
                    out=self.work_dir / f"{name}.jsonl",
                    subjects=people.subjects,
                    namespace=people.namespace,
                )
        except (RuntimeError, subprocess.TimeoutExpired) as exc:  # keep the steps measured so far
            print(f"bench: the {rate:g} req/s step failed: {exc}", file=sys.stderr, flush=True)
            self.summaries.append(
                {"scenario": scenario, "offered_rate": rate, "batch_size": batch, "error": str(exc)[-500:]}
            )
            return False
        summary["scenario"] = scenario
        summary["server_side_mean_ms"] = stage_means(before, stages()) if stages else ""
        time.sleep(2)  # enrichment runs after the acknowledgement: count its CPU too
        costs = cpu_costs(cpu_before, process_cpu(pids, stores=stores), int(summary["acknowledged"]))
        summary["cpu_ms_per_event"] = format_cpu(costs)
        if profile_paths:
            profiles = profile.profiles_of(profile_paths)
            print(
                profile.format_profiles(scenario, profiles, events=int(summary["acknowledged"])),
                file=sys.stderr,
                flush=True,
            )
            summary["profile"] = [dataclasses.asdict(each) for each in profiles]
        self.summaries.append(summary)
        if record:
            self.rows.append(
                Row(
                    section=section,
                    scenario=scenario,
                    offered=f"{rate * max(batch, 1):g} events/s",
                    offered_events=rate * max(batch, 1),
                    throughput=float(summary["throughput_events_per_s"]),
                    p50_ms=float(summary["p50_ms"]),
                    p99_ms=float(summary["p99_ms"]),
                    error_rate=float(summary["error_rate"]),
                    stages=summary["server_side_mean_ms"],
                    cpu=summary["cpu_ms_per_event"],
                    cpu_ms=costs,
                    loadgen_cpu=generator_cpu(
                        summary["loadgen_cpu_seconds"], summary["loadgen_wall_seconds"]
                    ),
                    edge_key=edge_key,
                )
            )
        return True

    def saturate(
        self,
        *,
        section: str,
        scenario: str,
        url: str,
        api_key: str,
        people: Population,
        pids: Mapping[str, int],
    ) -> None:
        """Closed loop at ``wrk_connections`` by wrk (or, without wrk, by the Python generator)."""
        plan = self.plan
        connections = plan.wrk_connections
        label = f"{scenario}, saturation (wrk, c={connections})"
        if not wrk_available():
            # The Python generator, offered far more than any server here answers, is a closed loop
            # at `connections`: each connection sends its next request when the answer arrives.
            fallback = dataclasses.replace(plan, connections=connections)
            steps = _Steps(plan=fallback, work_dir=self.work_dir)
            steps.offer(
                section=section,
                scenario=f"{scenario}, saturation (no wrk: Python loadgen closed loop, c={connections})",
                edge_key="saturation",
                url=url,
                api_key=api_key,
                rate=3000,
                batch=0,
                people=people,
                pids=pids,
            )
            self.rows += steps.rows
            self.summaries += steps.summaries
            return
        print(f"bench: {label} for {plan.wrk_seconds:g} s...", file=sys.stderr, flush=True)
        stores = section != "edge"
        cpu_before = process_cpu(pids, stores=stores)
        try:
            result = run_wrk(
                url=f"{url}/v1/events",
                api_key=api_key,
                subjects=people.subjects,
                namespace=people.namespace,
                connections=connections,
                seconds=plan.wrk_seconds,
                threads=plan.wrk_threads,
                work_dir=self.work_dir,
                name=f"wrk-{section}",
            )
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            print(f"bench: {label} failed: {exc}", file=sys.stderr, flush=True)
            self.summaries.append({"scenario": label, "error": str(exc)[-500:]})
            return
        time.sleep(2)
        answered = result.requests - result.non_2xx
        summary = {"scenario": label, **dataclasses.asdict(result), "throughput": result.throughput}
        costs = cpu_costs(cpu_before, process_cpu(pids, stores=stores), answered)
        summary["cpu_ms_per_event"] = format_cpu(costs)
        self.summaries.append(summary)
        self.rows.append(
            Row(
                section=section,
                scenario=label,
                offered="closed loop",
                throughput=result.throughput,
                p50_ms=result.p50_ms,
                p99_ms=result.p99_ms,
                error_rate=result.error_rate,
                cpu=summary["cpu_ms_per_event"],
                cpu_ms=costs,
                loadgen_cpu=generator_cpu(result.cpu_seconds, result.seconds),
                edge_key="saturation",
            )
        )

    def measure_floor(self, database_url: str, *, api_key: str, population: Population) -> None:
        """The floor's rows (bench/floor.py), at the single-event rates and the batch step's load."""
        plan = self.plan
        with floor_servers(self.work_dir, database_url) as (url, pids):
            floor = functools.partial(self.offer, section="floor", url=url, api_key=api_key, pids=pids)
            for rate in plan.rates:
                floor(
                    scenario=f"{FLOOR}, POST /v1/events",
                    edge_key=f"single-{rate:g}",
                    rate=rate,
                    batch=0,
                    people=population.step(f"floor{rate:g}"),
                )
            if plan.batch:
                floor(
                    scenario=f"{FLOOR}, POST /v1/events:batchAppend x{plan.batch}",
                    edge_key=f"batch-{plan.batch}",
                    rate=plan.batch_events_per_second / plan.batch,
                    batch=plan.batch,
                    people=population.step("floorbatch"),
                )
            if plan.wrk_connections:
                self.saturate(
                    section="floor",
                    scenario=FLOOR,
                    url=url,
                    api_key=api_key,
                    people=population.step("floorwrk"),
                    pids=pids,
                )


def run_end_to_end(
    *, database_url: str, redis_url: str | None, plan: LoadPlan, work_dir: Path
) -> tuple[list[Row], list[dict[str, Any]]]:
    """The suite on a fresh database, loaded through the gateway; the edge alone beside it.

    Order: every cold step (each rate its own new people), then the edge alone and the floor (while
    the cold steps' people leave ingest's key cache), then every warm step (each rate's people
    again, once their keys have expired from the cache), then the batch step and saturation.
    """
    from tests.resilience.harness import ProcessSuite

    steps = _Steps(plan=plan, work_dir=work_dir)
    population = Population(plan.subjects, run_namespace())
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
                KEY_CACHE_VARIABLE: f"{plan.key_cache_seconds:g}",  # the warm steps wait it out
                workers_var("gateway"): str(plan.workers),
                workers_var("ingest"): str(plan.workers),
            },
        )
        try:
            print("bench: starting the suite on PostgreSQL...", file=sys.stderr, flush=True)
            suite.start_all(timeout=240)
            # Scoring trains its default model on first start; measure the suite with it serving.
            if not suite.wait_for_champion_model(timeout=300):
                print("bench: scoring has no champion model yet; scores stay pending", file=sys.stderr)
            key = suite.create_api_key(name="bench", roles=("admin",))
            key_cache_seconds = ingest_key_cache_seconds(suite.process_env("ingest"))
            pids = {name: process.pid for name, process in suite.processes.items()}
            gateway = functools.partial(
                steps.offer,
                section="end-to-end",
                url=suite.gateway_url,
                api_key=key,
                pids=pids,
                stages=functools.partial(_histogram_totals, suite),
            )
            run_loadgen(
                url=suite.gateway_url,
                api_key=key,
                rate=20,
                seconds=3,
                connections=plan.connections,
                batch=0,
                out=work_dir / "warmup.jsonl",
                subjects=50,
                namespace=population.step("warmup").namespace,
            )
            people_of = {rate: population.step(f"r{rate:g}") for rate in plan.rates}
            touched_at: dict[float, float] = {}
            for rate in plan.rates:  # cold, or only the warm steps' first touch
                cold = "cold" in plan.temperatures
                events = round(rate * plan.seconds)
                scenario = f"POST /v1/events, {describe(plan.subjects, 'cold', events=events)}"
                if not gateway(
                    scenario=scenario if cold else f"{scenario} (first touch for warm)",
                    edge_key=f"single-{rate:g}",
                    rate=rate,
                    batch=0,
                    people=people_of[rate],
                    record=cold,
                ):
                    steps.failed = True
                    break
                touched_at[rate] = time.monotonic()
            if plan.edge:
                with edge_server(work_dir) as (edge_url, edge_pid):
                    edge = functools.partial(
                        steps.offer, section="edge", url=edge_url, api_key=key, pids={"edge": edge_pid}
                    )
                    for rate in plan.rates:
                        edge(
                            scenario="minimal Starlette app, POST /v1/events (json.loads + field checks)",
                            edge_key=f"single-{rate:g}",
                            rate=rate,
                            batch=0,
                            people=population.step(f"edge{rate:g}"),
                        )
                    if plan.wrk_connections:
                        steps.saturate(
                            section="edge",
                            scenario="minimal Starlette app",
                            url=edge_url,
                            api_key=key,
                            people=population.step("edgewrk"),
                            pids={"edge": edge_pid},
                        )
            if plan.floor:
                steps.measure_floor(url, api_key=key, population=population)
            if "warm" in plan.temperatures and not steps.failed:
                for rate, touched in touched_at.items():
                    wait = warm_ready_at(touched, key_cache_seconds=key_cache_seconds) - time.monotonic()
                    if wait > 0:
                        if wait >= 1:
                            print(f"bench: {wait:.0f} s until ingest's key cache expires...", file=sys.stderr)
                        time.sleep(wait)
                    if not gateway(
                        scenario=f"POST /v1/events, {describe(plan.subjects, 'warm')}",
                        edge_key=f"single-{rate:g}",
                        rate=rate,
                        batch=0,
                        people=people_of[rate],
                    ):
                        steps.failed = True
                        break
            if plan.batch and not steps.failed:
                rate = plan.batch_events_per_second / plan.batch
                events = round(plan.batch_events_per_second * plan.seconds)
                steps.failed = not gateway(
                    scenario=f"POST /v1/events:batchAppend x{plan.batch}, "
                    + describe(plan.subjects, "cold", events=events),
                    edge_key=f"batch-{plan.batch}",
                    rate=rate,
                    batch=plan.batch,
                    people=population.step("batch"),
                )
            if plan.wrk_connections and not steps.failed:
                steps.saturate(
                    section="end-to-end",
                    scenario=f"POST /v1/events, {plan.subjects:,} people, new",
                    url=suite.gateway_url,
                    api_key=key,
                    people=population.step("wrk"),
                    pids=pids,
                )
        finally:
            suite.stop_all()
    return with_edge_ratios(steps.rows), steps.summaries


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


# The suite's processes that the floor's shape stands for (bench/floor.py); the others (gdpr, policy,
# scoring, analytics, signing, Redis) do work that the floor does not do at all.
SHAPE_PROCESSES: Final = frozenset({"gateway", "ingest", "postgres", "loadgen"})
# Events per call of the in-process measure of ingest's own work: the cheapest per event that the
# suite's calls reach (coalesced single events share calls too), so a lower bound for every step.
BATCH_OF_WORK: Final = 50


def budget_rows(rows: Sequence[Row], *, cores: int, work_ms: float | None = None) -> list[tuple[str, ...]]:
    """What each open-loop step's offered rate leaves of the machine's CPU per event, beside what the
    floor spent at that rate, ingest's own work per event (``work_ms``, bench/work.py; None when not
    measured) and what the suite spent outside the floor's shape in the same step.

    With every core busy, ``offered`` events/s allow ``cores * 1000 / offered`` ms of CPU per event.
    If the floor, ingest's work in process and the suite's work outside the shape already exceed
    that, the rate is out of reach on this machine even for a gateway and ingest that cost no more
    than the floor's edge and store plus that work. When the floor and ingest's work alone exceed
    it, the rate is out of reach whatever the other services cost.
    """
    floors = {row.edge_key: row for row in rows if row.section == "floor" and row.edge_key}
    work = work_ms or 0.0
    table: list[tuple[str, ...]] = []
    for row in rows:
        floor = floors.get(row.edge_key)
        offered = row.offered_events
        if row.section != "end-to-end" or floor is None or not offered or not row.cpu_ms or not floor.cpu_ms:
            continue
        budget = cores * 1000 / offered
        floor_ms = sum(floor.cpu_ms.values())
        outside = sum(ms for name, ms in row.cpu_ms.items() if name not in SHAPE_PROCESSES)
        need = floor_ms + work + outside
        verdict = f"over by {_milliseconds(need - budget)}" if need > budget else "within"
        if floor_ms + work > budget:
            verdict += f" ({_milliseconds(floor_ms + work - budget)} without the rest)"
        table.append(
            (
                row.scenario,
                row.offered,
                _milliseconds(budget),
                _milliseconds(floor_ms),
                "-" if work_ms is None else _fmt(work_ms, digits=3),
                _milliseconds(outside),
                _milliseconds(need),
                verdict,
                _fmt(floor.p50_ms, digits=2),
            )
        )
    return table


BUDGET_HEADER: Final = (
    "step",
    "offered",
    "CPU budget ms/event",
    "floor ms/event",
    "ingest's own work",
    "suite outside the floor's shape",
    "floor + work + outside",
    "verdict",
    f"floor p50 ms (target {CLAIMED_P50_MS:g})",
)


def format_budget(rows: Sequence[Row], *, cores: int, work_ms: float | None = None) -> str:
    """``budget_rows`` as a table with its reading, or "" when no step had a floor beside it."""
    table = budget_rows(rows, cores=cores, work_ms=work_ms)
    if not table:
        return ""
    return "\n".join(
        [
            f"What each offered rate leaves on {cores} cores ({cores * 1000:,} ms of CPU per second):",
            "",
            *_markdown(BUDGET_HEADER, table),
            "",
            "CPU budget = cores x 1,000 / offered events/s. floor: what the floor's edge, store, PostgreSQL"
            " and the load generator spent per event at that rate. ingest's own work: the CPU per event"
            " of ingest's validation, minimisation, sealing, hashing, rows and receipt, in process with"
            f" every key known and a free commit, {BATCH_OF_WORK} events a call (bench/work.py). outside"
            " the floor's shape: what the suite's other processes (gdpr, policy, scoring, analytics,"
            " signing, Redis) spent per event in the step. over: out of reach on this machine even if"
            " the gateway and ingest cost no more than the floor's edge and store plus ingest's own work;"
            " without the rest: out of reach even if every other service cost nothing.",
        ]
    )


def _markdown(header: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(c) for c in cells)]


def format_table(rows: Sequence[Row], *, info: Mapping[str, Any]) -> str:
    header = (
        "section",
        "scenario",
        "offered",
        f"throughput/s (claim {CLAIMED_EVENTS_PER_SECOND:,.0f})",
        f"p50 ms (claim {CLAIMED_P50_MS:g})",
        f"p99 ms (claim {CLAIMED_P99_MS:g})",
        "errors",
        "suite / edge / floor",
        "server-side mean ms",
        "CPU ms per event",
        "load generator CPU",
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
                f"{row.versus_edge or '-'} / {row.versus_floor or '-'}"
                if row.versus_edge or row.versus_floor
                else "-",
                row.stages or "-",
                row.cpu or "-",
                row.loadgen_cpu or "-",
            )
        )
    title = (
        f"Awareness benchmarks, {info['date']}: {info['machine']['cores']} cores ({info['machine']['arch']}, "
        f"{info['machine']['system']}, Python {info['machine']['python']}, load average at start "
        f"{info['machine']['load_average_at_start'][0]}); store: {info['store']}"
    )
    return "\n".join(
        [
            title,
            "",
            *_markdown(header, cells),
            "",
            "Old portal's claims: 1,022 events/s, 5 ms p50, 50 ms p99 (never reproducible).",
            "(Nx) = ours / claim: above 1 is better for throughput, worse for latency.",
            "End-to-end latency is measured from each request's scheduled send time (open loop).",
            "cold: people never seen before (gdpr creates their keys); with more events than people,"
            " each recurs after the first pass (first-sight share in brackets). warm: the same people"
            " again once ingest's key cache has expired (their keys exist in gdpr).",
            "edge: a minimal Starlette app under the gateway's uvicorn settings that parses the same body."
            " floor: that edge, one coalesced gRPC call to a store process and a shared PostgreSQL commit,"
            " and nothing else (bench/floor.py): what the shape costs before any of the suite's work."
            " suite / edge / floor = the suite's throughput over theirs at the same offered load.",
            "Saturation (wrk): closed loop, each of c connections sends when its answer arrives.",
            "Server-side mean ms: time per call inside each process during the step (from its histograms);"
            " ingest alone: AppendEvent, shared: AppendEvents carrying single events that shared a call;"
            " events per call: how many shared one, on average.",
            "CPU ms per event: CPU each process used during the step (and 2 s after it, for enrichment)"
            " per acknowledged event; postgres and redis are every process of those servers, loadgen"
            " the load generator. total (N/s): their sum, and the events/s it allows with every core"
            " busy: the ceiling this machine puts on that step.",
            "Load generator CPU: what the generator's own process used in the step (from /proc), beside"
            " the share of one core: it runs on the same machine as what it measures.",
            *(
                [
                    f"Ingest's key cache lived {info['ingest_key_cache_seconds']:g} s in this run (default"
                    f" {info['ingest_key_cache_default_seconds']:g} s), so that warm steps can wait it out."
                ]
                if "ingest_key_cache_seconds" in info
                else []
            ),
            *(
                [
                    f"The gateway and ingest ran {info['workers']} worker processes each in the end-to-end"
                    " suite (their CPU is the workers' together; server-side means are worker 0's)."
                ]
                if info.get("workers", 1) > 1
                else []
            ),
            f"Rerun: {RERUN}",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench suite", description=__doc__)
    parser.add_argument(
        "--rates", default="250,500,1000", help="offered single events/s, one step each (250,500,1000)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per load step (10)")
    parser.add_argument("--connections", type=int, default=16, help="load-generator connections (16)")
    parser.add_argument("--batch", type=int, default=50, help="events per :batchAppend step (50; 0 skips it)")
    parser.add_argument(
        "--batch-events", type=float, default=10_000.0, help="offered events/s of the batch step (10,000)"
    )
    add_population_arguments(parser)
    parser.add_argument(
        "--key-cache-seconds",
        type=float,
        default=BENCH_KEY_CACHE_SECONDS,
        help=f"ingest's key-cache lifetime ({BENCH_KEY_CACHE_SECONDS:g}); warm steps wait it out",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes of the gateway and of ingest in the end-to-end suite (1)",
    )
    parser.add_argument("--skip-edge", action="store_true", help="no edge-alone rows (nor suite / edge)")
    parser.add_argument("--skip-floor", action="store_true", help="no floor rows (nor suite / floor)")
    parser.add_argument(
        "--wrk-connections",
        type=int,
        default=32,
        help="connections of the saturation runs (32; 0 skips them)",
    )
    parser.add_argument(
        "--wrk-seconds", type=float, default=None, help="seconds per saturation run (--seconds)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy every suite process during each load step; print where its CPU went and keep "
        "the collapsed stacks beside the JSON (flamegraph.pl or speedscope read them)",
    )
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
    plan = LoadPlan(
        rates=rates,
        seconds=args.seconds,
        connections=args.connections,
        batch=args.batch,
        batch_events_per_second=args.batch_events,
        subjects=args.subjects,
        temperatures=temperatures(cold=args.cold, warm=args.warm),
        edge=not args.skip_edge,
        floor=not args.skip_floor,
        wrk_connections=args.wrk_connections,
        wrk_seconds=args.seconds if args.wrk_seconds is None else args.wrk_seconds,
        key_cache_seconds=args.key_cache_seconds,
        workers=args.workers,
    )
    started = datetime.now(UTC)
    if args.profile:
        plan = dataclasses.replace(plan, profile_dir=args.out_dir / f"{started:%Y%m%dT%H%M%SZ}-profiles")
    database_url = args.database_url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    if not database_url.startswith("postgresql"):
        print(f"bench: needs PostgreSQL, got {database_url!r}", file=sys.stderr)
        return 2
    redis_url = args.redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    if not redis_reachable(redis_url):
        print(f"bench: Redis at {redis_url} is not reachable; in-process limits", file=sys.stderr)
        redis_url = None
    info: dict[str, Any] = {
        "date": f"{started:%Y-%m-%d %H:%M} UTC",
        "machine": machine(),
        "store": "PostgreSQL" + (" + Redis" if redis_url else " (no Redis)"),
        "ingest_key_cache_seconds": args.key_cache_seconds,
        "ingest_key_cache_default_seconds": ingest_key_cache_seconds({}),
        "workers": args.workers,
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
        if redis_url:
            os.environ["REDIS_URL"] = redis_url  # and its gateway's rate limits in this Redis
        chosen = plan.temperatures
        service, document["services"] = run_service_benchmarks(
            seconds=args.service_seconds,
            subjects=args.subjects,
            only=chosen[0] if len(chosen) == 1 else None,
            key_cache_seconds=args.key_cache_seconds,
        )
        rows += service
    failed = False
    if not args.skip_suite:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="awareness-bench-") as directory:
            try:
                e2e, document["end_to_end"] = run_end_to_end(
                    database_url=database_url, redis_url=redis_url, plan=plan, work_dir=Path(directory)
                )
                rows += e2e
            except Exception as exc:
                traceback.print_exc()
                document["end_to_end_error"] = f"{type(exc).__name__}: {exc}"
                failed = True
    cores = os.cpu_count() or 1
    work_ms = None
    if any(row.section == "floor" for row in rows):
        from bench.work import ingest_work_ms  # imports ingest's code: only when it is measured

        print("bench: ingest's own work per event, in process...", file=sys.stderr, flush=True)
        work_ms = ingest_work_ms(events_per_call=BATCH_OF_WORK, subjects=args.subjects)
    document["table"] = [row.__dict__ for row in rows]
    document["ingest_work_ms_per_event"] = work_ms
    document["budget"] = [
        dict(zip(BUDGET_HEADER, r, strict=True)) for r in budget_rows(rows, cores=cores, work_ms=work_ms)
    ]
    table = format_table(rows, info=info)
    budget = format_budget(rows, cores=cores, work_ms=work_ms)
    print(table + (f"\n\n{budget}" if budget else ""), flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nwritten: {path}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
