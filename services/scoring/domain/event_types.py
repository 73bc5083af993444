"""Registered event types known to the scoring features.

Kept small and importable until ingest publishes the canonical registry; the order matters, because the
index of a type is a model input (see `features.FEATURE_SCHEMA_VERSION`): append, never reorder.
"""

from __future__ import annotations

EVENT_TYPES: tuple[str, ...] = (
    "phishing.email_sent",
    "phishing.email_opened",
    "phishing.clicked",
    "phishing.submitted_data",
    "phishing.reported",
    "training.assigned",
    "training.completed",
    "training.overdue",
    "policy.acknowledged",
    "mfa.disabled",
    "password.reset",
    "device.usb_inserted",
    "data.external_upload",
    "login.unusual_location",
    "login.failed",
    "gdpr.erasure",
)
