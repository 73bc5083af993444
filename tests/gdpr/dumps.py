"""Raw dumps of a store, to prove that shredded or personal bytes are really gone."""

from __future__ import annotations

import shutil
import subprocess

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
