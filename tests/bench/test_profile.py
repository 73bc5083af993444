"""bench/profile.py: py-spy's collapsed stacks become each process's top functions."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench import profile

LOOP = "main (services/cli.py:1);Handle._run (asyncio/events.py:78)"
COLLAPSED = f"""\
{LOOP};append (services/ingest/api.py:10);issue (services/gdpr/x.py:5) 60
{LOOP};append (services/ingest/api.py:10) 20
{LOOP};parse (google/protobuf/json_format.py:400) 20
not a stack line
"""


def test_hottest_functions_and_the_projects_heaviest_below_the_entry_point() -> None:
    summary = profile.summarise(COLLAPSED, process="ingest")
    assert (summary.samples, summary.seconds) == (100, 1.0)
    assert [(share.frame, share.own) for share in summary.hottest] == [
        ("services/gdpr/x.py:issue", 0.6),
        ("google/protobuf/json_format.py:parse", 0.2),
        ("services/ingest/api.py:append", 0.2),
    ]
    # Only the project's functions below the event loop's callback runner (Handle._run), by what
    # they and their callees took; the server's main above it and json_format (not ours) are not.
    assert [(share.frame, share.inclusive) for share in summary.project] == [
        ("services/ingest/api.py:append", 0.8),
        ("services/gdpr/x.py:issue", 0.6),
    ]
    text = profile.format_profiles("a step", [summary], events=500)
    assert "ingest: 1.00 s, 2.00 ms/event" in text
    assert " incl  80.0%  1.600 ms/event  services/ingest/api.py:append" in text


def test_an_empty_recording_has_nothing_to_rank() -> None:
    assert profile.summarise("", process="gdpr") == profile.ProcessProfile("gdpr", 0, [], [])


def test_recording_a_real_busy_process(tmp_path: Path) -> None:
    if profile.py_spy() is None:
        if os.environ.get("AWARENESS_REQUIRE_SERVICES") == "1":
            pytest.fail("py-spy is required (AWARENESS_REQUIRE_SERVICES=1): make setup installs it")
        pytest.skip("py-spy is not installed")
    script = tmp_path / "busy.py"
    script.write_text(
        textwrap.dedent(
            """\
            import json, time
            def encode_forever():
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    json.dumps({"n": list(range(50))})
            encode_forever()
            """
        )
    )
    busy = subprocess.Popen([sys.executable, str(script)])
    try:
        time.sleep(0.5)
        with profile.recording({"busy": busy.pid}, seconds=1, out_dir=tmp_path, step="s") as outputs:
            pass
        profiles = profile.profiles_of(outputs)
    finally:
        busy.kill()
        busy.wait()
    if not profiles or profiles[0].samples == 0:
        pytest.fail(f"py-spy recorded nothing (ptrace rights? run as root): {outputs}")
    (busy_profile,) = profiles
    # A tight loop of json.dumps: the encoder's functions are where its CPU goes.
    assert any(share.frame.startswith("json/") for share in busy_profile.hottest)
    assert "busy:" in profile.format_profiles("step", profiles, events=1)
