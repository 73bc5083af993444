"""The permission table, walked: every route and every gRPC method, as every role and as nobody.

The expected answer comes only from the contracts (each method's ``required_permission``)
and ``services.runtime.auth.ROLE_PERMISSIONS``: 401 without credentials, 403
MISSING_PERMISSION when the role lacks the permission, and neither when it has it. The
backend counts what reaches it, so a refusal must come from the gateway itself: a route
that forgot its check fails here even though the service would refuse the call too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, message_factory

from services.gateway.app import TIMESTAMP_QUERY, TIMESTAMP_RPC
from services.gateway.domain import gophish
from services.gateway.domain.descriptors import load_descriptor_set
from services.runtime import auth
from services.runtime.config import load_settings
from services.runtime.metrics import ServiceMetrics
from services.runtime.protos import UNDECLARED, allowed_callers, find_method, required_permission
from services.runtime.server import ServiceApp, build_context, create_server
from tests.conftest import INTERNAL_SECRET
from tests.gateway.conftest import (
    GOPHISH_SECRET,
    Harness,
    Seen,
    bearer,
    create_key,
    running_gateway,
    status_reason,
)
from tests.gateway.routes import concrete_path, contract_routes
from tests.gdpr.suite import in_process_suite

GATEWAY_ROLES = sorted(auth.ROLES - {"service"})  # no API key or token can hold "service"
NOBODY = "(nobody)"
INTERNAL = "internal:call"


def principal_of(role: str, method: str) -> auth.Principal:
    """A caller holding `role`; as the service role, one of the services the method lets call it."""
    callers = allowed_callers(method)
    if role == "service" and callers:
        return auth.Principal.for_service(sorted(callers)[0])
    return auth.Principal(subject=f"test:{role}", roles=frozenset({role}))


class RecordingBackend(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Serves every contract method with an empty answer, counting the calls that got through."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def service(self, handler_call_details: Any) -> Any:
        method: str = handler_call_details.method
        found = find_method(method)
        if found is None:
            return None
        request_class = message_factory.GetMessageClass(found.input_type)
        response_class = message_factory.GetMessageClass(found.output_type)
        calls = self.calls

        async def unary(request: Any, _context: Any) -> Any:
            calls[method] += 1
            return response_class()

        async def server_stream(request: Any, _context: Any) -> AsyncIterator[Any]:
            calls[method] += 1
            if False:  # an empty stream
                yield response_class()

        async def client_stream(requests: Any, _context: Any) -> Any:
            calls[method] += 1
            async for _ in requests:
                pass
            return response_class()

        async def bidi(requests: Any, _context: Any) -> AsyncIterator[Any]:
            calls[method] += 1
            async for _ in requests:
                yield response_class()

        kinds = {
            (False, False): (grpc.unary_unary_rpc_method_handler, unary),
            (False, True): (grpc.unary_stream_rpc_method_handler, server_stream),
            (True, False): (grpc.stream_unary_rpc_method_handler, client_stream),
            (True, True): (grpc.stream_stream_rpc_method_handler, bidi),
        }
        make, behaviour = kinds[(found.client_streaming, found.server_streaming)]
        return make(
            behaviour,
            request_deserializer=request_class.FromString,
            response_serializer=response_class.SerializeToString,
        )


@dataclass
class Backend:
    address: str
    recorder: RecordingBackend  # calls that reached a handler
    metrics: ServiceMetrics  # every call that reached the server, refused ones included

    def arrivals(self, method: str = "") -> float:
        return sum(
            sample.value
            for family in self.metrics.registry.collect()
            if family.name == "awareness_test_grpc_server_requests"
            for sample in family.samples
            if sample.name.endswith("_total") and (not method or sample.labels["method"] == method)
        )


@pytest.fixture
async def recording_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    """A real gRPC server with the runtime's real interceptor in front of the recorder."""
    settings = load_settings(
        "test", {"AWARENESS_DATA_DIR": str(tmp_path), "AWARENESS_INTERNAL_SECRET": INTERNAL_SECRET.decode()}
    )
    recorder = RecordingBackend()
    app = ServiceApp(
        name="test", service_names=[], register=lambda s: s.add_generic_rpc_handlers((recorder,))
    )
    context = build_context(settings, with_database=False)
    server, health, port = create_server(app, context, port=0)
    await server.start()
    try:
        yield Backend(address=f"127.0.0.1:{port}", recorder=recorder, metrics=context.metrics)
    finally:
        await health.shutdown()
        await server.stop(0)


@pytest.fixture
async def table_gateway(tmp_path: Path, recording_backend: Backend) -> AsyncIterator[Harness]:
    limits = {
        f"AWARENESS_GATEWAY_RATE_{scope}_PER_MIN": "1000000"
        for scope in ("PRINCIPAL", "IP", "GLOBAL", "AUTH_FAILURES")
    }
    async with running_gateway(tmp_path, recording_backend.address, Seen(), **limits) as harness:
        yield harness


def _expected(role: str, permission: str) -> str:
    if role == NOBODY:
        return "401"
    return "allowed" if permission in auth.ROLE_PERMISSIONS[role] else "403"


