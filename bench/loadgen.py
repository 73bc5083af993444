"""``python -m bench.loadgen``: an open-loop HTTP load generator for the gateway.

Requests are scheduled by the clock (request ``i`` is due at ``start + i / rate``), not sent
when the previous one returns, and each latency is measured from the request's *scheduled*
time. A slow server therefore shows up as latency instead of silently lowering the offered
rate ("coordinated omission"). Connections are HTTP/1.1 keep-alive, at most ``--connections``.

Plain ``http://`` targets are driven by a small HTTP/1.1 client of its own (``RawHttpClient``):
httpx cost about 3 ms of CPU per request (8-10 ms on a loaded two-core machine, where the
generator then took CPU from the suite it measured); the small client costs a fraction of that.
Tests inject an httpx transport instead (``transport=``), and ``--client httpx`` forces httpx.

Every outcome is written to ``--out`` as one JSON line (event id, HTTP status, error reason,
receipt when acknowledged, wall-clock send time), and a JSON summary (throughput, p50, p99,
errors by status) is printed as the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TextIO

import httpx

from bench.population import DEFAULT_SUBJECTS, first_sight_share, subject_address

EVENT_TYPES = ("phishing.clicked", "phishing.reported", "training.completed", "mfa.disabled", "login.failed")
SEVERITIES = ("SEVERITY_LOW", "SEVERITY_MEDIUM", "SEVERITY_HIGH")


def make_event(sequence: int, *, subjects: int = DEFAULT_SUBJECTS, namespace: str = "") -> dict[str, Any]:
    """One valid event in proto3 JSON, with a client-chosen id (the idempotency key).

    Events cycle through ``subjects`` people of ``namespace`` (bench/population.py).
    """
    occurred = datetime.now(UTC) - timedelta(seconds=5)
    return {
        "eventId": str(uuid.uuid4()),
        "type": EVENT_TYPES[sequence % len(EVENT_TYPES)],
        "source": "loadgen",
        "subject": subject_address(sequence, subjects=subjects, namespace=namespace),
        "occurredAt": occurred.isoformat().replace("+00:00", "Z"),
        "severity": SEVERITIES[sequence % len(SEVERITIES)],
        "summary": f"load-generated event {sequence}",
        "details": {"location": "loadgen", "source_event_id": str(sequence)},
    }


@dataclass(frozen=True, kw_only=True)
class LoadConfig:
    url: str
    api_key: str
    rate: float
    seconds: float
    connections: int = 32
    batch_size: int = 0  # 0: POST /v1/events; n > 0: POST /v1/events:batchAppend with n events
    timeout_seconds: float = 10.0
    subjects: int = DEFAULT_SUBJECTS
    namespace: str = ""  # prefix of every subject: a fresh one means people never seen before
    client: str = "auto"  # "auto": the small client for http:// URLs; "httpx": always httpx

    @property
    def total_requests(self) -> int:
        return max(1, math.floor(self.rate * self.seconds))


@dataclass(frozen=True, slots=True)
class Outcome:
    """One event's fate: acknowledged (``receipt`` set) or refused (``status``/``reason``)."""

    event_id: str
    status: int  # HTTP status; 0 when no response arrived (connection error, timeout)
    reason: str
    sent_at: float  # wall clock (time.time) of the scheduled send
    latency_seconds: float
    receipt: dict[str, Any] | None = None
    replayed: bool = False

    @property
    def acknowledged(self) -> bool:
        return self.receipt is not None

    def as_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "status": self.status,
            "reason": self.reason,
            "acked": self.acknowledged,
            "replayed": self.replayed,
            "sent_at": round(self.sent_at, 6),
            "latency_ms": round(self.latency_seconds * 1000, 3),
            "receipt": self.receipt,
        }


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, math.ceil(fraction * len(sorted_values)) - 1)
    return sorted_values[min(rank, len(sorted_values) - 1)]


