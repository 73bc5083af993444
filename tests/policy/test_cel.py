from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.policy.domain.cel import (
    RULE_MAX_BYTES,
    RULE_VARIABLES,
    ActivePolicy,
    EventFacts,
    PolicyEvaluator,
    SubjectFacts,
    Violation,
    WorkingHours,
    build_activation,
    compile_rule,
    evaluate_events,
    event_variables,
)
from services.policy.domain.errors import InvalidRuleError, PolicyError, RuleEvaluationError

UTC = datetime.UTC
WEDNESDAY_EVENING = datetime.datetime(2024, 5, 15, 22, 30, tzinfo=UTC)
WEDNESDAY_MORNING = datetime.datetime(2024, 5, 15, 10, 0, tzinfo=UTC)
SATURDAY_NOON = datetime.datetime(2024, 5, 18, 12, 0, tzinfo=UTC)
TOKYO = datetime.timezone(datetime.timedelta(hours=9))

AFTER_HOURS_CLICK = (
    'event.type == "phishing.clicked"\n'
    "  && event.outside_hours  // evenings, nights and weekends\n"
    "  && subject.training_overdue"
)


def make_event(
    *,
    event_type: str = "phishing.clicked",
    occurred_at: datetime.datetime = WEDNESDAY_EVENING,
    training_overdue: bool = True,
    details: dict[str, str] | None = None,
    event_id: str = "e1",
) -> EventFacts:
    return EventFacts(
        event_id=event_id,
        event_type=event_type,
        source="gophish",
        severity="HIGH",
        occurred_at=occurred_at,
        details=details if details is not None else {"campaign": "q2-invoice"},
        subject=SubjectFacts(
            events_24h=3, violations_30d=1, training_overdue=training_overdue, facts={"risk": 2.5}
        ),
    )


def policy(name: str, rule: str, *, version: int = 1, severity: str = "HIGH") -> ActivePolicy:
    return ActivePolicy(name=name, version=version, rule=rule, severity=severity, title=f"title of {name}")


# ------------------------------------------------------------------------------------------ compile


def test_valid_rule_compiles_and_evaluates() -> None:
    rule = compile_rule(AFTER_HOURS_CLICK)
    assert rule.source == AFTER_HOURS_CLICK
    assert rule.evaluate(build_activation(make_event())) is True
    assert rule.evaluate(build_activation(make_event(occurred_at=WEDNESDAY_MORNING))) is False


def test_every_declared_variable_is_usable_in_a_rule() -> None:
    activation = build_activation(make_event())
    for variable in RULE_VARIABLES:
        probe = {
            "string": f'{variable.name} != ""',
            "int": f"{variable.name} >= 0",
            "bool": f"{variable.name} || !{variable.name}",
            "timestamp": f'{variable.name} > timestamp("2000-01-01T00:00:00Z")',
        }.get(variable.cel_type, f"size({variable.name}) >= 0")
        assert compile_rule(probe).evaluate(activation) is True, variable.name


def refusal(source: str) -> InvalidRuleError:
    """The error ``compile_rule`` must refuse ``source`` with."""
    with pytest.raises(InvalidRuleError) as caught:
        compile_rule(source)
    return caught.value


def test_syntax_error_is_refused_with_message_and_position() -> None:
    source = "event.nope +"
    error = refusal(source)
    assert error.reason == "INVALID_RULE"
    assert error.grpc_code_name == "INVALID_ARGUMENT"
    assert "Syntax error" in error.message
    assert (error.line, error.column) == (1, len(source) + 1)  # the parser stops at end of input
    assert error.offset == len(source)
    assert error.metadata == {"line": "1", "column": str(len(source) + 1), "offset": str(len(source))}


def test_type_error_is_refused_with_position_of_the_operator() -> None:
    source = "event.type == 1"
    error = refusal(source)
    assert "no matching overload" in error.message
    assert error.offset is not None
    assert source[error.offset : error.offset + 2] == "=="


def test_position_on_a_later_line_maps_to_the_right_offset() -> None:
    source = 'event.type == "x"\n  && subject.nope > 1'
    error = refusal(source)
    assert "undeclared reference" in error.message
    assert error.line == 2
    assert error.offset is not None and error.column is not None
    assert error.offset == len('event.type == "x"\n') + error.column - 1
    assert source[error.offset - len("subject") : error.offset] == "subject"


@pytest.mark.parametrize("source", ["event.hour + 1", "event.details", 'event.type + "x"', "dyn(event.hour)"])
def test_non_boolean_rule_is_refused(source: str) -> None:
    assert refusal(source).reason == "RULE_NOT_BOOLEAN"


