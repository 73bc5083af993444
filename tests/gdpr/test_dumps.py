"""The no-plaintext scanners find plaintext where it is: a search that cannot find is no check."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from tests.gdpr.dumps import needles, postgres_files_holding, redis_holding, scan_file


def test_a_value_split_across_read_chunks_and_its_json_escaped_form_are_found(tmp_path: Path) -> None:
    value = f"Zoë/{uuid.uuid4().hex}"
    path = tmp_path / "blob"
    # Straddles the scanner's 8 MiB read boundary; the second copy is only in JSON-escaped form.
    path.write_bytes(b"x" * (8 * 1024 * 1024 - 5) + value.encode() + b"y" * 10)
    assert scan_file(path, needles([value])) == {value}
    path.write_bytes(json.dumps({"v": value}).encode())
    assert value.encode() not in path.read_bytes()
    assert scan_file(path, needles([value])) == {value}


@pytest.mark.postgres
def test_postgres_scan_finds_a_row_in_the_data_files_and_in_the_wal(fresh_postgres_db: str) -> None:
    value = f"plaintext-{uuid.uuid4().hex}"
    engine = create_engine(fresh_postgres_db)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE leak (v text)"))
            connection.execute(text("INSERT INTO leak VALUES (:v)"), {"v": value})
    finally:
        engine.dispose()
    found = postgres_files_holding(fresh_postgres_db, [value, f"absent-{uuid.uuid4().hex}"])
    assert any(path.startswith("base/") for path in found), found
    assert any(path.startswith("pg_wal/") for path in found), found
    assert set().union(*found.values()) == {value}


@pytest.mark.redis
def test_redis_scan_finds_values_of_every_type_and_in_key_names(redis_url: str) -> None:
    marker = uuid.uuid4().hex
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    kinds = ("string", "hash", "list", "set", "zset")
    keys = [f"test-dumps:{marker}:{kind}" for kind in kinds] + [f"test-dumps:name-{marker}"]
    values = [f"{kind}-{marker}" for kind in kinds] + [f"name-{marker}"]
    try:
        # A long string: DUMP compresses strings over 20 bytes, so reading by type is what finds it.
        client.set(keys[0], f"{'a' * 40}string-{marker}{'a' * 40}")
        client.hset(keys[1], mapping={"field": f"hash-{marker}"})
        client.rpush(keys[2], "other", f"list-{marker}")
        client.sadd(keys[3], f"set-{marker}")
        client.zadd(keys[4], {f"zset-{marker}": 1.0})
        client.set(keys[5], "nothing personal")
        found = redis_holding(redis_url, values)
        assert set().union(*found.values()) == set(values), found
    finally:
        client.delete(*keys)
        client.close()
