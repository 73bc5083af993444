"""``awareness verify``: offline proof checks, or a whole-database recomputation (or an incremental one
from a remembered checkpoint); ``awareness verification run``: the scheduled job; ``awareness witness``:
a transparency-log monitor over the public API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verify = subparsers.add_parser(
        "verify",
        help="verify a receipt and inclusion proof offline, or recompute a whole event log database",
        description=(
            "With --proof: check leaf data -> leaf hash -> audit path -> checkpoint root -> checkpoint "
            "signature -> RFC 3161 token, offline, given the public keys (--keys); for a system event's "
            "version-2 record (access, erasure records) also list the summary and details its leaf covers. "
            "With --report FILE: prove a weekly report was issued, when, and is in the log: its SHA-256, "
            "the RFC 3161 token over it (openssl ts -verify -digest), and the inclusion proof of its "
            "report.issued event, from FILE.evidence.json (docs/reports.md). "
            "With --database (or neither): recompute every leaf hash, Merkle node and checkpoint root "
            "of the ingest database and name the first record that differs. "
            "With --incremental STATE: from the checkpoint remembered in STATE (none: everything) to the "
            "newest one: new leaves re-hashed, new checkpoint roots recomputed, a consistency proof "
            "checked; STATE is updated when it passes. It does not re-read older records: run without it "
            "now and then (the scheduled job does, weekly; docs/operations.md, Scheduled verification)."
        ),
    )
    verify.add_argument("--proof", type=Path, help="GetInclusionProof response (JSON, as the API returns it)")
    verify.add_argument("--receipt", type=Path, help="the event's receipt or AppendEvent response (JSON)")
    verify.add_argument(
        "--checkpoint", type=Path, help="a signed checkpoint (JSON) when the proof does not carry one"
    )
    verify.add_argument(
        "--keys",
        type=Path,
        action="append",
        default=[],
        help=(
            "trusted keys: ListPublicKeys JSON, C2SP verifier keys (one a line), an Ed25519 PEM public key, "
            "or a CA certificate PEM for the time-stamp token; repeatable"
        ),
    )
    verify.add_argument(
        "--database",
        help="database URL of the ingest service (default: its configured DATABASE_URL or ./var/ingest.db)",
    )
    verify.add_argument(
        "--report", type=Path, help="a weekly report file: prove it was issued, when, and is in the log"
    )
    verify.add_argument(
        "--evidence",
        type=Path,
        help="with --report: its evidence (default: FILE.evidence.json, else asked of the running suite)",
    )
    verify.add_argument(
        "--incremental",
        type=Path,
        metavar="STATE",
        help="a JSON file remembering the last verified checkpoint: verify only what came after it",
    )
    verify.add_argument("--openssl", default="openssl", help="openssl binary for the RFC 3161 check")
    verify.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    verify.set_defaults(handler=run_verify)

    from services import verification
    from services.ingest import witness

    verification.register(subparsers)
    witness.register(subparsers)


def _json(path: Path) -> dict[str, Any]:
    document = json.loads(path.read_text())
    if not isinstance(document, dict):
        raise SystemExit(f"{path}: expected a JSON object")
    return document


def run_verify(args: argparse.Namespace) -> int:
    from services.ingest.verify import (
        load_head,
        load_keys,
        store_head,
        verify_database,
        verify_incremental,
        verify_proof,
    )

    keys = load_keys(args.keys) if args.keys else None
    if args.report is not None:
        return _verify_report(args, keys)
    if args.proof is not None:
        if keys is None:
            print("verify: --keys is required to check a proof offline", file=sys.stderr)
            return 2
        report = verify_proof(
            _json(args.proof),
            keys=keys,
            receipt=_json(args.receipt) if args.receipt else None,
            checkpoint=_json(args.checkpoint) if args.checkpoint else None,
            openssl=args.openssl,
        )
    else:
        from services.runtime import db
        from services.runtime.config import load_settings

        url = args.database or load_settings("ingest").database_url
        engine = db.create_db_engine(url, service="ingest")
        progress = None if args.quiet else sys.stderr
        try:
            if args.incremental is None:
                report = verify_database(engine, keys=keys, progress=progress)
            else:
                since = load_head(args.incremental)
                report = verify_incremental(engine, since=since, keys=keys, progress=progress)
        finally:
            engine.dispose()
        if args.incremental is not None and report.ok and report.head is not None:
            store_head(args.incremental, report.head)
            report.notes.append(
                f"{args.incremental}: verified up to the checkpoint of tree size {report.head.tree_size}"
            )
    report.print(sys.stdout)
    return 0 if report.ok else 1


def _verify_report(args: argparse.Namespace, keys: Any) -> int:
    from services.ingest.report_verify import verify_report

    evidence = args.evidence or args.report.with_name(f"{args.report.name}.evidence.json")
    if keys is None:
        print(
            "verify: --keys is required to check a report (the signing keys and the TSA's CA)",
            file=sys.stderr,
        )
        return 2
    content = args.report.read_bytes()
    document = _json(evidence) if evidence.exists() else _fetched_evidence(content)
    if document is None:
        return 1
    report = verify_report(content, document, keys=keys, openssl=args.openssl)
    report.print(sys.stdout)
    return 0 if report.ok else 1


def _fetched_evidence(content: bytes) -> dict[str, Any] | None:
    """No evidence file: ask the running suite for the evidence of the file's digest."""
    import asyncio
    import hashlib

    import grpc

    from services.ingest.report_verify import fetch_evidence

    digest = hashlib.sha256(content).hexdigest()
    try:
        document = asyncio.run(fetch_evidence(digest))
    except grpc.aio.AioRpcError as exc:
        print(
            f"verify: no evidence file, and the service could not give it: {exc.details()}", file=sys.stderr
        )
        return None
    if document is None:
        print(f"FAIL  no issued report has this file's SHA-256 {digest}")
    else:
        print(f"note  evidence fetched from the analytics service for SHA-256 {digest}")
    return document