def test_rule_length_is_capped() -> None:
    def rule_of(total_bytes: int) -> str:
        prefix, suffix = 'event.type == "', '"'
        return prefix + "a" * (total_bytes - len(prefix) - len(suffix)) + suffix

    assert compile_rule(rule_of(RULE_MAX_BYTES)).source == rule_of(RULE_MAX_BYTES)
    assert refusal(rule_of(RULE_MAX_BYTES + 1)).reason == "RULE_TOO_LONG"


def test_excessive_nesting_is_refused_even_without_a_position() -> None:
    error = refusal("(" * 100 + "true" + ")" * 100)
    assert "recursion" in error.message
    assert error.line is None


# ---------------------------------------------------------------------------------------- runtime


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ('event.details["missing"] == "x"', "missing"),
        ("event.hour / 0 == 1", "divide by zero"),
        ('subject.facts["absent"] > 1.0', "absent"),
    ],
)
def test_runtime_failure_raises_rule_evaluation_error(source: str, fragment: str) -> None:
    rule = compile_rule(source)
    with pytest.raises(RuleEvaluationError) as caught:
        rule.evaluate(build_activation(make_event()))
    assert fragment in caught.value.message
    assert isinstance(caught.value, PolicyError)


def test_runaway_comprehension_is_stopped_by_the_iteration_budget() -> None:
    items = "[" + ",".join(str(number) for number in range(200)) + "]"
    rule = compile_rule(f"{items}.all(a, {items}.all(b, {items}.all(c, a + b + c >= 0)))")
    with pytest.raises(RuleEvaluationError) as caught:
        rule.evaluate(build_activation(make_event()))
    assert "budget" in caught.value.message.lower()


@pytest.mark.parametrize("chunk_size", [1, 2, 64])
def test_erroring_policy_is_recorded_while_the_others_still_evaluate(chunk_size: int) -> None:
    policies = [
        policy("always", "true"),
        policy("missing-key", 'event.details["missing"] == "x"'),
        policy("never", "false"),
        policy("after-hours", AFTER_HOURS_CLICK),
        policy("divide", "event.hour / (event.hour - event.hour) > 0", version=3),
    ]
    [result] = PolicyEvaluator(chunk_size=chunk_size).evaluate_events([make_event()], policies)
    assert result.event_id == "e1"
    assert [violation.policy for violation in result.violations] == ["always", "after-hours"]
    assert result.violations[0] == Violation(
        policy="always", version=1, severity="HIGH", title="title of always"
    )
    assert [(error.policy, error.version) for error in result.errors] == [("missing-key", 1), ("divide", 3)]
    assert "missing" in result.errors[0].message
    assert "divide by zero" in result.errors[1].message


def test_stored_rule_that_no_longer_compiles_is_an_error_for_that_policy_only() -> None:
    [result] = evaluate_events([make_event()], [policy("broken", "event.nope"), policy("fine", "true")])
    assert [violation.policy for violation in result.violations] == ["fine"]
    assert [error.policy for error in result.errors] == ["broken"]
    assert "does not compile" in result.errors[0].message


def test_rules_with_trailing_comments_are_combined_safely() -> None:
    policies = [policy(f"p{number}", f"event.hour == {number} // hour {number}") for number in range(24)]
    evaluator = PolicyEvaluator(chunk_size=8)
    policy_set = evaluator.policy_set(policies)
    assert policy_set.combined_chunk_count == 3  # the combined path is really taken
    [result] = evaluator.evaluate_events([make_event()], policies)
    assert [violation.policy for violation in result.violations] == ["p22"]
    assert result.errors == ()


def test_compiled_rules_are_cached_by_name_and_version_but_never_stale() -> None:
    evaluator = PolicyEvaluator()
    first = evaluator.compiled(policy("p", "event.hour == 22"))
    assert evaluator.compiled(policy("p", "event.hour == 22")) is first
    assert evaluator.compiled(policy("p", "event.hour == 22", version=2)) is not first
    changed = evaluator.compiled(policy("p", "event.hour == 3"))
    assert changed is not first
    assert changed.evaluate(build_activation(make_event())) is False


def test_program_cache_is_bounded() -> None:
    evaluator = PolicyEvaluator(program_cache_size=4)
    for number in range(10):
        evaluator.compiled(policy(f"p{number}", "true"))
    assert evaluator.cached_program_count == 4


# ----------------------------------------------------------------------------- the after-hours rule


