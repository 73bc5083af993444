"""The log archive's segments: written whole, read back exactly, and refused when they do not join up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.ingest.archive import ArchiveError, LogArchive, encode_row
from services.ingest.repository import CHECKPOINTS, RECORDS


def _leaf(index: int) -> list[Any]:
    record: dict[str, Any] = {column.name: None for column in RECORDS.columns}
    record.update(event_id=f"event-{index}", seq=index + 1, nonce=b"\x00" * 12, leaf_hash=bytes([index]) * 32)
    encoded = encode_row(RECORDS, record)
    return [index, [encoded[column.name] for column in RECORDS.columns], None, []]


def _checkpoint(size: int) -> dict[str, Any]:
    values: dict[str, Any] = {column.name: None for column in CHECKPOINTS.columns}
    values.update(tree_size=size, root_hash=b"\x07" * 32, note="note\n", timestamp_token=b"token")
    return values


def test_segments_read_back_as_written_with_their_checkpoint(tmp_path: Path) -> None:
    archive = LogArchive(tmp_path)
    archive.write_segment(start=0, leaves=[_leaf(0), _leaf(1)], checkpoint=None)
    archive.write_segment(start=2, leaves=[_leaf(2)], checkpoint=_checkpoint(3))
    reopened = LogArchive(tmp_path)
    assert reopened.archived_size() == 3
    first, second = reopened.segments()
    checkpoint, leaves = reopened.read_segment(second)
    assert checkpoint is not None and checkpoint["root_hash"] == b"\x07" * 32
    (leaf,) = list(leaves)
    assert leaf.leaf_index == 2 and leaf.record["leaf_hash"] == b"\x02" * 32 and leaf.record["seq"] == 3
    assert reopened.read_segment(first)[0] is None


def test_a_segment_must_follow_on_from_the_last(tmp_path: Path) -> None:
    archive = LogArchive(tmp_path)
    archive.write_segment(start=0, leaves=[_leaf(0)], checkpoint=None)
    with pytest.raises(ArchiveError, match="must start at 1"):
        archive.write_segment(start=5, leaves=[_leaf(5)], checkpoint=None)


def test_a_missing_segment_is_a_gap_nobody_can_restore_across(tmp_path: Path) -> None:
    archive = LogArchive(tmp_path)
    archive.write_segment(start=0, leaves=[_leaf(0)], checkpoint=None)
    archive.write_segment(start=1, leaves=[_leaf(1)], checkpoint=None)
    archive.segments()[0].path.unlink()
    with pytest.raises(ArchiveError, match="not contiguous"):
        LogArchive(tmp_path).segments()


def test_a_writer_that_led_before_reads_what_the_other_wrote_once_it_leads_again(tmp_path: Path) -> None:
    first, second = LogArchive(tmp_path), LogArchive(tmp_path)
    first.write_segment(start=0, leaves=[_leaf(0)], checkpoint=None)
    assert second.archived_size() == 1
    first.write_segment(start=1, leaves=[_leaf(1)], checkpoint=None)
    second.forget()  # what the integrator does when it takes the lead
    with pytest.raises(ArchiveError, match="must start at 2"):
        second.write_segment(start=1, leaves=[_leaf(1)], checkpoint=None)
    second.write_segment(start=2, leaves=[_leaf(2)], checkpoint=None)
    assert [s.end for s in LogArchive(tmp_path).segments()] == [1, 2, 3]
