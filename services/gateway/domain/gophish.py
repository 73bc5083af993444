"""GoPhish webhooks: signature check and mapping to Awareness events.

GoPhish signs the raw body: ``X-Gophish-Signature: sha256=<hex HMAC-SHA256(secret, body)>``.
Its events carry no id, so the event id is a UUIDv5 over (campaign, e-mail, message,
time): a re-delivered event gets the same id, and ingest's idempotent append answers with
the original receipt instead of a duplicate.
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
# A fixed namespace so every gateway replica derives the same ids.
EVENT_NAMESPACE: Final = uuid.UUID("6f2b1c0e-3d4a-5b6c-8d7e-9f0a1b2c3d4e")

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


def map_event(payload: Any) -> MappedEvent | None:
    """The Awareness event for a GoPhish event, or None for events Awareness does not record."""
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
    event_id = uuid.uuid5(EVENT_NAMESPACE, "\n".join((str(campaign), email, message, raw_time)))
    return MappedEvent(
        event_id=str(event_id),
        type=event_type,
        severity=severity,
        subject=email,
        occurred_at=occurred.ToJsonString(),
        summary=f"GoPhish: {message} (campaign {campaign})",
        details={"campaign_id": str(campaign), "gophish_message": message},
    )
