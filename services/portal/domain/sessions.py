"""Portal sessions as rules: tokens, expiry and the CSRF check. No I/O."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

# A session's last-seen time is written at most this often: a page view is a read, not a write.
TOUCH_INTERVAL = timedelta(seconds=60)


class Expiry(Enum):
    IDLE = "idle"
    ABSOLUTE = "absolute"


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    idle: timedelta
    absolute: timedelta

    def expiry(self, *, created_at: datetime, last_seen_at: datetime, now: datetime) -> Expiry | None:
        """Why a session has ended by ``now``, or None while it lives."""
        if now - created_at >= self.absolute:
            return Expiry.ABSOLUTE
        if now - last_seen_at >= self.idle:
            return Expiry.IDLE
        return None

    def needs_touch(self, *, last_seen_at: datetime, now: datetime) -> bool:
        # Never later than a tenth of the idle timeout, so a short timeout still sees activity.
        return now - last_seen_at >= min(TOUCH_INTERVAL, self.idle / 10)


def new_token() -> str:
    """A session token or CSRF token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the store keeps of a session token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_matches(expected: str, presented: str | None) -> bool:
    return bool(expected) and presented is not None and hmac.compare_digest(expected, presented)


def safe_next(target: str | None, *, default: str) -> str:
    """Where to go after sign-in: a path inside the portal, never another site."""
    if not target or not target.startswith("/portal") or target.startswith("//") or "\\" in target:
        return default
    if any(ord(character) < 0x20 for character in target):
        return default
    return target
