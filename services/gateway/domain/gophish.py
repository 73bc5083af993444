"""GoPhish webhooks: signature check and mapping to Awareness events.

GoPhish signs the raw body: ``X-Gophish-Signature: sha256=<hex HMAC-SHA256(secret, body)>``.
Its events carry no id, so the event id is derived from (campaign, e-mail, message, time):
a re-delivered event gets the same id, and ingest's idempotent append answers with the
original receipt instead of a duplicate. The id is keyed (HMAC-SHA256 under a key derived
from the webhook secret, which every gateway replica shares), never a hash under a public
namespace: whoever knows a campaign and a time could otherwise test a guessed e-mail
address against a stored event id, even after that person's erasure.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf import timestamp_pb2

SIGNATURE_HEADER: Final = "x-gophish-signature"
SOURCE: Final = "gophish"
EVENT_ID_KEY_LABEL: Final = b"awareness.gateway.gophish.event-id.v1"

# GoPhish message -> (Awareness event type, severity name).
EVENT_TYPES: Final[dict[str, tuple[str, str]]] = {
    "Email Sent": ("phishing.email_sent", "SEVERITY_INFO"),
    "Email Opened": ("phishing.email_opened", "SEVERITY_LOW"),
    "Clicked Link": ("phishing.clicked", "SEVERITY_MEDIUM"),
    "Submitted Data": ("phishing.submitted_data", "SEVERITY_HIGH"),
    "Email Reported": ("phishing.reported", "SEVERITY_INFO"),
}


class WebhookError(ValueError):
    """The payload is not a GoPhish event the gateway can use; ``field`` names the culprit."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


def event_id_key(secret: bytes) -> bytes:
    """The event-id key of a webhook secret (domain-separated from the signature key)."""
    return hmac.digest(secret, EVENT_ID_KEY_LABEL, "sha256")


def keyed_event_id(key: bytes, *parts: str) -> str:
    """A UUID (RFC 9562 version 8) from HMAC-SHA256(key, parts joined by newlines)."""
    digest = bytearray(hmac.digest(key, "\n".join(parts).encode("utf-8"), "sha256")[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80  # version 8: custom
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC variant
    return str(uuid.UUID(bytes=bytes(digest)))


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_valid(secret: bytes, body: bytes, header: str | None) -> bool:
    """Constant-time comparison of the header with the expected HMAC."""
    if not header:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


@dataclass(frozen=True, slots=True)
class MappedEvent:
    event_id: str
    type: str
    severity: str
    subject: str
    occurred_at: str  # RFC 3339
    summary: str
    details: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        """The awareness.ingest.v1.Event in proto3 JSON."""
        return {
            "eventId": self.event_id,
            "type": self.type,
            "source": SOURCE,
            "subject": self.subject,
            "occurredAt": self.occurred_at,
            "severity": self.severity,
            "summary": self.summary,
            "details": self.details,
        }


def _text(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value.strip():
        raise WebhookError(name, f"{name} must be a non-empty string")
    return value.strip()


def map_event(payload: Any, *, id_key: bytes) -> MappedEvent | None:
    """The Awareness event for a GoPhish event, or None for events Awareness does not record.

    `id_key` is event_id_key(webhook secret).
    """
    if not isinstance(payload, dict):
        raise WebhookError("", "payload must be a JSON object")
    message = _text(payload, "message")
    mapping = EVENT_TYPES.get(message)
    if mapping is None:
        return None
    campaign = payload.get("campaign_id")
    if isinstance(campaign, bool) or not isinstance(campaign, int | str) or str(campaign).strip() == "":
        raise WebhookError("campaign_id", "campaign_id must be an integer")
    email = _text(payload, "email")
    raw_time = _text(payload, "time")
    occurred = timestamp_pb2.Timestamp()
    try:
        occurred.FromJsonString(raw_time)
    except ValueError as exc:
        raise WebhookError("time", "time must be an RFC 3339 timestamp with a timezone") from exc
    event_type, severity = mapping
    return MappedEvent(
        event_id=keyed_event_id(id_key, str(campaign), email, message, raw_time),
        type=event_type,
        severity=severity,
        subject=email,
        occurred_at=occurred.ToJsonString(),
        summary=f"GoPhish: {message} (campaign {campaign})",
        details={"campaign_id": str(campaign), "gophish_message": message},
    )
