"""The shared runtime over real sockets: errors, deadlines, breakers, auth, health, drain."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from sqlalchemy import create_engine

from services.runtime import auth, db
from services.runtime import server as runtime_server
from services.runtime.clients import ChannelFactory, call_peer
from services.runtime.config import load_settings
from services.runtime.devtls import ensure_identity_certificate
from services.runtime.errors import (
    AwarenessError,
    DependencyUnavailableError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnauthenticatedError,
    UnavailableError,
    error_info,
)
from services.runtime.identity import channel_options
from services.runtime.server import ServiceApp, ServiceContext, build_context
from tests.conftest import IDENTITY_ENV, free_port
from tests.support.servers import RunningServer, identity_of, mtls_channel, start_server, unary_app

Handler = Callable[[bytes, Any], Any]


class PolicyNotInReview(FailedPreconditionError):
    reason = "POLICY_NOT_IN_REVIEW"


def make_app(handlers: dict[str, Handler], *, ready: Callable[[], bool] = lambda: True) -> ServiceApp:
    return unary_app("test.Svc", handlers, ready=ready)


def make_settings(tmp_path: Path, **extra: str) -> Any:
    env = {
        "AWARENESS_DATA_DIR": str(tmp_path),
        **IDENTITY_ENV,
        "AWARENESS_HEALTH_PROBE_SECONDS": "0.1",
        **extra,
    }
    return load_settings("test", env)


async def start(app: ServiceApp, context: ServiceContext) -> RunningServer:
    return await start_server(app, context, health_loop=True)


def channels(address: str, **overrides: Any) -> ChannelFactory:
    options: dict[str, Any] = {
        "targets": {"test": address},
        "service": "gateway",
        "identity": auth.Principal(subject="alice", roles=frozenset({"analyst"})),
        "mtls": identity_of("gateway"),
        "timeout_seconds": 2.0,
        "attempts": 3,
        "breaker_fail_max": 2,
        "breaker_reset_seconds": 0.3,
    }
    options.update(overrides)
    return ChannelFactory(**options)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    servers: list[RunningServer] = []

    async def _run(app: ServiceApp) -> str:
        servers.append(await start(app, build_context(make_settings(tmp_path), with_database=False)))
        return servers[-1].address

    yield _run
    for running_server in servers:
        await running_server.stop()


async def test_domain_error_reaches_client_with_code_and_error_info(running: Any) -> None:
    async def refuse(_request: bytes, _context: Any) -> bytes:
        raise PolicyNotInReview("policy policies/p1 is not in review", metadata={"policy": "policies/p1"})

    factory = channels(await running(make_app({"Refuse": refuse})))
    call = factory.channel("test").unary_unary("/test.Svc/Refuse")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = rpc_status.from_call(caught.value)
    assert status is not None
    info = error_info(status)
    assert info is not None and info.reason == "POLICY_NOT_IN_REVIEW"
    assert info.metadata["policy"] == "policies/p1"
    await factory.close()


async def test_unexpected_exception_is_internal_without_stack_trace(running: Any) -> None:
    async def crash(_request: bytes, _context: Any) -> bytes:
        raise ZeroDivisionError("secret detail at /srv/app.py line 3")

    factory = channels(await running(make_app({"Crash": crash})))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await factory.channel("test").unary_unary("/test.Svc/Crash")(b"")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret detail" not in (caught.value.details() or "")
    assert "Traceback" not in (caught.value.details() or "")
    assert "reference" in (caught.value.details() or "")
    await factory.close()


async def test_unreachable_store_is_unavailable_not_internal(running: Any, tmp_path: Path) -> None:
    from sqlalchemy import text

    engine = db.create_db_engine(f"sqlite:///{tmp_path / 'gone' / 'nowhere' / 'x.db'}", service="test")
    (tmp_path / "gone" / "nowhere").rmdir()  # create_db_engine made the directory; take it away

    async def read(_request: bytes, _context: Any) -> bytes:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return b"unreachable"

    factory = channels(await running(make_app({"Read": read})), attempts=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await factory.channel("test").unary_unary("/test.Svc/Read")(b"")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    status = rpc_status.from_call(caught.value)
    assert status is not None
    info = error_info(status)
    assert info is not None and info.reason == "STORE_UNAVAILABLE"
    await factory.close()
    engine.dispose()


async def test_expired_deadline_surfaces_as_deadline_exceeded(running: Any) -> None:
    async def slow(_request: bytes, _context: Any) -> bytes:
        await asyncio.sleep(2)
        return b"late"

    factory = channels(await running(make_app({"Slow": slow})), timeout_seconds=0.2, attempts=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await factory.channel("test").unary_unary("/test.Svc/Slow")(b"")
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await factory.close()


async def test_breaker_opens_after_threshold_and_closes_after_reset(running: Any) -> None:
    calls = {"count": 0, "healthy": False}

    async def flaky(_request: bytes, context: Any) -> bytes:
        calls["count"] += 1
        if not calls["healthy"]:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        return b"ok"

    factory = channels(
        await running(make_app({"Flaky": flaky})), breaker_fail_max=2, breaker_reset_seconds=0.3
    )
    method = factory.channel("test").unary_unary("/test.Svc/Flaky")
    with pytest.raises(grpc.aio.AioRpcError):
        await method(b"")
    # The second failure reaches the threshold and trips the breaker.
    with pytest.raises((grpc.aio.AioRpcError, DependencyUnavailableError)):
        await method(b"")
    assert factory.breaker_states()["test"] == "open"
    reached_server = calls["count"]
    with pytest.raises(DependencyUnavailableError) as caught:
        await method(b"")
    assert caught.value.reason == "CIRCUIT_OPEN"
    assert calls["count"] == reached_server, "an open breaker must not call the server"
    calls["healthy"] = True
    await asyncio.sleep(0.4)
    assert await method(b"") == b"ok"
    assert factory.breaker_states()["test"] == "closed"
    await factory.close()


async def _refused_every_time(method: Any, request: bytes, code: grpc.StatusCode, *, times: int) -> None:
    """Each of ``times`` calls fails with ``code`` from the callee (never with an open breaker)."""
    for _ in range(times):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await method(request)
        assert caught.value.code() == code


async def test_business_errors_do_not_open_the_breaker(running: Any) -> None:
    async def invalid(_request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input")
        return b""

    factory = channels(await running(make_app({"Invalid": invalid})), breaker_fail_max=2)
    method = factory.channel("test").unary_unary("/test.Svc/Invalid")
    await _refused_every_time(method, b"", grpc.StatusCode.INVALID_ARGUMENT, times=5)
    assert factory.breaker_states()["test"] == "closed"
    await factory.close()


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN])
async def test_a_callee_failing_on_one_requests_content_keeps_the_breaker_closed(
    running: Any, code: grpc.StatusCode
) -> None:
    # One caller's poisoned content reaching a bug must not cut every other caller off.
    async def poisoned(request: bytes, context: Any) -> bytes:
        if request == b"poison":
            await context.abort(code, "boom")
        return b"ok"

    factory = channels(await running(make_app({"Poisoned": poisoned})), breaker_fail_max=2, attempts=1)
    method = factory.channel("test").unary_unary("/test.Svc/Poisoned")
    await _refused_every_time(method, b"poison", code, times=6)  # three times fail_max
    assert factory.breaker_states()["test"] == "closed"
    assert await method(b"fine") == b"ok"
    await factory.close()


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED],
)
async def test_failures_of_the_peer_open_the_breaker(running: Any, code: grpc.StatusCode) -> None:
    async def failing(_request: bytes, context: Any) -> bytes:
        await context.abort(code, "peer failure")
        return b""

    factory = channels(await running(make_app({"Failing": failing})), breaker_fail_max=2, attempts=1)
    method = factory.channel("test").unary_unary("/test.Svc/Failing")
    for _ in range(2):
        with pytest.raises((grpc.aio.AioRpcError, DependencyUnavailableError)):
            await method(b"")
    assert factory.breaker_states()["test"] == "open"
    await factory.close()


async def test_an_outage_behind_the_callee_does_not_open_the_callers_breaker(running: Any) -> None:
    # The callee is healthy and says, with an ErrorInfo, that its own dependency is down.
    async def dependency_down(_request: bytes, _context: Any) -> bytes:
        raise DependencyUnavailableError("gdpr is unavailable", reason="CIRCUIT_OPEN")

    factory = channels(await running(make_app({"Append": dependency_down})), breaker_fail_max=2, attempts=1)
    method = factory.channel("test").unary_unary("/test.Svc/Append")
    await _refused_every_time(method, b"", grpc.StatusCode.UNAVAILABLE, times=5)
    assert factory.breaker_states()["test"] == "closed"
    await factory.close()


async def test_non_idempotent_methods_are_not_retried(running: Any) -> None:
    calls = {"count": 0}

    async def unavailable(_request: bytes, context: Any) -> bytes:
        calls["count"] += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        return b""

    factory = channels(await running(make_app({"Write": unavailable})), attempts=3, breaker_fail_max=10)
    with pytest.raises(grpc.aio.AioRpcError):
        await factory.channel("test").unary_unary("/test.Svc/Write")(b"")
    assert calls["count"] == 1
    await factory.close()


async def test_streaming_calls_carry_the_internal_credential(running: Any) -> None:
    def who() -> bytes:
        principal = auth.current_principal()
        assert principal is not None
        return principal.subject.encode()

    async def server_stream(request: bytes, _context: Any) -> Any:
        for _ in range(2):
            yield request + b":" + who()

    async def client_stream(requests: Any, _context: Any) -> bytes:
        return b"+".join([item async for item in requests]) + b":" + who()

    async def bidi(requests: Any, _context: Any) -> Any:
        async for item in requests:
            yield item + b":" + who()

    generic = grpc.method_handlers_generic_handler(
        "test.Stream",
        {
            "Server": grpc.unary_stream_rpc_method_handler(server_stream),
            "Client": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        },
    )
    app = ServiceApp(
        name="test", service_names=["test.Stream"], register=lambda s: s.add_generic_rpc_handlers((generic,))
    )
    factory = channels(await running(app))
    channel = factory.channel("test")

    async def two() -> Any:
        yield b"a"
        yield b"b"

    assert [r async for r in channel.unary_stream("/test.Stream/Server")(b"x")] == [b"x:alice", b"x:alice"]
    assert await channel.stream_unary("/test.Stream/Client")(two()) == b"a+b:alice"
    assert [r async for r in channel.stream_stream("/test.Stream/Bidi")(two())] == [b"a:alice", b"b:alice"]
    await factory.close()


async def test_only_a_certificate_from_the_project_ca_reaches_a_method(running: Any, tmp_path: Path) -> None:
    async def echo(request: bytes, _context: Any) -> bytes:
        principal = auth.current_principal()
        assert principal is not None
        return principal.subject.encode()

    address = await running(make_app({"Echo": echo}))
    stranger = ensure_identity_certificate(tmp_path / "another-ca", "gateway")
    refused = [
        grpc.aio.insecure_channel(address),
        # TLS, trusting the server, but without a client certificate.
        grpc.aio.secure_channel(
            address,
            grpc.ssl_channel_credentials(root_certificates=identity_of("test").ca_file.read_bytes()),
            options=channel_options("test"),
        ),
        # A certificate naming the gateway, from a CA the suite does not trust.
        grpc.aio.secure_channel(
            address,
            grpc.ssl_channel_credentials(
                root_certificates=identity_of("test").ca_file.read_bytes(),
                private_key=stranger.key_file.read_bytes(),
                certificate_chain=stranger.chain_file.read_bytes(),
            ),
            options=channel_options("test"),
        ),
    ]
    for channel in refused:
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary("/test.Svc/Echo")(b"", timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    factory = channels(address)
    assert await factory.channel("test").unary_unary("/test.Svc/Echo")(b"") == b"alice"
    await factory.close()


async def test_only_the_gateway_may_act_for_another_principal(running: Any) -> None:
    async def echo(request: bytes, _context: Any) -> bytes:
        principal = auth.current_principal()
        assert principal is not None
        return f"{principal.subject}/{','.join(sorted(principal.roles))}".encode()

    address = await running(make_app({"Echo": echo}))
    alice = auth.principal_metadata(auth.Principal("alice", frozenset({"analyst"})))
    async with mtls_channel(address, server="test", caller="scoring") as scoring:
        assert await scoring.unary_unary("/test.Svc/Echo")(b"") == b"service:scoring/service"
        for claim in (alice, auth.principal_metadata(auth.Principal.for_service("ingest"))):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await scoring.unary_unary("/test.Svc/Echo")(b"", metadata=claim)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "PRINCIPAL_NOT_DELEGABLE" in str(rpc_status.from_call(caught.value))
    async with mtls_channel(address, server="test", caller="gateway") as gateway:
        assert await gateway.unary_unary("/test.Svc/Echo")(b"", metadata=alice) == b"alice/analyst"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            forged = auth.principal_metadata(auth.Principal.for_service("ingest"))
            await gateway.unary_unary("/test.Svc/Echo")(b"", metadata=forged)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The service itself (its CLI, beside it) may name the principal it acts for.
    async with mtls_channel(address, server="test", caller="test") as itself:
        assert await itself.unary_unary("/test.Svc/Echo")(b"", metadata=alice) == b"alice/analyst"


async def test_the_plaintext_health_port_serves_health_and_nothing_else(tmp_path: Path) -> None:
    async def echo(request: bytes, _context: Any) -> bytes:
        return request

    health_port = free_port()
    settings = make_settings(tmp_path, AWARENESS_HEALTH_PORT=str(health_port))
    running_server = await start(make_app({"Echo": echo}), build_context(settings, with_database=False))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as plain:
            reply = await health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await plain.unary_unary("/test.Svc/Echo")(b"x")
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "MISSING_CLIENT_CERTIFICATE" in str(rpc_status.from_call(caught.value))
    finally:
        await running_server.stop()


async def test_health_and_reflection(running: Any) -> None:
    address = await running(make_app({}))
    async with mtls_channel(address, server="test") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "test.Svc"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = set()
        async for response in responses:
            names |= {s.name for s in response.list_services_response.service}
        assert "test.Svc" in names


def _health_case(tmp_path: Path, url: str, break_db: Callable[[], None]) -> None:
    async def scenario() -> None:
        engine = db.create_db_engine(url, service="test")
        settings = make_settings(tmp_path)
        context = ServiceContext(
            settings=settings,
            metrics=build_context(settings, with_database=False).metrics,
            channels=channels("unused"),
            engine=engine,
        )
        running_server = await start(make_app({}, ready=lambda: db.ping(engine)), context)
        try:
            async with mtls_channel(running_server.address, server="test") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                request = health_pb2.HealthCheckRequest(service="test.Svc")
                assert (await stub.Check(request)).status == health_pb2.HealthCheckResponse.SERVING
                break_db()
                deadline = time.monotonic() + 10
                status = None
                while time.monotonic() < deadline:
                    status = (await stub.Check(request)).status
                    if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        break
                    await asyncio.sleep(0.1)
                assert status == health_pb2.HealthCheckResponse.NOT_SERVING
                # Liveness ("") stays SERVING: an outage makes the pod unready, not restarted.
                live = await stub.Check(health_pb2.HealthCheckRequest(service=""))
                assert live.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await running_server.stop()  # disposes the engine too

    asyncio.run(scenario())


def test_health_turns_not_serving_when_sqlite_store_goes_away(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    url = f"sqlite:///{store / 'test.db'}"
    sqlite3.connect(store / "test.db").close()  # a migrated store exists before the service starts

    def remove_store() -> None:
        for item in store.iterdir():
            item.unlink()
        store.rmdir()

    _health_case(tmp_path, url, remove_store)


@pytest.mark.postgres
def test_health_turns_not_serving_when_postgres_database_goes_away(tmp_path: Path, postgres_url: str) -> None:
    name = f"awareness_health_{os.getpid()}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = admin.url.set(database=name).render_as_string(hide_password=False)

    def drop_database() -> None:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')

    try:
        _health_case(tmp_path, url, drop_database)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _test_channel(address: str) -> grpc.Channel:
    return grpc.secure_channel(
        address, identity_of("test").channel_credentials(), options=channel_options("test")
    )


def test_sigterm_drains_in_flight_calls(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "AWARENESS_DATA_DIR": str(tmp_path),
        **IDENTITY_ENV,
        "AWARENESS_GRPC_PORT": str(port),
        "AWARENESS_METRICS_PORT": "0",
        "AWARENESS_SHUTDOWN_GRACE_SECONDS": "10",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.runtime.slow_server"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with _test_channel(address) as probe:
                try:
                    health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    break
                except grpc.RpcError:
                    time.sleep(0.1)
        with _test_channel(address) as channel:
            sleep = channel.unary_unary("/test.Slow/Sleep")
            in_flight = sleep.future(b"1.5", timeout=20)
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            assert in_flight.result(timeout=20) == b"done:1.5"
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class SubjectErased(NotFoundError):
    reason = "SUBJECT_ERASED"


@pytest.mark.parametrize(
    ("raised", "code", "kind", "reason"),
    [
        (SubjectErased("gone"), grpc.StatusCode.NOT_FOUND, NotFoundError, "TEST_REFUSED"),
        (
            PolicyNotInReview("no"),
            grpc.StatusCode.FAILED_PRECONDITION,
            FailedPreconditionError,
            "TEST_REFUSED",
        ),
        (InvalidArgumentError("bad"), grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError, "TEST_REFUSED"),
        (
            UnavailableError("down"),
            grpc.StatusCode.UNAVAILABLE,
            DependencyUnavailableError,
            "TEST_UNAVAILABLE",
        ),
        (RuntimeError("bug"), grpc.StatusCode.INTERNAL, DependencyUnavailableError, "TEST_UNAVAILABLE"),
        (UnauthenticatedError("no"), grpc.StatusCode.UNAUTHENTICATED, AwarenessError, "TEST_REFUSED"),
    ],
)
async def test_every_peer_failure_becomes_one_awareness_error(
    running: Any, raised: Exception, code: grpc.StatusCode, kind: type[AwarenessError], reason: str
) -> None:
    async def refuse(_request: bytes, _context: Any) -> bytes:
        raise raised

    factory = channels(await running(make_app({"Refuse": refuse})), attempts=1)
    with pytest.raises(AwarenessError) as caught:
        await call_peer(factory.channel("test").unary_unary("/test.Svc/Refuse")(b""), target="test")
    error = caught.value
    assert type(error) is kind and error.reason == reason
    assert error.metadata["target"] == "test" and error.metadata["code"] == code.name
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)
    if isinstance(raised, AwarenessError):
        assert error.metadata["peer_reason"] == raised.reason
    await factory.close()


async def test_peer_answer_passes_through_call_peer(running: Any) -> None:
    async def echo(request: bytes, _context: Any) -> bytes:
        return request

    factory = channels(await running(make_app({"Echo": echo})))
    assert (
        await call_peer(factory.channel("test").unary_unary("/test.Svc/Echo")(b"hi"), target="test") == b"hi"
    )
    await factory.close()


async def test_a_renewed_certificate_stops_the_server_gracefully(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, AWARENESS_MTLS_DIR=str(tmp_path / "mtls"))
    context = build_context(settings, with_database=False)
    stop = asyncio.Event()
    serving = asyncio.create_task(
        runtime_server.run_server(
            make_app({}), context, stop_event=stop, renewal_check_seconds=0.05, renewal_spread_seconds=0.1
        )
    )
    await asyncio.sleep(0.3)
    assert not serving.done()
    certificate = context.settings.identity.cert_file
    os.utime(certificate, (time.time() + 5, time.time() + 5))  # what a renewal by cert-manager does
    await asyncio.wait_for(serving, timeout=10)
    assert stop.is_set()
