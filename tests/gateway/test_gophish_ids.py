"""GoPhish event ids are keyed by the shared webhook secret: every replica derives the same id,
and nobody without the secret can recompute one from a guessed e-mail address."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from services.gateway.domain import gophish
from tests.gateway.conftest import (
    GOPHISH_SECRET,
    Backends,
    Seen,
    running_gateway,
)

DELIVERY = {
    "campaign_id": 7,
    "email": "ivan@example.org",
    "time": "2024-05-01T10:00:00Z",
    "message": "Clicked Link",
}
# The namespace of the UUIDv5 ids the gateway derived before they were keyed.
OLD_NAMESPACE = uuid.UUID("6f2b1c0e-3d4a-5b6c-8d7e-9f0a1b2c3d4e")


async def _deliver(tmp_path: Path, backend: Backends, seen: Seen, secret: str) -> dict[str, object]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    async with running_gateway(tmp_path, backend, seen, AWARENESS_GOPHISH_SECRET=secret) as harness:
        body = json.dumps(DELIVERY).encode()
        response = await harness.client.post(
            "/v1/integrations/gophish",
            content=body,
            headers={
                "X-Gophish-Signature": gophish.sign(secret.encode(), body),
                "Content-Type": "application/json",
            },
        )
        assert response.status_code == 202, response.text
        answer: dict[str, object] = response.json()
        return answer


async def test_replicas_sharing_the_secret_derive_the_same_keyed_id(
    tmp_path: Path, backend: Backends, seen: Seen
) -> None:
    first = await _deliver(tmp_path / "replica-a", backend, seen, GOPHISH_SECRET)
    second = await _deliver(tmp_path / "replica-b", backend, seen, GOPHISH_SECRET)
    assert first["eventId"] == second["eventId"]
    assert first == second
    assert len(seen.events) == 1  # the second replica's delivery was a replay

    public = uuid.uuid5(
        OLD_NAMESPACE, "\n".join(("7", "ivan@example.org", "Clicked Link", str(DELIVERY["time"])))
    )
    assert first["eventId"] != str(public)

    other = await _deliver(tmp_path / "replica-c", backend, seen, "another-gophish-secret-0123456789ab")
    assert other["eventId"] != first["eventId"]
