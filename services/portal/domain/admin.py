"""What the admin pages show and accept: API keys as rows, the new-key form checked, and the health
of every service and breaker. Pure: no I/O."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from services.gateway.repository import KeyRecord
from services.runtime import auth
from services.runtime.errors import FieldViolation, InvalidArgumentError

# Every role a person or integration may hold; "service" is for services calling each other.
ASSIGNABLE_ROLES: Final = tuple(sorted(auth.ROLES - {"service"}))
MAX_NAME: Final = 200  # the key store's column
MAX_EXPIRY_DAYS: Final = 3650
SERVING: Final = "SERVING"
CLOSED: Final = "closed"


def role_permissions(role: str) -> str:
    """A role's permissions, as the checkbox's help text."""
    granted = auth.ROLE_PERMISSIONS.get(role, frozenset())
    if granted == auth.PERMISSIONS - {"internal:call"}:
        return "every permission"
    return ", ".join(sorted(granted))


@dataclass(frozen=True, slots=True)
class KeyRow:
    key_id: str
    name: str
    roles: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    state: str  # active, expired or revoked

    @property
    def revocable(self) -> bool:
        return self.state != "revoked"


def key_rows(
    records: Iterable[KeyRecord], *, now: datetime, state: Callable[[KeyRecord, datetime], str]
) -> list[KeyRow]:
    """The keys newest first; ``state`` is the CLI's own naming (active, expired, revoked)."""
    rows = [
        KeyRow(
            key_id=record.key_id,
            name=record.name,
            roles=tuple(sorted(record.roles)),
            created_at=record.created_at,
            expires_at=record.expires_at,
            state=state(record, now),
        )
        for record in records
    ]
    return sorted(rows, key=lambda row: (row.created_at, row.key_id), reverse=True)


@dataclass(frozen=True, slots=True)
class NewKeyForm:
    name: str
    roles: tuple[str, ...]
    expires_in_days: int | None
    form_id: str


def new_key_form(form: Mapping[str, list[str]]) -> NewKeyForm:
    """The key the creation form asks for; a choice the form never offers is refused here."""
    violations: list[FieldViolation] = []
    name = (form.get("name") or [""])[0].strip()
    if not name or len(name) > MAX_NAME:
        violations.append(FieldViolation("name", f"1 to {MAX_NAME} characters: who or what uses the key"))
    roles = tuple(sorted({role for role in form.get("roles", []) if role}))
    if not roles:
        violations.append(FieldViolation("roles", "choose at least one role"))
    elif not set(roles) <= set(ASSIGNABLE_ROLES):
        violations.append(FieldViolation("roles", f"only {', '.join(ASSIGNABLE_ROLES)}"))
    expiry_text = (form.get("expires_in_days") or [""])[0].strip()
    expires_in_days: int | None = None
    if expiry_text:
        try:
            expires_in_days = int(expiry_text)
        except ValueError:
            expires_in_days = 0
        if not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
            violations.append(
                FieldViolation("expires_in_days", f"a whole number of days from 1 to {MAX_EXPIRY_DAYS:,}")
            )
    form_id = (form.get("form_id") or [""])[0].strip()
    try:
        form_id = str(uuid.UUID(form_id))
    except ValueError:
        violations.append(FieldViolation("form_id", "the form's id is missing; reload the page"))
    if violations:
        raise InvalidArgumentError("the new key's form was not valid", violations=violations)
    return NewKeyForm(name=name, roles=roles, expires_in_days=expires_in_days, form_id=form_id)


class UsedForms:
    """The creation forms already used, for a while: a form sent again (a reload of the result
    page without JavaScript resends it) must not create a second key, nor show the first again.

    In process memory, so per gateway replica; a form resent to another replica would create a
    second key, which the list shows and an administrator can revoke."""

    def __init__(
        self,
        *,
        ttl_seconds: float = 3600.0,
        capacity: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._capacity = capacity
        self._clock = clock
        self._used: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def claim(self, form_id: str) -> str | None:
        """None when ``form_id`` is new, which claims it (at once, so a double click creates one key);
        else the id of the key it created, or "" while that is still being created."""
        now = self._clock()
        while self._used and next(iter(self._used.values()))[0] <= now - self._ttl:
            self._used.popitem(last=False)
        found = self._used.get(form_id)
        if found is not None:
            return found[1]
        self._used[form_id] = (now, "")
        while len(self._used) > self._capacity:
            self._used.popitem(last=False)
        return None

    def settle(self, form_id: str, key_id: str) -> None:
        """The key the claimed form created."""
        self._used[form_id] = (self._clock(), key_id)
        self._used.move_to_end(form_id)

    def release(self, form_id: str) -> None:
        """The claimed form created nothing (refused): it may be sent again."""
        self._used.pop(form_id, None)


@dataclass(frozen=True, slots=True)
class HealthRow:
    name: str
    health: str
    breaker: str

    @property
    def healthy(self) -> bool:
        return self.health == SERVING and self.breaker in (CLOSED, "n/a")


def health_rows(
    services: Iterable[str], health: Mapping[str, str], breakers: Mapping[str, str]
) -> list[HealthRow]:
    """One row per service, in the given order; a breaker never opened (no call made yet) is closed,
    as the gateway's /health/dependencies says."""
    return [
        HealthRow(name=service, health=health.get(service, "UNKNOWN"), breaker=breakers.get(service, CLOSED))
        for service in services
    ]
