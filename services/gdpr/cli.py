"""``awareness gdpr ...``: operator commands that call the running gdpr service over gRPC.

``awareness gdpr apply-retention`` is what the Helm CronJob runs daily; ``awareness gdpr rotate-kek``
rotates the development KEK, and ``awareness gdpr rotate-kek --kubernetes`` is the monthly CronJob that
rotates the KEK in its Kubernetes Secret (services/gdpr/kekrotation.py). The gRPC commands call over
mTLS with gdpr's own certificate (they run beside it), which may name the principal they act for, so the
audit trail says which job acted.

``awareness directory import people.csv`` loads the organisation's directory (department and manager per
person) into gdpr, in calls of 5,000 people; a SCIM endpoint is the next step, not built yet.

``awareness gdpr verify-audit`` is the exception: it reads the audit table straight from the gdpr database
and recomputes the hash chain, trusting no running service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from google.protobuf.json_format import MessageToDict

from services.gdpr.domain.directory import (
    MAX_IMPORT_ENTRIES,
    DirectoryCsvError,
    DirectoryEntry,
    parse_directory_csv,
)
from services.runtime.auth import Principal

RETENTION_PRINCIPAL = Principal(subject="cli:retention", roles=frozenset({"dpo"}))
KEK_PRINCIPAL = Principal(subject="cli:kek-rotation", roles=frozenset({"admin"}))
DIRECTORY_PRINCIPAL = Principal(subject="cli:directory-import", roles=frozenset({"dpo"}))
PROGRESS_BAR_WIDTH = 30
DIRECTORY_HELP = """\
The file is UTF-8 CSV with a header line:

  subject,department,manager
  ada@example.org,Finance,grace@example.org
  grace@example.org,Finance,
  alan@example.org,Research,grace@example.org

subject     the person's identifier as the event sources give it (e-mail address
            or directory id), matched as events match it (case and surrounding
            spaces ignored); required, once per file
department  the person's group (at most 128 characters, no '@'); may be empty
manager     the manager's identifier; may be empty; the column may be left out

Only pseudonyms are stored, never the identifiers. The whole file is checked before
anything is sent: a bad row stops the import with its line number. People and managers
not seen yet get a pseudonym. With --replace the file is the whole directory: people
not in it lose their entry (their events stay; an erased person stays erased unless
the file lists them again, so take erased people out of the source first).

Exit status: 0 imported, 1 the service refused or could not be reached (calls already
made stay applied; run the import again), 2 the file cannot be read or has a bad row.

