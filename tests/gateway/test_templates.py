"""google.api.http path templates: parsing, matching, verbs and OpenAPI rendering."""

from __future__ import annotations

import pytest

from services.gateway.domain.templates import TemplateError, parse_template


def test_simple_variable_binds_the_full_resource_name() -> None:
    template = parse_template("/v1/{name=events/*}")
    assert template.match("/v1/events/abc") == {"name": "events/abc"}
    assert template.match("/v1/events") is None
    assert template.match("/v1/events/abc/receipt") is None
    assert template.match("/v1/policies/abc") is None


def test_custom_verb_is_split_from_the_last_segment() -> None:
    template = parse_template("/v1/{name=policies/*}:approve")
    assert template.verb == "approve"
    assert template.match("/v1/policies/p1:approve") == {"name": "policies/p1"}
    assert template.match("/v1/policies/p1:reject") is None
    assert template.match("/v1/policies/p1") is None


def test_literal_with_verb_and_no_variables() -> None:
    template = parse_template("/v1/subjects:erase")
    assert template.match("/v1/subjects:erase") == {}
    assert template.match("/v1/subjects") is None


def test_a_route_without_verb_does_not_swallow_a_verb_path() -> None:
    assert parse_template("/v1/events").match("/v1/events:batchAppend") is None


def test_nested_field_path_and_percent_decoding() -> None:
    template = parse_template("/v1/{policy.name=policies/*}")
    assert template.match("/v1/policies/a%2Fb%20c") == {"policy.name": "policies/a/b c"}


def test_multi_segment_wildcard_at_the_end() -> None:
    template = parse_template("/v1/{path=files/**}")
    assert template.match("/v1/files/a/b/c") == {"path": "files/a/b/c"}
    assert template.match("/v1/files") is None


def test_bare_variable_is_one_segment() -> None:
    template = parse_template("/v1/things/{id}")
    assert template.match("/v1/things/42") == {"id": "42"}
    assert template.match("/v1/things/") is None


@pytest.mark.parametrize(
    "bad", ["v1/events", "/v1/{name=events/*", "/v1/**/x", "/v1/{1bad}", "/v1/events:", "/v1/a b"]
)
def test_malformed_templates_are_refused(bad: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(bad)


def test_specificity_puts_verbs_and_literals_first() -> None:
    templates = [
        parse_template(t) for t in ("/v1/{name=events/*}", "/v1/events:batchAppend", "/v1/checkpoints/latest")
    ]
    ordered = sorted(templates, key=lambda t: t.specificity())
    assert ordered[0].source == "/v1/events:batchAppend"


def test_openapi_path_names_parameters_after_the_resource() -> None:
    assert parse_template("/v1/{name=policies/*}:approve").openapi_path() == (
        "/v1/policies/{policy}:approve",
        {"policy": "name"},
    )
    assert parse_template("/v1/{parent=models/*}/shadowScores").openapi_path() == (
        "/v1/models/{model}/shadowScores",
        {"model": "parent"},
    )
