"""Where each process's CPU goes during a load step: py-spy samples, summarised by function.

``python -m bench suite --profile`` runs ``py-spy record --gil --subprocesses`` (a dev dependency)
against every suite process (and its workers) for the length of each load step and prints, per
process, the seconds of samples that held the GIL (the Python CPU of the process: threads that wait
on a socket or a lock release it), per event, and the functions that took them: the innermost frames
(``own``) and the project's own functions with what they called (``incl``). py-spy needs ptrace
rights over the processes: root, or ``kernel.yama.ptrace_scope=0``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

SAMPLES_PER_SECOND = 100
# py-spy names a frame "function (module/path.py:line)"; the bench groups by "path:function".
# Frames that run others' work: what is below them is the work (an event-loop callback, a pool job).
DISPATCHERS = frozenset(
    {"asyncio/events.py:Handle._run", "concurrent/futures/thread.py:_WorkItem.run", "threading.py:Thread.run"}
)
_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")


@dataclass(frozen=True)
class FrameShare:
    frame: str
    inclusive: float  # share of the process's busy samples with this function on the stack
    own: float  # share where it was the innermost Python frame


@dataclass(frozen=True)
class ProcessProfile:
    process: str
    samples: int
    hottest: list[FrameShare]  # by own share: where the CPU was spent
    project: list[FrameShare]  # the project's functions (services/...) by inclusive share

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLES_PER_SECOND


def py_spy() -> str | None:
    """The py-spy next to this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def frame_name(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['path']}:{match['function']}"


def summarise(collapsed: str, *, process: str, limit: int = 8, project: str = "services/") -> ProcessProfile:
    """The hottest functions of py-spy's collapsed stacks, and the project's heaviest ones."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        below = max((index for index, name in enumerate(frames) if name in DISPATCHERS), default=-1)
        for name in set(frames[below + 1 :]):
            inclusive[name] += count
    if total == 0:
        return ProcessProfile(process=process, samples=0, hottest=[], project=[])

    def share(name: str) -> FrameShare:
        return FrameShare(frame=name, inclusive=inclusive[name] / total, own=own[name] / total)

    hottest = sorted(own, key=lambda name: (-own[name], name))[:limit]
    # Only frames below the innermost dispatcher count as work: a server's main function is on
    # every stack of its event loop, and says nothing about where the CPU went.
    ours = [name for name in inclusive if name.startswith(project)]
    ours.sort(key=lambda name: (-inclusive[name], name))
    return ProcessProfile(
        process=process,
        samples=total,
        hottest=[share(name) for name in hottest],
        project=[share(name) for name in ours[:limit]],
    )


@contextlib.contextmanager
def recording(
    pids: Mapping[str, int], *, seconds: float, out_dir: Path, step: str
) -> Iterator[dict[str, Path]]:
    """py-spy on every process for ``seconds`` while the body runs; yields each output path."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed (it is a dev dependency: make setup)")
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {name: out_dir / f"{step}-{name}.txt" for name in pids}
    spies = [
        subprocess.Popen(
            [
                binary, "record", "--pid", str(pid), "--duration", f"{max(1, round(seconds))}",
                "--rate", str(SAMPLES_PER_SECOND), "--gil", "--function", "--nonblocking", "--subprocesses",
                "--format", "raw", "--output", str(outputs[name]),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for name, pid in pids.items()
    ]  # fmt: skip
    try:
        yield outputs
    finally:
        for spy in spies:
            try:
                _, errors = spy.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, errors = spy.communicate()
            if spy.returncode != 0:
                print(f"bench: py-spy failed: {errors.decode(errors='replace')[-300:]}", file=sys.stderr)


def profiles_of(outputs: Mapping[str, Path]) -> list[ProcessProfile]:
    return [summarise(path.read_text(), process=name) for name, path in outputs.items() if path.exists()]


def format_profiles(step: str, profiles: list[ProcessProfile], *, events: int) -> str:
    """Per process: GIL-held seconds, per event, then its hottest and its heaviest own functions."""
    per_event = max(events, 1)
    lines = [f"profile of {step}: {events:,} events; GIL-held samples (py-spy --gil, {SAMPLES_PER_SECOND}/s)"]
    for profile in sorted(profiles, key=lambda p: -p.samples):
        lines.append(
            f"  {profile.process}: {profile.seconds:.2f} s, {1000 * profile.seconds / per_event:.2f} ms/event"
        )
        for kind, shares in (("own", profile.hottest), ("incl", profile.project)):
            for item in shares:
                value = item.own if kind == "own" else item.inclusive
                lines.append(
                    f"    {kind:>4} {value:6.1%} {1000 * value * profile.seconds / per_event:6.3f} ms/event"
                    f"  {item.frame}"
                )
    return "\n".join(lines)
