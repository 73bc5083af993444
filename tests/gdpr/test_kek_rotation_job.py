"""The kek-rotation CronJob's work (services.gdpr.kekrotation) against a real gdpr service and database.

The Kubernetes API is a small in-test HTTP server on 127.0.0.1 (the one double here): it keeps the
gdpr keys Secret (with resourceVersion checks) and a Deployment whose rollouts finish at once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from awareness.gdpr.v1 import gdpr_pb2
from sqlalchemy import text

from services.gdpr.domain.errors import KeyUnwrapError
from services.gdpr.domain.keys import WrappedKey, data_key_aad
from services.gdpr.kekrotation import KubernetesApi, SecretRef, rotate_in_kubernetes
from services.gdpr.keysource import KeyMaterial, parse_keyring
from services.gdpr.service.transactions import GdprStore
from services.runtime import db
from tests.gdpr.conftest import running_harness
from tests.gdpr.test_service_keys_and_erasure import unique_subject
from tests.gdpr.test_service_retention_and_kek import issue, months_ago, readable

NAMESPACE = "awareness"
SECRET = "awareness-gdpr-keys"
DEPLOYMENT = "awareness-gdpr"


class FakeKubernetes:
    """Secrets and Deployments as the API server answers for them, nothing more."""

    def __init__(self, secret_data: dict[str, bytes]) -> None:
        self.secret: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": NAMESPACE, "resourceVersion": "1"},
            "data": {key: base64.b64encode(value).decode() for key, value in secret_data.items()},
        }
        self.deployment: dict[str, Any] = {
            "metadata": {"name": DEPLOYMENT, "generation": 1},
            "spec": {"replicas": 2, "template": {"metadata": {"annotations": {}}}},
            "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2},
        }
        self.restarts = 0
        self.secret_writes = 0
        self.lock = threading.Lock()

    def kek_ids(self) -> set[str]:
        return set(parse_keyring(base64.b64decode(self.secret["data"]["kek"])))


def _handler(fake: FakeKubernetes) -> type[BaseHTTPRequestHandler]:
    secret_path = f"/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}"
    deployment_path = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{DEPLOYMENT}"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            pass

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

        def do_GET(self) -> None:
            with fake.lock:
                if self.path == secret_path:
                    return self._answer(200, fake.secret)
                if self.path == deployment_path:
                    return self._answer(200, fake.deployment)
            return self._answer(404, {})

        def do_PUT(self) -> None:
            body = self._body()
            with fake.lock:
                if self.path != secret_path:
                    return self._answer(404, {})
                current = fake.secret["metadata"]["resourceVersion"]
                if body["metadata"].get("resourceVersion") != current:
                    return self._answer(409, {"reason": "Conflict"})
                body["metadata"]["resourceVersion"] = str(int(current) + 1)
                fake.secret = body
                fake.secret_writes += 1
                return self._answer(200, body)

        def do_PATCH(self) -> None:
            body = self._body()
            with fake.lock:
                if self.path != deployment_path:
                    return self._answer(404, {})
                assert self.headers["Content-Type"] == "application/merge-patch+json"
                annotations = body["spec"]["template"]["metadata"]["annotations"]
                fake.deployment["spec"]["template"]["metadata"]["annotations"].update(annotations)
                fake.deployment["metadata"]["generation"] += 1
                fake.deployment["status"]["observedGeneration"] = fake.deployment["metadata"]["generation"]
                fake.restarts += 1
                return self._answer(200, fake.deployment)

    return Handler


@pytest.fixture
def kek_file(tmp_path: Path) -> Path:
    """The gdpr keys Secret as the chart generates it: one KEK, base64 text of 32 random bytes."""
    path = tmp_path / "secret" / "kek"
    path.parent.mkdir()
    path.write_text(base64.b64encode(bytes(range(32))).decode() + "\n")
    (path.parent / "lookup-secret").write_text("l" * 44)
    return path


@pytest.fixture
def secret_env(kek_file: Path) -> dict[str, str]:
    """gdpr's secrets as the job's Secret mounts them: the KEK file it rewrites, and the lookup secret."""
    return {
        "AWARENESS_KEK_FILE": str(kek_file),
        "AWARENESS_LOOKUP_SECRET_FILE": str(kek_file.parent / "lookup-secret"),
    }


@pytest.fixture
def serve_fake() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(fake: FakeKubernetes) -> KubernetesApi:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        port = server.server_address[1]
        return KubernetesApi(
            base_url=f"http://127.0.0.1:{port}", namespace=NAMESPACE, token="t", ca_file=None
        )

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _rows(store_url: str) -> list[Any]:
    engine = db.create_db_engine(store_url, service="gdpr")
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT key_id, pseudonym, period, kek_id, nonce, wrapped FROM data_keys")
        ).all()
    engine.dispose()
    return list(rows)


def _unwrap(row: Any, keyring: Any) -> bytes:
    wrapped = WrappedKey(row.kek_id, bytes(row.nonce), bytes(row.wrapped))
    return bytes(
        keyring.unwrap(
            wrapped, aad=data_key_aad(pseudonym=row.pseudonym, period=row.period, key_id=row.key_id)
        )
    )


def _run_job(api: KubernetesApi, database_url: str) -> Any:
    engine = db.create_db_engine(database_url, service="gdpr")

    def open_store(material: KeyMaterial) -> GdprStore:
        return GdprStore(engine=engine, sessions=db.session_factory(engine), material=material)

    try:
        return rotate_in_kubernetes(
            api=api,
            ref=SecretRef(name=SECRET),
            deployment=DEPLOYMENT,
            open_store=open_store,
            poll_seconds=0.05,
        )
    finally:
        engine.dispose()


async def test_the_job_rotates_the_secret_rewraps_every_key_and_destroys_the_old_kek(
    tmp_path: Path, database_url: str, kek_file: Path, secret_env: dict[str, str], serve_fake: Any
) -> None:
    data_dir = tmp_path / "var"
    async with running_harness(data_dir, database_url, **secret_env) as before_rotation:
        keys = [
            await issue(before_rotation, unique_subject(), months_ago(m), "login.failed") for m in (0, 3, 7)
        ]
        plain = await readable(before_rotation, keys)
        url = before_rotation.database_url
    old_keyring = parse_keyring(kek_file.read_bytes())
    # A backup taken now: the wrapped keys as they are, all under the old KEK, which opens them.
    backup = _rows(url)
    assert {_unwrap(row, old_keyring) for row in backup} == set(plain.values())

    fake = FakeKubernetes({"kek": kek_file.read_bytes(), "lookup-secret": b"l" * 44})
    report = await asyncio.to_thread(_run_job, serve_fake(fake), url)

    (old_id,) = set(old_keyring)
    assert report.started_new_kek and report.destroyed_kek_ids == [old_id]
    assert report.keys_rewrapped == len(keys)
    # The Secret now holds the new KEK only; gdpr was restarted after the new KEK was added and after
    # the old one was deleted, so no pod keeps the old one in memory.
    assert fake.kek_ids() == {report.kek_id} and old_id not in json.dumps(fake.secret)
    assert base64.b64encode(old_keyring[old_id]).decode() not in json.dumps(fake.secret)
    assert (fake.restarts, fake.secret_writes) == (2, 2)
    new_keyring = parse_keyring(base64.b64decode(fake.secret["data"]["kek"]))
    assert {row.kek_id for row in _rows(url)} == {report.kek_id}
    # The old backup is useless with what remains: its KEK exists nowhere any more.
    for row in backup:
        with pytest.raises(KeyUnwrapError):
            _unwrap(row, new_keyring)
    # The live data is intact for gdpr restarted on the rotated Secret.
    kek_file.write_bytes(base64.b64decode(fake.secret["data"]["kek"]))
    async with running_harness(data_dir, database_url, **secret_env) as restarted:
        assert await readable(restarted, keys) == plain
        audit = await restarted.dpo.ListAuditRecords(gdpr_pb2.ListAuditRecordsRequest(action="kek.destroy"))
        assert [record.actor for record in audit.audit_records] == ["job:kek-rotation"]


async def test_an_interrupted_rotation_is_finished_not_started_again(
    tmp_path: Path, database_url: str, kek_file: Path, secret_env: dict[str, str], serve_fake: Any
) -> None:
    data_dir = tmp_path / "var"
    async with running_harness(data_dir, database_url, **secret_env) as running:
        keys = [await issue(running, unique_subject(), months_ago(m), "login.failed") for m in (0, 1)]
        plain = await readable(running, keys)
        url = running.database_url
    # The previous run wrote the new KEK and died: the Secret holds both, the new one active.
    both = parse_keyring(kek_file.read_bytes()).with_new_active()
    fake = FakeKubernetes({"kek": both.to_json().encode(), "lookup-secret": b"l" * 44})
    report = await asyncio.to_thread(_run_job, serve_fake(fake), url)
    assert not report.started_new_kek and report.kek_id == both.active_id
    assert fake.kek_ids() == {both.active_id} and fake.secret_writes == 1
    kek_file.write_bytes(base64.b64decode(fake.secret["data"]["kek"]))
    async with running_harness(data_dir, database_url, **secret_env) as restarted:
        assert await readable(restarted, keys) == plain
