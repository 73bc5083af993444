"""The commands in a document's fenced blocks, as a test runs them.

A doc's ```sh blocks hold shell commands and its ```sql blocks SQL statements; every other block is
data (yaml, json, csv, ...). For shell:

- a line ending in ``\\`` continues on the next line;
- ``#`` starts a comment outside quotes; a whole-line comment is dropped, and a trailing
  ``# expect: exit N`` says the command's point is to exit N (a failure shown on purpose);
- a command ending in ``&`` runs in the background;
- ``kubectl -n awareness exec deploy/awareness-<service> -- <command>`` is run as ``<command>`` beside
  that service (its settings and identity): the prefix is stripped and ``service`` says which.

For SQL, statements end with ``;`` at the end of a line, ``--`` lines are comments.

:class:`DocSession` runs one doc's commands, in order, in one working directory, against a
:class:`~tests.resilience.harness.ProcessSuite`; :func:`problems` says why a command cannot be run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from services.runtime.config import (
    ALL_PROCESSES,
    DEFAULT_GATEWAY_ADMIN_PORT,
    DEFAULT_GATEWAY_PORT,
    DEFAULT_METRICS_PORTS,
)
from tests.resilience.harness import ProcessSuite, metric_value, parse_metrics, wait_until
from tests.support.suite import outside_environment

SHELL_LANGUAGES = frozenset({"sh", "shell", "bash"})
SQL_LANGUAGES = frozenset({"sql"})
# Blocks that show data or output, never something to run.
DATA_LANGUAGES = frozenset({"yaml", "json", "csv", "text", "promql", "console-output"})

_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)(?:\s+([\w.-]+))?\s*$")
_EXEC_PREFIX = re.compile(
    r"^kubectl\s+-n\s+awareness\s+exec\s+(?:-i\s+)?deploy/awareness-([a-z]+)\s+--\s+(.+)$"
)
_EXPECT = re.compile(r"^expect:\s*exit\s+(\d+)$")


@dataclass(frozen=True)
class FencedBlock:
    """One fenced block: its language ('' when none) and lines, ``first_line`` 1-based.

    A data block may name a file after its language (```csv people.csv): the commands after it
    find that file in their working directory.
    """

    path: Path
    language: str
    first_line: int
    lines: tuple[str, ...]
    file_name: str = ""


@dataclass(frozen=True)
class DocCommand:
    """One command of a doc as the test runs it."""

    path: Path
    line: int  # 1-based line of the command's first line in the doc
    language: str  # "sh" or "sql"
    text: str  # continuations joined, comment and kubectl-exec prefix and trailing & removed
    service: str | None = None  # the Deployment it runs beside, when the kubectl-exec prefix was stripped
    background: bool = False
    expect_exit: int = 0

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.line}"


def fenced_blocks(path: Path) -> list[FencedBlock]:
    """Every fenced block of a Markdown file, in order; an unclosed fence raises ValueError."""
    blocks: list[FencedBlock] = []
    fence = ""
    language = ""
    file_name = ""
    start = 0
    body: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = _FENCE.match(line)
        if not fence:
            if match:
                fence, language, file_name = match.group(2), match.group(3).lower(), match.group(4) or ""
                start, body = number, []
            continue
        if match and match.group(2).startswith(fence) and not match.group(3) and not match.group(4):
            blocks.append(
                FencedBlock(
                    path=path, language=language, first_line=start + 1, lines=tuple(body), file_name=file_name
                )
            )
            fence = ""
            continue
        body.append(line)
    if fence:
        raise ValueError(f"{path}:{start}: fenced block never closed")
    return blocks


def split_comment(line: str) -> tuple[str, str]:
    """(code, comment) of one shell line: ``#`` starts a comment at a word start outside quotes."""
    quote = ""
    escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip(), line[index + 1 :].strip()
    return line.rstrip(), ""


def _shell_commands(block: FencedBlock) -> list[DocCommand]:
    commands: list[DocCommand] = []
    pending: list[str] = []
    pending_line = 0
    for offset, raw in enumerate(block.lines):
        code, comment = split_comment(raw)
        if not pending and not code.strip():
            continue  # blank line or whole-line comment
        if not pending:
            pending_line = block.first_line + offset
        if code.endswith("\\") and not comment:
            pending.append(code[:-1].strip())
            continue
        pending.append(code.strip())
        commands.append(_shell_command(block.path, pending_line, " ".join(p for p in pending if p), comment))
        pending = []
    if pending:
        raise ValueError(f"{block.path}:{pending_line}: a continued line ends the block")
    return commands


def _shell_command(path: Path, line: int, text: str, comment: str) -> DocCommand:
    if "<<" in text:
        raise ValueError(f"{path}:{line}: here-documents are not supported in runnable blocks")
    expect = _EXPECT.match(comment)
    background = text.endswith("&") and not text.endswith("&&")
    if background:
        text = text[:-1].rstrip()
    service = None
    prefix = _EXEC_PREFIX.match(text)
    if prefix:
        if prefix.group(1) not in ALL_PROCESSES:
            raise ValueError(f"{path}:{line}: no Deployment awareness-{prefix.group(1)}")
        service, text = prefix.group(1), prefix.group(2)
    return DocCommand(
        path=path,
        line=line,
        language="sh",
        text=text,
        service=service,
        background=background,
        expect_exit=int(expect.group(1)) if expect else 0,
    )


def _sql_commands(block: FencedBlock) -> list[DocCommand]:
    commands: list[DocCommand] = []
    pending: list[str] = []
    pending_line = 0
    for offset, raw in enumerate(block.lines):
        line = raw.strip()
        if not pending and (not line or line.startswith("--")):
            continue
        if not pending:
            pending_line = block.first_line + offset
        pending.append(line)
        if line.endswith(";"):
            commands.append(
                DocCommand(path=block.path, line=pending_line, language="sql", text=" ".join(pending))
            )
            pending = []
    if pending:
        raise ValueError(f"{block.path}:{pending_line}: an SQL statement without its final ';'")
    return commands


def fenced_commands(path: Path) -> list[DocCommand]:
    """Every command of the doc's ``sh`` and ``sql`` blocks, in document order."""
    commands: list[DocCommand] = []
    for block in fenced_blocks(path):
        if block.language in SHELL_LANGUAGES:
            commands += _shell_commands(block)
        elif block.language in SQL_LANGUAGES:
            commands += _sql_commands(block)
    return commands


def named_files(path: Path) -> dict[str, str]:
    """The data blocks that name a file (```csv people.csv): {file name: content}."""
    return {
        block.file_name: "\n".join(block.lines) + "\n"
        for block in fenced_blocks(path)
        if block.file_name and block.language in DATA_LANGUAGES
    }


def unrunnable_blocks(path: Path) -> list[FencedBlock]:
    """Blocks that are neither commands nor a known kind of data: a command could hide in them."""
    known = SHELL_LANGUAGES | SQL_LANGUAGES | DATA_LANGUAGES
    return [block for block in fenced_blocks(path) if block.language not in known]


# --- running them --------------------------------------------------------------------------

# Programs a doc command may run here; anything else (kubectl, helm, docker) needs a cluster.
RUNNABLE_PROGRAMS = frozenset({"awareness", "curl", "grep", "jq", "head", "tail", "sort", "wc", "cut"})
COMMAND_TIMEOUT_SECONDS = 180.0
# The ports a doc names for a forwarded service: those of the suite on a laptop (README).
LAPTOP_PORTS: Mapping[int, str] = {
    DEFAULT_GATEWAY_ADMIN_PORT: "gateway-admin",
    DEFAULT_GATEWAY_PORT: "gateway",
    **{port: service for service, port in DEFAULT_METRICS_PORTS.items()},
}
_LOCAL_URL = re.compile(r"http://127\.0\.0\.1:(\d+)")
_ANY_URL = re.compile(r"https?://[^\s\"']+")
_PLACEHOLDER = re.compile(r"<[a-z][\w-]*>")
_SUBSTITUTION = re.compile(r"\$\(\s*([\w.-]+)")
_SEPARATORS = frozenset({"|", "||", "&&", ";", "&"})


def problems(command: DocCommand) -> list[str]:
    """Why ``command`` cannot run against a local suite (empty when it can)."""
    found = [f"placeholder {p}" for p in _PLACEHOLDER.findall(command.text)]
    if command.language == "sql":
        return found
    for url in _ANY_URL.findall(command.text):
        port = _LOCAL_URL.match(url)
        if port is None or int(port.group(1)) not in LAPTOP_PORTS:
            found.append(f"URL {url} is not a forwarded port ({', '.join(map(str, sorted(LAPTOP_PORTS)))})")
    for program in _programs(command.text):
        if program not in RUNNABLE_PROGRAMS:
            found.append(f"{program} is not a program the test runs ({', '.join(sorted(RUNNABLE_PROGRAMS))})")
    return found


def _programs(text: str) -> list[str]:
    """The program of each simple command of a shell line (after variable assignments)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as exc:  # unbalanced quotes
        return [f"(unparsable: {exc})"]
    programs: list[str] = []
    expecting = True
    for token in tokens:
        if token in _SEPARATORS:
            expecting = True
        elif expecting and not re.fullmatch(r"\w+=.*", token):
            programs.append(token)
            expecting = False
    return programs + _SUBSTITUTION.findall(text)


