"""The disaster-recovery drill (docs/disaster-recovery.md), on PostgreSQL, with the suite as processes.

Back up; append and erase; sign checkpoints (each archived before it is stored); append a tail that
no checkpoint covers (signing down); lose the database; restore; reconcile. Then every event
acknowledged since the backup is back or reported by id, the erased person is still erased, and the
log proves consistency from the checkpoint held before the disaster to the new head.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from services.ingest.domain.merkle import verify_consistency
from services.runtime.config import SERVICES
from services.runtime.db import schema_name
from tests.resilience.harness import ProcessSuite, http_json, metric_value, parse_metrics, wait_until
from tests.support.doc_commands import DocCommand, fenced_commands
from tests.support.resources import temporary_database

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

ERASED = "leaver@example.org"
DOC = Path(__file__).resolve().parents[1] / "docs" / "disaster-recovery.md"


@pytest.fixture
def drill(tmp_path: Path, postgres_url: str) -> Iterator[tuple[ProcessSuite, Path]]:
    archive = tmp_path / "archive"
    with temporary_database(postgres_url) as database:
        suite = ProcessSuite(
            data_dir=tmp_path / "data",
            database_url=database,
            extra_env={"AWARENESS_ARCHIVE_DIR": str(archive)},
        )
        try:
            yield suite, archive
        finally:
            suite.stop_all()


def _event(subject: str, index: int) -> dict[str, Any]:
    return {
        "eventId": str(uuid.uuid4()),
        "type": "phishing.clicked",
        "source": "dr-drill",
        "subject": subject,
        "occurredAt": (datetime.now(UTC) - timedelta(minutes=index)).isoformat().replace("+00:00", "Z"),
        "severity": "SEVERITY_MEDIUM",
        "summary": f"clicked link {index}",
    }


def _append(suite: ProcessSuite, key: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    receipts = []
    for event in events:
        status, body = http_json(
            "POST", f"{suite.gateway_url}/v1/events", api_key=key, body=event, timeout=30
        )
        assert status == 200, body
        receipts.append(body["receipt"])
    return receipts


def _lag(suite: ProcessSuite) -> float:
    return metric_value(parse_metrics(suite.scrape("ingest")), "awareness_ingest_integrator_lag_leaves")


def _doc_sections() -> dict[str, list[DocCommand]]:
    """The doc's commands by the section (## heading) they are in."""
    headings = [
        (number, line[3:].strip())
        for number, line in enumerate(DOC.read_text().splitlines(), start=1)
        if line.startswith("## ")
    ]
    sections: dict[str, list[DocCommand]] = {}
    for command in fenced_commands(DOC):
        heading = [title for number, title in headings if number < command.line][-1]
        sections.setdefault(heading, []).append(command)
    return sections


