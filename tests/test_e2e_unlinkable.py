"""Issue 15 item 2, done-when: after an erasure, no answer of the HTTP API tells a right guess of the
erased person from a wrong one.

Real signing, gdpr and ingest services (tests.gdpr.suite) behind the real gateway app, on SQLite and on
PostgreSQL with Redis (the gateway's rate limiter). The caller erases a person, then tries every oracle
it has: re-appending the erased events' ids with the right subject and with a wrong guess (one by one
and in a batch), a GoPhish redelivery of the person's delivery against one for an unknown address,
the label notes, the ListEvents subject filter, the export, and GetEvent of the erased events. Each
pair must answer with the same status and the same body, once the values that differ per request
anyway (ids, pseudonyms, times, the guessed address itself) are masked.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.gateway.app import create_gateway
from services.gateway.domain import gophish
from services.runtime.config import load_settings
from tests.conftest import IDENTITY_ENV
from tests.gateway.conftest import bearer, create_key
from tests.gdpr.dumps import pg_dump
from tests.gdpr.suite import in_process_suite

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ERASED = "vera.erased@example.org"
GUESS = "wrong.guess@example.org"
LIVING = "walt.living@example.org"
NOTE = "Vera says she clicked it from her home laptop"
SUMMARY = "Vera clicked the fake payroll link"
GOPHISH_SECRET = "gophish-e2e-secret-0123456789abcdef"
SERVICES = ("signing", "gdpr", "ingest")
QUIET = {
    "AWARENESS_INGEST_ENRICHMENT": "false",  # no policy or scoring service in this suite
    "AWARENESS_INGEST_INTEGRATE_INTERVAL_MS": "50",
    "AWARENESS_INGEST_CHECKPOINT_INTERVAL_MS": "100",
    "AWARENESS_GDPR_ERASURE_RETRY_SECONDS": "0.5",
}

_MASKS = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<id>"),
    (re.compile(r"psn_[A-Za-z0-9_-]+"), "<pseudonym>"),
    (re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})"), "<time>"),
]


def masked(response: httpx.Response, guess: str) -> tuple[int, Any]:
    """Status and body with what differs per request anyway masked (the guess included)."""
    text = response.text.replace(guess, "<guess>")
    for pattern, mask in _MASKS:
        text = pattern.sub(mask, text)
    try:
        return response.status_code, json.loads(text)
    except ValueError:
        return response.status_code, text


@dataclass
class Api:
    http: httpx.AsyncClient
    data_dir: Path
    integration: dict[str, str]
    analyst: dict[str, str]
    dpo: dict[str, str]
    auditor: dict[str, str]

    async def append(self, event: dict[str, Any]) -> httpx.Response:
        return await self.http.post("/v1/events", json=event, headers=self.integration)

    async def gophish(self, delivery: dict[str, Any]) -> httpx.Response:
        body = json.dumps(delivery).encode()
        headers = {
            "X-Gophish-Signature": gophish.sign(GOPHISH_SECRET.encode(), body),
            "Content-Type": "application/json",
        }
        return await self.http.post("/v1/integrations/gophish", content=body, headers=headers)

    async def export(self, subject: str) -> httpx.Response:
        return await self.http.post(
            "/v1/subjects:export",
            json={"subject": subject, "reason": "Art. 15 request DPO-7"},
            headers=self.dpo,
        )

    async def by_subject(self, subject: str) -> httpx.Response:
        return await self.http.get("/v1/events", params={"subject": subject}, headers=self.analyst)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(database URL, Redis URL): SQLite files and in-process limits, or PostgreSQL and Redis."""
    if request.param == "sqlite":
        return "", ""
    database_url: str = request.getfixturevalue("fresh_postgres_db")
    redis_url: str = request.getfixturevalue("redis_url")
    return database_url, redis_url


@pytest.fixture
async def api(tmp_path: Path, backend: tuple[str, str]) -> AsyncIterator[Api]:
    database_url, redis_url = backend
    async with in_process_suite(tmp_path, services=SERVICES, database_url=database_url, **QUIET) as suite:
        env = {
            "AWARENESS_DATA_DIR": str(tmp_path),
            **IDENTITY_ENV,
            "AWARENESS_GOPHISH_SECRET": GOPHISH_SECRET,
            "AWARENESS_GATEWAY_RATE_PRINCIPAL_PER_MIN": "100000",
            "AWARENESS_GATEWAY_RATE_IP_PER_MIN": "100000",
            **{f"AWARENESS_{name.upper()}_TARGET": address for name, address in suite.addresses.items()},
        }
        prefix = f"awareness-test:{uuid.uuid4().hex[:8]}:ratelimit"
        if database_url:
            env["DATABASE_URL"] = database_url
        if redis_url:
            env.update(REDIS_URL=redis_url, AWARENESS_GATEWAY_RATE_KEY_PREFIX=prefix)
        app = create_gateway(load_settings("gateway", env))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test")
        try:
            yield Api(
                http=client,
                data_dir=tmp_path,
                integration=bearer(create_key(env, "integration")),
                analyst=bearer(create_key(env, "analyst")),
                dpo=bearer(create_key(env, "dpo")),
                auditor=bearer(create_key(env, "auditor")),
            )
        finally:
            await client.aclose()
            await app.state.gateway.close()
            if redis_url:
                import redis

                store = redis.Redis.from_url(redis_url, socket_timeout=5)
                for key in store.scan_iter(match=f"{prefix}*", count=1000):
                    store.delete(key)
                store.close()


