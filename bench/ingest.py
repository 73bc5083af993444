"""``make bench-ingest``: the real signing, gdpr and ingest processes, measured from a client process.

Against PostgreSQL when DATABASE_URL is set (a scratch database is created and dropped; `make
bench-ingest` sets it to the local server), else the embedded SQLite default (said in the output).
Every event is validated, its personal fields are encrypted under the subject's gdpr key, it is
committed before the acknowledgement, and the integrator adds it to the Merkle tree; signing
checkpoints the tree every N leaves or T ms.

Measured: events/s of unary AppendEvent (many concurrent callers) and of StreamAppendEvents
(batches per message; the streams take batches from one shared queue, a few in flight each),
"committed and integrated" throughput (until the tree holds every event), p50/p99 AppendEvent
latency at a fixed offered rate, and acknowledgement -> signed checkpoint.

The client calls ingest as the gateway does: over mTLS with the gateway's certificate from the
suite's mTLS directory (``<data dir>/mtls``, issued with every service's before anything starts),
naming the principal it acts for in the principal headers.

Events are about ``--subjects`` people (bench/population.py). The stream is measured cold (people
never seen: gdpr creates their keys) and warm (people seen before, once ingest's key cache has
expired: the run waits the cache lifetime + 1 s after touching them, measuring the rest
meanwhile); ``--cold`` or ``--warm`` alone measures one. The unary and fixed-rate runs use
people whose keys are cached, as a steady stream of one tenant's events would.

With the warm run, its streams are sent once more, right after it, through the gateway's gRPC
door: a gateway process in front of the same ingest processes, an integration API key in
``authorization`` metadata, rate limits raised out of the way (in Redis, REDIS_URL or the local
server, as in production; in process when there is none), TLS when the gateway issued the door a
certificate (trusting ``<data dir>/door-tls/ca.crt``), else plaintext. Its people are as many, of
their own, touched with the warm run's: warm in the same sense. Printed as the row "streamed via
the gateway's gRPC door" under the direct one, and "door / direct" under the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import awareness_client
import grpc
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from bench.population import (
    BENCH_KEY_CACHE_SECONDS,
    KEY_CACHE_VARIABLE,
    Population,
    Temperature,
    describe,
    ingest_key_cache_seconds,
    run_namespace,
    temperatures,
    warm_ready_at,
)
from bench.population import add_arguments as add_population_arguments
from services.launcher import grpc_serving
from services.runtime import auth
from services.runtime.config import (
    ARCHIVE_DIR_VAR,
    MTLS_DIR_VAR,
    MTLS_FILE_VARS,
    SERVICE_SECRET_VAR,
    load_settings,
    with_identity,
)
from services.runtime.identity import MtlsFiles, channel_options

OLD_PORTAL_EVENTS_PER_SECOND = 1022.0
OLD_PORTAL_P50_MS = 5.0
OLD_PORTAL_P99_MS = 50.0
SERVICE_NAMES = {
    "signing": "awareness.signing.v1.SigningService",
    "gdpr": "awareness.gdpr.v1.GdprService",
    "ingest": "awareness.ingest.v1.IngestService",
}
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def _scratch_postgres(url: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"awareness_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# Where a child would otherwise take its certificate or service secret from this process's
# environment: the bench's processes use their own, under the scratch data directory.
_IDENTITY_VARIABLES = (
    *MTLS_FILE_VARS,
    MTLS_DIR_VAR,
    SERVICE_SECRET_VAR,
    f"{SERVICE_SECRET_VAR}_FILE",
)


class _Suite:
    """signing, gdpr and ingest as child processes; stops only the pids it started.

    Every process (the gateway's door and the bench's client included) takes its mTLS certificate
    from ``mtls_dir``, under one development CA, and its own service secret from the data directory.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        database_url: str | None,
        ingest_processes: int = 1,
        key_cache_seconds: float | None = None,
        archive: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.archive = archive
        self.mtls_dir = data_dir / "mtls"
        self.key_cache_seconds = key_cache_seconds
        self.database_url = database_url
        self.ports = {name: _free_port() for name in (*SERVICE_NAMES, "scoring", "policy", "analytics")}
        # Extra ingest processes (replicas on one machine), each on its own port.
        self.ingest_ports = [self.ports["ingest"], *(_free_port() for _ in range(ingest_processes - 1))]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _identity_env(self) -> dict[str, str]:
        """This process's environment, with the suite's data and mTLS directories in place of any it names."""
        return {
            **{key: value for key, value in os.environ.items() if key not in _IDENTITY_VARIABLES},
            "AWARENESS_DATA_DIR": str(self.data_dir),
            MTLS_DIR_VAR: str(self.mtls_dir),
        }

    def env(self, name: str) -> dict[str, str]:
        env = {
            **self._identity_env(),
            "PYTHONPATH": str(REPO),
            "AWARENESS_GRPC_PORT": str(self.ports[name]),
            "AWARENESS_METRICS_PORT": "0",
            "AWARENESS_LOG_LEVEL": "WARNING",
            # Scoring, policy and analytics are not part of this benchmark: no enrichment traffic,
            # and no feed of facts (make bench-analytics measures that).
            "AWARENESS_INGEST_ENRICHMENT": "false",
            "AWARENESS_INGEST_ANALYTICS": "false",
            **{f"AWARENESS_{svc.upper()}_TARGET": f"127.0.0.1:{port}" for svc, port in self.ports.items()},
        }
        env.pop("DATABASE_URL", None)
        if self.key_cache_seconds is not None:
            env[KEY_CACHE_VARIABLE] = f"{self.key_cache_seconds:g}"
        if self.archive:
            env[ARCHIVE_DIR_VAR] = str(self.data_dir / "archive")
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        return env

    def identity(self, name: str) -> MtlsFiles:
        """``name``'s certificate in ``mtls_dir`` (and its service secret), issued on first use."""
        return with_identity(load_settings(name, self._identity_env())).identity

    def start(self) -> None:
        # Every identity before any process starts, as ``awareness up`` does: no two processes
        # ever race to create the CA.
        for name in (*SERVICE_NAMES, "gateway"):
            self.identity(name)
        for name in SERVICE_NAMES:
            ports = self.ingest_ports if name == "ingest" else [self.ports[name]]
            for number, port in enumerate(ports, start=1):
                label = name if number == 1 else f"{name}-{number}"
                log = (self.data_dir / f"{label}.log").open("ab")
                self.processes[label] = subprocess.Popen(
                    [sys.executable, "-m", "services.cli", "serve", name],
                    cwd=REPO,
                    env={**self.env(name), "AWARENESS_GRPC_PORT": str(port)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                self._wait(label, name=name, port=port)

    def _wait(self, label: str, *, name: str, port: int) -> None:
        # Asked as the service itself, as the launcher does: the bench runs beside it.
        mtls = self.identity(name)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.processes[label].poll() is not None:
                # The log's end in the error: the data directory may be gone by the time anyone looks.
                log = (self.data_dir / f"{label}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{label} exited; its log ends:\n{log}")
            if grpc_serving(f"127.0.0.1:{port}", mtls=mtls, server=name, service=SERVICE_NAMES[name]):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{label} did not become healthy")

    def stop(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@dataclass(frozen=True)
class _Door:
    """Where the gateway's gRPC door listens and what a caller presents to it."""

    target: str
    api_key: str
    tls: bool | bytes
    description: str  # for the table's header


def _start_door(suite: _Suite, stack: contextlib.ExitStack) -> _Door:
    """A gateway process in front of ``suite`` (stopped by ``stack``) and an integration API key for
    its gRPC door; the harness of the resilience tests starts it as ``awareness up`` would."""
    from bench.suite import DEFAULT_REDIS_URL, redis_reachable
    from services.gateway.config import DOOR_TLS_DIR
    from tests.resilience.harness import ProcessSuite

    # Rate limits in Redis, as in production, when there is one to reach.
    wanted = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    redis_url = wanted if redis_reachable(wanted) else None
    ingest = ",".join(f"127.0.0.1:{port}" for port in suite.ingest_ports)
    gateway = ProcessSuite(
        data_dir=suite.data_dir,
        database_url=suite.database_url,
        redis_url=redis_url,
        tuning={},  # production defaults, except that the limits below must not cap the bench
        extra_env={
            "PYTHONPATH": str(REPO),
            # The certificates the suite issued, under the same CA (the data directory's default).
            MTLS_DIR_VAR: str(suite.mtls_dir),
            "AWARENESS_LOG_LEVEL": "WARNING",
            "AWARENESS_GATEWAY_RATE_PRINCIPAL_PER_MIN": "100000000",
            "AWARENESS_GATEWAY_RATE_IP_PER_MIN": "100000000",
            "AWARENESS_GATEWAY_RATE_GLOBAL_PER_MIN": "100000000",
            "AWARENESS_GATEWAY_RATE_KEY_PREFIX": f"awareness-bench-ingest-{uuid.uuid4().hex[:12]}",
        },
        grpc_ports=dict(suite.ports),
        # Every ingest process, a call each in turn: the streams spread as the direct client's do.
        service_env={"gateway": {"AWARENESS_INGEST_TARGET": f"ipv4:{ingest}"}},
    )
    stack.callback(gateway.stop_all)
    gateway.start("gateway")
    gateway.wait_healthy(("gateway",))  # the door listens before the HTTP servers answer
    api_key = gateway.create_api_key(name="bench", roles=("integration",))
    # The door may serve TLS under the development CA of the data directory; plaintext otherwise.
    ca = suite.data_dir / DOOR_TLS_DIR / "ca.crt"
    tls: bool | bytes = ca.read_bytes() if ca.exists() else False
    return _Door(
        target=f"127.0.0.1:{gateway.gateway_grpc_port}",
        api_key=api_key,
        tls=tls,
        description="one gateway process in front of the same ingest process(es), an integration API key,"
        f" rate limits raised (in {'Redis' if redis_url else 'process memory'}),"
        f" {'TLS' if tls else 'plaintext'}",
    )


@dataclass(frozen=True)
class StreamRun:
    """One StreamAppendEvents run over a population, cold or warm."""

    temperature: Temperature
    subjects: int
    events: int
    acknowledged_per_second: float
    integrated_per_second: float

    @property
    def label(self) -> str:
        return describe(self.subjects, self.temperature, events=self.events)


@dataclass(frozen=True)
class ReadRun:
    """GetEvent by many concurrent callers over events of people whose keys are cached."""

    per_second: float
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Figures:
    backend: str
    ingest_processes: int
    streams: int
    unary_events_per_second: float
    stream_runs: tuple[StreamRun, ...]
    stream_events: int
    batch_size: int
    offered_rate: float
    p50_ms: float
    p99_ms: float
    checkpoint_p50_ms: float
    checkpoint_p99_ms: float
    # The warm stream again through the gateway's gRPC door (None without a warm run), and how.
    door_run: StreamRun | None = None
    door: str = ""
    # GetEvent as an analyst (decrypted, so an access record is queued) and as a role without
    # events:read_personal (pseudonymous, no record): the second bounds what the first pays for both.
    personal_reads: ReadRun | None = None
    pseudonymous_reads: ReadRun | None = None


CHANNEL_OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.lb_policy_name", "round_robin")]


class _Client:
    """Ingest's stub. Direct, it calls as the gateway does: over mTLS with the gateway's certificate,
    naming the principal it acts for in each call's metadata. Through the door, the channel
    authenticates the calls itself (with an API key)."""

    def __init__(self, channel: grpc.aio.Channel, *, delegates: bool) -> None:
        self.channel = channel
        self.stub = ingest_pb2_grpc.IngestServiceStub(self.channel)
        self._delegates = delegates

    @classmethod
    def direct(cls, address: str, gateway: MtlsFiles) -> _Client:
        """To ingest at ``address`` (one or several, ``ipv4:a,b``) with the gateway's certificate."""
        channel = grpc.aio.secure_channel(
            address, gateway.channel_credentials(), options=[*CHANNEL_OPTIONS, *channel_options("ingest")]
        )
        return cls(channel, delegates=True)

    @classmethod
    def through(cls, door: _Door) -> _Client:
        # The same channel options as direct: only the path differs.
        channel = awareness_client.connect_aio(
            door.target, api_key=door.api_key, tls=door.tls, options=CHANNEL_OPTIONS
        )
        return cls(channel, delegates=False)

    def metadata(self, roles: Sequence[str] = ("integration",)) -> list[tuple[str, str]]:
        """What a call carries: the principal ``bench`` with ``roles``, as the gateway names it, or
        nothing when the channel adds the API key itself."""
        if not self._delegates:
            return []
        return auth.principal_metadata(auth.Principal("bench", frozenset(roles)))


def _events(count: int, *, people: Population) -> list[ingest_pb2.Event]:
    # Times spread over the last minute, to the microsecond, as real senders' are: nothing per
    # event (such as formatting a time) can be done once for the whole batch.
    newest_us = (time.time_ns() // 1000) - 1_000_000
    return [
        ingest_pb2.Event(
            event_id=str(uuid.uuid4()),
            type="phishing.clicked",
            source="gophish",
            subject=people.subject(index),
            occurred_at=_timestamp(newest_us - (index * 7919) % 60_000_000),
            severity=ingest_pb2.SEVERITY_HIGH,
            summary="clicked the link in the simulated payroll mail",
            details={"campaign_id": "q3-payroll", "url": "https://payroll.example/x"},
        )
        for index in range(count)
    ]


def _timestamp(micros: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMicroseconds(micros)
    return stamp


async def _touch(client: _Client, people: Population) -> None:
    """Every person's key once (created in gdpr, cached in the process that answered)."""
    events = _events(people.subjects, people=people)
    for start in range(0, len(events), 500):
        await client.stub.AppendEvents(
            ingest_pb2.AppendEventsRequest(events=events[start : start + 500]),
            metadata=client.metadata(),
        )


async def _unary(client: _Client, *, seconds: float, concurrency: int, people: Population) -> float:
    events = _events(200_000, people=people)
    position = 0
    done = 0
    deadline = time.perf_counter() + seconds
    metadata = client.metadata()

    async def worker() -> None:
        nonlocal position, done
        while time.perf_counter() < deadline:
            event = events[position]
            position += 1
            await client.stub.AppendEvent(ingest_pb2.AppendEventRequest(event=event), metadata=metadata)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def _has_leaves(client: _Client, size: int) -> bool:
    """Whether the tree holds `size` leaves: its leaf size-1 has an inclusion proof."""
    try:
        await client.stub.GetInclusionProof(
            ingest_pb2.GetInclusionProofRequest(leaf_index=size - 1, tree_size=size),
            metadata=client.metadata(("auditor",)),
        )
        return True
    except grpc.aio.AioRpcError:
        return False


async def _tree_size(client: _Client) -> int:
    # The tree size: the largest leaf index with a proof, found by asking for the newest leaf.
    low, high = 0, 1
    while await _has_leaves(client, high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if await _has_leaves(client, middle) else (low, middle)
    return low


# Batches a stream may have sent and not yet seen answered: enough to keep its server busy while
# an answer travels back, few enough that a stream to a busier replica does not hoard the work.
STREAM_WINDOW = 4


async def _stream(
    client: _Client,
    *,
    events: int,
    batch: int,
    streams: int,
    people: Population,
    via: _Client | None = None,
) -> tuple[float, float, int]:
    """Acknowledged and integrated events/s, and how many; sent through ``via`` when given (the
    door), while the tree is read from ``client`` either way."""
    payload = _events(events, people=people)
    batches = iter([payload[i : i + batch] for i in range(0, len(payload), batch)])
    before = await _tree_size(client)
    sender = via or client
    metadata = sender.metadata()
    acknowledged = 0

    async def one_stream() -> None:
        # Streams take the next batch from one shared queue when they have room, as a producer with
        # several connections does: a replica that answers faster gets more of the work.
        nonlocal acknowledged
        window = asyncio.Semaphore(STREAM_WINDOW)

        async def requests() -> AsyncIterator[ingest_pb2.AppendEventsRequest]:
            while True:
                await window.acquire()
                chunk = next(batches, None)
                if chunk is None:
                    return
                yield ingest_pb2.AppendEventsRequest(events=chunk)

        async for answer in sender.stub.StreamAppendEvents(requests(), metadata=metadata):
            acknowledged += len(answer.results)
            window.release()

    started = time.perf_counter()
    await asyncio.gather(*(one_stream() for _ in range(streams)))
    acknowledged_at = time.perf_counter()
    target = before + len(payload)
    # One question per poll: a binary search for the size would load the integrating replica.
    while not await _has_leaves(client, target):  # noqa: ASYNC110 - polling another process
        await asyncio.sleep(0.02)
    integrated_at = time.perf_counter()
    return acknowledged / (acknowledged_at - started), len(payload) / (integrated_at - started), len(payload)


async def _fixed_rate(
    client: _Client, *, rate: float, seconds: float, people: Population
) -> tuple[list[float], list[tuple[str, float]]]:
    events = _events(int(rate * seconds) + 1, people=people)
    latencies: list[float] = []
    acknowledgements: list[tuple[str, float]] = []
    metadata = client.metadata()

    async def send(event: ingest_pb2.Event) -> None:
        began = time.perf_counter()
        await client.stub.AppendEvent(ingest_pb2.AppendEventRequest(event=event), metadata=metadata)
        latencies.append(time.perf_counter() - began)
        acknowledgements.append((event.event_id, time.time()))

    tasks = []
    started = time.perf_counter()
    for index, event in enumerate(events):
        # Open loop: each request leaves at its scheduled time, whatever the previous ones do.
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(event)))
    await asyncio.gather(*tasks)
    return latencies, acknowledgements


async def _reads(
    client: _Client, *, event_ids: Sequence[str], roles: Sequence[str], seconds: float, concurrency: int
) -> ReadRun:
    metadata = client.metadata(roles)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        position = offset
        while time.perf_counter() < deadline:
            name = f"events/{event_ids[position % len(event_ids)]}"
            position += concurrency
            began = time.perf_counter()
            await client.stub.GetEvent(ingest_pb2.GetEventRequest(name=name), metadata=metadata)
            latencies.append(time.perf_counter() - began)

    started = time.perf_counter()
    await asyncio.gather(*(worker(index) for index in range(concurrency)))
    elapsed = time.perf_counter() - started
    return ReadRun(
        per_second=len(latencies) / elapsed,
        p50_ms=_percentile(latencies, 0.5) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
    )


async def _checkpoint_latencies(client: _Client, acknowledgements: list[tuple[str, float]]) -> list[float]:
    metadata = client.metadata(("auditor",))
    sample = acknowledgements[:: max(1, len(acknowledgements) // 200)]
    deadline = time.monotonic() + 60
    latencies = []
    for event_id, acknowledged in sample:
        while True:
            receipt = await client.stub.GetReceipt(
                ingest_pb2.GetReceiptRequest(name=f"events/{event_id}"), metadata=metadata
            )
            if receipt.state == ingest_pb2.Receipt.STATE_CHECKPOINTED or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        if receipt.HasField("checkpoint"):
            signed = receipt.checkpoint.timestamp
            latencies.append(signed.seconds + signed.nanos / 1e9 - acknowledged)
    return latencies


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


async def _measure(
    addresses: Sequence[str],
    gateway: MtlsFiles,
    arguments: argparse.Namespace,
    backend: str,
    *,
    key_cache_seconds: float,
    door: _Door | None = None,
) -> Figures:
    population = Population(arguments.subjects, run_namespace())
    cached = population.step("cached")
    for address in addresses:  # each process its own cache of subject keys
        warm = _Client.direct(address, gateway)
        try:
            await _touch(warm, cached)
        finally:
            await warm.channel.close()
    chosen = temperatures(cold=arguments.cold, warm=arguments.warm)
    client = _Client.direct("ipv4:" + ",".join(addresses), gateway)
    door_client = _Client.through(door) if door is not None else None
    runs: list[StreamRun] = []
    door_run: StreamRun | None = None

    async def stream(temperature: Temperature, people: Population, via: _Client | None = None) -> StreamRun:
        acknowledged, integrated, count = await _stream(
            client,
            events=arguments.events,
            batch=arguments.batch,
            streams=arguments.streams,
            people=people,
            via=via,
        )
        return StreamRun(temperature, people.subjects, count, acknowledged, integrated)

    try:
        seen = population.step("warm")
        # The door's people of their own (a second run over the same ones would find their keys
        # cached), touched with the direct run's so that they are warm in the same sense.
        door_seen = population.step("door")
        if "warm" in chosen:
            await _touch(client, seen)
        if door_client is not None:
            await _touch(client, door_seen)
        touched_at = time.monotonic()
        if "cold" in chosen:
            runs.append(await stream("cold", population.step("cold")))
        unary = await _unary(
            client, seconds=arguments.seconds, concurrency=arguments.concurrency, people=cached
        )
        latencies, acknowledgements = await _fixed_rate(
            client, rate=arguments.rate, seconds=arguments.seconds, people=cached
        )
        to_checkpoint = await _checkpoint_latencies(client, acknowledgements)
        read_ids = [event_id for event_id, _ in acknowledgements]
        reads = {
            kind: await _reads(
                client,
                event_ids=read_ids,
                roles=roles,
                seconds=arguments.seconds,
                concurrency=arguments.concurrency,
            )
            for kind, roles in (("pseudonymous", ("policy_author",)), ("personal", ("analyst",)))
        }
        if "warm" in chosen:
            await asyncio.sleep(
                max(0.0, warm_ready_at(touched_at, key_cache_seconds=key_cache_seconds) - time.monotonic())
            )
            runs.append(await stream("warm", seen))
            if door_client is not None:
                door_run = await stream("warm", door_seen, via=door_client)
    finally:
        await client.channel.close()
        if door_client is not None:
            await door_client.channel.close()
    return Figures(
        backend=backend,
        ingest_processes=arguments.ingest_processes,
        streams=arguments.streams,
        unary_events_per_second=unary,
        stream_runs=tuple(runs),
        stream_events=arguments.events,
        batch_size=arguments.batch,
        offered_rate=arguments.rate,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        checkpoint_p50_ms=_percentile(to_checkpoint, 0.5) * 1000,
        checkpoint_p99_ms=_percentile(to_checkpoint, 0.99) * 1000,
        door_run=door_run,
        door=door.description if door is not None and door_run is not None else "",
        personal_reads=reads["personal"],
        pseudonymous_reads=reads["pseudonymous"],
    )


# A table row: metric, measured (as printed), the old portal's figure, whether higher is better.
_Row = tuple[str, str, float | None, bool]


def _throughput(name: str, per_second: float) -> _Row:
    return (name, f"{per_second:,.0f}", OLD_PORTAL_EVENTS_PER_SECOND, True)


def door_compared(figures: Figures) -> tuple[StreamRun, StreamRun] | None:
    """The door's run and the direct run of the same temperature it is compared with, if both ran."""
    door = figures.door_run
    direct = next((run for run in figures.stream_runs if door and run.temperature == door.temperature), None)
    return (door, direct) if door is not None and direct is not None else None


def _stream_rows(figures: Figures) -> list[_Row]:
    compared = door_compared(figures)
    rows: list[_Row] = []
    for run in figures.stream_runs:
        rows.append(
            _throughput(
                f"streamed ({figures.batch_size}/message), {run.label}, acknowledged events/s",
                run.acknowledged_per_second,
            )
        )
        if compared is not None and compared[1] is run:  # beside the direct row it is compared with
            door = compared[0]
            rows.append(
                _throughput(
                    f"streamed via the gateway's gRPC door ({figures.batch_size}/message), {door.label},"
                    " acknowledged events/s",
                    door.acknowledged_per_second,
                )
            )
        rows.append(
            _throughput(f"streamed, {run.label}, committed + integrated events/s", run.integrated_per_second)
        )
    return rows


def _read_rows(figures: Figures) -> list[_Row]:
    rows: list[_Row] = []
    for label, reads in (
        ("GetEvent decrypted, access record queued (analyst)", figures.personal_reads),
        ("GetEvent pseudonymous, no record (policy_author)", figures.pseudonymous_reads),
    ):
        if reads is not None:
            rows += [
                (f"{label}, reads/s", f"{reads.per_second:,.0f}", None, True),
                (f"{label}, p50 ms", f"{reads.p50_ms:.1f}", None, False),
                (f"{label}, p99 ms", f"{reads.p99_ms:.1f}", None, False),
            ]
    return rows


def format_table(figures: Figures) -> str:
    rows: list[_Row] = [
        _throughput("unary AppendEvent, events/s", figures.unary_events_per_second),
        *_stream_rows(figures),
        (
            f"AppendEvent p50 at {figures.offered_rate:,.0f}/s, ms",
            f"{figures.p50_ms:.1f}",
            OLD_PORTAL_P50_MS,
            False,
        ),
        (
            f"AppendEvent p99 at {figures.offered_rate:,.0f}/s, ms",
            f"{figures.p99_ms:.1f}",
            OLD_PORTAL_P99_MS,
            False,
        ),
        ("ack -> signed checkpoint p50, ms", f"{figures.checkpoint_p50_ms:.0f}", None, False),
        ("ack -> signed checkpoint p99, ms", f"{figures.checkpoint_p99_ms:.0f}", None, False),
        *_read_rows(figures),
    ]
    lines = [
        f"ingest benchmark on {figures.backend} ({os.cpu_count()} cores;"
        f" real signing, gdpr and {figures.ingest_processes} ingest process(es);"
        f" {figures.streams} streams;",
        "every event validated, encrypted, committed before its ack, integrated into the Merkle tree)",
    ]
    if figures.door:
        lines.append(f"gRPC door: {figures.door}")
    # The door's label is the longest: widen the column rather than shift that row's figures.
    width = max(52, *(len(row[0]) for row in rows))
    lines += ["", f"{'metric':<{width}} {'measured':>10} {'old portal':>11} {'ratio':>8}"]
    for name, measured, claim, higher_is_better in rows:
        if claim is None:
            lines.append(f"{name:<{width}} {measured:>10} {'-':>11} {'-':>8}")
            continue
        value = float(measured.replace(",", ""))
        ratio = value / claim if higher_is_better else claim / value if value else float("inf")
        lines.append(f"{name:<{width}} {measured:>10} {claim:>11,.0f} {ratio:>7.2f}x")
    lines.append("(ratio > 1 is better than the old portal; the target is 10,000 events/s streamed)")
    compared = door_compared(figures)
    if compared is not None:
        door, direct = compared
        lines.append(
            f"door / direct ({door.label}, acknowledged, same run):"
            f" {door.acknowledged_per_second / direct.acknowledged_per_second:.2f}"
        )
    if figures.personal_reads is not None and figures.pseudonymous_reads is not None:
        personal, pseudonymous = figures.personal_reads, figures.pseudonymous_reads
        lines.append(
            "decrypted + recorded / pseudonymous GetEvent (same run):"
            f" reads/s {personal.per_second / pseudonymous.per_second:.2f},"
            f" p50 {personal.p50_ms / pseudonymous.p50_ms:.2f}"
        )
    return "\n".join(lines)


def run(arguments: argparse.Namespace) -> Figures:
    database = os.environ.get("DATABASE_URL", "")
    with contextlib.ExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="awareness-bench-")))
        if database.startswith("postgresql"):
            url: str | None = stack.enter_context(_scratch_postgres(database))
            backend = "PostgreSQL"
        else:
            url = None
            backend = "SQLite (DATABASE_URL not set: the embedded default)"
        if arguments.ingest_processes is None:
            # One writer process per core on PostgreSQL; SQLite has one writer at a time anyway.
            arguments.ingest_processes = (os.cpu_count() or 1) if url else 1
        suite = _Suite(
            data_dir=data_dir,
            database_url=url,
            ingest_processes=arguments.ingest_processes,
            key_cache_seconds=arguments.key_cache_seconds,
            archive=arguments.archive,
        )
        stack.callback(suite.stop)
        suite.start()
        # The door's run repeats the warm one.
        door = (
            _start_door(suite, stack)
            if "warm" in temperatures(cold=arguments.cold, warm=arguments.warm)
            else None
        )
        figures = asyncio.run(
            _measure(
                [f"127.0.0.1:{port}" for port in suite.ingest_ports],
                suite.identity("gateway"),
                arguments,
                backend,
                key_cache_seconds=ingest_key_cache_seconds(suite.env("ingest")),
                door=door,
            )
        )
        if arguments.keep_logs:
            shutil.copytree(data_dir, arguments.keep_logs, dirs_exist_ok=True)
    return figures


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of this benchmark (also what `make bench` passes to `run`)."""
    parser = argparse.ArgumentParser(prog="python -m bench ingest", description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="duration of the unary and fixed-rate runs"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent unary callers")
    parser.add_argument(
        "--events", type=int, default=100_000, help="events in each streamed run (the door's too)"
    )
    parser.add_argument("--batch", type=int, default=500, help="events per stream message")
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams")
    parser.add_argument(
        "--ingest-processes",
        type=int,
        default=None,
        help="ingest processes (replicas on this machine, one port each; calls spread round-robin);"
        " default: one per core on PostgreSQL, one on SQLite",
    )
    parser.add_argument(
        "--rate", type=float, default=200.0, help="offered rate of the latency run (events/s)"
    )
    add_population_arguments(parser)
    parser.add_argument(
        "--key-cache-seconds",
        type=float,
        default=BENCH_KEY_CACHE_SECONDS,
        help=f"{KEY_CACHE_VARIABLE} of the ingest processes ({BENCH_KEY_CACHE_SECONDS:g}); the warm run"
        " waits this long + 1 s after touching its people",
    )
    parser.add_argument(
        "--archive",
        action="store_true",
        help="ingest writes the log archive (AWARENESS_ARCHIVE_DIR, as with the chart's backup.enabled)",
    )
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the service logs here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    print(format_table(run(parse_arguments(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
