"""Subject pseudonyms and data keys from the gdpr service, cached in memory.

Raw data keys live only in this process's memory and only for the cache TTL (the smaller of
AWARENESS_INGEST_KEY_CACHE_SECONDS, 15 minutes by default, and the TTL gdpr grants); expired entries
are swept within a second, and each cache holds at most AWARENESS_INGEST_KEY_CACHE_ENTRIES. The TTL
does not bound erasure: ForgetSubject drops a pseudonym's entries at once, and other replicas drop
theirs within a poll of the shared database (services/ingest/forgetting.py, 500 ms). A TTL much
shorter than the time between a person's events would turn a steady stream over thousands of people
into a stream of misses (one gdpr call per event); 15 minutes keeps a month's key for everyone seen
recently. Misses of concurrent appends are asked of gdpr together, in one call.

The append-side cache is keyed by (subject, event type, UTC month of occurred_at): gdpr's key
periods are months or years, so one month never spans two keys, and every (key, event type) pair
still reaches gdpr once per TTL (gdpr records the types a key protects, for retention).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc

from services.runtime.batching import Coalescer
from services.runtime.clients import call_peer
from services.runtime.errors import DependencyUnavailableError, NotFoundError
from services.runtime.timestamps import timestamp_from_us

MAX_LOOKUPS_PER_CALL = 1000
DEFAULT_KEY_CACHE_SECONDS = 900.0
# Entries per cache (append side and read side each): a month of 100,000 people's keys for two
# event types; the oldest entries go first when it is full.
DEFAULT_MAX_ENTRIES = 200_000


@dataclass(frozen=True, slots=True)
class SubjectKey:
    pseudonym: str
    key_period: str
    key_id: str
    data_key: bytes
    # The subject's department in gdpr's directory when the key was fetched ('' when unknown).
    department: str = ""


@dataclass(frozen=True, slots=True)
class KeyLookup:
    subject: str
    occurred_at_us: int  # microseconds since the Unix epoch (UTC)
    event_type: str

    @property
    def cache_key(self) -> tuple[str, str, str]:
        return (self.subject, self.event_type, utc_month(self.occurred_at_us))


_DAY_US = 86_400_000_000
_MONTH_OF_DAY: dict[int, str] = {}


def utc_month(micros: int) -> str:
    """ "YYYY-MM" of a time given as microseconds since the Unix epoch (memoised per day)."""
    day = micros // _DAY_US
    month = _MONTH_OF_DAY.get(day)
    if month is None:
        if len(_MONTH_OF_DAY) >= 100_000:
            _MONTH_OF_DAY.clear()
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day)
        month = _MONTH_OF_DAY[day] = f"{moment.year:04d}-{moment.month:02d}"
    return month


ERASED = "erased"
"""UnwrapDataKeys answered NOT_FOUND: the key was shredded (erasure or retention)."""


@dataclass
class _Entry:
    value: SubjectKey | str
    expires: float


class _ExpiringEntries(dict[Any, _Entry]):
    """Cache entries kept in expiry order, so that a sweep reads only what it drops.

    Entries usually all live one TTL, so storing in time order is storing in expiry order, and
    the expired ones are at the front: a sweep stops at the first live entry. An entry that
    expires sooner than the one stored before it (gdpr granted a shorter TTL) breaks the order;
    the next sweep then reads everything once and restores it. A full sweep of 200,000 entries
    twice a second would hold the event loop for tens of milliseconds each time.
    """

    def __init__(self, *, max_entries: int) -> None:
        super().__init__()
        self._max_entries = max_entries
        self._in_order = True

    def remember(self, key: Any, entry: _Entry) -> None:
        """Store an entry; past ``max_entries`` the front ones (the oldest stored) go first."""
        self.pop(key, None)
        if self and entry.expires < next(reversed(self.values())).expires:
            self._in_order = False
        self[key] = entry
        while len(self) > self._max_entries:
            del self[next(iter(self))]

    def sweep(self, now: float) -> int:
        """Drop every entry expired at ``now``; returns how many were dropped."""
        before = len(self)
        if self._in_order:
            while self:
                first = next(iter(self))
                if self[first].expires > now:
                    break
                del self[first]
        else:
            live = sorted(
                ((k, e) for k, e in self.items() if e.expires > now), key=lambda item: item[1].expires
            )
            self.clear()
            self.update(live)
            self._in_order = True
        return before - len(self)


class SubjectKeys:
    """GetSubjectKeys / UnwrapDataKeys (TTL-cached) and LookupSubject through the guarded gdpr channel."""

    def __init__(
        self,
        *,
        channel: Callable[[], grpc.aio.Channel],
        ttl_seconds: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._channel = channel
        self._ttl = ttl_seconds
        self._max_entries = max(1, max_entries)
        self._fetching: Coalescer[KeyLookup, SubjectKey] = Coalescer(
            self._fetch, max_items=4 * MAX_LOOKUPS_PER_CALL, max_running=2
        )
        self._clock = clock
        self._append_cache = _ExpiringEntries(max_entries=self._max_entries)
        self._read_cache = _ExpiringEntries(max_entries=self._max_entries)
        self._stub: gdpr_pb2_grpc.GdprServiceStub | None = None
        # A gdpr answer in flight while its subject is forgotten must not be cached (or, for
        # reads, used) afterwards: `forget` stamps the pseudonym with a generation number.
        self._generation = 0
        self._forgotten_at: dict[str, int] = {}
        self._in_flight: Counter[int] = Counter()
        # Expired entries are swept at most this often (a raw key must not outlive its TTL in memory).
        self._sweep_every = min(1.0, ttl_seconds) if ttl_seconds > 0 else 1.0
        self._next_sweep = clock() + self._sweep_every

    @contextlib.contextmanager
    def _question(self) -> Iterator[int]:
        """A gdpr call in flight: its generation, so `forget` knows which stamps still matter."""
        generation = self._generation
        self._in_flight[generation] += 1
        try:
            yield generation
        finally:
            self._in_flight[generation] -= 1
            if not self._in_flight[generation]:
                del self._in_flight[generation]

    def _forgotten_since(self, pseudonym: str, generation: int) -> bool:
        return self._forgotten_at.get(pseudonym, -1) >= generation

    def _gdpr(self) -> gdpr_pb2_grpc.GdprServiceStub:
        if self._stub is None:
            self._stub = gdpr_pb2_grpc.GdprServiceStub(self._channel())
        return self._stub

    def _ttl_for(self, granted: float) -> float:
        return min(self._ttl, granted) if granted > 0 else self._ttl

    def all_cached(self, lookups: Sequence[KeyLookup]) -> bool:
        """True when every lookup is answered from the cache (no gdpr call needed)."""
        now = self._clock()
        for lookup in lookups:
            entry = self._append_cache.get(lookup.cache_key)
            if entry is None or entry.expires <= now:
                return False
        return True

    async def keys_for(self, lookups: Sequence[KeyLookup]) -> list[SubjectKey]:
        """Pseudonym and data key for each lookup, in order (gdpr creates them on first use)."""
        now = self._clock()
        results: list[SubjectKey | None] = [None] * len(lookups)
        missing: dict[tuple[str, str, str], list[int]] = {}
        for position, lookup in enumerate(lookups):
            entry = self._append_cache.get(lookup.cache_key)
            if entry is not None and entry.expires > now and isinstance(entry.value, SubjectKey):
                results[position] = entry.value
            else:
                missing.setdefault(lookup.cache_key, []).append(position)
        if missing:
            # Concurrent appends' misses go to gdpr together (one call, not one per request).
            fetched = await self._fetching.submit([lookups[positions[0]] for positions in missing.values()])
            for positions, key in zip(missing.values(), fetched, strict=True):
                for position in positions:
                    results[position] = key
        self._evict(now)
        return [key for key in results if key is not None]

    async def _fetch(self, lookups: list[KeyLookup]) -> list[SubjectKey]:
        """Keys for every waiting caller's misses: one GetSubjectKeys per 1,000 distinct lookups."""
        now = self._clock()
        found: dict[tuple[str, str, str], SubjectKey] = {}
        wanted: dict[tuple[str, str, str], KeyLookup] = {}
        for lookup in lookups:
            entry = self._append_cache.get(lookup.cache_key)
            if entry is not None and entry.expires > now and isinstance(entry.value, SubjectKey):
                found[lookup.cache_key] = entry.value  # stored by a batch that ran meanwhile
            else:
                wanted.setdefault(lookup.cache_key, lookup)
        unique = list(wanted.items())
        for start in range(0, len(unique), MAX_LOOKUPS_PER_CALL):
            chunk = unique[start : start + MAX_LOOKUPS_PER_CALL]
            request = gdpr_pb2.GetSubjectKeysRequest(lookups=[_lookup_message(lookup) for _, lookup in chunk])
            with self._question() as asked_at:
                response = await call_peer(self._gdpr().GetSubjectKeys(request), target="gdpr")
                if len(response.keys) != len(chunk):
                    raise DependencyUnavailableError(
                        "gdpr answered GetSubjectKeys with the wrong number of keys",
                        reason="GDPR_BAD_RESPONSE",
                    )
                stored_at = self._clock()
                for (cache_key, _), message in zip(chunk, response.keys, strict=True):
                    key = SubjectKey(
                        pseudonym=message.pseudonym,
                        key_period=message.key_period,
                        key_id=message.key_id,
                        data_key=bytes(message.data_key),
                        department=message.department,
                    )
                    expires = stored_at + self._ttl_for(message.cache_ttl.ToTimedelta().total_seconds())
                    if not self._forgotten_since(key.pseudonym, asked_at):
                        self._append_cache.remember(cache_key, _Entry(key, expires))
                        self._read_cache.remember((key.pseudonym, key.key_period), _Entry(key, expires))
                    found[cache_key] = key
        return [found[lookup.cache_key] for lookup in lookups]

    async def unwrap(self, refs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], SubjectKey | str]:
        """Data key, or ERASED, per (pseudonym, key period); raises when gdpr cannot be reached."""
        now = self._clock()
        found: dict[tuple[str, str], SubjectKey | str] = {}
        wanted: list[tuple[str, str]] = []
        for ref in dict.fromkeys(refs):
            entry = self._read_cache.get(ref)
            if entry is not None and entry.expires > now:
                found[ref] = entry.value
            else:
                wanted.append(ref)
        for start in range(0, len(wanted), MAX_LOOKUPS_PER_CALL):
            chunk = wanted[start : start + MAX_LOOKUPS_PER_CALL]
            request = gdpr_pb2.UnwrapDataKeysRequest(
                keys=[gdpr_pb2.DataKeyRef(pseudonym=p, key_period=k) for p, k in chunk]
            )
            with self._question() as asked_at:
                response = await call_peer(self._gdpr().UnwrapDataKeys(request), target="gdpr")
                stored_at = self._clock()
                for ref, item in zip(chunk, response.keys, strict=True):
                    value: SubjectKey | str
                    if item.WhichOneof("result") == "data_key":
                        value = SubjectKey(
                            pseudonym=ref[0],
                            key_period=ref[1],
                            key_id=item.key_id,
                            data_key=bytes(item.data_key),
                        )
                        ttl = self._ttl_for(item.cache_ttl.ToTimedelta().total_seconds())
                    elif item.error.code == grpc.StatusCode.NOT_FOUND.value[0]:
                        value, ttl = ERASED, self._ttl
                    else:
                        raise DependencyUnavailableError(
                            f"gdpr could not unwrap a data key: {item.error.message}",
                            reason="GDPR_UNAVAILABLE",
                        )
                    if self._forgotten_since(ref[0], asked_at):
                        value = ERASED  # erased while this answer was on its way
                    self._read_cache.remember(ref, _Entry(value, stored_at + ttl))
                    found[ref] = value
        self._evict(now)
        return found

    async def lookup_pseudonym(self, subject: str) -> str | None:
        """The subject's pseudonym, or None when gdpr has none (unknown or erased person).

        gdpr's LookupSubject never registers anyone. Not cached: an erasure must hide the person from
        the next lookup, and ForgetSubject names only the pseudonym, never the identifier.
        """
        try:
            response = await call_peer(
                self._gdpr().LookupSubject(gdpr_pb2.LookupSubjectRequest(subject=subject)), target="gdpr"
            )
        except NotFoundError:  # gdpr knows nobody by that identifier
            return None
        return response.pseudonym or None

    def forget(self, pseudonym: str) -> int:
        """Drop every cached key of `pseudonym`; returns how many entries were dropped."""
        self._forgotten_at[pseudonym] = self._generation
        self._generation += 1
        # Only answers asked before a stamp can be misled by it: once no such call is in flight,
        # the stamp is dropped, so the stamps stay as few as the calls in flight.
        oldest = min(self._in_flight, default=self._generation)
        self._forgotten_at = {p: g for p, g in self._forgotten_at.items() if g >= oldest}
        dropped = 0
        for append_key in [k for k, e in self._append_cache.items() if _pseudonym_of(e) == pseudonym]:
            del self._append_cache[append_key]
            dropped += 1
        for read_key in [k for k in self._read_cache if k[0] == pseudonym]:
            del self._read_cache[read_key]
            dropped += 1
        return dropped

    def evict_expired(self) -> int:
        """Drop every expired entry; returns how many were dropped."""
        now = self._clock()
        self._next_sweep = now + self._sweep_every
        return self._append_cache.sweep(now) + self._read_cache.sweep(now)

    def _evict(self, now: float) -> None:
        if now >= self._next_sweep:
            self.evict_expired()


def _pseudonym_of(entry: _Entry) -> str | None:
    return entry.value.pseudonym if isinstance(entry.value, SubjectKey) else None


def _lookup_message(lookup: KeyLookup) -> gdpr_pb2.SubjectKeyLookup:
    return gdpr_pb2.SubjectKeyLookup(
        subject=lookup.subject,
        occurred_at=timestamp_from_us(lookup.occurred_at_us),
        event_type=lookup.event_type,
    )
