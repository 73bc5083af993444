"""The integrator: gives committed records gap-free leaf indices, builds the Merkle tree, and asks
the signing service for checkpoints.

Every replica runs it; only the leader works. On PostgreSQL the leader holds a session advisory
lock on a dedicated connection (if that connection drops, the lock is released and another replica
takes over); with SQLite the single process is the leader. Correctness does not rest on the lock
alone: leaf indices and node keys are primary keys, so a stale leader's insert fails and rolls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from awareness.signing.v1 import signing_pb2, signing_pb2_grpc
from opentelemetry.trace import SpanContext
from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session, sessionmaker

from services.ingest import repository
from services.ingest.archive import ArchiveError, LogArchive, archive_through
from services.ingest.domain.merkle import nodes_for_append, root_hash
from services.ingest.models import Checkpoint
from services.ingest.repository import DatabaseNodeStore
from services.runtime.clients import call_peer
from services.runtime.db import transaction
from services.runtime.errors import AwarenessError
from services.runtime.metrics import ServiceMetrics
from services.runtime.tracing import MAX_LINKS, batch_span, distinct_origins

log = logging.getLogger("awareness.ingest.integrator")
T = TypeVar("T")
# A replica that does not lead re-reads the log's progress (for its gauges) at most this often.
FOLLOWER_REFRESH_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class IntegratorSettings:
    interval_seconds: float = 0.2
    batch_limit: int = 20_000
    wake_after_leaves: int = 1000
    checkpoint_every: int = 1000
    checkpoint_interval_seconds: float = 1.0
    origin: str = "awareness.local/log"
    # Where every checkpointed leaf is written before its checkpoint is stored (services.ingest.archive).
    archive_dir: Path | None = None


def integrate_rows(
    session: Session, *, state: repository.TreeState, rows: list[tuple[int, str, bytes]]
) -> tuple[repository.TreeState, bytes]:
    """Give ``rows`` (seq, event_id, leaf_hash, in seq order) the next leaf indices and store the
    tree nodes above them; the new state and root."""
    plan = nodes_for_append(
        tree_size=state.tree_size,
        leaf_hashes=[leaf for _, _, leaf in rows],
        store=DatabaseNodeStore(session),
    )
    now_us = time.time_ns() // 1000
    first = state.tree_size
    leaves = [
        (first + offset, event_id, seq, leaf, now_us) for offset, (seq, event_id, leaf) in enumerate(rows)
    ]
    repository.insert_leaves_and_nodes(session, leaves=leaves, nodes=plan.nodes)
    return repository.TreeState(tree_size=plan.tree_size, last_seq=rows[-1][0]), plan.root


class Integrator:
    def __init__(
        self,
        *,
        engine: Engine,
        sessions: sessionmaker[Session],
        signing: Callable[[], grpc.aio.Channel],
        settings: IntegratorSettings,
        gate: repository.WriteGate,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._engine = engine
        self._sessions = sessions
        self._gate = gate
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-integrate")
        self._signing_channel = signing
        self._signing: signing_pb2_grpc.SigningServiceStub | None = None
        self.settings = settings
        self._wake = asyncio.Event()
        self._pending = 0
        self._leader_connection: Connection | None = None
        self._state: repository.TreeState | None = None
        self._root = b""
        self._checkpointed_size = 0
        self._last_checkpoint = time.monotonic()
        self._last_signing_warning = 0.0
        self.is_leader = False
        # What the gauges show, refreshed by the integrator loop (a scrape never queries the database).
        self.unintegrated_records = 0
        self.observed_tree_size = 0
        self.observed_checkpoint_size = 0
        self.checkpoint_signed_at: float | None = None  # wall-clock seconds of the latest checkpoint
        self._started_at = time.time()
        self._last_follower_refresh = float("-inf")
        # Span contexts of appends committed here and not yet covered by a checkpoint: the
        # checkpoint span joins their trace (or links to them). Bounded; other replicas' appends
        # are not known here.
        self._committed_origins: list[SpanContext] = []
        self._integrated_origins: list[SpanContext] = []
        self._origins_lock = threading.Lock()  # the committer's thread adds, this one takes
        self._metrics = metrics
        self._archive = None if settings.archive_dir is None else LogArchive(settings.archive_dir)
        if metrics is not None:
            self._tree_size_gauge = metrics.gauge("tree_size_leaves", "Leaves in the Merkle tree")
            self._checkpoint_gauge = metrics.gauge(
                "checkpoint_tree_size_leaves", "Tree size of the latest checkpoint"
            )
            self._integrated = metrics.counter("integrated_leaves_total", "Leaves integrated by this replica")
            self._checkpoints = metrics.counter(
                "checkpoints_total", "Checkpoints signed and stored by this replica"
            )
            self._checkpoint_failures = metrics.counter(
                "checkpoint_failures_total", "Checkpoint signing attempts that failed", ["reason"]
            )
            metrics.gauge(
                "integrator_lag_leaves",
                "Acknowledged records not yet covered by a signed checkpoint (unintegrated + uncheckpointed)",
            ).set_function(self.lag_leaves)
            metrics.gauge(
                "checkpoint_age_seconds",
                "Seconds since the latest signed checkpoint (since start-up while there is none)",
            ).set_function(self.checkpoint_age_seconds)
            metrics.gauge(
                "integrator_leader", "1 while this replica leads integration (holds the lock), else 0"
            ).set_function(lambda: int(self.is_leader))

    def lag_leaves(self) -> int:
        return self.unintegrated_records + max(0, self.observed_tree_size - self.observed_checkpoint_size)

    def checkpoint_age_seconds(self) -> float:
        signed_at = self.checkpoint_signed_at if self.checkpoint_signed_at is not None else self._started_at
        return max(0.0, time.time() - signed_at)

    def storing(self, origins: list[SpanContext]) -> None:
        """Called inside each append transaction, after its inserts and before its commit.

        The transaction still holds the append barrier, which settling waits for: so every
        origin recorded here is taken by the first round whose settled records include its
        events, and the checkpoint of that round joins its trace.
        """
        if origins:
            with self._origins_lock:
                if len(self._committed_origins) < MAX_LINKS:
                    self._committed_origins = distinct_origins([*self._committed_origins, *origins])

    def _take_origins(self) -> None:
        with self._origins_lock:
            taken, self._committed_origins = self._committed_origins, []
        self._integrated_origins = distinct_origins([*self._integrated_origins, *taken])

    def committed(self, count: int) -> None:
        """Called after each append commit; wakes the integrator once enough leaves wait."""
        self._pending += count
        if self._pending >= self.settings.wake_after_leaves:
            self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                integrated = 0
                try:
                    if await self._in_thread(self._lead):
                        integrated = await self._in_thread(self.integrate_once)
                        await self.checkpoint_if_due()
                    elif time.monotonic() - self._last_follower_refresh >= FOLLOWER_REFRESH_SECONDS:
                        self._last_follower_refresh = time.monotonic()
                        await self._in_thread(self.observe)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("integration round failed; state reloads next round")
                    self._state = None
                    await asyncio.sleep(self.settings.interval_seconds)
                if integrated >= self.settings.batch_limit:
                    continue
                self._wake.clear()
                self._pending = 0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.settings.interval_seconds)
        finally:
            await self._in_thread(self.release)

    async def _in_thread(self, function: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    # --- leadership -----------------------------------------------------------------------------

    def _lead(self) -> bool:
        if self._engine.dialect.name != "postgresql":
            self.is_leader = True
            return True
        connection = self._leader_connection
        if connection is not None:
            try:
                connection.execute(text("SELECT 1"))
                return True
            except Exception:
                log.warning("lost the integrator leader connection")
                self.release()
        try:
            connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            acquired = bool(
                connection.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": repository.LEADER_LOCK_KEY}
                ).scalar_one()
            )
        except Exception:
            log.warning("cannot reach the database to take the integrator lock")
            return False
        if not acquired:
            connection.close()
            return False
        log.info("this replica now leads integration")
        if self._archive is not None:
            self._archive.forget()  # another replica may have archived since this one last led
        self._leader_connection = connection
        self._state = None
        self.is_leader = True
        return True

    def release(self) -> None:
        connection, self._leader_connection = self._leader_connection, None
        self.is_leader = self._engine.dialect.name != "postgresql" and self.is_leader
        if connection is not None:
            try:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": repository.LEADER_LOCK_KEY}
                )
            except Exception:  # closing the connection releases the lock anyway
                log.info("could not unlock the integrator lock explicitly; closing its connection")
            finally:
                connection.close()
            self.is_leader = False

    # --- integration ----------------------------------------------------------------------------

    def _load_state(self) -> repository.TreeState:
        with self._sessions() as session:
            state = repository.tree_state(session)
            self._root = root_hash(state.tree_size, DatabaseNodeStore(session))
            latest = repository.latest_checkpoint(session)
            self._checkpointed_size = latest.tree_size if latest is not None else 0
        self._state = state
        self._observed_checkpoint(latest)
        self._observe_tree(state.tree_size)
        return state

    def observe(self) -> None:
        """Read the log's progress for the gauges (replicas that do not lead the integration)."""
        with self._sessions() as session:
            state = repository.tree_state(session)
            self.unintegrated_records = repository.count_records_after(session, after_seq=state.last_seq)
            latest = repository.latest_checkpoint(session)
        self._observed_checkpoint(latest)
        self._observe_tree(state.tree_size)

    def _observed_checkpoint(self, latest: Checkpoint | None) -> None:
        if latest is None:
            return
        self.observed_checkpoint_size = latest.tree_size
        self.checkpoint_signed_at = latest.signed_time_us / 1_000_000
        if self._metrics is not None:
            self._checkpoint_gauge.set(latest.tree_size)

    def _observe_tree(self, tree_size: int) -> None:
        self.observed_tree_size = tree_size
        if self._metrics is not None:
            self._tree_size_gauge.set(tree_size)

    def integrate_once(self) -> int:
        """Integrate the settled records not yet in the tree; the number of new leaves."""
        state = self._state or self._load_state()
        # Under the write gate too: on SQLite that is what waits out an append in flight.
        with self._gate, transaction(self._sessions) as session:
            settled = repository.settled_seq(session)
        # Every append that recorded its origin before this point has committed (settling waited
        # for it), so its events are settled and integrated by this round or an earlier one.
        self._take_origins()
        if settled <= state.last_seq:
            self.unintegrated_records = 0  # every stored record is in the tree
            return 0
        with self._gate, transaction(self._sessions) as session:
            rows = repository.unintegrated_records(
                session, after_seq=state.last_seq, up_to_seq=settled, limit=self.settings.batch_limit
            )
            if not rows:
                return 0
            new_state, self._root = integrate_rows(session, state=state, rows=rows)
            # Counted in the same round (an index range on seq): records committed since it began.
            self.unintegrated_records = repository.count_records_after(session, after_seq=new_state.last_seq)
        self._state = new_state
        self._observe_tree(new_state.tree_size)
        if self._metrics is not None:
            self._integrated.inc(len(rows))
        return len(rows)

    # --- checkpoints ----------------------------------------------------------------------------

    async def checkpoint_if_due(self) -> bool:
        state = self._state
        if state is None or state.tree_size == 0 or state.tree_size <= self._checkpointed_size:
            return False
        waiting = state.tree_size - self._checkpointed_size
        elapsed = time.monotonic() - self._last_checkpoint
        if waiting < self.settings.checkpoint_every and elapsed < self.settings.checkpoint_interval_seconds:
            return False
        return await self.checkpoint(tree_size=state.tree_size, root=self._root)

    async def checkpoint(self, *, tree_size: int, root: bytes) -> bool:
        with batch_span(
            "ingest.checkpoint",
            service="ingest",
            origins=self._integrated_origins,
            attributes={"awareness.tree_size": tree_size},
        ):
            signed = await self._sign_and_store(tree_size=tree_size, root=root)
        if signed:
            self._integrated_origins = []
        return signed

    async def _sign_and_store(self, *, tree_size: int, root: bytes) -> bool:
        if self._signing is None:
            self._signing = signing_pb2_grpc.SigningServiceStub(self._signing_channel())
        request = signing_pb2.SignCheckpointRequest(
            origin=self.settings.origin, tree_size=tree_size, root_hash=root
        )
        try:
            response = await call_peer(self._signing.SignCheckpoint(request), target="signing")
        except AwarenessError as error:
            self._signing_failed(error)
            return False
        signed = response.checkpoint
        if signed.tree_size != tree_size or bytes(signed.root_hash) != root:
            self._signing_failed(ValueError("signing returned a checkpoint for another tree"))
            return False
        now_us = time.time_ns() // 1000
        signed_time_us = (
            signed.timestamp.seconds * 1_000_000 + signed.timestamp.nanos // 1000
            if signed.HasField("timestamp")
            else now_us
        )
        values = {
            "tree_size": tree_size,
            "origin": signed.origin or self.settings.origin,
            "root_hash": root,
            "note": signed.note,
            "key_id": signed.key_id,
            "signed_time_us": signed_time_us,
            "timestamp_token": bytes(signed.timestamp_token),
            "tsa": signed.tsa,
            "store_time_us": now_us,
        }
        if self._archive is not None:
            # Before the checkpoint exists anywhere but here: no checkpoint outruns the archive.
            archive = functools.partial(contextvars.copy_context().run, self._archive_through, values)
            try:
                await self._in_thread(archive)
            except (ArchiveError, OSError) as error:
                self._signing_failed(error, reason="archive")
                return False
        # In a copy of this context, so the database spans join the checkpoint span.
        store = functools.partial(contextvars.copy_context().run, self._store_checkpoint, values)
        await self._in_thread(store)
        self._checkpointed_size = tree_size
        self._last_checkpoint = time.monotonic()
        self.observed_checkpoint_size = tree_size
        self.checkpoint_signed_at = signed_time_us / 1_000_000
        if self._metrics is not None:
            self._checkpoint_gauge.set(tree_size)
            self._checkpoints.inc()
        return True

    def _store_checkpoint(self, values: dict[str, object]) -> None:
        with self._gate, transaction(self._sessions) as session:
            repository.insert_checkpoint(session, values=values)

    def _archive_through(self, values: dict[str, object]) -> None:
        assert self._archive is not None
        tree_size = int(str(values["tree_size"]))
        with self._sessions() as session:
            archive_through(self._archive, session, tree_size=tree_size, checkpoint=values)

    def _signing_failed(self, error: BaseException, *, reason: str | None = None) -> None:
        # The peer's status code (services.runtime.clients.peer_error), else what went wrong.
        if reason is None:
            reason = (
                error.metadata.get("code", type(error).__name__)
                if isinstance(error, AwarenessError)
                else type(error).__name__
            )
        if self._metrics is not None:
            self._checkpoint_failures.labels(reason).inc()
        now = time.monotonic()
        if now - self._last_signing_warning > 30:
            self._last_signing_warning = now
            log.warning(
                "checkpoint signing failed; integration continues",
                extra={"reason": reason, "error": str(error) if reason == "archive" else ""},
            )