A SCIM endpoint (the directory pushed by the identity provider) is the next step; it
is not built yet.
"""


def register(subparsers: Any) -> None:
    gdpr = subparsers.add_parser("gdpr", help="GDPR operations: retention, KEK rotation, audit verification")
    commands = gdpr.add_subparsers(dest="gdpr_command", required=True, metavar="GDPR_COMMAND")

    retention = commands.add_parser(
        "apply-retention", help="shred the data keys whose retention expired (the daily CronJob)"
    )
    retention.add_argument(
        "--dry-run", action="store_true", help="report what would be shredded; shred nothing"
    )
    retention.add_argument("--reason", default="scheduled retention run", help="recorded in the audit trail")
    retention.add_argument(
        "--request-id", default="", help="idempotency key (a UUID; generated when omitted)"
    )
    retention.set_defaults(handler=_apply_retention)

    rotate = commands.add_parser(
        "rotate-kek", help="generate a new KEK and re-wrap every data key (dev keyring)"
    )
    rotate.add_argument("--reason", default="KEK rotation", help="recorded in the audit trail")
    rotate.add_argument("--request-id", default="", help="idempotency key (a UUID; generated when omitted)")
    rotate.add_argument(
        "--kubernetes",
        action="store_true",
        help=(
            "rotate the KEK in the gdpr keys Secret: new KEK, gdpr restarted, every key re-wrapped, old KEK "
            "deleted from the Secret (the CronJob; needs the gdpr database and a token that may update "
            "the Secret and restart the Deployment)"
        ),
    )
    rotate.add_argument("--secret", default="", help="the Secret (default AWARENESS_KEK_SECRET_NAME)")
    rotate.add_argument("--kek-key", default="", help="its KEK key (default AWARENESS_KEK_SECRET_KEY or kek)")
    rotate.add_argument(
        "--lookup-key",
        default="",
        help="its lookup-secret key (default AWARENESS_LOOKUP_SECRET_KEY or lookup-secret)",
    )
    rotate.add_argument(
        "--deployment", default="", help="the gdpr Deployment (default AWARENESS_GDPR_DEPLOYMENT)"
    )
    rotate.add_argument(
        "--rollout-timeout", type=float, default=900.0, help="seconds to wait for each restart"
    )
    rotate.set_defaults(handler=_rotate_kek)

    verify = commands.add_parser(
        "verify-audit",
        help="recompute the hash chain of the gdpr audit trail from its database",
        description=(
            "Read every record of the gdpr audit trail (audit_records) directly from the gdpr database, "
            "oldest first, and recompute the hash chain: each record's prev_hash must be the previous "
            "record's entry_hash and its entry_hash the SHA-256 of its fields. Prints the number of records "
            "checked and the head hash; on a break, names the first record that breaks the chain (its "
            "sequence) and what differs. Exit status: 0 intact, 1 broken, 2 the database cannot be read."
        ),
    )
    verify.add_argument(
        "--database",
        help=(
            "database URL of the gdpr service (default: AWARENESS_GDPR_DATABASE_URL, DATABASE_URL, "
            "or gdpr.db in the data directory, ./var)"
        ),
    )
    verify.add_argument(
        "--published-head",
        metavar="HEX",
        help=(
            "a head hash published earlier (e.g. by a previous run); the chain must pass through it, which "
            "catches records cut off the end"
        ),
    )
    verify.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    verify.set_defaults(handler=_verify_audit)
    _register_directory(subparsers)


def _register_directory(subparsers: Any) -> None:
    directory = subparsers.add_parser(
        "directory", help="the organisation's directory in gdpr: department and manager per person"
    )
    commands = directory.add_subparsers(dest="directory_command", required=True, metavar="DIRECTORY_COMMAND")
    load = commands.add_parser(
        "import",
        help="import people, their department and manager, from a CSV file (SCIM is the next step)",
        description=(
            "Import the organisation's directory from a CSV file into the gdpr service, in calls of "
            f"{MAX_IMPORT_ENTRIES} people (ImportDirectory; the principal cli:directory-import, role dpo)."
        ),
        epilog=DIRECTORY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    load.add_argument(
        "csv_file", metavar="PEOPLE_CSV", type=Path, help="the CSV file (header subject,department,manager)"
    )
    load.add_argument(
        "--replace",
        action="store_true",
        help="full sync: people not in the file lose their directory entry",
    )
    load.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    load.set_defaults(handler=_import_directory)


async def _call(principal: Principal, method: str, request: Any) -> Any:
    from services.runtime.clients import call_from_cli
    from services.runtime.config import load_settings

    settings = load_settings("gdpr")
    return await call_from_cli(
        settings,
        service="gdpr",
        stub_class=gdpr_pb2_grpc.GdprServiceStub,
        method=method,
        request=request,
        identity=principal,
        # Shredding or re-wrapping many keys takes longer than an ordinary call.
        timeout_seconds=max(settings.call_timeout_seconds, 600.0),
        attempts=1,
    )


def _run(principal: Principal, method: str, request: Any) -> int:
    import grpc

    try:
        response = asyncio.run(_call(principal, method, request))
    except grpc.aio.AioRpcError as exc:
        print(f"gdpr {method} failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            MessageToDict(
                response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            ),
            indent=2,
            sort_keys=True,
        )
    )
    return 0


def _apply_retention(args: argparse.Namespace) -> int:
    request = gdpr_pb2.ApplyRetentionRequest(
        dry_run=args.dry_run, reason=args.reason, request_id=args.request_id or str(uuid.uuid4())
    )
    return _run(RETENTION_PRINCIPAL, "ApplyRetention", request)


def _rotate_kek(args: argparse.Namespace) -> int:
    if args.kubernetes:
        return _rotate_kek_in_kubernetes(args)
    request = gdpr_pb2.RotateKekRequest(reason=args.reason, request_id=args.request_id or str(uuid.uuid4()))
    return _run(KEK_PRINCIPAL, "RotateKek", request)


def _verify_audit(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from services.gdpr.verify import verify_audit_database
    from services.runtime import db
    from services.runtime.config import load_settings

    published = None
    if args.published_head:
        try:
            published = bytes.fromhex(args.published_head)
        except ValueError:
            published = b""
        if len(published) != 32:
            print("verify-audit: --published-head must be 64 hex digits (a SHA-256)", file=sys.stderr)
            return 2
    url = args.database or load_settings("gdpr").database_url
    parsed = make_url(url)
    # Opening a missing SQLite file would create an empty database: say what is wrong instead.
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        print(f"verify-audit: no gdpr database at {parsed.database or url}", file=sys.stderr)
        return 2
    engine = db.create_db_engine(url, service="gdpr")
    try:
        report = verify_audit_database(
            engine, published_head=published, progress=None if args.quiet else sys.stderr
        )
    except SQLAlchemyError as exc:
        print(f"verify-audit: cannot read the audit trail: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    report.print(sys.stdout)
    return 0 if report.ok else 1


def _read_directory(path: Path) -> list[DirectoryEntry]:
    """Every entry of the file, checked; raises DirectoryCsvError (bad row) or OSError (unreadable)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as lines:
            return [row.entry for row in parse_directory_csv(lines)]
    except UnicodeDecodeError as exc:
        raise DirectoryCsvError(1, f"the file is not UTF-8 ({exc.reason})") from None


