"""Every command in the operator's docs runs, as written, against a running suite.

The suite runs as separate processes on PostgreSQL and Redis, with a little traffic (and one
event of ada@example.org, the person docs/gdpr-guide.md exports and erases). Each fenced command
of the docs below is one test, run as a real process in document order (tests/support/doc_commands.py
says how a doc's conventions map to this machine), and must exit 0, or the status its
``# expect: exit N`` names. A block or command the test cannot run fails the check below, so no
doc command escapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench.loadgen import LoadConfig, run_load
from tests.resilience.harness import (
    PrivateRedis,
    ProcessSuite,
    http_json,
    metric_value,
    parse_metrics,
    wait_until,
)
from tests.support.doc_commands import (
    RUNNABLE_PROGRAMS,
    DocCommand,
    DocSession,
    fenced_commands,
    named_files,
    problems,
    unrunnable_blocks,
)
from tests.support.resources import temporary_database

REPO = Path(__file__).resolve().parents[1]
DOCS = tuple(REPO / "docs" / name for name in ("runbook.md", "upgrading.md", "gdpr-guide.md"))
# The role each doc tells its reader to hold; the rest run with an admin key.
DOC_ROLES = {"gdpr-guide.md": ("dpo",)}
ERASED_SUBJECT = "ada@example.org"


def doc_commands() -> list[DocCommand]:
    return [command for path in DOCS for command in fenced_commands(path)]


@pytest.fixture(scope="module")
def suite(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, request: pytest.FixtureRequest
) -> Iterator[ProcessSuite]:
    directory = tmp_path_factory.mktemp("docs-suite")
    with contextlib.ExitStack() as stack:
        if PrivateRedis.available():
            redis = PrivateRedis(directory=directory / "redis")
            redis.start()
            stack.callback(redis.kill)
            redis_url = redis.url
        else:
            redis_url = str(request.getfixturevalue("redis_url"))
        database = stack.enter_context(temporary_database(postgres_url))
        suite = ProcessSuite(data_dir=directory / "data", database_url=database, redis_url=redis_url)
        stack.callback(suite.stop_all)
        suite.start_all(timeout=180)
        drive_traffic(suite)
        yield suite


def drive_traffic(suite: ProcessSuite) -> None:
    """Events through the whole pipeline (stored, scored by the champion, evaluated, checkpointed), so
    that every metric the docs grep for has samples."""
    assert suite.wait_for_champion_model(timeout=120), suite.logs(["scoring"])
    key = suite.create_api_key(name="docs-traffic", roles=("admin",))
    config = LoadConfig(url=suite.gateway_url, api_key=key, rate=10, seconds=2, connections=4)
    result = asyncio.run(run_load(config))
    assert result.acknowledged, f"no event acknowledged: {result.summary()}"
    event = {
        "eventId": str(uuid.uuid4()),
        "type": "phishing.clicked",
        "source": "mail-gateway",
        "subject": ERASED_SUBJECT,
        "occurredAt": (datetime.now(UTC) - timedelta(minutes=5)).isoformat().replace("+00:00", "Z"),
        "severity": "SEVERITY_HIGH",
        "summary": "clicked the link of a simulated phishing mail",
        "details": {"campaign": "docs"},
    }
    status, body = http_json("POST", f"{suite.gateway_url}/v1/events", api_key=key, body=event)
    assert status == 200, body

    def enriched() -> bool:
        scoring = parse_metrics(suite.scrape("scoring"))
        policy = parse_metrics(suite.scrape("policy"))
        return (
            metric_value(scoring, "awareness_scoring_inference_duration_seconds_count") > 0
            and metric_value(policy, "awareness_policy_evaluation_duration_seconds_count") > 0
        )

    wait_until(enriched, timeout=120, what="the traffic scored and evaluated")


@pytest.fixture(scope="module")
def sessions(
    suite: ProcessSuite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, DocSession]]:
    opened: dict[str, DocSession] = {}
    try:
        for path in DOCS:
            roles = DOC_ROLES.get(path.name, ("admin",))
            workdir = tmp_path_factory.mktemp(path.stem)
            # The trusted machine of the runbook's key rotation holds the PKI the Secret was made from.
            shutil.copytree(suite.data_dir / "pki", workdir / "pki")
            key = suite.create_api_key(name=f"docs-{path.stem}", roles=roles)
            opened[path.name] = DocSession(suite=suite, path=path, workdir=workdir, api_key=key)
        yield opened
    finally:
        for session in opened.values():
            session.close()


@pytest.mark.parametrize("path", DOCS, ids=[path.name for path in DOCS])
def test_every_fenced_block_is_a_command_the_test_runs_or_data(path: Path) -> None:
    commands = fenced_commands(path)
    assert commands, f"{path.name} has no command to run"
    wrong = [
        f"{block.language or '(no language)'} block at line {block.first_line}"
        for block in unrunnable_blocks(path)
    ]
    wrong += [f"{command.id}: {'; '.join(problems(command))}" for command in commands if problems(command)]
    assert not wrong, "cannot run, move it to the text or give its local form:\n" + "\n".join(wrong)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("command", doc_commands(), ids=lambda command: command.id)
def test_the_doc_command_runs(command: DocCommand, sessions: dict[str, DocSession]) -> None:
    result = sessions[command.path.name].run_through(command)
    if command.background:
        assert result.process is not None and result.process.poll() in (None, command.expect_exit), (
            result.describe()
        )
        return
    assert result.returncode == command.expect_exit, result.describe()


def test_the_extractor_joins_continuations_and_reads_comments_background_and_the_exec_prefix(
    tmp_path: Path,
) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "Text.\n\n"
        "```sh\n"
        "# a whole-line comment\n"
        "kubectl -n awareness exec deploy/awareness-gdpr -- awareness gdpr verify-audit \\\n"
        "  --quiet   # expect: exit 1\n"
        "awareness verify --quiet &\n"
        "curl -s 'http://127.0.0.1:9401/metrics#x' | grep '#'  # a comment\n"
        "```\n\n"
        "```sql\n"
        "-- a comment\n"
        "SELECT 1\n"
        "  AS one;\n"
        "```\n\n"
        "```csv people.csv\n"
        "subject,department\n"
        "```\n"
    )
    commands = fenced_commands(doc)
    assert [(c.line, c.language, c.service, c.text, c.background, c.expect_exit) for c in commands] == [
        (5, "sh", "gdpr", "awareness gdpr verify-audit --quiet", False, 1),
        (7, "sh", None, "awareness verify --quiet", True, 0),
        (8, "sh", None, "curl -s 'http://127.0.0.1:9401/metrics#x' | grep '#'", False, 0),
        (13, "sql", None, "SELECT 1 AS one;", False, 0),
    ]
    assert named_files(doc) == {"people.csv": "subject,department\n"}
    assert not unrunnable_blocks(doc)
    assert not [problems(command) for command in commands if problems(command)]


def test_a_command_that_needs_a_cluster_or_a_placeholder_is_refused(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```sh\n"
        "kubectl -n awareness get pods\n"
        'curl -s "https://<gateway>/v1/erasures"\n'
        "awareness verify | helm status awareness\n"
        "```\n\n"
        "```\n"
        "awareness verify\n"
        "```\n"
    )
    assert [problems(command) for command in fenced_commands(doc)] == [
        [f"kubectl is not a program the test runs ({', '.join(sorted(RUNNABLE_PROGRAMS))})"],
        [
            "placeholder <gateway>",
            "URL https://<gateway>/v1/erasures is not a forwarded port (8080, 9400, 9401, 9402, 9403, 9404, "
            "9405, 9406)",
        ],
        [f"helm is not a program the test runs ({', '.join(sorted(RUNNABLE_PROGRAMS))})"],
    ]
    assert [block.first_line for block in unrunnable_blocks(doc)] == [8]
