"""Backup sets: every service's store, taken as one consistent set, with a manifest that proves it whole.

On PostgreSQL a set is one ``pg_dump`` (custom format) of every service's schema: one dump is one
snapshot, so the schemas agree with each other exactly. Under ``awareness up`` (SQLite) it is a copy
of each service's file made with SQLite's online backup API, ingest first and gdpr last: a data key
is created before the event that needs it is stored, so every event in the set finds its key.

``manifest.json`` names each file with its SHA-256 and size, the backend, and the log's tree size
and newest checkpoint at the time, so ``verify`` can prove a set whole before anybody restores it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from services.runtime.db import schema_name

FORMAT = 1
MANIFEST = "manifest.json"
PG_DUMP_FILE = "awareness.pgdump"
# SQLite copies in this order (see the module docstring); every process with a store.
SQLITE_ORDER = ("ingest", "analytics", "policy", "scoring", "signing", "gateway", "gdpr")


class BackupError(Exception):
    """A backup set cannot be made, proved whole or restored; the message says why."""


@dataclass(frozen=True, slots=True)
class Store:
    """Where the stores live: one PostgreSQL database (a schema each), or a data directory of SQLite files."""

    postgres_url: str | None
    data_dir: Path

    @property
    def backend(self) -> str:
        return "postgresql" if self.postgres_url else "sqlite"

    def libpq_url(self) -> str:
        """The URL as pg_dump takes it (no SQLAlchemy driver suffix)."""
        assert self.postgres_url is not None
        return make_url(self.postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)

    def sqlite_file(self, service: str) -> Path:
        return self.data_dir / f"{service}.db"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(command: Sequence[str], *, what: str) -> str:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, check=False, timeout=3600)
    except FileNotFoundError as error:
        raise BackupError(f"{what}: {command[0]} is not installed (Debian: postgresql-client)") from error
    if done.returncode != 0:
        raise BackupError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def new_backup_id(now: datetime) -> str:
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"


def create_set(
    store: Store,
    *,
    services: Sequence[str],
    into: Path,
    log_state: dict[str, Any],
    now: datetime | None = None,
) -> dict[str, Any]:
    """Write a new set under ``into/<backup id>``; returns its manifest. On PostgreSQL the set holds
    the schemas of ``services`` that exist (a service the release does not deploy has none)."""
    if store.postgres_url:
        services = existing_schemas(store, services)
        if not services:
            raise BackupError("the database holds no awareness_* schema: nothing to back up")
    moment = now or datetime.now(UTC)
    backup_id = new_backup_id(moment)
    directory = into / backup_id
    partial = into / f".{backup_id}.partial"
    partial.mkdir(parents=True)
    try:
        files: dict[str, Any] = {}
        if store.postgres_url:
            target = partial / PG_DUMP_FILE
            schemas = [argument for service in services for argument in ("--schema", schema_name(service))]
            _run(
                ["pg_dump", "--format=custom", "--file", str(target), *schemas, store.libpq_url()],
                what="pg_dump",
            )
            files[PG_DUMP_FILE] = {"sha256": _sha256(target), "bytes": target.stat().st_size}
        else:
            for service in [name for name in SQLITE_ORDER if name in services]:
                source = store.sqlite_file(service)
                if not source.exists():
                    continue
                target = partial / source.name
                with (
                    sqlite3.connect(f"file:{source}?mode=ro", uri=True) as origin,
                    sqlite3.connect(target) as copy,
                ):
                    origin.backup(copy)
                copy.close()
                files[source.name] = {"sha256": _sha256(target), "bytes": target.stat().st_size}
        manifest = {
            "format": FORMAT,
            "backup_id": backup_id,
            "created_at": moment.isoformat(timespec="seconds"),
            "backend": store.backend,
            "services": list(services),
            "files": files,
            "log": log_state,
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for path in partial.iterdir():
            with path.open("rb") as stream:
                os.fsync(stream.fileno())
        os.replace(partial, directory)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def existing_schemas(store: Store, services: Sequence[str]) -> list[str]:
    """Those of ``services`` whose schema the PostgreSQL database holds."""
    names = ",".join(f"'{schema_name(service)}'" for service in services)
    listed = _run(
        [
            "psql",
            "--no-psqlrc",
            "--tuples-only",
            "--no-align",
            "-c",
            f"SELECT nspname FROM pg_namespace WHERE nspname IN ({names})",
            store.libpq_url(),
        ],
        what="psql",
    )
    present = {line.strip() for line in listed.splitlines()}
    return [service for service in services if schema_name(service) in present]


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise BackupError(f"{directory}: no {MANIFEST}: not a backup set")
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: format {manifest.get('format')!r}, this version reads {FORMAT}")
    return manifest


def verify_set(directory: Path) -> dict[str, Any]:
    """Prove the set whole: every file's hash, and that each file opens as what it claims to be."""
    manifest = read_manifest(directory)
    for name, expected in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise BackupError(f"{name}: missing from the set")
        if _sha256(path) != expected["sha256"]:
            raise BackupError(f"{name}: its SHA-256 differs from the manifest's: the file changed")
    if manifest["backend"] == "postgresql":
        listing = _run(["pg_restore", "--list", str(directory / PG_DUMP_FILE)], what="pg_restore --list")
        for service in manifest["services"]:
            if f"SCHEMA - {schema_name(service)}" not in listing:
                raise BackupError(f"{PG_DUMP_FILE}: holds no schema {schema_name(service)}")
    else:
        for name in manifest["files"]:
            with sqlite3.connect(f"file:{directory / name}?mode=ro", uri=True) as connection:
                (answer,) = connection.execute("PRAGMA integrity_check").fetchone()
            connection.close()
            if answer != "ok":
                raise BackupError(f"{name}: SQLite integrity check: {answer}")
    return manifest


def restore_set(store: Store, directory: Path) -> dict[str, Any]:
    """Replace every store the set holds with its copy; the services must be stopped."""
    manifest = verify_set(directory)
    if manifest["backend"] != store.backend:
        raise BackupError(f"the set is of {manifest['backend']}, the target is {store.backend}")
    if store.postgres_url:
        drops = "; ".join(f'DROP SCHEMA IF EXISTS "{schema_name(s)}" CASCADE' for s in manifest["services"])
        _run(["psql", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-c", drops, store.libpq_url()], what="psql")
        _run(
            [
                "pg_restore",
                "--exit-on-error",
                "--single-transaction",
                "--dbname",
                store.libpq_url(),
                str(directory / PG_DUMP_FILE),
            ],
            what="pg_restore",
        )
    else:
        store.data_dir.mkdir(parents=True, exist_ok=True)
        for name in manifest["files"]:
            target = store.data_dir / name
            for leftover in _sqlite_companions(target):
                leftover.unlink(missing_ok=True)
            temporary = target.with_name(f".{name}.restoring")
            shutil.copyfile(directory / name, temporary)
            os.replace(temporary, target)
    return manifest


def _sqlite_companions(path: Path) -> Iterable[Path]:
    return (path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))


def list_sets(into: Path) -> list[dict[str, Any]]:
    if not into.is_dir():
        return []
    found = []
    for directory in sorted(into.iterdir()):
        if directory.is_dir() and not directory.name.startswith(".") and (directory / MANIFEST).is_file():
            found.append(read_manifest(directory))
    return found


def prune_sets(into: Path, *, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` sets; the ids deleted."""
    sets = list_sets(into)
    doomed = sets[: max(0, len(sets) - keep)]
    for manifest in doomed:
        shutil.rmtree(into / manifest["backup_id"])
    return [manifest["backup_id"] for manifest in doomed]