def _observed(response: Any) -> str:
    if response.status_code == 401:
        return "401"
    if response.status_code == 403:
        body = response.json()
        reason = status_reason(body)
        return "403" if reason == "MISSING_PERMISSION" else f"403 {reason}"
    return "allowed"


async def test_every_route_answers_as_the_permission_table_says_for_every_role_and_nobody(
    table_gateway: Harness, recording_backend: Backend
) -> None:
    state = table_gateway.app.state.gateway
    routes = contract_routes()
    # The walk covers every route the gateway serves: the router's, plus the raw-DER time-stamp.
    routed = {(r.http_method, r.template.source) for r in state.router.routes}
    assert routed == {(r.http_method, r.template.source) for r in routes if r.rpc != TIMESTAMP_RPC}
    assert any(r.rpc == TIMESTAMP_RPC for r in routes)
    credentials = {
        NOBODY: {},
        **{role: bearer(create_key(table_gateway.env, role)) for role in GATEWAY_ROLES},
    }

    wrong: list[str] = []
    for route in routes:
        assert route.permission in auth.PERMISSIONS - {INTERNAL}, route.rpc
        if route.rpc == TIMESTAMP_RPC:
            path, content, media = "/v1/timestamp", b"not DER", TIMESTAMP_QUERY
        else:
            path, content, media = concrete_path(route, state.router), b"{}", "application/json"
        for role, headers in credentials.items():
            before = recording_backend.arrivals(route.rpc)
            response = await table_gateway.client.request(
                route.http_method,
                path,
                content=content if route.body else b"",
                headers={**headers, "Content-Type": media},
            )
            expected, observed = _expected(role, route.permission), _observed(response)
            if observed == "403" and response.json()["details"][0]["metadata"] != {
                "permission": route.permission
            }:
                observed = "403 naming another permission"
            reached = recording_backend.arrivals(route.rpc) > before
            if expected != "allowed" and reached:
                observed += " (but the call reached the service)"
            if observed != expected:
                wrong.append(
                    f"{route.http_method} {route.template.source} as {role}: expected {expected}, "
                    f"got {observed} ({response.status_code})"
                )
    assert not wrong, "\n".join(wrong)


async def test_the_gophish_webhook_takes_its_signature_and_no_role(
    table_gateway: Harness, recording_backend: Backend
) -> None:
    body = b'{"campaign_id": 1, "email": "a@example.org", "time": "2024-05-01T10:00:00Z", "message": "x"}'
    for role in [NOBODY, *GATEWAY_ROLES]:
        headers = {} if role == NOBODY else bearer(create_key(table_gateway.env, role))
        response = await table_gateway.client.post("/v1/integrations/gophish", content=body, headers=headers)
        assert (response.status_code, status_reason(response.json())) == (401, "BAD_WEBHOOK_SIGNATURE"), role
    assert recording_backend.arrivals() == 0
    signed = {gophish.SIGNATURE_HEADER: gophish.sign(GOPHISH_SECRET.encode(), body)}
    response = await table_gateway.client.post("/v1/integrations/gophish", content=body, headers=signed)
    assert response.status_code not in (401, 403)


def _contract_methods() -> list[str]:
    names = []
    for file in load_descriptor_set().file:
        if not file.package.startswith("awareness.") or file.package.startswith("awareness.api."):
            continue
        for service in file.service:
            names += [f"/{file.package}.{service.name}/{method.name}" for method in service.method]
    return sorted(names)


