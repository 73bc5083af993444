"""``awareness backup create|list|verify|restore|reconcile``: backups that keep the log's and the
erasures' promises (docs/disaster-recovery.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.runtime.config import SERVICES, archive_dir

# Every process with a store; the gateway keeps the API keys.
STORES = (*SERVICES, "gateway")
# The stores whose restore leaves promises to keep: the log (ingest), the erasures (gdpr) and the
# API key revocations (gateway).
RECONCILED = ("ingest", "gdpr", "gateway")
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RECONCILED = 3


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backup = subparsers.add_parser(
        "backup",
        help="back up, prove, restore and reconcile every service's store (docs/disaster-recovery.md)",
    )
    commands = backup.add_subparsers(dest="backup_command", required=True, metavar="COMMAND")

    def with_store(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--database",
            help="PostgreSQL URL holding every service's schema (default: DATABASE_URL; unset: SQLite files)",
        )
        parser.add_argument(
            "--data-dir", type=Path, help="where the SQLite files are (default: AWARENESS_DATA_DIR or ./var)"
        )

    create = commands.add_parser("create", help="write a new backup set of every store under DIR")
    create.add_argument("--to", type=Path, required=True, metavar="DIR", help="the directory of backup sets")
    create.add_argument(
        "--keep", type=int, default=0, help="then delete all but the newest N sets (0: keep all)"
    )
    with_store(create)
    create.set_defaults(handler=_create)

    listing = commands.add_parser("list", help="list the backup sets under DIR, oldest first")
    listing.add_argument("--to", type=Path, required=True, metavar="DIR")
    listing.set_defaults(handler=_list)

    verify = commands.add_parser("verify", help="prove a backup set whole: hashes, and each file opens")
    verify.add_argument("set", type=Path, help="the backup set's directory")
    verify.set_defaults(handler=_verify)

    restore = commands.add_parser(
        "restore",
        help="replace every store with a backup set's copy; the suite refuses to serve until reconciled",
        description=(
            "Stop every service first. Verifies the set, replaces the stores, migrates them to this "
            "version, and marks ingest and gdpr as restored: they refuse to start until "
            "`awareness backup reconcile` has run."
        ),
    )
    restore.add_argument("set", type=Path, help="the backup set's directory")
    restore.add_argument(
        "--yes", action="store_true", help="really replace the stores (they are overwritten)"
    )
    with_store(restore)
    restore.set_defaults(handler=_restore)

    reconcile = commands.add_parser(
        "reconcile",
        help="after a restore: re-import the archived log, replay erasures, prove the log consistent",
        description=(
            "Re-imports every archived leaf beyond the restored log, checks the rebuilt tree against every "
            "checkpoint (the log's, the archive's and those given with --checkpoint), proves consistency "
            "from the newest to the head, and replays the erasure tombstones. Only when all of that holds "
            "does it clear the restore mark. Exit 3: not reconciled, the report says why."
        ),
    )
    reconcile.add_argument(
        "--archive",
        type=Path,
        help="the archive directory (default: AWARENESS_ARCHIVE_DIR, else <data dir>/archive)",
    )
    reconcile.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        default=[],
        help="a signed checkpoint somebody holds (the note, or JSON with a note); repeatable; needs --keys",
    )
    reconcile.add_argument(
        "--keys", type=Path, action="append", default=[], help="trusted keys, as `awareness verify --keys`"
    )
    reconcile.add_argument(
        "--receipts",
        type=Path,
        action="append",
        default=[],
        help="receipts producers hold (JSON objects or JSON lines with eventId): report those not recovered",
    )
    with_store(reconcile)
    reconcile.set_defaults(handler=_reconcile)


def _store(args: argparse.Namespace) -> Any:
    from services.backup.sets import Store
    from services.runtime.config import in_kubernetes

    url = args.database or os.environ.get("DATABASE_URL") or ""
    if not url.startswith("postgresql") and in_kubernetes(os.environ):
        # A pod's data directory is scratch space: a set of it would be an empty promise.
        raise SystemExit(
            "awareness backup: in Kubernetes it needs DATABASE_URL (or --database) of PostgreSQL"
        )
    data_dir = args.data_dir or Path(os.environ.get("AWARENESS_DATA_DIR") or "var")
    return Store(postgres_url=url if url.startswith("postgresql") else None, data_dir=data_dir)


def _database_url(store: Any, service: str) -> str:
    from services.runtime.config import default_database_url

    return str(store.postgres_url or default_database_url(store.data_dir, service))


def _print(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=2, default=str))


def _failed(what: str, error: Exception) -> int:
    print(f"awareness backup {what}: {error}", file=sys.stderr)
    return EXIT_FAILED


def _log_state(store: Any) -> dict[str, Any]:
    """The log's tree size and newest checkpoint as the set is taken (for the manifest)."""
    from services.ingest import repository
    from services.runtime import db

    engine = db.create_db_engine(_database_url(store, "ingest"), service="ingest")
    try:
        with db.session_factory(engine)() as session:
            state = repository.tree_state(session)
            latest = repository.latest_checkpoint(session)
        return {"tree_size": state.tree_size, "checkpoint_size": None if latest is None else latest.tree_size}
    except Exception as error:  # an empty or unmigrated store: the set is still worth taking
        return {"tree_size": None, "note": type(error).__name__}
    finally:
        engine.dispose()


