"""Concurrent callers' small requests served as one batch (group commit, for any batch function).

A caller submits its items and awaits its own results. While a batch runs, the items that arrive
meanwhile gather, and the next batch takes all of them (up to ``max_items``). An idle coalescer
adds no delay: the first caller's batch starts at once. Under load, N concurrent callers cost one
round trip instead of N, which is where single-event throughput is lost (a database transaction, a
peer's call, a lock held per call).

The batch function gets the concatenated items and must return one result per item, in order. If it
raises, every caller in that batch gets the error; the next batch is unaffected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(slots=True)
class _Waiting(Generic[Item, Result]):
    items: Sequence[Item]
    future: asyncio.Future[list[Result]]


class Coalescer(Generic[Item, Result]):
    """Runs ``run_batch`` over the items of every caller waiting, at most ``max_running`` at a time."""

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Awaitable[Sequence[Result]]],
        *,
        max_items: int = 1000,
        max_running: int = 1,
    ) -> None:
        if max_items < 1 or max_running < 1:
            raise ValueError("max_items and max_running must be at least 1")
        self._run_batch = run_batch
        self._max_items = max_items
        self._max_running = max_running
        self._waiting: list[_Waiting[Item, Result]] = []
        self._running = 0
        self.batches = 0  # batches run so far (for tests and metrics)

    @property
    def waiting_items(self) -> int:
        return sum(len(entry.items) for entry in self._waiting)

    @property
    def idle(self) -> bool:
        """Nothing waits and no batch runs."""
        return not self._waiting and self._running == 0

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """The batch function's results for ``items``, in order."""
        if not items:
            return []
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(items=items, future=future))
        if self._running < self._max_running:
            self._running += 1
            asyncio.get_running_loop().create_task(self._drain())
        # shield: one caller giving up (a cancelled RPC) must not cancel the batch the others share.
        return await asyncio.shield(future)

    def _take(self) -> list[_Waiting[Item, Result]]:
        taken: list[_Waiting[Item, Result]] = []
        count = 0
        while self._waiting and (not taken or count + len(self._waiting[0].items) <= self._max_items):
            entry = self._waiting.pop(0)
            taken.append(entry)
            count += len(entry.items)
        return taken

    async def _drain(self) -> None:
        try:
            while taken := self._take():
                await self._run(taken)
        finally:
            self._running -= 1

    async def _run(self, taken: list[_Waiting[Item, Result]]) -> None:
        items = [item for entry in taken for item in entry.items]
        self.batches += 1
        try:
            results = list(await self._run_batch(items))
            if len(results) != len(items):
                raise RuntimeError(f"batch returned {len(results)} results for {len(items)} items")
        except asyncio.CancelledError:  # shutting down: the callers are cancelled with it
            for entry in taken:
                entry.future.cancel()
            raise
        except Exception as error:  # every caller of this batch learns why; the next batch goes on
            for entry in taken:
                if not entry.future.done():
                    entry.future.set_exception(error)
            return
        position = 0
        for entry in taken:
            if not entry.future.done():
                entry.future.set_result(results[position : position + len(entry.items)])
            position += len(entry.items)
