"""The permission table, walked: every route and every gRPC method, as every role and as nobody.

The expected answer comes only from the contracts (each method's ``required_permission``)
and ``services.runtime.auth.ROLE_PERMISSIONS``: 401 without credentials, 403
MISSING_PERMISSION when the role lacks the permission, and neither when it has it. The
backend counts what reaches it, so a refusal must come from the gateway itself: a route
that forgot its check fails here even though the service would refuse the call too.

Behind the gateway, every hop is mTLS: the gateway's certificate carries people's principals,
any other service's certificate acts as that service and nothing else. Each backend here is
served under its own service's name and certificate, as the gateway's channels require.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, message_factory
from grpc_status import rpc_status

from services.gateway.app import TIMESTAMP_QUERY, TIMESTAMP_RPC
from services.gateway.domain import gophish
from services.gateway.domain.descriptors import load_descriptor_set
from services.runtime import auth
from services.runtime.config import ALL_PROCESSES, SERVICES, load_settings
from services.runtime.errors import error_info
from services.runtime.identity import channel_options
from services.runtime.metrics import ServiceMetrics
from services.runtime.protos import UNDECLARED, allowed_callers, find_method, required_permission
from services.runtime.server import ServiceApp, build_context
from tests.conftest import IDENTITY_ENV, free_port
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
from tests.support.servers import RunningServer, identity_of, mtls_channel, start_server

GATEWAY_ROLES = sorted(auth.ROLES - {"service"})  # no API key or token can hold "service"
NOBODY = "(nobody)"
INTERNAL = "internal:call"


Metadata = Sequence[tuple[str, str]]


def service_of(method: str) -> str:
    """The service that serves ``method``: ``/awareness.gdpr.v1.GdprService/X`` is gdpr's."""
    return method.split(".")[1]


def credential_of(role: str, method: str) -> tuple[str, Metadata | None]:
    """The certificate and metadata of a caller holding ``role``.

    A person or integration is carried by the gateway's certificate, which names them. The service
    role is a service's own certificate and no metadata: one the method lets call it, or, where it
    names no callers, another service than the callee (which may act for anyone on its own port).
    """
    if role == "service":
        callers = allowed_callers(method)
        callee = service_of(method)
        caller = sorted(callers)[0] if callers else next(s for s in sorted(SERVICES) if s != callee)
        return caller, None
    return "gateway", auth.principal_metadata(auth.Principal(subject=f"test:{role}", roles=frozenset({role})))


