"""Data minimisation, declared: which detail keys each event type may carry, and what each one is.

Every detail key of a client event type is declared here as one of three kinds:

- a *dimension*: non-personal, stored in clear beside the sealed fields (a version-3 record, whose
  leaf covers it), returned even when the personal fields are withheld or erased, and sent to the
  analytics service for aggregates (`campaign_id`, `template`, `training_module`, `policy_id`, ...);
- *personal*: sealed with the subject's data key like the subject itself, and gone with it;
- *free text*: personal and sealed, and first passed through the per-source redaction step
  (services.ingest.domain.redaction), which replaces e-mail addresses, phone numbers, IP addresses
  and URL query strings with typed placeholders. The summary is always free text.

A key that is not declared for the event's type is *undeclared*: refused with a field violation, or
dropped before anything is stored, per the `AWARENESS_INGEST_UNDECLARED_DETAILS` setting. The
registry is what docs/data-minimisation.md presents to a data-protection officer; a test keeps the
two in step.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from services.ingest.domain.errors import FieldViolation

__all__ = [
    "DETAIL_KEYS",
    "DetailKey",
    "DetailKind",
    "UndeclaredDetails",
    "declared_keys",
    "free_text_keys",
    "registry_markdown",
    "split_details",
    "undeclared_violations",
]


class DetailKind(enum.StrEnum):
    DIMENSION = "dimension"
    PERSONAL = "personal"
    FREE_TEXT = "free_text"


class UndeclaredDetails(enum.StrEnum):
    """What happens to a detail key the event's type does not declare."""

    REFUSE = "refuse"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class DetailKey:
    name: str
    kind: DetailKind
    description: str


def _dimension(name: str, description: str) -> DetailKey:
    return DetailKey(name, DetailKind.DIMENSION, description)


def _personal(name: str, description: str) -> DetailKey:
    return DetailKey(name, DetailKind.PERSONAL, description)


def _free_text(name: str, description: str) -> DetailKey:
    return DetailKey(name, DetailKind.FREE_TEXT, description)


# Keys every client event type may carry.
_COMMON = (
    _dimension(
        "department", "The organisational unit the source reports; groups smaller than k are suppressed."
    ),
    _dimension("location", "Site or office as the source names it (not a person's address)."),
    _personal("source_event_id", "The source's own id of the event; may encode the recipient."),
)

_CAMPAIGN = (
    _dimension("campaign_id", "Identifier of the simulated phishing campaign."),
    _dimension("campaign", "Display name of the campaign."),
    _dimension("template", "The e-mail template (lure) used."),
    _dimension("landing_page", "Name of the landing page of the campaign."),
    _dimension("sending_profile", "The sending profile (sender domain set-up) used."),
    _personal("rid", "GoPhish's per-recipient tracking id: links the event to one recipient."),
    _free_text("url", "The tracked URL; its query string is redacted."),
    _free_text("landing_url", "The landing URL as visited; its query string is redacted."),
    _personal("user_agent", "The browser's user agent."),
    _personal("ip_address", "The address the request came from."),
    _personal("message_id", "The e-mail's Message-ID."),
    _free_text("gophish_message", "GoPhish's event message."),
)

_TRAINING = (
    _dimension("training_module", "Identifier of the training module."),
    _dimension("course", "Display name of the training course."),
    _dimension("due_date", "When the training is due (YYYY-MM-DD)."),
    _dimension("score_band", "Result band of the module's quiz, e.g. pass or fail."),
)

_SIGN_IN = (
    _dimension("application", "The application signed in to."),
    _dimension("country", "Country of the sign-in, from the IdP's geolocation."),
    _dimension("reason", "Why the IdP flagged or refused the sign-in, as a code."),
    _dimension("method", "The authentication method, e.g. password, webauthn, sms."),
    _personal("ip_address", "The address the sign-in came from."),
    _personal("user_agent", "The client's user agent."),
    _personal("city", "City of the sign-in, from the IdP's geolocation."),
)

_ACCOUNT_CHANGE = (
    _dimension("method", "The factor or reset method concerned, e.g. totp, sms, self-service."),
    _dimension("reason", "Why the change was made, as a code."),
    _dimension("actor_type", "Who made the change: self, admin or automation."),
    _personal("actor", "The administrator who made the change, when not the subject."),
    _free_text("note", "The administrator's note."),
)

_DEVICE = (
    _dimension("device_class", "USB device class, e.g. mass-storage."),
    _dimension("vendor", "Device vendor."),
    _dimension("action", "What the endpoint agent did: allowed, blocked or audited."),
    _personal("device_serial", "The device's serial number."),
    _personal("hostname", "The computer's host name."),
)

_UPLOAD = (
    _dimension("destination_category", "Category of the destination, e.g. personal-cloud, webmail."),
    _dimension("channel", "How the data left: browser, sync-client, e-mail."),
    _dimension("size_band", "Size band of the upload, e.g. 1-10MB."),
    _dimension("action", "What the data-loss agent did: allowed, blocked or audited."),
    _personal("destination", "The destination host or address."),
    _personal("file_name", "The uploaded file's name."),
    _personal("hostname", "The computer's host name."),
)