async def _call(channel: grpc.aio.Channel, method: str, metadata: Any) -> grpc.StatusCode:
    found = find_method(method)
    assert found is not None
    request = message_factory.GetMessageClass(found.input_type)()
    response_class = message_factory.GetMessageClass(found.output_type)
    codec: dict[str, Any] = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": response_class.FromString,
    }

    async def no_requests() -> AsyncIterator[Any]:
        if False:
            yield request

    try:
        if found.client_streaming and found.server_streaming:
            async for _ in channel.stream_stream(method, **codec)(
                no_requests(), metadata=metadata, timeout=10
            ):
                pass
        elif found.client_streaming:
            await channel.stream_unary(method, **codec)(no_requests(), metadata=metadata, timeout=10)
        elif found.server_streaming:
            async for _ in channel.unary_stream(method, **codec)(request, metadata=metadata, timeout=10):
                pass
        else:
            await channel.unary_unary(method, **codec)(request, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_every_grpc_method_answers_as_the_permission_table_says_for_every_role(
    recording_backend: Backend,
) -> None:
    methods = _contract_methods()
    assert len(methods) > 40
    internal = [m for m in methods if required_permission(m) == INTERNAL]
    assert internal, "the contracts declare service-only methods"
    assert {r for r, p in auth.ROLE_PERMISSIONS.items() if INTERNAL in p} == {"service"}

    wrong: list[str] = []
    async with grpc.aio.insecure_channel(recording_backend.address) as channel:
        for method in methods:
            permission = required_permission(method)
            assert permission not in (None, "", UNDECLARED) and permission in auth.PERMISSIONS, method
            code = await _call(channel, method, metadata=None)
            if code != grpc.StatusCode.UNAUTHENTICATED:
                wrong.append(f"{method} without a credential: {code.name}")
            for role in sorted(auth.ROLES):
                principal = principal_of(role, method)
                metadata = auth.sign_metadata(secret=INTERNAL_SECRET, method=method, principal=principal)
                before = recording_backend.recorder.calls[method]
                code = await _call(channel, method, metadata)
                allowed = permission in auth.ROLE_PERMISSIONS[role]
                reached = recording_backend.recorder.calls[method] > before
                if allowed and (code != grpc.StatusCode.OK or not reached):
                    wrong.append(f"{method} as {role} (has {permission}): {code.name}")
                if not allowed and (code != grpc.StatusCode.PERMISSION_DENIED or reached):
                    wrong.append(f"{method} as {role} (lacks {permission}): {code.name}, reached={reached}")
    assert not wrong, "\n".join(wrong)


async def test_a_service_may_call_only_the_internal_methods_that_name_it(
    recording_backend: Backend,
) -> None:
    """Every internal method names its callers; any other service identity is refused before the
    method runs, whatever it holds, so scoring cannot unwrap data keys nor make ingest forget."""
    internal = [m for m in _contract_methods() if required_permission(m) == INTERNAL]
    named = {m.rsplit("/", 1)[1]: allowed_callers(m) for m in internal}
    assert all(named.values()), f"internal methods without allowed_callers: {named}"
    assert named["UnwrapDataKeys"] == named["GetSubjectKeys"] == frozenset({"ingest"})
    assert named["ForgetSubject"] == frozenset({"gdpr"})
    wrong: list[str] = []
    everyone = {"gateway", "ingest", "policy", "scoring", "signing", "gdpr"}
    async with grpc.aio.insecure_channel(recording_backend.address) as channel:
        for method in internal:
            callers = allowed_callers(method) or frozenset()
            for service in sorted(everyone):
                metadata = auth.sign_metadata(
                    secret=INTERNAL_SECRET, method=method, principal=auth.Principal.for_service(service)
                )
                before = recording_backend.recorder.calls[method]
                code = await _call(channel, method, metadata)
                reached = recording_backend.recorder.calls[method] > before
                if (service in callers) != (code == grpc.StatusCode.OK and reached):
                    wrong.append(f"{method} as {service}: {code.name}, reached={reached}")
        # Holding every permission (the service role) under a name that is not a service is refused too.
        unwrap = "/awareness.gdpr.v1.GdprService/UnwrapDataKeys"
        claimed = auth.Principal(subject="ingest", roles=frozenset({"service"}))
        metadata = auth.sign_metadata(secret=INTERNAL_SECRET, method=unwrap, principal=claimed)
        code = await _call(channel, unwrap, metadata)
        assert code == grpc.StatusCode.PERMISSION_DENIED
    assert not wrong, "\n".join(wrong)


def test_the_gdpr_audit_trail_is_readable_by_dpo_auditor_and_admin_only() -> None:
    gdpr = "/awareness.gdpr.v1.GdprService/"
    for method in ("ListAuditRecords", "ListErasureRecords", "GetErasureRecord"):
        permission = required_permission(gdpr + method)
        assert permission is not None
        readers = {role for role in GATEWAY_ROLES if permission in auth.ROLE_PERMISSIONS[role]}
        assert readers == {"admin", "auditor", "dpo"}, method


def _read_only(method: str) -> bool:
    found = find_method(method)
    assert found is not None
    return bool(found.GetOptions().idempotency_level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS)


async def test_every_real_service_refuses_exactly_the_roles_the_table_refuses(tmp_path: Path) -> None:
    """The five real services, each behind its own server: refusals for every method and role, and
    the read-only methods (safe to call with an empty request) answered for every role that may."""
    services = ("signing", "gdpr", "policy", "scoring", "ingest")
    wrong: list[str] = []
    # No bootstrap training: its thread would hold the event loop's shutdown for most of a minute.
    no_training = {"AWARENESS_SCORING_BOOTSTRAP_MODEL": "0"}
    async with in_process_suite(tmp_path / "suite", services=services, **no_training) as suite:
        for method in _contract_methods():
            permission = required_permission(method)
            service = method.split(".")[1]
            async with grpc.aio.insecure_channel(suite.addresses[service]) as channel:
                code = await _call(channel, method, metadata=None)
                if code != grpc.StatusCode.UNAUTHENTICATED:
                    wrong.append(f"{method} without a credential: {code.name}")
                for role in sorted(auth.ROLES):
                    allowed = permission in auth.ROLE_PERMISSIONS[role]
                    if allowed and not _read_only(method):
                        continue  # a real write with an empty request; the recorder walk covers it
                    principal = principal_of(role, method)
                    metadata = auth.sign_metadata(secret=INTERNAL_SECRET, method=method, principal=principal)
                    code = await _call(channel, method, metadata)
                    refused = code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
                    if allowed == refused or (not allowed and code != grpc.StatusCode.PERMISSION_DENIED):
                        wrong.append(
                            f"{method} as {role} ({'has' if allowed else 'lacks'} {permission}): {code.name}"
                        )
    assert not wrong, "\n".join(wrong)