class RecordingBackend(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Serves every contract method of ``service`` with an empty answer, counting the calls that got
    through and keeping the metadata of the last one."""

    def __init__(self, service: str, calls: Counter[str], metadata: dict[str, Metadata]) -> None:
        self._service = service
        self.calls = calls
        self.metadata = metadata

    def service(self, handler_call_details: Any) -> Any:
        method: str = handler_call_details.method
        found = find_method(method)
        if found is None or service_of(method) != self._service:
            return None
        request_class = message_factory.GetMessageClass(found.input_type)
        response_class = message_factory.GetMessageClass(found.output_type)
        calls, seen_metadata = self.calls, self.metadata

        def record(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            calls[method] += 1
            seen_metadata[method] = [
                (key, value) for key, value in context.invocation_metadata() or () if isinstance(value, str)
            ]

        async def unary(request: Any, context: Any) -> Any:
            record(context)
            return response_class()

        async def server_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            record(context)
            if False:  # an empty stream
                yield response_class()

        async def client_stream(requests: Any, context: Any) -> Any:
            record(context)
            async for _ in requests:
                pass
            return response_class()

        async def bidi(requests: Any, context: Any) -> AsyncIterator[Any]:
            record(context)
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


def _registering(recorder: RecordingBackend) -> Callable[[grpc.aio.Server], None]:
    return lambda server: server.add_generic_rpc_handlers((recorder,))


@dataclass
class Backend:
    """One recording server per service, each with that service's certificate."""

    addresses: dict[str, str]  # the mTLS port of each service
    plaintext: dict[str, str]  # its health port: no client certificate on it
    calls: Counter[str]  # calls that reached a handler
    metadata: dict[str, Metadata]  # the metadata of the last call of each method that reached one
    metrics: dict[str, ServiceMetrics]  # every call that reached a server, refused ones included

    def arrivals(self, method: str = "") -> float:
        return sum(
            sample.value
            for service, metrics in self.metrics.items()
            for family in metrics.registry.collect()
            if family.name == f"awareness_{service}_grpc_server_requests"
            for sample in family.samples
            if sample.name.endswith("_total") and (not method or sample.labels["method"] == method)
        )


@pytest.fixture
async def recording_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    """Real gRPC servers with the runtime's real interceptor in front of the recorders."""
    calls: Counter[str] = Counter()
    metadata: dict[str, Metadata] = {}
    running: list[RunningServer] = []
    plaintext: dict[str, str] = {}
    try:
        for service in SERVICES:
            health_port = free_port()
            env = {
                "AWARENESS_DATA_DIR": str(tmp_path / "backends" / service),
                **IDENTITY_ENV,
                "AWARENESS_HEALTH_PORT": str(health_port),
            }
            recorder = RecordingBackend(service, calls, metadata)
            app = ServiceApp(name=service, service_names=[], register=_registering(recorder))
            context = build_context(load_settings(service, env), with_database=False)
            running.append(await start_server(app, context))
            plaintext[service] = f"127.0.0.1:{health_port}"
        yield Backend(
            addresses={r.app.name: r.address for r in running},
            plaintext=plaintext,
            calls=calls,
            metadata=metadata,
            metrics={r.app.name: r.context.metrics for r in running},
        )
    finally:
        for server in running:
            await server.stop()


@dataclass
class Channels:
    """mTLS channels to the recorders (or real services), one per callee and caller, closed at once."""

    addresses: dict[str, str]
    opened: dict[tuple[str, str], grpc.aio.Channel] = field(default_factory=dict)

    def to(self, service: str, *, caller: str) -> grpc.aio.Channel:
        key = (service, caller)
        if key not in self.opened:
            self.opened[key] = mtls_channel(self.addresses[service], server=service, caller=caller)
        return self.opened[key]

    async def close(self) -> None:
        for channel in self.opened.values():
            await channel.close()
        self.opened.clear()


@pytest.fixture
async def channels(recording_backend: Backend) -> AsyncIterator[Channels]:
    opened = Channels(recording_backend.addresses)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def table_gateway(tmp_path: Path, recording_backend: Backend) -> AsyncIterator[Harness]:
    limits = {
        f"AWARENESS_GATEWAY_RATE_{scope}_PER_MIN": "1000000"
        for scope in ("PRINCIPAL", "IP", "GLOBAL", "AUTH_FAILURES")
    }
    async with running_gateway(tmp_path, recording_backend.addresses, Seen(), **limits) as harness:
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


async def _invoke(
    channel: grpc.aio.Channel, method: str, metadata: Metadata | None
) -> tuple[grpc.StatusCode, str]:
    """Call ``method`` with an empty request: the status code, and the ErrorInfo reason if any."""
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
        try:
            status = rpc_status.from_call(exc)
        except ValueError:
            status = None
        info = error_info(status) if status is not None else None
        return exc.code(), info.reason if info is not None else ""
    return grpc.StatusCode.OK, ""


async def _call(channel: grpc.aio.Channel, method: str, metadata: Metadata | None) -> grpc.StatusCode:
    code, _reason = await _invoke(channel, method, metadata)
    return code


def _without_client_certificate(address: str, service: str) -> grpc.aio.Channel:
    """TLS that trusts ``service``'s certificate but presents none of its own."""
    credentials = grpc.ssl_channel_credentials(root_certificates=identity_of(service).ca_file.read_bytes())
    return grpc.aio.secure_channel(address, credentials, options=channel_options(service))


async def test_every_grpc_method_answers_as_the_permission_table_says_for_every_role(
    recording_backend: Backend, channels: Channels
) -> None:
    methods = _contract_methods()
    assert len(methods) > 40
    assert {service_of(m) for m in methods} == set(SERVICES)
    internal = [m for m in methods if required_permission(m) == INTERNAL]
    assert internal, "the contracts declare service-only methods"
    assert {r for r, p in auth.ROLE_PERMISSIONS.items() if INTERNAL in p} == {"service"}

    wrong: list[str] = []
    async with AsyncExitStack() as stack:
        plaintext = {
            service: await stack.enter_async_context(grpc.aio.insecure_channel(address))
            for service, address in recording_backend.plaintext.items()
        }
        for method in methods:
            service = service_of(method)
            permission = required_permission(method)
            assert permission not in (None, "", UNDECLARED) and permission in auth.PERMISSIONS, method
            # No client certificate, no principal: only the plaintext health port takes such a call.
            before = recording_backend.calls[method]
            code, reason = await _invoke(plaintext[service], method, metadata=None)
            if (code, reason) != (grpc.StatusCode.UNAUTHENTICATED, "MISSING_CLIENT_CERTIFICATE"):
                wrong.append(f"{method} without a client certificate: {code.name} {reason}")
            if recording_backend.calls[method] > before:
                wrong.append(f"{method} without a client certificate reached the service")
            for role in sorted(auth.ROLES):
                caller, metadata = credential_of(role, method)
                before = recording_backend.calls[method]
                code = await _call(channels.to(service, caller=caller), method, metadata)
                allowed = permission in auth.ROLE_PERMISSIONS[role]
                reached = recording_backend.calls[method] > before
                if allowed and (code != grpc.StatusCode.OK or not reached):
                    wrong.append(f"{method} as {role} (has {permission}): {code.name}")
                if not allowed and (code != grpc.StatusCode.PERMISSION_DENIED or reached):
                    wrong.append(f"{method} as {role} (lacks {permission}): {code.name}, reached={reached}")
    assert not wrong, "\n".join(wrong)


async def test_a_service_may_call_only_the_internal_methods_that_name_it(
    recording_backend: Backend, channels: Channels
) -> None:
    """Every internal method names its callers; any other service, calling with its own certificate,
    is refused before the method runs, whatever it holds, so scoring cannot unwrap data keys nor
    make ingest forget."""
    internal = [m for m in _contract_methods() if required_permission(m) == INTERNAL]
    named = {m.rsplit("/", 1)[1]: allowed_callers(m) for m in internal}
    assert all(named.values()), f"internal methods without allowed_callers: {named}"
    assert named["UnwrapDataKeys"] == named["GetSubjectKeys"] == frozenset({"ingest"})
    assert named["ForgetSubject"] == frozenset({"gdpr"})
    wrong: list[str] = []
    for method in internal:
        callers = allowed_callers(method) or frozenset()
        for caller in sorted(ALL_PROCESSES):
            before = recording_backend.calls[method]
            code, reason = await _invoke(channels.to(service_of(method), caller=caller), method, None)
            reached = recording_backend.calls[method] > before
            if caller in callers:
                if code != grpc.StatusCode.OK or not reached:
                    wrong.append(f"{method} as {caller} (named): {code.name} {reason}, reached={reached}")
            elif (code, reason) != (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_ALLOWED") or reached:
                wrong.append(f"{method} as {caller} (not named): {code.name} {reason}, reached={reached}")
    assert not wrong, "\n".join(wrong)


async def test_scorings_certificate_cannot_unwrap_keys_or_make_ingest_forget_whoever_it_claims_to_be(
    recording_backend: Backend, channels: Channels
) -> None:
    """Take the scoring service's credential and call gdpr.UnwrapDataKeys and ingest.ForgetSubject
    directly, claiming any principal it likes: refused, and the method never runs."""
    claims: list[auth.Principal | None] = [
        None,  # as itself
        auth.Principal.for_service("ingest"),
        auth.Principal.for_service("gdpr"),
        auth.Principal.for_service("gateway"),
        auth.Principal(subject="ingest", roles=frozenset({"service"})),
        auth.Principal(subject="mallory", roles=frozenset({"admin"})),
        auth.Principal(subject="mallory", roles=frozenset({"dpo"})),
        auth.Principal(subject="mallory", roles=frozenset(auth.ROLES)),
    ]
    wrong: list[str] = []
    for method in (
        "/awareness.gdpr.v1.GdprService/UnwrapDataKeys",
        "/awareness.ingest.v1.IngestService/ForgetSubject",
    ):
        scoring = channels.to(service_of(method), caller="scoring")
        for claim in claims:
            metadata = auth.principal_metadata(claim) if claim is not None else None
            expected = "CALLER_NOT_ALLOWED" if claim is None else "PRINCIPAL_NOT_DELEGABLE"
            before = recording_backend.calls[method]
            code, reason = await _invoke(scoring, method, metadata)
            reached = recording_backend.calls[method] > before
            if (code, reason) != (grpc.StatusCode.PERMISSION_DENIED, expected) or reached:
                who = claim.subject if claim is not None else "itself"
                wrong.append(f"{method} as scoring claiming {who}: {code.name} {reason}, reached={reached}")
        # The one service the method names gets through with its own certificate: the refusals
        # above are about scoring's certificate, not a method that refuses everyone.
        (allowed,) = allowed_callers(method) or frozenset()
        before = recording_backend.calls[method]
        code = await _call(channels.to(service_of(method), caller=allowed), method, None)
        assert code == grpc.StatusCode.OK and recording_backend.calls[method] > before, (method, code)
        # Not even the gateway's certificate can name a service: a service proves itself.
        for claim in (
            auth.Principal.for_service(allowed),
            auth.Principal(subject=allowed, roles=frozenset({"service"})),
        ):
            before = recording_backend.calls[method]
            code, reason = await _invoke(
                channels.to(service_of(method), caller="gateway"), method, auth.principal_metadata(claim)
            )
            if (code, reason) != (grpc.StatusCode.PERMISSION_DENIED, "PRINCIPAL_NOT_DELEGABLE") or (
                recording_backend.calls[method] > before
            ):
                wrong.append(f"{method} as gateway claiming {claim.subject}: {code.name} {reason}")
    assert not wrong, "\n".join(wrong)


def _replayable(metadata: Metadata) -> list[tuple[str, str]]:
    """What a client can send again of metadata a server received (not gRPC's own headers)."""
    return [
        (key, value)
        for key, value in metadata
        if not key.startswith((":", "grpc-")) and key not in ("user-agent", "content-type", "te")
    ]


async def test_a_captured_gateway_credential_replayed_from_another_certificate_is_refused(
    table_gateway: Harness, recording_backend: Backend, channels: Channels
) -> None:
    """The metadata the gateway sent for an admin, replayed against another method of another service
    from any other service's certificate, is refused: the principal is believed only from the gateway."""
    list_events = "/awareness.ingest.v1.IngestService/ListEvents"
    admin = bearer(create_key(table_gateway.env, "admin"))
    response = await table_gateway.client.get("/v1/events", headers=admin)
    assert response.status_code == 200, response.text
    captured = _replayable(recording_backend.metadata[list_events])
    headers = dict(captured)
    assert headers.get(auth.ROLES_HEADER) == "admin" and headers.get(auth.PRINCIPAL_HEADER), captured

    # Proof that the capture is a working credential: from the gateway's certificate it is an admin's.
    for method in ("/awareness.gdpr.v1.GdprService/ExportSubject", list_events):
        before = recording_backend.calls[method]
        code = await _call(channels.to(service_of(method), caller="gateway"), method, captured)
        assert code == grpc.StatusCode.OK and recording_backend.calls[method] > before, method

    wrong: list[str] = []
    for method in _contract_methods():
        callee = service_of(method)
        if method == list_events:
            continue
        for caller in sorted(set(SERVICES) - {callee}):
            before = recording_backend.calls[method]
            code, reason = await _invoke(channels.to(callee, caller=caller), method, captured)
            reached = recording_backend.calls[method] > before
            if (code, reason) != (grpc.StatusCode.PERMISSION_DENIED, "PRINCIPAL_NOT_DELEGABLE") or reached:
                wrong.append(f"{method} replayed from {caller}: {code.name} {reason}, reached={reached}")
    assert not wrong, "\n".join(wrong)


def test_the_gdpr_audit_trail_is_readable_by_dpo_auditor_and_admin_only() -> None:
    gdpr = "/awareness.gdpr.v1.GdprService/"
    for method in ("ListAuditRecords", "ListErasureRecords", "GetErasureRecord"):
        permission = required_permission(gdpr + method)
        assert permission is not None
        readers = {role for role in GATEWAY_ROLES if permission in auth.ROLE_PERMISSIONS[role]}
        assert readers == {"admin", "auditor", "dpo"}, method


def _unary(method: str) -> bool:
    found = find_method(method)
    assert found is not None
    return not (found.client_streaming or found.server_streaming)


def _read_only(method: str) -> bool:
    found = find_method(method)
    assert found is not None
    return bool(found.GetOptions().idempotency_level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS)


async def test_every_real_service_refuses_exactly_the_roles_the_table_refuses(tmp_path: Path) -> None:
    """The six real services, each behind its own server: refusals for every method and role, and
    the read-only methods (safe to call with an empty request) answered for every role that may."""
    services = ("signing", "gdpr", "policy", "scoring", "analytics", "ingest")
    wrong: list[str] = []
    # No bootstrap training: its thread would hold the event loop's shutdown for most of a minute.
    no_training = {"AWARENESS_SCORING_BOOTSTRAP_MODEL": "0"}
    async with (
        in_process_suite(tmp_path / "suite", services=services, **no_training) as suite,
        AsyncExitStack() as stack,
    ):
        channels = Channels(dict(suite.addresses))
        stack.push_async_callback(channels.close)
        methods = _contract_methods()
        # Without a client certificate the handshake fails (the recorder walk checks each method).
        for service in services:
            unary = next(m for m in methods if service_of(m) == service and _unary(m))
            async with _without_client_certificate(suite.addresses[service], service) as anonymous:
                code = await _call(anonymous, unary, metadata=None)
            if code != grpc.StatusCode.UNAVAILABLE:
                wrong.append(f"{unary} without a client certificate: {code.name}")
        for method in methods:
            permission = required_permission(method)
            service = service_of(method)
            for role in sorted(auth.ROLES):
                allowed = permission in auth.ROLE_PERMISSIONS[role]
                if allowed and not _read_only(method):
                    continue  # a real write with an empty request; the recorder walk covers it
                caller, metadata = credential_of(role, method)
                code = await _call(channels.to(service, caller=caller), method, metadata)
                refused = code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
                if allowed == refused or (not allowed and code != grpc.StatusCode.PERMISSION_DENIED):
                    has = "has" if allowed else "lacks"
                    wrong.append(f"{method} as {role} ({has} {permission}): {code.name}")
    assert not wrong, "\n".join(wrong)
