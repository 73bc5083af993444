"""The protobuf contracts: code generation, service surface, AIP conventions, buf lint.

The contracts are read back from the FileDescriptorSet that scripts/gen_protos.py
writes (the same file the gateway builds its routes from), generated into a
temporary directory so these tests never depend on, or disturb, the installed
client package.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

REPO_ROOT = Path(__file__).resolve().parent.parent
GEN_SCRIPT = REPO_ROOT / "scripts" / "gen_protos.py"
SERVICES = ("ingest", "policy", "scoring", "signing", "gdpr", "analytics")

EXPECTED_METHODS: dict[str, set[str]] = {
    "awareness.analytics.v1.AnalyticsService": {
        "RecordEvents",
        "ForgetSubjects",
        "ListCampaigns",
        "GetCampaignFunnel",
        "QueryEventCounts",
        "GetTrainingSummary",
        "QueryViolations",
        "GetSubjectRisk",
        "ListSubjectRisks",
        "CreateReport",
        "GetReport",
        "ListReports",
        "GetReportEvidence",
    },
    "awareness.ingest.v1.IngestService": {
        "AppendEvent",
        "AppendEvents",
        "StreamAppendEvents",
        "GetEvent",
        "ListEvents",
        "LabelEvent",
        "GetReceipt",
        "GetCheckpoint",
        "ListCheckpoints",
        "GetInclusionProof",
        "GetConsistencyProof",
        "ListSubjectRecords",
        "ForgetSubject",
        "ListTrainingExamples",
        "ListAccessRecords",
    },
    "awareness.policy.v1.PolicyService": {
        "CreatePolicy",
        "GetPolicy",
        "ListPolicies",
        "UpdatePolicy",
        "SubmitPolicy",
        "ApprovePolicy",
        "RejectPolicy",
        "RetirePolicy",
        "CreatePolicyRevision",
        "ListPolicyHistory",
        "EvaluateEvents",
    },
    "awareness.scoring.v1.ScoringService": {
        "ScoreEvents",
        "GetModel",
        "ListModels",
        "PromoteModel",
        "TrainModel",
        "ListShadowScores",
        "GetModelHealth",
        "DecidePromotion",
        "ListPromotionDecisions",
    },
    "awareness.signing.v1.SigningService": {
        "SignCheckpoint",
        "SignDigests",
        "Timestamp",
        "ListPublicKeys",
        "GetPublicKey",
        "RotateKey",
        "VerifyTimestamp",
        "VerifyCheckpoint",
    },
    "awareness.gdpr.v1.GdprService": {
        "GetSubjectKeys",
        "UnwrapDataKeys",
        "LookupSubject",
        "EraseSubject",
        "GetErasureRecord",
        "ListErasureRecords",
        "ExportSubject",
        "GrantConsent",
        "WithdrawConsent",
        "CheckConsent",
        "ListConsentHistory",
        "SetRetentionRule",
        "ListRetentionRules",
        "ApplyRetention",
        "RotateKek",
        "ImportDirectory",
        "ListAuditRecords",
    },
}

# Service-to-service methods: never routed by the gateway.
INTERNAL_METHODS = {
    "awareness.analytics.v1.AnalyticsService.RecordEvents",
    "awareness.analytics.v1.AnalyticsService.ForgetSubjects",
    "awareness.ingest.v1.IngestService.ListSubjectRecords",
    "awareness.ingest.v1.IngestService.ForgetSubject",
    "awareness.ingest.v1.IngestService.ListTrainingExamples",
    "awareness.signing.v1.SigningService.SignCheckpoint",
    "awareness.signing.v1.SigningService.SignDigests",
    "awareness.gdpr.v1.GdprService.GetSubjectKeys",
    "awareness.gdpr.v1.GdprService.UnwrapDataKeys",
    "awareness.gdpr.v1.GdprService.LookupSubject",
    "awareness.gdpr.v1.GdprService.CheckConsent",
}
GRPC_ONLY_METHODS = {"awareness.ingest.v1.IngestService.StreamAppendEvents"}

# Methods that create or append and so must be safe to retry.
IDEMPOTENCY_FIELD = {
    "awareness.policy.v1.PolicyService.CreatePolicy": "request_id",
    "awareness.policy.v1.PolicyService.CreatePolicyRevision": "request_id",
    "awareness.scoring.v1.ScoringService.TrainModel": "request_id",
    "awareness.signing.v1.SigningService.RotateKey": "request_id",
    "awareness.signing.v1.SigningService.SignDigests": "request_id",
    "awareness.gdpr.v1.GdprService.EraseSubject": "request_id",
    "awareness.gdpr.v1.GdprService.GrantConsent": "request_id",
    "awareness.gdpr.v1.GdprService.WithdrawConsent": "request_id",
    "awareness.gdpr.v1.GdprService.ApplyRetention": "request_id",
    "awareness.gdpr.v1.GdprService.RotateKek": "request_id",
    "awareness.analytics.v1.AnalyticsService.CreateReport": "request_id",
}

_SERVICE_FIELD = 6  # FileDescriptorProto.service
_METHOD_FIELD = 2  # ServiceDescriptorProto.method
_TYPE_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_TYPE_INT32 = descriptor_pb2.FieldDescriptorProto.TYPE_INT32


def _run_generator(out_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GEN_SCRIPT), "--out", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out_dir = tmp_path_factory.mktemp("generated")
    result = _run_generator(out_dir)
    assert result.returncode == 0, result.stderr
    yield out_dir


@pytest.fixture(scope="module")
def descriptor_set(generated: Path) -> descriptor_pb2.FileDescriptorSet:
    # Importing annotations_pb2 registers google.api.http, so the options parse into it.
    assert annotations_pb2.http is not None
    serialized = (generated / "awareness" / "descriptors.binpb").read_bytes()
    return descriptor_pb2.FileDescriptorSet.FromString(serialized)


class _Contracts:
    """Index of the awareness files of a descriptor set."""

    def __init__(self, descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
        self.files = [f for f in descriptor_set.file if f.package.startswith("awareness.")]
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        for file in self.files:
            for message in file.message_type:
                self.messages[f".{file.package}.{message.name}"] = message

    def methods(self) -> Iterator[tuple[str, descriptor_pb2.MethodDescriptorProto, str]]:
        """(full method name, method, leading comment) for every RPC."""
        for file in self.files:
            comments = {
                tuple(location.path): location.leading_comments for location in file.source_code_info.location
            }
            for service_index, service in enumerate(file.service):
                for method_index, method in enumerate(service.method):
                    path = (_SERVICE_FIELD, service_index, _METHOD_FIELD, method_index)
                    yield f"{file.package}.{service.name}.{method.name}", method, comments.get(path, "")

    def fields(self, type_name: str) -> dict[str, descriptor_pb2.FieldDescriptorProto]:
        return {field.name: field for field in self.messages[type_name].field}


@pytest.fixture(scope="module")
def contracts(descriptor_set: descriptor_pb2.FileDescriptorSet) -> _Contracts:
    return _Contracts(descriptor_set)


def _http_path(rule: http_pb2.HttpRule) -> str:
    pattern = rule.WhichOneof("pattern")
    assert pattern is not None
    if pattern == "custom":
        return str(rule.custom.path)
    return str(getattr(rule, pattern))


def test_generator_writes_a_typed_regular_package(generated: Path) -> None:
    package = generated / "awareness"
    assert (package / "__init__.py").is_file()
    assert (package / "py.typed").is_file()
    for service in SERVICES:
        version_dir = package / service / "v1"
        assert (package / service / "__init__.py").is_file()
        assert (version_dir / "__init__.py").is_file()
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            assert (version_dir / f"{service}{suffix}").is_file(), f"{service}{suffix} missing"
    # google/api and google/rpc come from googleapis-common-protos, never from us.
    assert sorted(p.name for p in generated.iterdir()) == ["awareness"]


def test_generator_is_idempotent_and_removes_stale_output(generated: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    shutil.copytree(generated, out_dir)
    stale = out_dir / "awareness" / "retired" / "v1" / "retired_pb2.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("raise ImportError('stale')\n")

    result = _run_generator(out_dir)

    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    assert not stale.exists()
    assert _tree_digest(out_dir) == _tree_digest(generated)


def test_generator_reports_broken_protos(tmp_path: Path) -> None:
    proto_dir = tmp_path / "protos" / "awareness" / "broken" / "v1"
    proto_dir.mkdir(parents=True)
    (proto_dir / "broken.proto").write_text('syntax = "proto3";\npackage awareness.broken.v1;\nmessage {\n')
    out_dir = tmp_path / "out"

    result = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), "--out", str(out_dir), "--protos", str(tmp_path / "protos")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 1
    assert "broken.proto" in result.stderr
    assert not (out_dir / "awareness").exists()


def test_every_service_has_its_methods(contracts: _Contracts) -> None:
    found: dict[str, set[str]] = {}
    for full_name, _, _ in contracts.methods():
        service, _, method = full_name.rpartition(".")
        found.setdefault(service, set()).add(method)
    assert found == EXPECTED_METHODS


def test_every_list_method_paginates(contracts: _Contracts) -> None:
    list_methods = [
        (name, method) for name, method, _ in contracts.methods() if method.name.startswith("List")
    ]
    expected_lists = {
        f"{service}.{method}" for service, methods in EXPECTED_METHODS.items() for method in methods
    }
    assert {name for name, _ in list_methods} == {name for name in expected_lists if ".List" in name}
    for name, method in list_methods:
        request = contracts.fields(method.input_type)
        response = contracts.fields(method.output_type)
        assert request["page_size"].type == _TYPE_INT32, name
        assert request["page_token"].type == _TYPE_STRING, name
        assert response["next_page_token"].type == _TYPE_STRING, name


def test_http_routes_live_under_v1_and_internal_methods_have_none(contracts: _Contracts) -> None:
    routed = 0
    for name, method, comment in contracts.methods():
        has_rule = method.options.HasExtension(annotations_pb2.http)
        if name in INTERNAL_METHODS or name in GRPC_ONLY_METHODS:
            assert not has_rule, f"{name} is internal but has an HTTP route"
            marker = "Internal" if name in INTERNAL_METHODS else "gRPC only"
            assert marker in comment, f"{name}'s comment does not say {marker!r}"
            continue
        assert has_rule, f"{name} is public but has no google.api.http annotation"
        rule = method.options.Extensions[annotations_pb2.http]
        for binding in [rule, *rule.additional_bindings]:
            assert _http_path(binding).startswith("/v1/"), f"{name}: {_http_path(binding)}"
        routed += 1
    assert routed == sum(map(len, EXPECTED_METHODS.values())) - len(INTERNAL_METHODS) - len(GRPC_ONLY_METHODS)


def test_http_routes_are_unique(contracts: _Contracts) -> None:
    routes: dict[tuple[str, str], str] = {}
    for name, method, _ in contracts.methods():
        if not method.options.HasExtension(annotations_pb2.http):
            continue
        rule = method.options.Extensions[annotations_pb2.http]
        for binding in [rule, *rule.additional_bindings]:
            route = (str(binding.WhichOneof("pattern")), _http_path(binding))
            assert route not in routes, f"{name} and {routes[route]} share {route}"
            routes[route] = name


def test_vendored_google_protos_match_the_runtime_package() -> None:
    # buf reads protos/third_party, protoc and the runtime read site-packages: they must not drift.
    site_packages = Path(annotations_pb2.__file__).parent.parent.parent
    vendored_root = REPO_ROOT / "protos" / "third_party"
    vendored = sorted(vendored_root.rglob("*.proto"))
    assert vendored
    for path in vendored:
        relative = path.relative_to(vendored_root)
        assert path.read_bytes() == (site_packages / relative).read_bytes(), relative


def test_every_method_is_documented(contracts: _Contracts) -> None:
    undocumented = [name for name, _, comment in contracts.methods() if not comment.strip()]
    assert undocumented == []


def test_creating_methods_take_an_idempotency_key(contracts: _Contracts) -> None:
    methods = {name: method for name, method, _ in contracts.methods()}
    for name, field_name in IDEMPOTENCY_FIELD.items():
        assert contracts.fields(methods[name].input_type)[field_name].type == _TYPE_STRING, name
    # Appends are keyed by the client-chosen event id.
    assert "event_id" in contracts.fields(".awareness.ingest.v1.Event")


@pytest.mark.slow
def test_generated_stubs_type_check_strictly(generated: Path, tmp_path: Path) -> None:
    mypy_api = pytest.importorskip("mypy.api")
    snippet = tmp_path / "use_stubs.py"
    snippet.write_text(
        "from awareness.ingest.v1 import ingest_pb2\n"
        "from awareness.policy.v1 import policy_pb2\n"
        "\n"
        "\n"
        "def leaf_index(receipt: ingest_pb2.Receipt) -> int | None:\n"
        "    return receipt.leaf_index if receipt.HasField('leaf_index') else None\n"
        "\n"
        "\n"
        "def draft(title: str) -> policy_pb2.Policy:\n"
        "    return policy_pb2.Policy(title=title, state=policy_pb2.Policy.STATE_DRAFT)\n"
        "\n"
        "\n"
        "def wrong(event: ingest_pb2.Event) -> str:\n"
        "    return event.receipt.leaf_index\n"
    )
    stdout, stderr, _ = mypy_api.run(
        [
            str(snippet),
            "--config-file",
            str(REPO_ROOT / "pyproject.toml"),
            "--strict",
            "--follow-imports=silent",
            "--cache-dir",
            str(tmp_path / "mypy_cache"),
        ],
    )
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    # Exactly the deliberate mistake is caught: the stubs are typed, and the correct code passes.
    assert len(errors) == 1, stdout + stderr
    assert "use_stubs.py:14:" in errors[0]
    assert 'got "int", expected "str"' in errors[0]


def test_buf_lint_is_clean() -> None:
    npx = shutil.which("npx")
    if npx is None or shutil.which("node") is None:
        pytest.skip("npx/node not installed")
    lint = subprocess.run(
        [npx, "--no-install", "buf", "lint"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert lint.stdout == ""


# Public methods that change state but leave no access record, and why.
NOT_AUDITED = {
    # The appended event is itself the record, with its own receipt and proof.
    "awareness.ingest.v1.IngestService.AppendEvent": "the event is the record",
    "awareness.ingest.v1.IngestService.AppendEvents": "the events are the record",
    "awareness.ingest.v1.IngestService.StreamAppendEvents": "the events are the record",
    # Issues a token over a digest it is given; the token (with its serial) is the record.
    "awareness.signing.v1.SigningService.Timestamp": "the token is the record",
}


def test_every_public_method_that_changes_state_declares_its_access_record(contracts: _Contracts) -> None:
    from services.runtime.protos import audit_action

    for name, method, _ in contracts.methods():
        service, _, short = name.rpartition(".")
        action = audit_action(f"/{service}/{short}")
        if action is not None:
            assert re.fullmatch(r"[a-z_]+\.[a-z_]+", action), f"{name}: {action!r}"
            assert name not in INTERNAL_METHODS, f"{name} is internal: services act as themselves there"
        if name in INTERNAL_METHODS or name in NOT_AUDITED:
            continue
        read_only = method.options.idempotency_level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
        assert read_only or action, f"{name} changes state but declares no audit_action"
