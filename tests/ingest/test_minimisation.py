"""The registry of detail keys: every client type declares its keys, the split and the refusals,
and docs/data-minimisation.md presents exactly the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.ingest.domain.events import EVENT_TYPES
from services.ingest.domain.minimisation import (
    DETAIL_KEYS,
    DetailKind,
    declared_keys,
    free_text_keys,
    registry_markdown,
    split_details,
    undeclared_violations,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "data-minimisation.md"


def test_every_client_type_declares_keys_and_no_system_type_does() -> None:
    client = {t.name for t in EVENT_TYPES if not t.system}
    system = {t.name for t in EVENT_TYPES if t.system}
    assert set(DETAIL_KEYS) == client
    assert all(declared_keys(name) == frozenset() for name in system)


def test_what_the_analytics_needs_is_a_dimension() -> None:
    kinds = {
        name: DETAIL_KEYS["phishing.clicked"][name].kind for name in ("campaign_id", "template", "department")
    }
    assert set(kinds.values()) == {DetailKind.DIMENSION}
    assert DETAIL_KEYS["training.completed"]["training_module"].kind is DetailKind.DIMENSION
    assert DETAIL_KEYS["policy.acknowledged"]["policy_id"].kind is DetailKind.DIMENSION


def test_identifying_keys_are_never_dimensions() -> None:
    for keys in DETAIL_KEYS.values():
        for name in ("ip_address", "rid", "user_agent", "hostname", "actor", "device_serial", "file_name"):
            if name in keys:
                assert keys[name].kind is not DetailKind.DIMENSION, name


def test_split_separates_dimensions_from_personal_and_leaves_out_undeclared() -> None:
    details = {
        "campaign_id": "c-7",
        "template": "invoice",
        "rid": "r9x",
        "url": "https://x.test/a",
        "blob": "z",
    }
    dimensions, personal = split_details("phishing.clicked", details)
    assert dimensions == {"campaign_id": "c-7", "template": "invoice"}
    assert personal == {"rid": "r9x", "url": "https://x.test/a"}


def test_free_text_keys() -> None:
    assert free_text_keys("phishing.clicked") == {"url", "landing_url", "gophish_message"}
    assert free_text_keys("training.completed") == frozenset()
    assert free_text_keys("no.such_type") == frozenset()


def test_undeclared_keys_are_named_one_violation_each() -> None:
    violations = undeclared_violations(
        "training.completed", {"training_module": "m1", "zeta": "1", "alpha": "2"}, field_prefix="events[3]"
    )
    assert [v.field for v in violations] == ["events[3].details.alpha", "events[3].details.zeta"]
    assert "training_module" in violations[0].description
    assert "docs/data-minimisation.md" in violations[0].description
    assert undeclared_violations("training.completed", {"training_module": "m1"}, field_prefix="event") == []
    # An unknown type is refused for its type; no second violation per key.
    assert undeclared_violations("no.such_type", {"x": "1"}, field_prefix="event") == []


def test_every_description_is_a_sentence() -> None:
    for keys in DETAIL_KEYS.values():
        for key in keys.values():
            assert key.description.endswith(".") and key.description[0].isupper(), key


def test_the_document_presents_the_registry_as_enforced() -> None:
    text = DOC.read_text(encoding="utf-8")
    start, end = "<!-- registry:start -->\n", "<!-- registry:end -->"
    section = text[text.index(start) + len(start) : text.index(end)]
    if section != registry_markdown():
        pytest.fail(
            "docs/data-minimisation.md is out of date: replace its registry section with the output of "
            "`.venv/bin/python -m services.ingest.domain.minimisation`"
        )
    for event_type, keys in DETAIL_KEYS.items():
        assert f"`{event_type}`" in section
        for name in keys:
            assert f"| `{name}` |" in section
