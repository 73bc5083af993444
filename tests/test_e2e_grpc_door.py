"""The gateway's gRPC door end to end: `awareness up`, the generated stubs, `awareness_client.connect`.

An internal system (a mail gateway, an IdP) uses the `awareness-client` stubs unchanged against
the door, with its own API key: the same roles, permissions and rate limits as over HTTP.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import awareness_client
import grpc
import pytest
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from services.runtime.errors import ERROR_DOMAIN, error_info
from tests.ingest.harness import make_event
from tests.support.idp import IdentityProvider
from tests.support.suite import REPO, Backend, UpSuite, awareness_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PRINCIPAL_LIMIT = 40  # requests per minute per key: a stream of 20 messages fits, 41 calls do not


@pytest.fixture(scope="module")
def suite(
    tmp_path_factory: pytest.TempPathFactory, suite_backend: Backend, idp: IdentityProvider
) -> Iterator[UpSuite]:
    data_dir = tmp_path_factory.mktemp(f"door-e2e-{suite_backend.name}")
    extra = {"AWARENESS_GATEWAY_RATE_PRINCIPAL_PER_MIN": str(PRINCIPAL_LIMIT), **idp.gateway_env(data_dir)}
    with awareness_up(data_dir, suite_backend, extra_env=extra) as running:
        yield running


def _reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None, error
    info = error_info(status)
    return info.reason if info is not None else ""


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a new virtualenv holding only the `awareness-client` wheel, built as
    `make dist` builds it. Its dependencies (grpcio, protobuf, googleapis-common-protos) are read
    from this interpreter's site-packages through a path file, so nothing is downloaded; that
    directory's own path files (the repo's editable installs) are not processed there, so no
    module of this repository is importable: only the wheel's."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(out), "clients/python"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("awareness_client-*.whl")
    directory = tmp_path_factory.mktemp("client-venv")
    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True, timeout=120)
    python = directory / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "awareness-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _run_client(python: Path, argv: list[str], env: dict[str, str], cwd: Path) -> str:
    ran = subprocess.run(
        [str(python), "-I", *argv],
        env={"PATH": os.environ.get("PATH", ""), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def test_an_internal_system_with_the_wheel_streams_ten_thousand_events_and_is_refused_as_documented(
    suite: UpSuite, client_python: Path, tmp_path: Path
) -> None:
    keys = {
        "AWARENESS_DOOR_INTEGRATION_KEY": suite.create_key("integration"),
        "AWARENESS_DOOR_ANALYST_KEY": suite.create_key("analyst"),
        # Its own key, so the 10,000 events' messages do not spend its budget.
        "AWARENESS_DOOR_LIMITED_KEY": suite.create_key("integration"),
    }
    script = REPO / "tests" / "support" / "door_client.py"
    argv = [str(script), "--target", suite.door, "--ca", str(suite.door_ca)]
    argv += ["--past-limit", str(PRINCIPAL_LIMIT + 5)]
    seen = json.loads(_run_client(client_python, argv, keys, tmp_path))
    venv = str(client_python.parent.parent)
    assert seen["client_module"].startswith(venv) and seen["stubs_module"].startswith(venv), seen
    assert (seen["sent"], seen["results"], seen["refused"]) == (10_000, 10_000, [])
    assert seen["receipts_match"] and seen["read_back_match"], seen
    refusals = {
        name: (refusal["code"], refusal["reason"], refusal["domain"], refusal["answered"])
        for name, refusal in seen["refusals"].items()
    }
    assert refusals == {
        "analyst_append": ("PERMISSION_DENIED", "MISSING_PERMISSION", ERROR_DOMAIN, 0),
        "no_key": ("UNAUTHENTICATED", "NO_CREDENTIALS", ERROR_DOMAIN, 0),
        # Every message within the limit was answered before the stream ended.
        "past_limit": ("RESOURCE_EXHAUSTED", "RATE_LIMITED", ERROR_DOMAIN, PRINCIPAL_LIMIT),
    }


def test_the_client_readme_example_runs_as_written(
    suite: UpSuite, client_python: Path, tmp_path: Path
) -> None:
    readme = (REPO / "clients" / "python" / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "127.0.0.1:8081" in example and "var/door-tls/ca.crt" in example
    assert len(example.splitlines()) <= 10 and ";" not in example  # ten lines, one statement each
    example = example.replace("127.0.0.1:8081", suite.door).replace("var/door-tls/ca.crt", str(suite.door_ca))
    (tmp_path / "example.py").write_text(example)
    printed = _run_client(
        client_python, ["example.py"], {"AWARENESS_API_KEY": suite.create_key("integration")}, tmp_path
    )
    (receipt_id,) = ast.literal_eval(printed.strip())
    uuid.UUID(receipt_id)  # a receipt, not a refusal's message


def test_an_analyst_reads_personal_fields_through_the_door(suite: UpSuite) -> None:
    event = make_event(subject="door.reader@example.org")
    with _connect(suite, "integration") as channel:
        ingest_pb2_grpc.IngestServiceStub(channel).AppendEvent(
            ingest_pb2.AppendEventRequest(event=event), timeout=30
        )
    with _connect(suite, "analyst") as channel:
        stored = ingest_pb2_grpc.IngestServiceStub(channel).GetEvent(
            ingest_pb2.GetEventRequest(name=f"events/{event.event_id}"), timeout=30
        )
    assert stored.subject == "door.reader@example.org"


def test_a_jwt_from_the_identity_provider_opens_the_door_with_its_roles(
    suite: UpSuite, idp: IdentityProvider
) -> None:
    ca = suite.door_ca.read_bytes()
    with awareness_client.connect(suite.door, token=idp.token(roles=["analyst"]), tls=ca) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        stub.ListEvents(ingest_pb2.ListEventsRequest(page_size=1), timeout=30)
        with pytest.raises(grpc.RpcError) as refused:
            stub.AppendEvent(ingest_pb2.AppendEventRequest(event=make_event()), timeout=30)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    wrong = idp.token(aud="another-api", roles=["admin"])
    with (
        awareness_client.connect(suite.door, token=wrong, tls=ca) as channel,
        pytest.raises(grpc.RpcError) as bad,
    ):
        ingest_pb2_grpc.IngestServiceStub(channel).ListEvents(ingest_pb2.ListEventsRequest(), timeout=30)
    assert bad.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_plaintext_client_cannot_talk_to_the_tls_door(suite: UpSuite) -> None:
    plaintext = awareness_client.connect(suite.door, api_key=suite.create_key("analyst"), tls=False)
    with plaintext, pytest.raises(grpc.RpcError) as refused:
        ingest_pb2_grpc.IngestServiceStub(plaintext).ListEvents(ingest_pb2.ListEventsRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def _connect(suite: UpSuite, role: str) -> grpc.Channel:
    return awareness_client.connect(
        suite.door, api_key=suite.create_key(role), tls=suite.door_ca.read_bytes()
    )


def _refused(suite: UpSuite, role: str, call: Callable[[grpc.Channel], object]) -> grpc.RpcError:
    """The refusal of ``call`` through the door, with a key of ``role``."""
    with _connect(suite, role) as channel, pytest.raises(grpc.RpcError) as refused:
        call(channel)
    return refused.value


def _append(
    event: ingest_pb2.Event, metadata: Sequence[tuple[str, str]] = ()
) -> Callable[[grpc.Channel], object]:
    request = ingest_pb2.AppendEventRequest(event=event)
    return lambda channel: ingest_pb2_grpc.IngestServiceStub(channel).AppendEvent(
        request, metadata=metadata, timeout=30
    )


def test_forged_internal_metadata_claims_nothing(suite: UpSuite) -> None:
    # A caller who writes the services' own principal headers is still only its key.
    forged = [("x-awareness-principal", "service:ingest"), ("x-awareness-roles", "service")]
    refused = _refused(suite, "analyst", _append(make_event(), forged))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


def test_internal_methods_are_not_served_at_the_door(suite: UpSuite) -> None:
    refused = _refused(
        suite,
        "admin",
        lambda channel: gdpr_pb2_grpc.GdprServiceStub(channel).UnwrapDataKeys(
            gdpr_pb2.UnwrapDataKeysRequest(), timeout=30
        ),
    )
    assert refused.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_bad_event_is_the_services_own_invalid_argument(suite: UpSuite) -> None:
    refused = _refused(suite, "integration", _append(make_event(event_type="no.such.type")))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(refused)
    assert status is not None and status.details  # ErrorInfo and field violations came through


def test_past_the_limit_calls_are_resource_exhausted(suite: UpSuite) -> None:
    with _connect(suite, "analyst") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for _ in range(PRINCIPAL_LIMIT):
            stub.ListEvents(ingest_pb2.ListEventsRequest(page_size=1), timeout=30)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListEvents(ingest_pb2.ListEventsRequest(page_size=1), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _reason(refused.value) == "RATE_LIMITED"


def test_reflection_lists_the_public_services_for_grpcurl(suite: UpSuite) -> None:
    credentials = grpc.ssl_channel_credentials(suite.door_ca.read_bytes())
    with grpc.secure_channel(suite.door, credentials) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=30))
    names = {service.name for service in answer.list_services_response.service}
    assert {"awareness.ingest.v1.IngestService", "awareness.gdpr.v1.GdprService"} <= names
