"""API key format and hashing.

A key is ``awk_<id>_<secret>``: the id (16 hex characters) finds the stored record, the
secret (32 random bytes, base64url) proves possession. Only SHA-256(secret) is stored.
A slow password hash (scrypt, argon2) defends low-entropy secrets against offline
guessing; a 256-bit random secret cannot be guessed either way, so a fast hash loses
nothing and keeps per-request verification in microseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

KEY_PREFIX: Final = "awk"
_ID_HEX_CHARS: Final = 16


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    secret: str

    @property
    def token(self) -> str:
        return f"{KEY_PREFIX}_{self.key_id}_{self.secret}"


def generate_key() -> NewKey:
    return NewKey(key_id=secrets.token_hex(_ID_HEX_CHARS // 2), secret=secrets.token_urlsafe(32))


def looks_like_api_key(token: str) -> bool:
    return token.startswith(f"{KEY_PREFIX}_")


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or len(key_id) != _ID_HEX_CHARS or not secret:
        return None
    if any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id, secret


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
