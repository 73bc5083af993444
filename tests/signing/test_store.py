"""The signing audit trail on SQLite and PostgreSQL: unique serials, append-only tables."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator

import pytest
from asn1crypto import tsp
from awareness.signing.v1 import signing_pb2
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from services.signing.domain.tsa import build_timestamp_request
from services.signing.models import APPEND_ONLY_TABLES
from tests.signing.conftest import StartSigning

pytestmark = pytest.mark.postgres


def _serial(response: bytes) -> int:
    token = tsp.TimeStampResp.load(response)["time_stamp_token"]
    serial: int = token["content"]["encap_content_info"]["content"].parsed["serial_number"].native
    return serial


class RepeatingSerials:
    """A deliberately bad serial source: hands out each serial twice."""

    def __init__(self) -> None:
        self._serials: Iterator[int] = iter([1000, 1000, 1000, 2000, 2000, 3000, *range(4000, 5000)])

    def __call__(self) -> int:
        return next(self._serials)


async def test_serials_are_unique_across_many_tokens(
    start_signing: StartSigning, store_url: str | None
) -> None:
    harness = await start_signing(database_url=store_url)
    stub = harness.stub("integration")
    requests = [build_timestamp_request(data=str(index).encode(), nonce=index + 1) for index in range(120)]
    responses: list[bytes] = []
    for batch in range(0, len(requests), 30):
        replies = await asyncio.gather(
            *(stub.Timestamp(signing_pb2.TimestampRequest(request=r)) for r in requests[batch : batch + 30])
        )
        responses.extend(reply.response for reply in replies)
    checkpoint = await harness.stub("service").SignCheckpoint(
        signing_pb2.SignCheckpointRequest(tree_size=5, root_hash=hashlib.sha256(b"r").digest())
    )
    issued = {format(_serial(response), "x") for response in responses}
    assert len(issued) == 120

    with harness.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT serial_hex, tsa, purpose, hash_algorithm, message_imprint, key_id"
                " FROM timestamp_tokens"
            )
        ).all()
        checkpoints = connection.execute(
            text("SELECT tree_size, timestamp_serial_hex, tsa FROM signed_checkpoints")
        ).all()
    assert len(rows) == 121 and len({row.serial_hex for row in rows}) == 121
    assert {row.serial_hex for row in rows if row.purpose == "request"} == issued
    assert all(
        row.tsa == "internal" and row.hash_algorithm == "sha256" and len(row.key_id) == 64 for row in rows
    )
    imprints = {bytes(row.message_imprint) for row in rows}
    assert hashlib.sha256(b"7").digest() in imprints
    assert [(size, tsa) for size, _, tsa in checkpoints] == [(5, "internal")]
    assert checkpoints[0].timestamp_serial_hex in {
        row.serial_hex for row in rows if row.purpose == "checkpoint"
    }
    assert checkpoint.checkpoint.timestamp_token


async def test_a_serial_already_on_record_is_never_issued_again(
    start_signing: StartSigning, store_url: str | None
) -> None:
    harness = await start_signing(database_url=store_url, serial_source=RepeatingSerials())
    stub = harness.stub("integration")
    serials = []
    for index in range(3):
        reply = await stub.Timestamp(
            signing_pb2.TimestampRequest(request=build_timestamp_request(data=bytes([index])))
        )
        serials.append(_serial(reply.response))
    # The source offered 1000 three times and 2000 twice; the store turned the repeats away.
    assert serials == [1000, 2000, 3000]
    with harness.engine.connect() as connection:
        stored = sorted(connection.execute(text("SELECT serial_hex FROM timestamp_tokens")).scalars())
    assert stored == sorted(format(serial, "x") for serial in serials)


@pytest.mark.parametrize("statement", ["UPDATE {table} SET id = id + 1000", "DELETE FROM {table}"])
async def test_the_store_refuses_update_and_delete(
    start_signing: StartSigning, store_url: str | None, statement: str
) -> None:
    harness = await start_signing(database_url=store_url)
    await harness.stub("service").SignCheckpoint(
        signing_pb2.SignCheckpointRequest(tree_size=1, root_hash=hashlib.sha256(b"r").digest())
    )
    await harness.stub("admin").RotateKey(
        signing_pb2.RotateKeyRequest(purpose=signing_pb2.KEY_PURPOSE_TIMESTAMP)
    )
    for table in APPEND_ONLY_TABLES:
        with harness.engine.connect() as connection:
            assert connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 1, table
            with pytest.raises(DatabaseError, match="append-only"):
                connection.execute(text(statement.format(table=table)))
            connection.rollback()
            assert connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 1, table
