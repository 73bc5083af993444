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


def timestamp_from_us(micros: int) -> timestamp_pb2.Timestamp:
    """The Timestamp of a time stored as microseconds since the Unix epoch."""
    stamp = timestamp_pb2.Timestamp()
    # Fields set directly: this runs once per event on the read paths.
    stamp.seconds, remainder = divmod(micros, 1_000_000)
    stamp.nanos = remainder * 1000
    return stamp


def timestamp_to_us(stamp: timestamp_pb2.Timestamp) -> int:
    """Microseconds since the Unix epoch (sub-microsecond digits are dropped)."""
    return stamp.seconds * 1_000_000 + stamp.nanos // 1000
