"""Raw dumps of a store, to prove that shredded or personal bytes are really gone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def pg_dump(url: str) -> bytes:
    """``pg_dump`` of the whole database (every schema), as bytes; fails the test if pg_dump is missing."""
    executable = shutil.which("pg_dump")
    assert executable is not None, "pg_dump is needed to dump PostgreSQL (install postgresql-client)"
    parsed = make_url(url)
    command = [
        executable,
        "--no-password",
        "--host",
        parsed.host or "127.0.0.1",
        "--port",
        str(parsed.port or 5432),
        "--username",
        parsed.username or "postgres",
        "--dbname",
        parsed.database or "postgres",
    ]
    env = {"PGPASSWORD": parsed.password} if parsed.password else {}
    result = subprocess.run(command, capture_output=True, timeout=120, check=True, env=env or None)
    return result.stdout


# --- what the server itself keeps: data files, WAL, Redis ----------------------------------

_CHUNK = 8 * 1024 * 1024


def needles(values: Iterable[str]) -> dict[bytes, str]:
    """Each value as UTF-8 and in its JSON-escaped form (``\\u00eb``, ``\\/``), mapped back to it."""
    found: dict[bytes, str] = {}
    for value in values:
        escaped = json.dumps(value)[1:-1]
        for form in (value, escaped, escaped.replace("/", "\\/")):
            found[form.encode()] = value
    return found


def holding(data: bytes, wanted: Mapping[bytes, str]) -> set[str]:
    return {value for needle, value in wanted.items() if needle in data}


def scan_file(path: Path, wanted: Mapping[bytes, str]) -> set[str]:
    """The values whose bytes occur in ``path``, read in chunks that overlap by the longest needle."""
    overlap = max(map(len, wanted), default=1) - 1
    found: set[str] = set()
    tail = b""
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            window = tail + chunk
            found |= holding(window, wanted)
            tail = window[-overlap:] if overlap else b""
    return found


def postgres_data_directory(url: str) -> Path:
    """The server's data directory, readable here (the server runs on this machine, tests as root).

    Fails under AWARENESS_REQUIRE_SERVICES=1 (CI runs as root beside the server) and skips otherwise.
    """
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            directory = Path(str(connection.execute(text("SHOW data_directory")).scalar_one()))
    finally:
        engine.dispose()
    wal = directory / "pg_wal"
    if not (os.access(directory, os.R_OK | os.X_OK) and os.access(wal, os.R_OK | os.X_OK)):
        reason = f"PostgreSQL's data directory {directory} is not readable by uid {os.getuid()}"
        if os.environ.get("AWARENESS_REQUIRE_SERVICES", "") == "1":
            pytest.fail(reason + " (AWARENESS_REQUIRE_SERVICES=1: run the tests as root beside the server)")
        pytest.skip(reason)
    return directory


def flush_postgres(url: str) -> None:
    """Write every dirty page to the data files and close the current WAL segment (superuser)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("CHECKPOINT"))
            connection.execute(text("SELECT pg_switch_wal()"))
    finally:
        engine.dispose()


def postgres_files_holding(url: str, values: Iterable[str]) -> dict[str, set[str]]:
    """Every file of the server (data files of every database, WAL, logs) that holds one of
    ``values``, after a CHECKPOINT. The server is shared by every test database, so the values
    must be unique to the caller (uuid-suffixed)."""
    wanted = needles(values)
    directory = postgres_data_directory(url)
    flush_postgres(url)
    leaks: dict[str, set[str]] = {}
    scanned = 0
    for root, _dirs, names in os.walk(directory):
        for name in names:
            path = Path(root) / name
            try:
                found = scan_file(path, wanted)
            except (FileNotFoundError, NotADirectoryError):
                continue  # a dropped database or a recycled WAL segment, gone mid-walk
            scanned += 1
            if found:
                leaks[str(path.relative_to(directory))] = found
    assert scanned > 0 and any((directory / "pg_wal").iterdir()), f"nothing scanned under {directory}"
    return leaks


def _redis_contents(client: Any, key: bytes) -> list[bytes]:
    """A key's value, read by its type (DUMP may LZF-compress long strings, so it is not enough)."""
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind == "string":
        parts = [client.get(key)]
    elif kind == "hash":
        parts = [part for pair in client.hgetall(key).items() for part in pair]
    elif kind == "list":
        parts = client.lrange(key, 0, -1)
    elif kind == "set":
        parts = list(client.smembers(key))
    elif kind == "zset":
        parts = [member for member, _score in client.zrange(key, 0, -1, withscores=True)]
    elif kind == "stream":
        parts = [part for _id, entry in client.xrange(key) for pair in entry.items() for part in pair]
    else:
        parts = []
    return [part for part in [client.dump(key), *parts] if isinstance(part, bytes)]


def redis_holding(url: str, values: Iterable[str]) -> dict[str, set[str]]:
    """Every key, in every database of the Redis server at ``url``, whose name or value holds one
    of ``values``. The server may be shared: the values must be unique to the caller."""
    import redis

    wanted = needles(values)
    leaks: dict[str, set[str]] = {}
    probe = redis.Redis.from_url(url, socket_timeout=10)
    try:
        databases = int(str(probe.config_get("databases").get("databases") or 16))
    finally:
        probe.close()
    for db in range(databases):
        client = redis.Redis.from_url(url, db=db, socket_timeout=10)
        try:
            for key in client.scan_iter(count=1000):
                found = holding(key, wanted)
                for part in _redis_contents(client, key):
                    found |= holding(part, wanted)
                if found:
                    leaks[f"db{db}:{key.decode(errors='replace')}"] = found
        finally:
            client.close()
    return leaks