@dataclass
class DocRunner:
    """Runs the doc's commands as an operator would, in one working directory, section by section."""

    suite: ProcessSuite
    workdir: Path
    variables: dict[str, str]
    sections: dict[str, list[DocCommand]] = field(default_factory=_doc_sections)
    ran: list[str] = field(default_factory=list)

    def run(
        self, section: str, *, learn: Callable[[str], dict[str, str]] = lambda stdout: {}
    ) -> list[subprocess.CompletedProcess[str]]:
        """Run the section's commands; ``learn`` turns a command's output into variables for the next
        (what an operator reads off the screen)."""
        done = []
        for command in self.sections[section]:
            env = {**self.suite.base_env(), **self.variables}
            env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
            result = subprocess.run(
                ["bash", "-c", command.text],
                cwd=self.workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert result.returncode == command.expect_exit, f"{command.id}: {command.text}\n{result.stderr}"
            self.ran.append(command.id)
            self.variables.update(learn(result.stdout))
            done.append(result)
        return done


def _cli(suite: ProcessSuite, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=suite.base_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_restore_brings_back_every_checkpointed_event_keeps_erasures_and_never_forks(
    drill: tuple[ProcessSuite, Path], tmp_path: Path
) -> None:
    suite, archive = drill
    suite.start_all(timeout=180)
    key = suite.create_api_key(name="drill", roles=("admin", "dpo", "auditor"))
    work = tmp_path / "operator"
    work.mkdir()
    doc = DocRunner(
        suite,
        work,
        {"BACKUPS": str(tmp_path / "backups"), "GATEWAY": suite.gateway_url, "AUDITOR_KEY": key},
    )
    people = [f"person{n}@example.org" for n in range(8)]

    # --- before the backup: the leaver and others have events --------------------------------------
    _append(suite, key, [_event(p, i) for i, p in enumerate([*people, ERASED, ERASED])])
    tool = _cli(suite, "keys", "create", "--name", "old-tool", "--role", "analyst")
    tool_token, tool_id = tool.stdout.split()[0], tool.stderr.split()[2]
    wait_until(lambda: _lag(suite) == 0, timeout=60, what="the first events checkpointed")
    created = doc.run(
        "Back up", learn=lambda out: {"SET": json.loads(out)["created"]} if '"created"' in out else {}
    )
    backup_id = json.loads(created[0].stdout)["created"]

    # --- after it: more events, one erasure, checkpoints (archived as they are signed) ------------
    since_backup = _append(suite, key, [_event(p, 20 + i) for i, p in enumerate([*people, ERASED])])
    status, erasure = http_json(
        "POST",
        f"{suite.gateway_url}/v1/subjects:erase",
        api_key=key,
        body={"subject": ERASED, "reason": "Art. 17"},
    )
    assert status == 200, erasure
    assert _cli(suite, "keys", "revoke", tool_id).returncode == 0
    leaver_events = [r["eventId"] for r in since_backup[-1:]]
    wait_until(lambda: _lag(suite) == 0, timeout=60, what="the erasure checkpointed")
    doc.run("Keep what proves the log")
    held = json.loads((work / "checkpoint.json").read_text())

    # --- a tail no checkpoint covers: signing is down, ingest still acknowledges ---------------------
    suite.kill("signing")
    tail = _append(suite, key, [_event(p, 40 + i) for i, p in enumerate(people[:5])])
    acknowledged = [*since_backup, *tail]
    (work / "receipts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in acknowledged))

    # --- the disaster: every process stops and the database loses every schema ------------------
    suite.stop_all()
    assert suite.database_url is not None
    engine = create_engine(suite.database_url)
    with engine.begin() as connection:
        for service in (*SERVICES, "gateway"):
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema_name(service)}" CASCADE'))
    engine.dispose()

    # --- restore (refused without --yes); the services then refuse to start until reconciled --------
    doc.run("Restore")
    suite.start("ingest")
    assert suite.processes["ingest"].wait(timeout=60) == 78
    assert "reconcile" in suite.log_path("ingest").read_text()

    # --- an archive changed behind the log's back is refused, and the suite keeps refusing ---------
    tampered = tmp_path / "tampered"
    shutil.copytree(archive, tampered)
    last = sorted((tampered / "log").glob("*.jsonl.gz"))[-1]
    lines = gzip.decompress(last.read_bytes()).splitlines()
    header, leaf = json.loads(lines[0]), json.loads(lines[-1])
    leaf[1][header["columns"]["record"].index("source")] = "somebody-else"
    lines[-1] = json.dumps(leaf).encode()
    last.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    refused_archive = _cli(suite, "backup", "reconcile", "--archive", str(tampered))
    assert refused_archive.returncode == 3, refused_archive.stdout + refused_archive.stderr
    assert "re-hash" in refused_archive.stderr
    suite.start("gdpr")
    assert suite.processes["gdpr"].wait(timeout=60) == 78

    # --- reconcile ---------------------------------------------------------------------------------
    (reconciled,) = doc.run("Reconcile")
    report = json.loads(reconciled.stdout)
    assert report["reconciled"] and report["restored_from"] == backup_id and report["log"]["reimported"] > 0
    # The tail no checkpoint covered is reported by id, and nothing else is.
    assert sorted(report["receipts"]["not_recovered"]) == sorted(r["eventId"] for r in tail)
    assert report["erasures"]["replayed"] == [erasure["name"].removeprefix("erasures/")]
    assert report["log"]["consistency"]["old_size"] == int(held["treeSize"])
    # The key revoked after the backup came back with the restore, and is revoked again.
    assert report["api_keys"]["revoked_again"] == [tool_id]

    # --- the suite serves again -------------------------------------------------------------------
    suite.start_all(timeout=180)
    for receipt in since_backup:
        status, body = http_json("GET", f"{suite.gateway_url}/v1/events/{receipt['eventId']}", api_key=key)
        assert status == 200, body
        erased = receipt["eventId"] in leaver_events
        state = "PERSONAL_DATA_STATE_ERASED" if erased else "PERSONAL_DATA_STATE_AVAILABLE"
        assert body.get("personalDataState") == state, body
    for receipt in tail:
        status, _ = http_json("GET", f"{suite.gateway_url}/v1/events/{receipt['eventId']}", api_key=key)
        assert status == 404
    assert http_json("GET", f"{suite.gateway_url}/v1/events?pageSize=1", api_key=tool_token)[0] == 401
    status, exported = http_json(
        "POST", f"{suite.gateway_url}/v1/subjects:export", api_key=key, body={"subject": ERASED}
    )
    assert status == 404, exported

    # The public API proves the new head extends the checkpoint held before the disaster.
    old_size = int(held["treeSize"])
    wait_until(lambda: _latest(suite, key)["treeSize"] > old_size, timeout=60, what="a checkpoint past it")
    head = _latest(suite, key)
    new_size = int(head["treeSize"])
    status, proof = http_json(
        "GET",
        f"{suite.gateway_url}/v1/proofs:consistency?firstTreeSize={old_size}&secondTreeSize={new_size}",
        api_key=key,
    )
    assert status == 200, proof
    assert verify_consistency(
        old_size=old_size,
        new_size=new_size,
        old_root=base64.b64decode(held["rootHash"]),
        new_root=base64.b64decode(head["rootHash"]),
        proof=[base64.b64decode(node) for node in proof.get("hashes", [])],
    )
    wait_until(lambda: _lag(suite) == 0, timeout=60, what="the replayed erasure finished")
    doc.run("Check")
    # What the drill rested on: log segments and the erasure's tombstone, outside the database.
    assert list((archive / "log").glob("*.jsonl.gz"))
    assert [path.stem for path in (archive / "tombstones").glob("*.json")] == report["erasures"]["replayed"]
    # Every command of the page ran.
    assert sorted(doc.ran) == sorted(command.id for command in fenced_commands(DOC))


def _latest(suite: ProcessSuite, key: str) -> dict[str, Any]:
    status, checkpoint = http_json("GET", f"{suite.gateway_url}/v1/checkpoints/latest", api_key=key)
    assert status == 200, checkpoint
    assert isinstance(checkpoint, dict)
    checkpoint["treeSize"] = int(checkpoint["treeSize"])
    return checkpoint
