"""Consent (and objection) state per subject and purpose, derived from an append-only history.

Each purpose declares its lawful basis (GDPR Art. 6) and what holds when the history is empty:

* ``profiling`` (risk scoring of a person's security behaviour): legitimate interest, Art. 6(1)(f),
  as is usual for security monitoring. Granted unless withdrawn; a withdrawal is the Art. 21 objection.
* ``analytics`` (aggregate reporting on the awareness programme): legitimate interest, granted unless
  withdrawn.
* ``training_data`` (using a person's labelled events to train the risk model): not needed to protect
  the organisation today, so it rests on consent, Art. 6(1)(a): withheld until granted.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from services.gdpr.domain.errors import UnknownPurposeError


class LawfulBasis(enum.StrEnum):
    CONSENT = "consent"
    LEGITIMATE_INTEREST = "legitimate_interest"


class ConsentAction(enum.StrEnum):
    GRANT = "grant"
    WITHDRAW = "withdraw"


@dataclass(frozen=True, slots=True)
class Purpose:
    name: str
    description: str
    lawful_basis: LawfulBasis
    granted_by_default: bool


PURPOSES: Mapping[str, Purpose] = MappingProxyType(
    {
        purpose.name: purpose
        for purpose in (
            Purpose(
                name="profiling",
                description="Risk scoring of the person's security behaviour",
                lawful_basis=LawfulBasis.LEGITIMATE_INTEREST,
                granted_by_default=True,
            ),
            Purpose(
                name="analytics",
                description="Aggregate reporting on the awareness programme",
                lawful_basis=LawfulBasis.LEGITIMATE_INTEREST,
                granted_by_default=True,
            ),
            Purpose(
                name="training_data",
                description="Use of the person's labelled events to train the risk model",
                lawful_basis=LawfulBasis.CONSENT,
                granted_by_default=False,
            ),
        )
    }
)


def get_purpose(name: str, *, registry: Mapping[str, Purpose] = PURPOSES) -> Purpose:
    try:
        return registry[name]
    except KeyError:
        raise UnknownPurposeError(f"unknown consent purpose {name!r}", metadata={"purpose": name}) from None


@dataclass(frozen=True, slots=True)
class ConsentEvent:
    """One grant or withdrawal. ``pseudonym`` identifies the subject; ``actor`` who recorded it."""

    pseudonym: str
    purpose: str
    action: ConsentAction
    at: datetime
    actor: str
    reason: str = ""

    def __post_init__(self) -> None:
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise ValueError("consent event time must be timezone-aware")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (used in the export)."""
        return {
            "purpose": self.purpose,
            "action": self.action.value,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "reason": self.reason,
        }


def new_consent_event(
    *,
    pseudonym: str,
    purpose: str,
    action: ConsentAction | str,
    at: datetime,
    actor: str,
    reason: str = "",
    registry: Mapping[str, Purpose] = PURPOSES,
) -> ConsentEvent:
    """Validate the purpose (``UnknownPurposeError``) and action (``ValueError``) and build the event."""
    get_purpose(purpose, registry=registry)
    return ConsentEvent(
        pseudonym=pseudonym, purpose=purpose, action=ConsentAction(action), at=at, actor=actor, reason=reason
    )


def current_state(
    history: Iterable[ConsentEvent],
    *,
    purpose: str,
    as_of: datetime | None = None,
    registry: Mapping[str, Purpose] = PURPOSES,
) -> bool:
    """Whether ``purpose`` is granted: the latest event (by time, at or before ``as_of``) decides.

    With no event, the purpose's default applies (see the module docstring). Events with equal times keep
    their given order, so the later-recorded one wins. ``history`` must be one subject's, for ``purpose``.
    """
    default = get_purpose(purpose, registry=registry).granted_by_default
    relevant = []
    for event in history:
        if event.purpose != purpose:
            raise ValueError(f"history mixes purposes: {event.purpose!r} while deciding {purpose!r}")
        if as_of is None or event.at <= as_of:
            relevant.append(event)
    if not relevant:
        return default
    latest = max(enumerate(relevant), key=lambda indexed: (indexed[1].at, indexed[0]))[1]
    return latest.action is ConsentAction.GRANT


def current_states(
    history: Iterable[ConsentEvent],
    *,
    as_of: datetime | None = None,
    registry: Mapping[str, Purpose] = PURPOSES,
) -> dict[str, bool]:
    """State of every registered purpose for one subject, from its whole consent history."""
    by_purpose: dict[str, list[ConsentEvent]] = {name: [] for name in registry}
    for event in history:
        get_purpose(event.purpose, registry=registry)
        by_purpose[event.purpose].append(event)
    return {
        name: current_state(events, purpose=name, as_of=as_of, registry=registry)
        for name, events in by_purpose.items()
    }
