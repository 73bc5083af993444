from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.gdpr.domain.consent import (
    PURPOSES,
    ConsentAction,
    ConsentEvent,
    LawfulBasis,
    Purpose,
    current_state,
    current_states,
    get_purpose,
    new_consent_event,
)
from services.gdpr.domain.errors import GdprError, UnknownPurposeError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _event(purpose: str, action: ConsentAction, days: int, *, pseudonym: str = "psn_alice") -> ConsentEvent:
    return new_consent_event(
        pseudonym=pseudonym,
        purpose=purpose,
        action=action,
        at=T0 + timedelta(days=days),
        actor="dpo",
        reason="test",
    )


def test_defaults_follow_the_lawful_basis() -> None:
    assert current_state([], purpose="profiling") is True
    assert current_state([], purpose="analytics") is True
    assert current_state([], purpose="training_data") is False
    for purpose in PURPOSES.values():
        assert purpose.granted_by_default is (purpose.lawful_basis is LawfulBasis.LEGITIMATE_INTEREST)


def test_latest_event_by_time_decides() -> None:
    history = [_event("profiling", ConsentAction.WITHDRAW, 1), _event("profiling", ConsentAction.GRANT, 5)]
    assert current_state(history, purpose="profiling") is True
    history.append(_event("profiling", ConsentAction.WITHDRAW, 9))
    assert current_state(history, purpose="profiling") is False
    # Storage order does not matter, only the event time.
    assert current_state(list(reversed(history)), purpose="profiling") is False


def test_training_data_needs_an_explicit_grant() -> None:
    assert current_state([_event("training_data", ConsentAction.GRANT, 2)], purpose="training_data") is True


def test_equal_times_keep_recorded_order() -> None:
    grant, withdraw = (
        _event("analytics", ConsentAction.GRANT, 3),
        _event("analytics", ConsentAction.WITHDRAW, 3),
    )
    assert current_state([grant, withdraw], purpose="analytics") is False
    assert current_state([withdraw, grant], purpose="analytics") is True


def test_state_as_of_a_past_time() -> None:
    history = [
        _event("training_data", ConsentAction.GRANT, 10),
        _event("training_data", ConsentAction.WITHDRAW, 20),
    ]
    assert current_state(history, purpose="training_data", as_of=T0 + timedelta(days=5)) is False
    assert current_state(history, purpose="training_data", as_of=T0 + timedelta(days=10)) is True
    assert current_state(history, purpose="training_data", as_of=T0 + timedelta(days=15)) is True
    assert current_state(history, purpose="training_data", as_of=T0 + timedelta(days=25)) is False


def test_mixed_purposes_in_one_history_are_rejected() -> None:
    with pytest.raises(ValueError):
        current_state(
            [_event("profiling", ConsentAction.WITHDRAW, 1), _event("analytics", ConsentAction.GRANT, 2)],
            purpose="profiling",
        )


def test_current_states_covers_every_purpose() -> None:
    history = [
        _event("profiling", ConsentAction.WITHDRAW, 1),
        _event("training_data", ConsentAction.GRANT, 2),
    ]
    assert current_states(history) == {"profiling": False, "analytics": True, "training_data": True}


def test_unknown_purpose_is_rejected_with_invalid_argument() -> None:
    with pytest.raises(UnknownPurposeError) as caught:
        new_consent_event(pseudonym="psn_a", purpose="marketing", action="grant", at=T0, actor="dpo")
    assert isinstance(caught.value, GdprError)
    assert caught.value.grpc_code_name == "INVALID_ARGUMENT"
    assert caught.value.reason == "UNKNOWN_PURPOSE"
    assert caught.value.metadata == {"purpose": "marketing"}
    with pytest.raises(UnknownPurposeError):
        current_state([], purpose="marketing")
    with pytest.raises(UnknownPurposeError):
        get_purpose("marketing")


def test_custom_registry() -> None:
    registry = {"newsletter": Purpose("newsletter", "Mail", LawfulBasis.CONSENT, granted_by_default=False)}
    assert current_state([], purpose="newsletter", registry=registry) is False
    with pytest.raises(UnknownPurposeError):
        current_state([], purpose="profiling", registry=registry)


def test_invalid_action_and_naive_time_are_rejected() -> None:
    with pytest.raises(ValueError):
        new_consent_event(pseudonym="psn_a", purpose="profiling", action="maybe", at=T0, actor="dpo")
    with pytest.raises(ValueError):
        new_consent_event(
            pseudonym="psn_a", purpose="profiling", action="grant", at=datetime(2026, 1, 1), actor="dpo"
        )


def test_to_dict_is_json_ready_and_has_no_pseudonym() -> None:
    event = _event("profiling", ConsentAction.WITHDRAW, 1)
    assert event.to_dict() == {
        "purpose": "profiling",
        "action": "withdraw",
        "at": "2026-01-02T00:00:00+00:00",
        "actor": "dpo",
        "reason": "test",
    }
