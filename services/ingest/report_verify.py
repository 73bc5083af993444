"""``awareness verify --report FILE --evidence FILE.evidence.json``: prove that a copy of a weekly
report is the file the analytics service issued, when, and that the log holds it, offline.

The evidence (``awareness report weekly`` writes it beside the report) holds the report's RFC 3161
token and the inclusion proof, with leaf data and signed checkpoint, of its ``report.issued``
event. The checks, each printed as an ``ok`` line, the first failure as ``FAIL``:

1. the file's SHA-256 is the one the evidence names;
2. the token is over exactly that digest, and ``openssl ts -verify -digest <sha256> -in token
   -token_in -CAfile <TSA CA>`` accepts it (the TSA's CA comes from --keys, never from the evidence);
3. the proof (``verify_proof``, as ``awareness verify --proof``): leaf data -> leaf hash -> audit
   path -> signed checkpoint root, and the checkpoint's signature under a trusted key;
4. the leaf is a ``report.issued`` event (a version-2 record, whose leaf covers its details) whose
   ``sha256`` is the file's and whose ``timestamp_token_sha256`` is the token's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import shutil
from typing import Any

from services.evidence.timestamp import token_facts
from services.ingest.domain.report_records import REPORT_EVENT_TYPE
from services.ingest.verify import Report, TrustedKeys, openssl_verify_token, verify_proof


def verify_report(
    content: bytes, evidence: dict[str, Any], *, keys: TrustedKeys, openssl: str | None = "openssl"
) -> Report:
    """Offline check of a report file against its evidence; see the module docstring."""
    report = Report()
    digest_hex = hashlib.sha256(content).hexdigest()
    claimed = str(evidence.get("sha256", "")).lower()
    if claimed != digest_hex:
        return report.fail(
            f"the file's SHA-256 {digest_hex} is not the issued report's ({claimed or 'none'})"
        )
    report.passed(f"file SHA-256 {digest_hex} is {evidence.get('report', 'the report')}'s")
    try:
        token = base64.b64decode(str(evidence.get("timestampToken", "")), validate=True)
        stamped = token_facts(token)
    except (ValueError, binascii.Error) as error:
        return report.fail(f"the evidence holds no RFC 3161 token: {error}")
    if stamped.algorithm != "sha256" or stamped.digest.hex() != digest_hex:
        return report.fail("the RFC 3161 token is over another digest than the file's")
    report.passed(f"RFC 3161 token states the file's SHA-256, time {stamped.gen_time.isoformat()}")
    if not keys.ca_pem:
        return report.fail("no TSA CA certificate among --keys: the token cannot be verified")
    if openssl is None or shutil.which(openssl) is None:
        return report.fail("openssl not found: the token cannot be verified")
    outcome = openssl_verify_token(openssl=openssl, token=token, digest_hex=digest_hex, ca_pem=keys.ca_pem)
    if outcome is not None:
        return report.fail(f"RFC 3161 token: {outcome}")
    report.passed("RFC 3161 token verifies over the file's digest (openssl ts -verify -digest)")
    proof = evidence.get("inclusionProof", evidence.get("inclusion_proof"))
    if not isinstance(proof, dict):
        return report.fail("the evidence holds no inclusion proof of the report's log event")
    logged = verify_proof(proof, keys=keys, openssl=openssl)
    report.checks.extend(logged.checks)
    report.notes.extend(logged.notes)
    report.record, report.payload = logged.record, logged.payload
    if logged.failure is not None:
        return report.fail(logged.failure)
    record, payload = logged.record, logged.payload
    if record is None or payload is None:
        return report.fail("the proof carries no leaf data: what the leaf covers cannot be checked")
    if record.type != REPORT_EVENT_TYPE:
        return report.fail(f"the proven leaf is a {record.type} event, not {REPORT_EVENT_TYPE}")
    event_id = evidence.get("logEventId")
    if event_id and record.event_id != event_id:
        return report.fail(f"the proven leaf is event {record.event_id}, the evidence names {event_id}")
    details = payload.details
    if details.get("sha256") != digest_hex:
        return report.fail("the logged report.issued event names another file's SHA-256")
    token_hex = hashlib.sha256(token).hexdigest()
    if details.get("timestamp_token_sha256") != token_hex:
        return report.fail("the logged report.issued event names another time-stamp token")
    report.passed(
        f"logged event {record.event_id} ({REPORT_EVENT_TYPE}) names the file's SHA-256 and the token's "
        f"SHA-256 {token_hex[:16]}..., and its leaf is in the signed checkpoint"
    )
    return report


# --- evidence from a running suite ------------------------------------------------------------------

VERIFY_PRINCIPAL_SUBJECT = "cli:verify"


async def fetch_evidence(digest_hex: str) -> dict[str, Any] | None:
    """The evidence of the report whose file has ``digest_hex``, asked of the running analytics service
    (ListReports filtered by sha256, then GetReportEvidence), as JSON; None when no report has it.

    Only the evidence comes from the service; what it is checked against (the signing keys and the
    TSA's CA) still comes from --keys."""
    from awareness.analytics.v1 import analytics_pb2, analytics_pb2_grpc
    from google.protobuf import json_format

    from services.runtime.auth import Principal
    from services.runtime.clients import call_from_cli
    from services.runtime.config import load_settings

    settings = load_settings("analytics")
    identity = Principal(subject=VERIFY_PRINCIPAL_SUBJECT, roles=frozenset({"auditor"}))

    async def call(method: str, request: Any) -> Any:
        return await call_from_cli(
            settings,
            service="analytics",
            stub_class=analytics_pb2_grpc.AnalyticsServiceStub,
            method=method,
            request=request,
            identity=identity,
            timeout_seconds=settings.call_timeout_seconds,
            attempts=settings.retry_attempts,
        )

    listed = await call(
        "ListReports", analytics_pb2.ListReportsRequest(page_size=1, filter=f'sha256="{digest_hex}"')
    )
    if not listed.reports:
        return None
    evidence = await call(
        "GetReportEvidence", analytics_pb2.GetReportEvidenceRequest(name=listed.reports[0].name)
    )
    document: dict[str, Any] = json_format.MessageToDict(evidence)
    return document
