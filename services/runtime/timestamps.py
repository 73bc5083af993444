"""``datetime`` <-> ``google.protobuf.Timestamp``, in one place for every service.

Datetimes inside the suite are timezone-aware UTC; a naive one is read as UTC (never as the
host's local time), so a message means the same instant on every machine.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2


def to_timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """The Timestamp of ``moment`` (naive means UTC)."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment if moment.tzinfo is None else moment.astimezone(UTC))
    return stamp


def optional_timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    """``to_timestamp``, or None for None (an unset message field)."""
    return None if moment is None else to_timestamp(moment)


def from_timestamp(stamp: timestamp_pb2.Timestamp) -> datetime:
    """The timezone-aware UTC datetime of ``stamp``."""
    return stamp.ToDatetime(tzinfo=UTC)
