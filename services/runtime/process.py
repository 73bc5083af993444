"""What every long-running process (a service, the gateway) sets up once before it serves."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

from services.runtime.config import EventLoop

T = TypeVar("T")

# Collections of the youngest generation happen every this many net allocations (CPython's default
# is 700). Request handling allocates thousands of short-lived objects per batch; collecting them
# this often promotes many that are about to die, and every promotion brings the next full scan
# of the whole heap closer.
GC_YOUNG_THRESHOLD = 20_000


def tune_garbage_collector() -> None:
    """Keep the cyclic collector off the objects of start-up, and collect the young less often.

    Modules, engines and servers built at start-up live as long as the process: ``gc.freeze`` moves
    them out of every generation, so full collections no longer traverse them (with the defaults,
    a full collection of an ingest process cost about 80 ms at ingest rates, about a tenth of its
    CPU). Cycles created later are still collected.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def run_main(main: Coroutine[Any, Any, T], *, event_loop: EventLoop = "uvloop") -> T:
    """Run the process's main coroutine to completion on its event loop.

    uvloop (libuv) runs the same asyncio code, grpc.aio and uvicorn included, with less CPU per
    callback and socket operation than the standard loop (docs/benchmarks.md); ``asyncio`` stays
    available as a fallback (AWARENESS_EVENT_LOOP).
    """
    if event_loop == "asyncio":
        return asyncio.run(main)
    return uvloop.run(main)