def event_json(subject: str, *, summary: str = SUMMARY, event_id: str | None = None) -> dict[str, Any]:
    return {
        "eventId": event_id or str(uuid.uuid4()),
        "type": "phishing.clicked",
        "source": "mail-gateway",
        "subject": subject,
        "occurredAt": (datetime.now(UTC) - timedelta(minutes=5)).isoformat().replace("+00:00", "Z"),
        "severity": "SEVERITY_HIGH",
        "summary": summary,
        "details": {"url": "https://payroll.example/verify"},
    }


def delivery(email: str) -> dict[str, Any]:
    return {"campaign_id": 31, "email": email, "time": "2026-11-30T09:15:00Z", "message": "Clicked Link"}


async def test_no_answer_tells_the_erased_person_from_a_wrong_guess(
    api: Api, backend: tuple[str, str]
) -> None:
    # --- before: the person's events, a labelled one with a note, a GoPhish delivery -------------------
    events = [event_json(ERASED), event_json(ERASED, summary="Vera reported the second mail")]
    for body in [*events, event_json(LIVING)]:
        answer = await api.append(body)
        assert answer.status_code == 200, answer.text
    labelled = await api.http.post(
        f"/v1/events/{events[0]['eventId']}:label",
        json={"label": "LABEL_TRUE_POSITIVE", "note": NOTE},
        headers=api.analyst,
    )
    assert labelled.status_code == 200, labelled.text
    assert labelled.json()["metadata"]["labelNote"] == NOTE
    first_delivery = await api.gophish(delivery(ERASED))
    assert first_delivery.status_code == 202, first_delivery.text
    before = (await api.by_subject(ERASED)).json()["events"]
    assert len(before) == 3

    erased = await api.http.post(
        "/v1/subjects:erase",
        json={"subject": ERASED, "reason": "Art. 17 request DPO-7", "requestId": str(uuid.uuid4())},
        headers=api.dpo,
    )
    assert erased.status_code == 200, erased.text

    # --- export and the subject filter, before any guess registered anyone ---------------------------
    right, wrong = masked(await api.export(ERASED), ERASED), masked(await api.export(GUESS), GUESS)
    assert right == wrong and right[0] == 404
    right, wrong = masked(await api.by_subject(ERASED), ERASED), masked(await api.by_subject(GUESS), GUESS)
    assert right == wrong and right[0] == 200

    # --- re-appending the erased events' ids: right subject against a wrong guess ---------------------
    for original in events:
        right = masked(await api.append({**original, "subject": ERASED}), ERASED)
        wrong = masked(await api.append({**original, "subject": GUESS}), GUESS)
        assert right == wrong, (right, wrong)
        assert right[0] == 409  # the id is taken, and nothing can compare the erased content any more
        again = masked(await api.append({**original, "subject": ERASED}), ERASED)
        assert again == right  # the second try as the first: no replay for the erased subject either
    batch = await api.http.post(
        "/v1/events:batchAppend",
        json={"events": [{**events[0], "subject": ERASED}, {**events[0], "subject": GUESS}]},
        headers=api.integration,
    )
    assert batch.status_code == 200, batch.text
    first, second = batch.json()["results"]
    assert first["error"] == second["error"]

    # Both guesses are now registered with gdpr (an append registers its subject): still alike.
    right, wrong = masked(await api.export(ERASED), ERASED), masked(await api.export(GUESS), GUESS)
    assert right == wrong and right[0] == 200
    assert right[1]["events"] == []
    right, wrong = masked(await api.by_subject(ERASED), ERASED), masked(await api.by_subject(GUESS), GUESS)
    assert right == wrong and right[1].get("events", []) == []

    # --- the erased events themselves: no personal field, no note, for any reader ---------------------
    for original in events:
        for who in (api.analyst, api.dpo, api.auditor):
            read = await api.http.get(f"/v1/events/{original['eventId']}", headers=who)
            assert read.status_code == 200, read.text
            body = read.json()
            assert body["personalDataState"] in {"PERSONAL_DATA_STATE_ERASED", "PERSONAL_DATA_STATE_WITHHELD"}
            assert not body.get("subject") and not body.get("summary") and not body.get("details")
            assert not body.get("metadata", {}).get("labelNote")
            assert ERASED not in read.text and "Vera" not in read.text
    relabel = await api.http.post(
        f"/v1/events/{events[0]['eventId']}:label",
        json={"label": "LABEL_FALSE_POSITIVE", "note": "try again"},
        headers=api.analyst,
    )
    assert relabel.status_code == 400 and "PERSONAL_DATA_ERASED" in relabel.text

    # --- GoPhish: redelivering the person's delivery against one for an unknown address ---------------
    right = masked(await api.gophish(delivery(ERASED)), ERASED)
    wrong = masked(await api.gophish(delivery(GUESS)), GUESS)
    assert right == wrong == (202, {"status": "accepted", "eventId": "<id>"})
    assert masked(await api.gophish(delivery(ERASED)), ERASED) == masked(
        await api.gophish(delivery(GUESS)), GUESS
    )

    # --- and the note, the summary and the address are nowhere on disk ---------------------------------
    database_url, _ = backend
    secrets = [NOTE.encode(), SUMMARY.encode(), ERASED.encode()]
    if database_url:
        dump = pg_dump(database_url)
        assert b"awareness_ingest" in dump
        assert not [value for value in secrets if value in dump]
    else:
        stores = list(api.data_dir.glob("*.db*"))
        assert stores
        assert not [(path.name, value) for path in stores for value in secrets if value in path.read_bytes()]
