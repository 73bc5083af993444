"""Backup sets on SQLite files, and the restore mark that keeps a restored service from starting."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from services.backup.sets import (
    BackupError,
    Store,
    create_set,
    list_sets,
    prune_sets,
    restore_set,
    verify_set,
)
from services.cli import main
from services.runtime import db
from services.runtime.config import ConfigError
from services.runtime.recovery import clear_restored, mark_restored, pending_restore, refuse_if_restored


def _store(directory: Path) -> Store:
    directory.mkdir(parents=True, exist_ok=True)
    for service, rows in (("ingest", 3), ("gdpr", 2)):
        with sqlite3.connect(directory / f"{service}.db") as connection:
            connection.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
            connection.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(rows)])
        connection.close()
    return Store(postgres_url=None, data_dir=directory)


def test_a_set_is_proved_whole_and_restores_every_file(tmp_path: Path) -> None:
    store = _store(tmp_path / "var")
    manifest = create_set(store, services=("ingest", "gdpr"), into=tmp_path / "sets", log_state={})
    backup = tmp_path / "sets" / manifest["backup_id"]
    assert set(manifest["files"]) == {"ingest.db", "gdpr.db"}
    assert verify_set(backup)["backup_id"] == manifest["backup_id"]

    target = Store(postgres_url=None, data_dir=tmp_path / "elsewhere")
    target.data_dir.mkdir()
    (target.data_dir / "ingest.db-wal").write_bytes(b"a write-ahead log of another database")
    restore_set(target, backup)
    assert not (target.data_dir / "ingest.db-wal").exists()
    with sqlite3.connect(target.data_dir / "ingest.db") as connection:
        assert connection.execute("SELECT count(*) FROM t").fetchone() == (3,)
    connection.close()


def test_a_changed_file_fails_verification_and_is_not_restored(tmp_path: Path) -> None:
    store = _store(tmp_path / "var")
    manifest = create_set(store, services=("ingest", "gdpr"), into=tmp_path / "sets", log_state={})
    backup = tmp_path / "sets" / manifest["backup_id"]
    copy = backup / "gdpr.db"
    copy.write_bytes(copy.read_bytes()[:-1] + b"\x01")
    with pytest.raises(BackupError, match="SHA-256"):
        verify_set(backup)
    with pytest.raises(BackupError):
        restore_set(Store(postgres_url=None, data_dir=tmp_path / "target"), backup)
    assert not (tmp_path / "target" / "ingest.db").exists()


def test_pruning_keeps_the_newest_sets(tmp_path: Path) -> None:
    store = _store(tmp_path / "var")
    ids = [
        create_set(store, services=("ingest",), into=tmp_path / "sets", log_state={})["backup_id"]
        for _ in range(3)
    ]
    assert prune_sets(tmp_path / "sets", keep=1) == sorted(ids)[:2]
    assert [m["backup_id"] for m in list_sets(tmp_path / "sets")] == sorted(ids)[2:]


def test_a_restored_store_refuses_to_serve_until_the_mark_is_cleared(tmp_path: Path) -> None:
    engine = db.create_db_engine(f"sqlite:///{tmp_path / 'ingest.db'}", service="ingest")
    try:
        assert pending_restore(engine) is None
        refuse_if_restored(engine, service="ingest")
        mark_restored(engine, backup_id="20261207T010000Z-abc")
        assert pending_restore(engine) == "20261207T010000Z-abc"
        with pytest.raises(ConfigError, match="awareness backup reconcile"):
            refuse_if_restored(engine, service="ingest")
        clear_restored(engine)
        refuse_if_restored(engine, service="ingest")
    finally:
        engine.dispose()


def test_in_kubernetes_a_backup_without_postgresql_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(SystemExit, match="needs DATABASE_URL"):
        main(["backup", "create", "--to", "/tmp/nowhere"])
