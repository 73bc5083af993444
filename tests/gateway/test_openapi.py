"""The OpenAPI document generated from the descriptors."""

from __future__ import annotations

from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from awareness.ingest.v1 import ingest_pb2
from google.api import annotations_pb2
from google.protobuf import json_format

from services.gateway.domain.descriptors import (
    build_routes,
    collect_comments,
    import_generated_modules,
    load_descriptor_set,
)
from services.gateway.domain.openapi import build_openapi
from services.runtime.protos import required_permission


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    import_generated_modules()
    descriptor_set = load_descriptor_set()
    comments = collect_comments(descriptor_set)
    return build_openapi(build_routes(descriptor_set, comments), comments)


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    from schemathesis.specs.openapi.definitions import OPENAPI_31

    jsonschema.Draft202012Validator(OPENAPI_31).validate(document)
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_every_annotated_public_rpc_has_an_operation_with_its_permission(document: dict[str, Any]) -> None:
    descriptor_set = load_descriptor_set()
    expected: set[str] = set()
    for file in descriptor_set.file:
        for service in file.service:
            for method in service.method:
                rpc = f"/{file.package}.{service.name}/{method.name}"
                permission = required_permission(rpc)
                exposed = permission != "internal:call" and not method.client_streaming
                if method.options.HasExtension(annotations_pb2.http) and exposed:
                    expected.add(rpc)
    operations = {
        op["x-grpc-method"]: op
        for item in document["paths"].values()
        for op in item.values()
        if "x-grpc-method" in op
    }
    assert set(operations) == expected
    for rpc, operation in operations.items():
        assert operation["x-required-permission"] == required_permission(rpc)
        assert operation["security"] == [{"bearer": []}]
    assert "/awareness.gdpr.v1.GdprService/GetSubjectKeys" not in operations


def test_paths_include_custom_verbs_raw_routes_and_health(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert "post" in paths["/v1/policies/{policy}:approve"]
    assert "patch" in paths["/v1/policies/{policy}"]
    assert "application/timestamp-query" in paths["/v1/timestamp"]["post"]["requestBody"]["content"]
    assert "/v1/integrations/gophish" in paths
    for health in ("/health/live", "/health/ready"):
        assert paths[health]["get"]["security"] == []
    # Served on the admin port only (services.gateway.app.create_admin_app).
    assert "/metrics" not in paths and "/health/dependencies" not in paths
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearer"]["description"],
    }


def test_request_schema_has_required_fields_and_refuses_unknown_ones(document: dict[str, Any]) -> None:
    event = _schema(document, "awareness.ingest.v1.Event-Input")
    assert set(event["required"]) == {"type", "source", "subject", "occurredAt"}
    assert event["additionalProperties"] is False
    assert event["properties"]["occurredAt"]["format"] == "date-time"
    assert event["properties"]["subjectPseudonym"]["readOnly"] is True
    response_event = _schema(document, "awareness.ingest.v1.Event")
    assert "required" not in response_event  # proto3 JSON omits defaults in responses


def test_proto3_json_types(document: dict[str, Any]) -> None:
    receipt = _schema(document, "awareness.ingest.v1.Receipt")["properties"]
    assert receipt["leafIndex"]["type"] == "string"  # int64
    assert receipt["leafHash"]["format"] == "byte"
    assert receipt["receiveTime"]["format"] == "date-time"
    severity = _schema(document, "awareness.ingest.v1.Severity")
    assert "SEVERITY_HIGH" in severity["enum"]
    assert "SEVERITY_HIGH" in severity["description"]
    details = _schema(document, "awareness.ingest.v1.Event")["properties"]["details"]
    assert details["type"] == "object" and details["additionalProperties"] == {"type": "string"}


def test_descriptions_come_from_proto_comments(document: dict[str, Any]) -> None:
    operation = document["paths"]["/v1/events"]["post"]
    assert operation["summary"].startswith("Appends one event")
    assert "Idempotent" in operation["description"]
    assert (
        "Client-chosen UUID"
        in _schema(document, "awareness.ingest.v1.Event")["properties"]["eventId"]["description"]
    )


def test_query_parameters_use_json_names(document: dict[str, Any]) -> None:
    names = {p["name"] for p in document["paths"]["/v1/events"]["get"]["parameters"]}
    assert {"pageSize", "pageToken", "startTime", "minRiskScore", "label", "triageState"} <= names


def test_a_real_response_validates_against_its_schema(document: dict[str, Any]) -> None:
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    response = ingest_pb2.AppendEventResponse(
        receipt=ingest_pb2.Receipt(event_id="e", leaf_index=3, state=ingest_pb2.Receipt.STATE_INTEGRATED),
        replayed=True,
    )
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:doc", resource)
    validator = jsonschema.Draft202012Validator(
        {"$ref": "urn:doc#/components/schemas/awareness.ingest.v1.AppendEventResponse"}, registry=registry
    )
    validator.validate(json_format.MessageToDict(response))
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"receipt": {"leafIndex": 3}})  # int64 must be a string