@dataclass
class LoadResult:
    config: LoadConfig
    outcomes: list[Outcome] = field(default_factory=list)
    request_latencies: list[float] = field(default_factory=list)
    request_statuses: Counter[str] = field(default_factory=Counter)
    elapsed_seconds: float = 0.0

    @property
    def acknowledged(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.acknowledged]

    def summary(self) -> dict[str, Any]:
        latencies = sorted(self.request_latencies)
        events = len(self.outcomes)
        acked = len(self.acknowledged)
        elapsed = self.elapsed_seconds
        errors: Counter[str] = Counter(
            f"{o.status} {o.reason}".strip() for o in self.outcomes if not o.acknowledged
        )
        return {
            "offered_rate": self.config.rate,
            "batch_size": self.config.batch_size,
            "seconds": self.config.seconds,
            "connections": self.config.connections,
            "subjects": self.config.subjects,
            "namespace": self.config.namespace,
            "first_sight_share_if_new": round(first_sight_share(events, subjects=self.config.subjects), 4),
            "requests": len(latencies),
            "events": events,
            "acknowledged": acked,
            "throughput_events_per_s": round(acked / elapsed, 1) if elapsed else 0.0,
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "max_ms": round(latencies[-1] * 1000, 2) if latencies else 0.0,
            "error_rate": round(1 - acked / events, 4) if events else 0.0,
            "statuses": dict(sorted(self.request_statuses.items())),
            "errors": dict(errors.most_common()),
        }


def _error_reason(content: bytes) -> str:
    try:
        body = json.loads(content)
    except ValueError:
        return ""
    return _status_reason(body)


def _status_reason(status: Any) -> str:
    """The ErrorInfo reason of a google.rpc.Status JSON body, when there is one."""
    if not isinstance(status, dict):
        return ""
    for detail in status.get("details") or ():
        if isinstance(detail, dict) and detail.get("reason"):
            return str(detail["reason"])
    return ""


class TransportError(Exception):
    """A request that got no HTTP response; the name (httpx's, for continuity) is the reason."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class HttpClient(Protocol):
    async def post(self, path: str, body: bytes) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


class HttpxClient:
    """httpx behind the HttpClient interface (tests pass an httpx.MockTransport)."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        connections: int,
        timeout_seconds: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=url,
            headers={**headers, "Content-Type": "application/json"},
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            timeout=httpx.Timeout(timeout_seconds),
            http2=False,
            transport=transport,
        )

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        try:
            response = await self._client.post(path, content=body)
        except httpx.HTTPError as exc:
            raise TransportError(type(exc).__name__) from exc
        return response.status_code, response.content

    async def aclose(self) -> None:
        await self._client.aclose()


