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

COLLAPSED = """\
_run (asyncio/events.py:78);append (services/ingest/api.py:10);issue (services/gdpr/x.py:5) 60
_run (asyncio/events.py:78);append (services/ingest/api.py:10) 20
_run (asyncio/events.py:78);parse (google/protobuf/json_format.py:400) 20
not a stack line
"""


def test_functions_are_ranked_by_inclusive_share_below_the_entry_point() -> None:
    summary = profile.summarise(COLLAPSED, process="ingest")
    assert summary.samples == 100
    # The event loop's _run is on every stack: it says nothing, so it is left out.
    assert [share.frame for share in summary.top] == [
        "services/ingest/api.py:append",
        "services/gdpr/x.py:issue",
        "google/protobuf/json_format.py:parse",
    ]
    append, issue, parse = summary.top
    assert (append.inclusive, append.own) == (0.8, 0.2)
    assert (issue.inclusive, issue.own) == (0.6, 0.6)
    assert (parse.inclusive, parse.own) == (0.2, 0.2)


def test_an_empty_recording_has_no_top() -> None:
    assert profile.summarise("", process="gdpr") == profile.ProcessProfile("gdpr", 0, [])


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
    # encode_forever is on every stack (left out as an entry point); json's encoder is what it does.
    assert "json/__init__.py:dumps" in [share.frame for share in busy_profile.top]
    assert "profile of step" in profile.format_profiles("step", profiles)
