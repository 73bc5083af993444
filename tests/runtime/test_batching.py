"""The coalescer: concurrent callers share batches, each gets its own results, failures stay per batch."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime.batching import Coalescer


class Recorder:
    """A batch function that doubles numbers and remembers the batches it was given."""

    def __init__(self, *, delay: float = 0.01, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.running = 0
        self.most_running = 0

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delay)
            if self.fail_on is not None and self.fail_on in items:
                raise ValueError(f"refused {self.fail_on}")
            return [item * 2 for item in items]
        finally:
            self.running -= 1


async def test_an_idle_coalescer_runs_a_lone_call_at_once() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder)
    assert await coalescer.submit([1, 2]) == [2, 4]
    assert recorder.batches == [[1, 2]]


async def test_callers_that_arrive_during_a_batch_share_the_next_one() -> None:
    recorder = Recorder(delay=0.05)
    coalescer = Coalescer(recorder)
    first = asyncio.create_task(coalescer.submit([1]))
    await asyncio.sleep(0.01)  # the first batch is running
    rest = [asyncio.create_task(coalescer.submit([value, value + 100])) for value in range(2, 12)]
    assert await first == [2]
    results = await asyncio.gather(*rest)
    assert results == [[value * 2, (value + 100) * 2] for value in range(2, 12)]
    assert len(recorder.batches) == 2
    assert sorted(recorder.batches[1]) == sorted(v for value in range(2, 12) for v in (value, value + 100))


async def test_batches_respect_max_items_without_splitting_a_caller() -> None:
    recorder = Recorder(delay=0.02)
    coalescer = Coalescer(recorder, max_items=5)
    blocker = asyncio.create_task(coalescer.submit([0]))
    await asyncio.sleep(0.005)
    calls = [asyncio.create_task(coalescer.submit([value] * 3)) for value in range(1, 5)]
    await blocker
    assert await asyncio.gather(*calls) == [[value * 2] * 3 for value in range(1, 5)]
    assert all(len(batch) <= 5 for batch in recorder.batches)
    # One caller's items are never split over two batches.
    assert sorted(len(batch) for batch in recorder.batches[1:]) == [3, 3, 3, 3]


async def test_a_caller_larger_than_max_items_still_runs_alone() -> None:
    recorder = Recorder()
    coalescer = Coalescer(recorder, max_items=2)
    assert await coalescer.submit([1, 2, 3]) == [2, 4, 6]


async def test_a_failed_batch_fails_its_callers_only() -> None:
    recorder = Recorder(delay=0.03, fail_on=7)
    coalescer = Coalescer(recorder)
    blocker = asyncio.create_task(coalescer.submit([1]))
    await asyncio.sleep(0.005)
    doomed = [asyncio.create_task(coalescer.submit([7])), asyncio.create_task(coalescer.submit([8]))]
    await blocker
    outcomes = await asyncio.gather(*doomed, return_exceptions=True)
    assert all(isinstance(outcome, ValueError) for outcome in outcomes)
    assert await coalescer.submit([9]) == [18]  # the coalescer goes on


async def test_a_cancelled_caller_does_not_cancel_the_shared_batch() -> None:
    recorder = Recorder(delay=0.05)
    coalescer = Coalescer(recorder)
    blocker = asyncio.create_task(coalescer.submit([1]))
    await asyncio.sleep(0.005)
    leaving = asyncio.create_task(coalescer.submit([2]))
    staying = asyncio.create_task(coalescer.submit([3]))
    await asyncio.sleep(0.005)
    leaving.cancel()
    await blocker
    assert await staying == [6]
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_max_running_bounds_concurrent_batches() -> None:
    recorder = Recorder(delay=0.02)
    coalescer = Coalescer(recorder, max_items=1, max_running=2)
    assert await asyncio.gather(*(coalescer.submit([value]) for value in range(6))) == [
        [value * 2] for value in range(6)
    ]
    assert recorder.most_running == 2


async def test_a_batch_function_that_loses_results_is_an_error() -> None:
    async def lossy(items: list[int]) -> list[int]:
        return items[:-1]

    with pytest.raises(RuntimeError, match="2 results for 3 items"):
        await Coalescer(lossy).submit([1, 2, 3])


def test_limits_must_be_positive() -> None:
    async def identity(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError):
        Coalescer(identity, max_items=0)