_POLICY = (
    _dimension("policy_id", "Identifier of the acknowledged policy."),
    _dimension("policy_version", "The acknowledged version."),
)

_BY_TYPE: dict[str, tuple[DetailKey, ...]] = {
    "phishing.email_sent": _CAMPAIGN,
    "phishing.email_opened": _CAMPAIGN,
    "phishing.clicked": _CAMPAIGN,
    "phishing.submitted_data": _CAMPAIGN,
    "phishing.reported": (
        *_CAMPAIGN,
        _dimension("report_channel", "How the mail was reported, e.g. button, forward."),
        _dimension("simulated", "Whether the reported mail was a simulation: true or false."),
    ),
    "training.assigned": _TRAINING,
    "training.completed": _TRAINING,
    "training.overdue": _TRAINING,
    "policy.acknowledged": _POLICY,
    "mfa.disabled": _ACCOUNT_CHANGE,
    "password.reset": _ACCOUNT_CHANGE,
    "device.usb_inserted": _DEVICE,
    "data.external_upload": _UPLOAD,
    "login.unusual_location": _SIGN_IN,
    "login.failed": _SIGN_IN,
}

DETAIL_KEYS: Mapping[str, Mapping[str, DetailKey]] = MappingProxyType(
    {
        event_type: MappingProxyType({key.name: key for key in (*_COMMON, *keys)})
        for event_type, keys in _BY_TYPE.items()
    }
)

_DECLARED: dict[str, frozenset[str]] = {name: frozenset(keys) for name, keys in DETAIL_KEYS.items()}
_DIMENSIONS: dict[str, frozenset[str]] = {
    name: frozenset(k for k, d in keys.items() if d.kind is DetailKind.DIMENSION)
    for name, keys in DETAIL_KEYS.items()
}
_FREE_TEXT: dict[str, frozenset[str]] = {
    name: frozenset(k for k, d in keys.items() if d.kind is DetailKind.FREE_TEXT)
    for name, keys in DETAIL_KEYS.items()
}
_EMPTY: frozenset[str] = frozenset()


def declared_keys(event_type: str) -> frozenset[str]:
    """The detail keys the type declares (none for an unknown or system type)."""
    return _DECLARED.get(event_type, _EMPTY)


def free_text_keys(event_type: str) -> frozenset[str]:
    return _FREE_TEXT.get(event_type, _EMPTY)


def split_details(event_type: str, details: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(dimensions, personal) of a client event's declared details; undeclared keys are left out
    (the caller has refused or chosen to drop them)."""
    dimension_names = _DIMENSIONS.get(event_type, _EMPTY)
    declared = _DECLARED.get(event_type, _EMPTY)
    dimensions: dict[str, str] = {}
    personal: dict[str, str] = {}
    for name, value in details.items():
        if name in dimension_names:
            dimensions[name] = value
        elif name in declared:
            personal[name] = value
    return dimensions, personal


def undeclared_violations(
    event_type: str, details: Mapping[str, str], *, field_prefix: str
) -> list[FieldViolation]:
    """One violation per undeclared key, naming the keys the type declares."""
    declared = _DECLARED.get(event_type)
    if declared is None:
        return []  # an unknown type is refused for its type already
    unknown = sorted(name for name in details if name not in declared)
    if not unknown:
        return []
    allowed = ", ".join(sorted(declared))
    return [
        FieldViolation(
            f"{field_prefix}.details.{name}",
            f"is not a declared detail of {event_type}; declared: {allowed} (docs/data-minimisation.md)",
        )
        for name in unknown
    ]


_KIND_WORDS = {
    DetailKind.DIMENSION: "dimension (in clear)",
    DetailKind.PERSONAL: "personal (sealed)",
    DetailKind.FREE_TEXT: "free text (redacted, sealed)",
}


def registry_markdown() -> str:
    """The registry as the Markdown tables of docs/data-minimisation.md: one table per set of event
    types that declare the same keys, dimensions first."""
    groups: dict[tuple[DetailKey, ...], list[str]] = {}
    for event_type, declared in DETAIL_KEYS.items():
        groups.setdefault(tuple(declared.values()), []).append(event_type)
    order = list(DetailKind)
    sections: list[str] = []
    for keys, event_types in groups.items():
        lines = [
            "#### " + ", ".join(f"`{name}`" for name in event_types),
            "",
            "| key | kind | what it is |",
            "| --- | --- | --- |",
        ]
        for key in sorted(keys, key=lambda key: (order.index(key.kind), key.name)):
            lines.append(f"| `{key.name}` | {_KIND_WORDS[key.kind]} | {key.description} |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"


if __name__ == "__main__":
    print(registry_markdown(), end="")