def _create(args: argparse.Namespace) -> int:
    from services.backup.sets import BackupError, create_set, prune_sets

    store = _store(args)
    try:
        manifest = create_set(store, services=STORES, into=args.to, log_state=_log_state(store))
        pruned = prune_sets(args.to, keep=args.keep) if args.keep > 0 else []
    except (BackupError, OSError) as error:
        return _failed("create", error)
    _print({"created": manifest["backup_id"], "path": str(args.to / manifest["backup_id"]), "pruned": pruned})
    return 0


def _list(args: argparse.Namespace) -> int:
    from services.backup.sets import list_sets

    for manifest in list_sets(args.to):
        size = sum(entry["bytes"] for entry in manifest["files"].values())
        tree = manifest["log"].get("tree_size")
        print(f"{manifest['backup_id']}  {manifest['backend']:10}  {size:>12} bytes  log tree size {tree}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from services.backup.sets import BackupError, verify_set

    try:
        manifest = verify_set(args.set)
    except (BackupError, OSError, ValueError) as error:
        return _failed("verify", error)
    _print({"verified": manifest["backup_id"], "backend": manifest["backend"], "files": manifest["files"]})
    return 0


def _restore(args: argparse.Namespace) -> int:
    from services.backup.sets import BackupError, restore_set, verify_set
    from services.runtime import db, migrations, recovery

    store = _store(args)
    if not args.yes:
        try:
            manifest = verify_set(args.set)
        except (BackupError, OSError, ValueError) as error:
            return _failed("restore", error)
        print(
            f"would replace the stores of {', '.join(manifest['services'])} ({store.backend}) with backup "
            f"{manifest['backup_id']} of {manifest['created_at']}; stop the suite, then add --yes",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        manifest = restore_set(store, args.set)
    except (BackupError, OSError, ValueError) as error:
        return _failed("restore", error)
    for service in manifest["services"]:
        engine = db.create_db_engine(_database_url(store, service), service=service)
        try:
            migrations.upgrade(service, engine)
            if service in RECONCILED:
                recovery.mark_restored(engine, backup_id=manifest["backup_id"])
        finally:
            engine.dispose()
    _print({"restored": manifest["backup_id"], "awaiting_reconciliation": list(RECONCILED)})
    return 0


def _receipt_ids(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        text = path.read_text().strip()
        documents: list[Any]
        if text.startswith("["):
            documents = json.loads(text)
        else:
            documents = [json.loads(line) for line in text.splitlines() if line.strip()]
        for document in documents:
            receipt = document.get("receipt", document) if isinstance(document, dict) else {}
            event_id = receipt.get("eventId") or receipt.get("event_id")
            if event_id:
                yield str(event_id)


def _held_checkpoints(args: argparse.Namespace) -> list[Any]:
    from services.evidence.checkpoint import verify_checkpoint
    from services.ingest.recovery import HeldCheckpoint
    from services.ingest.verify import load_keys

    if not args.checkpoint:
        return []
    if not args.keys:
        raise ValueError("--checkpoint needs --keys: a checkpoint is only worth its verified signature")
    keys = load_keys(args.keys)
    held = []
    for path in args.checkpoint:
        text = path.read_text()
        note = text
        if text.lstrip().startswith("{"):
            document = json.loads(text)
            note = (document.get("checkpoint") or document).get("note", "")
        body = verify_checkpoint(note, verifier_keys=keys.for_note(note))
        held.append(HeldCheckpoint(tree_size=body.tree_size, root_hash=body.root_hash, source=str(path)))
    return held


def _reconcile(args: argparse.Namespace) -> int:
    from services.evidence.errors import NoteError
    from services.gateway.recovery import REVOKE_ACTION, replay_revocations
    from services.gdpr.recovery import replay_erasures
    from services.gdpr.service.transactions import enable_secure_delete
    from services.gdpr.tombstones import TombstoneJournal
    from services.ingest.archive import ArchiveError, LogArchive
    from services.ingest.recovery import RecoveryError, access_resources, recover_log, unrecovered
    from services.runtime import db, recovery

    store = _store(args)
    archive = args.archive or archive_dir(os.environ) or store.data_dir / "archive"
    try:
        held = _held_checkpoints(args)
    except (NoteError, ValueError, OSError, KeyError) as error:
        print(f"awareness backup reconcile: {error}", file=sys.stderr)
        return EXIT_USAGE
    engines = {
        service: db.create_db_engine(_database_url(store, service), service=service) for service in RECONCILED
    }
    ingest_engine, gdpr_engine = engines["ingest"], engines["gdpr"]
    enable_secure_delete(gdpr_engine)
    try:
        restored_from = next(filter(None, (recovery.pending_restore(e) for e in engines.values())), None)
        ingest_sessions = db.session_factory(ingest_engine)
        try:
            log = recover_log(ingest_sessions, LogArchive(archive), held=held)
        except (ArchiveError, RecoveryError, OSError) as error:
            print(f"awareness backup reconcile: the log is not reconciled: {error}", file=sys.stderr)
            return EXIT_NOT_RECONCILED
        erasures = replay_erasures(db.session_factory(gdpr_engine), TombstoneJournal(archive))
        revoked = replay_revocations(
            db.session_factory(engines["gateway"]), access_resources(ingest_sessions, action=REVOKE_ACTION)
        )
        receipt_ids = list(_receipt_ids(args.receipts))
        missing = unrecovered(ingest_sessions, receipt_ids) if receipt_ids else []
        if log.reconciled:
            for engine in engines.values():
                recovery.clear_restored(engine)
        report = {
            "restored_from": restored_from,
            "reconciled": log.reconciled,
            "log": {
                "restored_tree_size": log.restored_tree_size,
                "archived_leaves": log.archived_size,
                "reimported": log.reimported,
                "already_present": log.already_present,
                "tree_size": log.tree_size,
                "checkpoints_checked": log.checkpoints_checked,
                "missing_leaves": log.missing_leaves,
                "consistency": log.consistency,
                "problems": log.problems,
            },
            "erasures": {
                "tombstones": erasures.tombstones,
                "already_erased": erasures.already_erased,
                "replayed": erasures.replayed,
                "keys_shredded": erasures.keys_shredded,
            },
            "api_keys": {"revoked_again": revoked},
            "receipts": {"presented": len(receipt_ids), "not_recovered": missing},
        }
    finally:
        for engine in engines.values():
            engine.dispose()
    _print(report)
    if not log.reconciled:
        print(
            "awareness backup reconcile: NOT reconciled; the suite keeps refusing to start (see problems)",
            file=sys.stderr,
        )
        return EXIT_NOT_RECONCILED
    return 0