_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class RawHttpClient:
    """HTTP/1.1 POSTs over keep-alive connections, and nothing more (no TLS, no redirects).

    Enough for the gateway: Content-Length or chunked responses, ``Connection: close`` honoured.
    The caller bounds concurrency; an idle connection is reused, a broken one dropped. A reused
    connection that fails before any byte of the answer (the server closed it while idle) is
    replaced once, as browsers do; the events carry client ids, so a repeat is a replay.
    """

    def __init__(self, url: str, *, headers: Mapping[str, str], timeout_seconds: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"RawHttpClient speaks plain http only, not {url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._prefix = parts.path.rstrip("/")
        host_header = parts.netloc
        fixed = {"Host": host_header, **headers, "Content-Type": "application/json"}
        self._head = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode("latin-1")
        self._timeout = timeout_seconds
        self._idle: list[_Connection] = []

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        request = (
            f"POST {self._prefix}{path} HTTP/1.1\r\n".encode("latin-1")
            + self._head
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        try:
            async with asyncio.timeout(self._timeout):
                while self._idle:
                    connection = self._idle.pop()
                    if connection[0].at_eof() or connection[1].is_closing():
                        connection[1].close()
                        continue
                    answer = await self._exchange(connection, request, reused=True)
                    if answer is not None:
                        return answer
                try:
                    connection = await asyncio.open_connection(self._host, self._port)
                except OSError as exc:
                    raise TransportError("ConnectError") from exc
                answer = await self._exchange(connection, request, reused=False)
                assert answer is not None
                return answer
        except TimeoutError as exc:
            raise TransportError("ReadTimeout") from exc

    async def _exchange(
        self, connection: _Connection, request: bytes, *, reused: bool
    ) -> tuple[int, bytes] | None:
        """(status, body); None when a reused connection turned out closed before answering."""
        reader, writer = connection
        answered = False
        try:
            writer.write(request)
            await writer.drain()
            status_line = await reader.readuntil(b"\r\n")
            answered = True
            status, body, keep = await self._read_response(reader, status_line)
        except BaseException as exc:
            writer.close()
            if isinstance(
                exc, OSError | asyncio.IncompleteReadError | asyncio.LimitOverrunError | ValueError
            ):
                if reused and not answered:
                    return None
                raise TransportError("RemoteProtocolError") from exc
            raise
        if keep:
            self._idle.append(connection)
        else:
            writer.close()
        return status, body

    @staticmethod
    async def _read_response(reader: asyncio.StreamReader, status_line: bytes) -> tuple[int, bytes, bool]:
        version, _, rest = status_line.partition(b" ")
        if not version.startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP/1.x response: {status_line[:40]!r}")
        status = int(rest[:3])
        length: int | None = None
        chunked = False
        keep = version == b"HTTP/1.1"
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.endswith(b"chunked")
            elif name == b"connection":
                keep = value != b"close" if keep else value == b"keep-alive"
        if chunked:
            parts = []
            while size := int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16):
                parts.append(await reader.readexactly(size))
                await reader.readuntil(b"\r\n")
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return status, b"".join(parts), keep
        if length is not None:
            return status, await reader.readexactly(length), keep
        if status in (204, 304) or 100 <= status < 200:
            return status, b"", keep
        return status, await reader.read(), False  # delimited by the end of the connection

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()


class LoadGenerator:
    def __init__(
        self,
        config: LoadConfig,
        *,
        event_factory: Callable[[int], dict[str, Any]] | None = None,
        sink: Callable[[Outcome], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self._transport = transport  # tests pass an httpx.MockTransport
        self._event_factory = event_factory or (
            lambda i: make_event(i, subjects=config.subjects, namespace=config.namespace)
        )
        self._sink = sink
        self.result = LoadResult(config=config)

    def _record(self, outcome: Outcome) -> None:
        self.result.outcomes.append(outcome)
        if self._sink is not None:
            self._sink(outcome)

    def _failed(self, events: list[dict[str, Any]], *, reason: str, due: float, wall: float) -> None:
        latency = time.perf_counter() - due
        self.result.request_latencies.append(latency)
        self.result.request_statuses[reason] += 1
        for event in events:
            self._record(Outcome(event["eventId"], 0, reason, wall, latency))

    async def _send(
        self,
        client: HttpClient,
        slots: asyncio.Semaphore,
        *,
        sequence: int,
        due: float,
        wall: float,
    ) -> None:
        size = self.config.batch_size
        events = [self._event_factory(sequence * max(size, 1) + k) for k in range(max(size, 1))]
        # At most `connections` requests in flight; the rest wait here, and that wait counts as
        # latency (it is measured from `due`). One that cannot start within the timeout fails.
        try:
            await asyncio.wait_for(slots.acquire(), timeout=self.config.timeout_seconds)
        except TimeoutError:
            self._failed(events, reason="NotSentInTime", due=due, wall=wall)
            return
        try:
            if size:
                status, content = await client.post(
                    "/v1/events:batchAppend", json.dumps({"events": events}).encode()
                )
            else:
                status, content = await client.post("/v1/events", json.dumps(events[0]).encode())
        except TransportError as exc:
            self._failed(events, reason=exc.name, due=due, wall=wall)
            return
        finally:
            slots.release()
        latency = time.perf_counter() - due
        self.result.request_latencies.append(latency)
        self.result.request_statuses[str(status)] += 1
        if not 200 <= status < 300:
            reason = _error_reason(content)
            for event in events:
                self._record(Outcome(event["eventId"], status, reason, wall, latency))
            return
        body = json.loads(content)
        if not size:
            self._record(
                Outcome(
                    events[0]["eventId"],
                    status,
                    "",
                    wall,
                    latency,
                    receipt=body.get("receipt") or {},
                    replayed=bool(body.get("replayed", False)),
                )
            )
            return
        results = {int(r.get("index", 0)): r for r in body.get("results", [])}
        for index, event in enumerate(events):
            item = results.get(index, {})
            if "receipt" in item:
                self._record(
                    Outcome(
                        event["eventId"],
                        status,
                        "",
                        wall,
                        latency,
                        receipt=item["receipt"],
                        replayed=bool(item.get("replayed", False)),
                    )
                )
            else:
                self._record(
                    Outcome(
                        event["eventId"],
                        status,
                        _status_reason(item.get("error")),
                        wall,
                        latency,
                    )
                )

    def _client(self) -> HttpClient:
        config = self.config
        headers = {"Authorization": f"Bearer {config.api_key}"}
        if self._transport is None and config.client == "auto" and config.url.startswith("http://"):
            return RawHttpClient(config.url, headers=headers, timeout_seconds=config.timeout_seconds)
        return HttpxClient(
            config.url,
            headers=headers,
            connections=config.connections,
            timeout_seconds=config.timeout_seconds,
            transport=self._transport,
        )

    async def run(self, *, should_stop: Callable[[], bool] | None = None) -> LoadResult:
        """Offer load for ``config.seconds`` (or until ``should_stop()``), then drain."""
        config = self.config
        client = self._client()
        try:
            tasks: list[asyncio.Task[None]] = []
            slots = asyncio.Semaphore(config.connections)
            start = time.perf_counter()
            wall_start = time.time()
            interval = 1.0 / config.rate
            for sequence in range(config.total_requests):
                if should_stop is not None and should_stop():
                    break
                offset = sequence * interval
                delay = start + offset - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(
                    asyncio.create_task(
                        self._send(
                            client, slots, sequence=sequence, due=start + offset, wall=wall_start + offset
                        )
                    )
                )
            # Bounded drain: every request has its own timeout, so this ends.
            await asyncio.gather(*tasks, return_exceptions=True)
            self.result.elapsed_seconds = time.perf_counter() - start
        finally:
            await client.aclose()
        return self.result


async def run_load(
    config: LoadConfig,
    *,
    event_factory: Callable[[int], dict[str, Any]] | None = None,
    sink: Callable[[Outcome], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> LoadResult:
    generator = LoadGenerator(config, event_factory=event_factory, sink=sink)
    return await generator.run(should_stop=should_stop)


def read_outcomes(path: Path) -> list[dict[str, Any]]:
    """The outcome lines written by ``--out``."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description="Open-loop load on the gateway's POST /v1/events (or :batchAppend).",
    )
    parser.add_argument("--url", required=True, help="gateway base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument(
        "--api-key", required=True, help="API key (awareness keys create --name load --role integration)"
    )
    parser.add_argument("--rate", type=float, default=100.0, help="offered requests per second (100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to offer load (10)")
    parser.add_argument("--connections", type=int, default=32, help="HTTP/1.1 keep-alive connections (32)")
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="events per :batchAppend request (0: one per POST /v1/events)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in seconds (10)")
    parser.add_argument(
        "--subjects",
        type=int,
        default=DEFAULT_SUBJECTS,
        help=f"people to spread events over, in order ({DEFAULT_SUBJECTS:,})",
    )
    parser.add_argument(
        "--namespace", default="", help="prefix of every subject (a new one: people never seen before)"
    )
    parser.add_argument(
        "--client",
        choices=("auto", "httpx"),
        default="auto",
        help="auto: the small built-in HTTP/1.1 client for http:// URLs (cheap on CPU); httpx: always httpx",
    )
    parser.add_argument("--out", type=Path, default=None, help="write one JSON line per event outcome here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.connections <= 0 or args.batch < 0 or args.subjects <= 0:
        print("loadgen: --rate, --seconds, --connections and --subjects must be positive", file=sys.stderr)
        return 2
    config = LoadConfig(
        url=args.url.rstrip("/"),
        api_key=args.api_key,
        rate=args.rate,
        seconds=args.seconds,
        connections=args.connections,
        batch_size=args.batch,
        timeout_seconds=args.timeout,
        subjects=args.subjects,
        namespace=args.namespace,
        client=args.client,
    )
    out: TextIO | None = args.out.open("w") if args.out else None

    def sink(outcome: Outcome) -> None:
        if out is not None:
            out.write(json.dumps(outcome.as_json()) + "\n")

    try:
        result = asyncio.run(run_load(config, sink=sink))
    finally:
        if out is not None:
            out.close()
    print(json.dumps(result.summary()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