def _progress_bar(done: int, total: int) -> str:
    filled = PROGRESS_BAR_WIDTH * done // total
    return f"directory import [{'#' * filled}{'.' * (PROGRESS_BAR_WIDTH - filled)}] {done}/{total} people"


async def _send_directory(entries: list[DirectoryEntry], *, replace: bool, quiet: bool) -> dict[str, int]:
    """One call per chunk; a full sync names one import over every chunk and replaces on the last."""
    import_id = str(uuid.uuid4())
    totals = {"created": 0, "updated": 0, "unchanged": 0, "removed": 0}
    for start in range(0, len(entries), MAX_IMPORT_ENTRIES):
        chunk = entries[start : start + MAX_IMPORT_ENTRIES]
        last = start + MAX_IMPORT_ENTRIES >= len(entries)
        request = gdpr_pb2.ImportDirectoryRequest(
            entries=[
                gdpr_pb2.DirectoryEntry(
                    subject=e.subject, department=e.department, manager_subject=e.manager_subject
                )
                for e in chunk
            ],
            replace=replace and last,
            import_id=import_id,
        )
        response = await _call(DIRECTORY_PRINCIPAL, "ImportDirectory", request)
        totals["created"] += response.created_count
        totals["updated"] += response.updated_count
        totals["unchanged"] += response.unchanged_count
        totals["removed"] += response.removed_count
        if not quiet:
            print(_progress_bar(start + len(chunk), len(entries)), file=sys.stderr, flush=True)
    return totals


def _import_directory(args: argparse.Namespace) -> int:
    import grpc

    path: Path = args.csv_file
    try:
        entries = _read_directory(path)
    except OSError as exc:
        print(f"directory import: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except DirectoryCsvError as exc:
        print(f"directory import: {path}: {exc}; nothing was imported", file=sys.stderr)
        return 2
    if not entries:
        print(f"directory import: {path} lists nobody; nothing was imported", file=sys.stderr)
        return 2
    try:
        totals = asyncio.run(_send_directory(entries, replace=args.replace, quiet=args.quiet))
    except grpc.aio.AioRpcError as exc:
        print(f"directory import failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(json.dumps({"people": len(entries), **totals}, sort_keys=True))
    return 0


def _rotate_kek_in_kubernetes(args: argparse.Namespace) -> int:
    import os

    from services.gdpr.kekrotation import KubernetesApi, RotationError, SecretRef, rotate_in_kubernetes
    from services.gdpr.keysource import KeyMaterial
    from services.gdpr.service.transactions import GdprStore
    from services.runtime import db
    from services.runtime.config import load_settings
    from services.runtime.logs import configure_logging

    env = os.environ
    settings = load_settings("gdpr")
    configure_logging(service="kek-rotation", level=settings.log_level)
    ref = SecretRef(
        name=args.secret or env.get("AWARENESS_KEK_SECRET_NAME", ""),
        kek_key=args.kek_key or env.get("AWARENESS_KEK_SECRET_KEY", "") or "kek",
        lookup_key=args.lookup_key or env.get("AWARENESS_LOOKUP_SECRET_KEY", "") or "lookup-secret",
    )
    deployment = args.deployment or env.get("AWARENESS_GDPR_DEPLOYMENT", "")
    if not ref.name or not deployment:
        print("rotate-kek --kubernetes needs --secret and --deployment", file=sys.stderr)
        return 2
    engine = db.create_db_engine(settings.database_url, service="gdpr")

    def open_store(material: KeyMaterial) -> GdprStore:
        return GdprStore(engine=engine, sessions=db.session_factory(engine), material=material)

    try:
        report = rotate_in_kubernetes(
            api=KubernetesApi.in_cluster(env),
            ref=ref,
            deployment=deployment,
            open_store=open_store,
            rollout_timeout=args.rollout_timeout,
        )
    except RotationError as exc:
        print(f"KEK rotation stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(
        json.dumps(
            {
                "kek_id": report.kek_id,
                "keys_rewrapped": report.keys_rewrapped,
                "destroyed_kek_ids": report.destroyed_kek_ids,
            },
            sort_keys=True,
        )
    )
    return 0
