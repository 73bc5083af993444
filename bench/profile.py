"""Where each process's CPU goes during a load step: py-spy samples, summarised by function.

``python -m bench suite --profile`` runs ``py-spy record`` (a dev dependency) against every suite
process for the length of each load step, keeps the collapsed stacks in the work directory's
``profiles/`` and prints, per process, the functions with the largest inclusive share of the
samples. Only busy samples count (py-spy leaves out threads that wait), so a process's shares say
where its CPU went, not where its requests waited. py-spy needs ptrace rights over the processes:
root, or ``kernel.yama.ptrace_scope=0``.
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
    top: list[FrameShare]


def py_spy() -> str | None:
    """The py-spy next to this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def frame_name(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['path']}:{match['function']}"


def summarise(collapsed: str, *, process: str, limit: int = 12) -> ProcessProfile:
    """The ``limit`` functions with the largest inclusive share of py-spy's collapsed stacks."""
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
        for name in set(frames):
            inclusive[name] += count
    if total == 0:
        return ProcessProfile(process=process, samples=0, top=[])
    ranked = sorted(inclusive, key=lambda name: (-inclusive[name], -own[name], name))
    # The entry points (the event loop, the thread pool's worker) hold nearly every sample; what
    # matters is below them, so keep frames that are not on more than 95 % of the stacks.
    informative = [name for name in ranked if inclusive[name] <= 0.95 * total] or ranked
    top = [
        FrameShare(frame=name, inclusive=inclusive[name] / total, own=own[name] / total)
        for name in informative[:limit]
    ]
    return ProcessProfile(process=process, samples=total, top=top)


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
                "--rate", str(SAMPLES_PER_SECOND), "--function", "--nonblocking",
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


def profiles_of(outputs: Mapping[str, Path], *, limit: int = 12) -> list[ProcessProfile]:
    return [
        summarise(path.read_text(), process=name, limit=limit)
        for name, path in outputs.items()
        if path.exists()
    ]


def format_profiles(step: str, profiles: list[ProcessProfile]) -> str:
    lines = [f"profile of {step} (py-spy, busy samples at {SAMPLES_PER_SECOND}/s):"]
    for profile in sorted(profiles, key=lambda p: -p.samples):
        lines.append(f"  {profile.process}: {profile.samples} samples")
        for share in profile.top:
            lines.append(f"    {share.inclusive:6.1%} incl  {share.own:6.1%} own  {share.frame}")
    return "\n".join(lines)
