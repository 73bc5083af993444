"""One datetime <-> Timestamp conversion for every service."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2

from services.runtime.timestamps import (
    from_timestamp,
    optional_timestamp,
    timestamp_from_us,
    timestamp_to_us,
    to_timestamp,
)


def test_aware_datetime_keeps_its_instant() -> None:
    paris = datetime(2026, 3, 1, 13, 30, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    stamp = to_timestamp(paris)
    assert (stamp.seconds, stamp.nanos) == (int(paris.timestamp()), 123456000)
    assert from_timestamp(stamp) == paris
    assert from_timestamp(stamp).tzinfo is UTC


def test_naive_datetime_is_utc_not_host_local_time() -> None:
    naive = datetime(2026, 3, 1, 12, 30)
    assert to_timestamp(naive) == to_timestamp(naive.replace(tzinfo=UTC))


def test_optional_timestamp_leaves_unset_fields_unset() -> None:
    assert optional_timestamp(None) is None
    assert optional_timestamp(datetime(1970, 1, 1, tzinfo=UTC)) == timestamp_pb2.Timestamp()


@pytest.mark.parametrize("micros", [0, 1, 999_999, 1_000_000, 1_748_779_200_123_456, -1, -1_000_001])
def test_microseconds_round_trip_like_protobufs_own_conversion(micros: int) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromMicroseconds(micros)
    assert timestamp_from_us(micros) == expected
    assert 0 <= timestamp_from_us(micros).nanos < 1_000_000_000
    assert timestamp_to_us(timestamp_from_us(micros)) == micros
