"""Ports and PostgreSQL databases a test borrows and gives back."""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator

from sqlalchemy import Engine

from services.runtime import migrations
from services.runtime.db import create_db_engine

_HANDED_OUT_PORTS: set[int] = set()


def free_port() -> int:
    """A port free right now and never handed out before by this process.

    The kernel may offer a just-released port again, and a suite asks for a dozen ports before
    any process binds one: without the memory, two services can be given the same port.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT_PORTS:
            _HANDED_OUT_PORTS.add(port)
            return port


@contextlib.contextmanager
def temporary_database(server_url: str, *, prefix: str = "awareness_r") -> Iterator[str]:
    """A brand-new PostgreSQL database on the server of ``server_url``, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextlib.contextmanager
def migrated_engine(url: str, service: str) -> Iterator[Engine]:
    """``service``'s engine on ``url``, migrated to the newest schema (no service running), disposed after."""
    engine = create_db_engine(url, service=service)
    try:
        migrations.upgrade(service, engine)
        yield engine
    finally:
        engine.dispose()
