"""A process's start: the garbage collector's tuning and the event loop its main coroutine runs on."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest
import uvloop

from services.runtime import process
from services.runtime.config import ConfigError, load_settings


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_the_main_coroutine_runs_on_uvloop_by_default() -> None:
    assert isinstance(process.run_main(_running_loop()), uvloop.Loop)


def test_the_standard_loop_stays_available() -> None:
    loop = process.run_main(_running_loop(), event_loop="asyncio")
    assert not isinstance(loop, uvloop.Loop)
    assert isinstance(loop, asyncio.BaseEventLoop)


def test_the_event_loop_is_chosen_by_its_variable(tmp_path: Path) -> None:
    env = {"AWARENESS_DATA_DIR": str(tmp_path)}
    assert load_settings("ingest", env).event_loop == "uvloop"
    assert load_settings("ingest", {**env, "AWARENESS_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    with pytest.raises(ConfigError, match="AWARENESS_EVENT_LOOP must be uvloop or asyncio"):
        load_settings("ingest", {**env, "AWARENESS_EVENT_LOOP": "trio"})


def test_garbage_collector_tuning_freezes_start_up_objects_and_collects_the_young_less_often() -> None:
    threshold = gc.get_threshold()
    try:
        gc.unfreeze()
        process.tune_garbage_collector()
        assert gc.get_freeze_count() > 0  # start-up objects no longer traversed by collections
        assert gc.get_threshold()[0] == process.GC_YOUNG_THRESHOLD
        assert gc.get_threshold()[1:] == threshold[1:]
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