@dataclass
class CommandResult:
    command: DocCommand
    returncode: int | None  # None: a background command still running
    stdout: str = ""
    stderr: str = ""
    process: subprocess.Popen[str] | None = None

    def describe(self) -> str:
        where = f" (beside {self.command.service})" if self.command.service else ""
        return (
            f"{self.command.id}{where}: {self.command.text}\n"
            f"exit {self.returncode}, expected {self.command.expect_exit}\n"
            f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"
        )


@dataclass
class DocSession:
    """One doc's commands, run in document order in ``workdir`` (files made by one command are there
    for the next, and the doc's named data blocks are written there first).

    Commands without a prefix run on "the operator's machine": only ``AWARENESS_GATEWAY_URL`` and
    ``AWARENESS_API_KEY`` set. With the kubectl-exec prefix they run with the service's own settings,
    as in its pod (signing also gets ``AWARENESS_PKI_DIR``, as the chart sets it). URLs on the
    laptop ports are pointed at the suite's ports; SQL runs in ``psql`` on the suite's database.
    Before each command the suite settles: every acknowledged event is in a signed checkpoint.
    """

    suite: ProcessSuite
    path: Path
    workdir: Path
    api_key: str
    commands: list[DocCommand] = field(init=False)
    results: dict[int, CommandResult] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.commands = fenced_commands(self.path)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name, content in named_files(self.path).items():
            (self.workdir / name).write_text(content, encoding="utf-8")

    def run_through(self, command: DocCommand) -> CommandResult:
        """The result of ``command``, after running every earlier command of the doc not yet run."""
        index = self.commands.index(command)
        for earlier in range(index + 1):
            if earlier not in self.results:
                self.results[earlier] = self._run(self.commands[earlier])
        return self.results[index]

    def close(self) -> None:
        for result in self.results.values():
            if result.process is not None and result.process.poll() is None:
                result.process.terminate()
                try:
                    result.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    result.process.kill()
                    result.process.wait(timeout=5)

    # -- one command ------------------------------------------------------------------------

    def env(self, service: str | None) -> dict[str, str]:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        if service is None:
            return {
                **outside_environment(),
                "PATH": path,
                "AWARENESS_GATEWAY_URL": self.suite.gateway_url,
                "AWARENESS_API_KEY": self.api_key,
            }
        env = {**self.suite.process_env(service), "PATH": path}
        if service == "signing":
            env["AWARENESS_PKI_DIR"] = str(self.suite.data_dir / "pki")
        return env

    def local_text(self, text: str) -> str:
        """``text`` with each forwarded laptop port replaced by the suite's own."""
        ports = {
            "gateway-admin": self.suite.gateway_admin_port,
            "gateway": self.suite.gateway_port,
            **self.suite.metrics_ports,
        }
        return _LOCAL_URL.sub(
            lambda m: (
                f"http://127.0.0.1:{ports[LAPTOP_PORTS[int(m.group(1))]]}"
                if int(m.group(1)) in LAPTOP_PORTS
                else m.group(0)
            ),
            text,
        )

    def settle(self, *, timeout: float = 60.0) -> None:
        def settled() -> bool:
            ingest = parse_metrics(self.suite.scrape("ingest"))
            tree = metric_value(ingest, "awareness_ingest_tree_size_leaves")
            signed = metric_value(ingest, "awareness_ingest_checkpoint_tree_size_leaves")
            return metric_value(ingest, "awareness_ingest_integrator_lag_leaves") == 0 and signed >= tree

        wait_until(settled, timeout=timeout, what="every acknowledged event in a signed checkpoint")

    def argv(self, command: DocCommand) -> list[str]:
        if command.language == "sql":
            url = make_url(self.suite.database_url or "").set(drivername="postgresql")
            dsn = url.render_as_string(hide_password=False)
            return ["psql", dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", command.text]
        return ["sh", "-c", self.local_text(command.text)]

    def _run(self, command: DocCommand) -> CommandResult:
        found = problems(command)
        if found:
            return CommandResult(command, returncode=-1, stderr="not runnable here: " + "; ".join(found))
        self.settle()
        env = self.env(command.service)
        if command.background:
            process = subprocess.Popen(
                self.argv(command),
                cwd=self.workdir,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            return CommandResult(command, returncode=process.poll(), process=process)
        completed = subprocess.run(
            self.argv(command),
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
        return CommandResult(command, completed.returncode, completed.stdout, completed.stderr)