@pytest.mark.parametrize(
    ("event", "violates"),
    [
        (make_event(), True),
        (make_event(occurred_at=SATURDAY_NOON), True),
        (make_event(occurred_at=datetime.datetime(2024, 5, 15, 19, 30, tzinfo=TOKYO)), False),
        (make_event(occurred_at=WEDNESDAY_MORNING), False),
        (make_event(training_overdue=False), False),
        (make_event(event_type="phishing.reported"), False),
    ],
    ids=[
        "weekday-night",
        "weekend",
        "local-evening-is-utc-working-hours",
        "working-hours",
        "training-done",
        "reported",
    ],
)
def test_phishing_click_outside_hours_with_overdue_training(event: EventFacts, violates: bool) -> None:
    policies = [policy("after-hours-click", AFTER_HOURS_CLICK, severity="CRITICAL")]
    [result] = evaluate_events([event], policies)
    assert result.errors == ()
    expected = [
        Violation(
            policy="after-hours-click", version=1, severity="CRITICAL", title="title of after-hours-click"
        )
    ]
    assert list(result.violations) == (expected if violates else [])


def test_derived_time_facts() -> None:
    local = datetime.timezone(datetime.timedelta(hours=-5))
    variables = event_variables(make_event(occurred_at=datetime.datetime(2024, 5, 18, 20, 15, tzinfo=local)))
    # 20:15 at UTC-5 on Saturday is 01:15 UTC on Sunday
    assert (variables["event.hour"], variables["event.weekday"], variables["event.outside_hours"]) == (
        1,
        6,
        True,
    )
    assert variables["event.severity_rank"] == 3


@pytest.mark.parametrize(
    ("moment", "inside"),
    [
        (datetime.datetime(2024, 5, 15, 8, 0, tzinfo=UTC), True),
        (datetime.datetime(2024, 5, 15, 17, 59, tzinfo=UTC), True),
        (datetime.datetime(2024, 5, 15, 18, 0, tzinfo=UTC), False),
        (datetime.datetime(2024, 5, 15, 7, 59, tzinfo=UTC), False),
        (datetime.datetime(2024, 5, 18, 10, 0, tzinfo=UTC), False),
    ],
)
def test_working_hours_boundaries(moment: datetime.datetime, inside: bool) -> None:
    assert WorkingHours().contains(moment) is inside
    assert event_variables(make_event(occurred_at=moment))["event.outside_hours"] is (not inside)


def test_custom_working_hours_change_outside_hours() -> None:
    night_shift = PolicyEvaluator(working_hours=WorkingHours(start_hour=20, end_hour=24))
    [result] = night_shift.evaluate_events([make_event()], [policy("after-hours-click", AFTER_HOURS_CLICK)])
    assert result.violations == ()


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make_event(occurred_at=datetime.datetime(2024, 5, 15, 22, 30))


# ------------------------------------------------------------- combined evaluation == one by one

RULE_POOL = [
    "true",
    "false",
    AFTER_HOURS_CLICK,
    'event.details["campaign"].startsWith("q2")',
    '"campaign" in event.details && event.details["campaign"].endsWith("invoice")',
    "subject.events_24h > 2 && event.severity_rank >= 3",
    "event.hour / (event.weekday - 2) >= 0",
    'subject.facts["risk"] > 2.0',
    'event.type.matches("^phishing[.]")',
    "event.details.exists(key, key.size() > 5)",
]


@settings(max_examples=40, deadline=None)
@given(
    rule_indexes=st.lists(st.integers(min_value=0, max_value=len(RULE_POOL) - 1), min_size=1, max_size=30),
    weekday_offset=st.integers(min_value=0, max_value=6),
    hour=st.integers(min_value=0, max_value=23),
    with_campaign=st.booleans(),
    chunk_size=st.integers(min_value=2, max_value=16),
)
def test_combined_evaluation_matches_one_by_one(
    rule_indexes: list[int], weekday_offset: int, hour: int, with_campaign: bool, chunk_size: int
) -> None:
    policies = [policy(f"p{position}", RULE_POOL[index]) for position, index in enumerate(rule_indexes)]
    moment = datetime.datetime(2024, 5, 13 + weekday_offset, hour, 0, tzinfo=UTC)
    event = make_event(occurred_at=moment, details={"campaign": "q2-invoice"} if with_campaign else {})
    combined = PolicyEvaluator(chunk_size=chunk_size).evaluate_events([event], policies)
    one_by_one = PolicyEvaluator(chunk_size=1).evaluate_events([event], policies)
    assert combined == one_by_one
    expected_errors = sum(
        1
        for index in rule_indexes
        if (not with_campaign and index == 3) or (weekday_offset == 2 and index == 6)
    )
    assert len(combined[0].errors) == expected_errors


def test_batch_returns_one_result_per_event_in_order() -> None:
    events = [
        make_event(event_id=f"e{number}", occurred_at=WEDNESDAY_EVENING + datetime.timedelta(hours=number))
        for number in range(5)
    ]
    results = evaluate_events(events, [policy("midnight", "event.hour == 0")])
    assert [result.event_id for result in results] == [f"e{number}" for number in range(5)]
    assert [bool(result.violations) for result in results] == [False, False, True, False, False]
