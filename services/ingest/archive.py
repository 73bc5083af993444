"""The log archive: every leaf a checkpoint covers is written outside the database before the
checkpoint is stored, so no checkpoint anybody holds can outrun what a restore can bring back.

With ``AWARENESS_ARCHIVE_DIR`` set, the integrator's leader writes, before it stores each signed
checkpoint, the records of the leaves since the last archived one as gzip JSON-lines segments
under ``<dir>/log/``: ``<start>-<end>.jsonl.gz`` (zero-padded leaf indices, end exclusive). The first
line of a segment is its header (format, start, end, and the checkpoint that ends it, if one does);
each further line is one leaf: its index, its record row, its metadata row and its access-record
index rows, binary columns in base64. A segment is written to a temporary name, fsynced and renamed,
so a reader never sees half of one.

Label notes are left out (``label_note`` is blanked): a note is free text an analyst typed, and the
archive holds nothing in clear that the log's own leaves do not. Personal fields stay encrypted under
each person's data key, so crypto-shredding reaches the archive as it reaches the database.

``services.ingest.recovery`` re-imports segments after a restore (docs/disaster-recovery.md).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import LargeBinary, Table, select
from sqlalchemy.orm import Session

from services.ingest.repository import ACCESS, CHECKPOINTS, LEAVES, METADATA, RECORDS

FORMAT = 1
SEGMENT_LEAVES = 5_000
# Bound on an IN list (SQLite's default limit on host parameters is far above it).
_IN_CHUNK = 1_000
_NAME = re.compile(r"^(\d{12})-(\d{12})\.jsonl\.gz$")


class ArchiveError(Exception):
    """The archive cannot be read or written as the log needs it."""


@dataclass(frozen=True, slots=True)
class Segment:
    start: int
    end: int
    path: Path


@dataclass(frozen=True, slots=True)
class ArchivedLeaf:
    leaf_index: int
    record: dict[str, Any]
    metadata: dict[str, Any] | None
    access: list[dict[str, Any]]


def encode_row(table: Table, row: Mapping[Any, Any]) -> dict[str, Any]:
    """A row as JSON values: binary columns in base64, the rest as the driver gave them."""
    encoded: dict[str, Any] = {}
    for column in table.columns:
        value = row[column.name]
        if value is not None and isinstance(column.type, LargeBinary):
            value = base64.b64encode(bytes(value)).decode("ascii")
        encoded[column.name] = value
    return encoded


def decode_row(table: Table, document: Mapping[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for column in table.columns:
        if column.name not in document:
            continue
        value = document[column.name]
        if value is not None and isinstance(column.type, LargeBinary):
            value = base64.b64decode(value, validate=True)
        decoded[column.name] = value
    return decoded


class LogArchive:
    """The segments under ``<root>/log``; one writer (the integrator's leader) at a time."""

    def __init__(self, root: Path) -> None:
        self.directory = root / "log"
        self._archived_size: int | None = None

    def segments(self) -> list[Segment]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _NAME.match(path.name)
            if match:
                found.append(Segment(start=int(match[1]), end=int(match[2]), path=path))
        found.sort(key=lambda segment: segment.start)
        expected = 0
        for segment in found:
            if segment.start != expected or segment.end <= segment.start:
                raise ArchiveError(
                    f"{self.directory}: segments are not contiguous from leaf 0: "
                    f"expected one starting at {expected}, found {segment.path.name}"
                )
            expected = segment.end
        return found

    def archived_size(self) -> int:
        """How many leaves, from index 0, the archive holds (read from the directory once)."""
        if self._archived_size is None:
            segments = self.segments()
            self._archived_size = segments[-1].end if segments else 0
        return self._archived_size

    def write_segment(
        self,
        *,
        start: int,
        leaves: Sequence[dict[str, Any]],
        checkpoint: Mapping[str, Any] | None,
    ) -> Segment:
        end = start + len(leaves)
        if start != self.archived_size() or not leaves:
            raise ArchiveError(f"a segment must start at {self.archived_size()} and hold leaves")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{start:012d}-{end:012d}.jsonl.gz"
        header = {
            "format": FORMAT,
            "start": start,
            "end": end,
            "checkpoint": None if checkpoint is None else encode_row(CHECKPOINTS, checkpoint),
        }
        temporary = path.with_name(f".{path.name}.partial")
        with temporary.open("wb") as raw:
            # mtime=0: the same leaves give the same bytes.
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as stream:
                stream.write(json.dumps(header, separators=(",", ":")).encode() + b"\n")
                for leaf in leaves:
                    stream.write(json.dumps(leaf, separators=(",", ":")).encode() + b"\n")
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temporary, path)
        _fsync_directory(self.directory)
        self._archived_size = end
        return Segment(start=start, end=end, path=path)

    def read_segment(self, segment: Segment) -> tuple[dict[str, Any] | None, Iterator[ArchivedLeaf]]:
        """The checkpoint that ends the segment (decoded), and its leaves in index order."""
        with gzip.open(segment.path, "rb") as stream:
            lines = stream.read().splitlines()
        if not lines:
            raise ArchiveError(f"{segment.path.name}: empty")
        header = json.loads(lines[0])
        if header.get("format") != FORMAT or (header["start"], header["end"]) != (segment.start, segment.end):
            raise ArchiveError(f"{segment.path.name}: its header does not match its name or format")
        if len(lines) - 1 != segment.end - segment.start:
            raise ArchiveError(f"{segment.path.name}: holds {len(lines) - 1} leaves, its name says otherwise")
        checkpoint = header.get("checkpoint")

        def leaves() -> Iterator[ArchivedLeaf]:
            for offset, line in enumerate(lines[1:]):
                document = json.loads(line)
                if document["leaf_index"] != segment.start + offset:
                    raise ArchiveError(f"{segment.path.name}: leaf {segment.start + offset} is out of order")
                yield ArchivedLeaf(
                    leaf_index=document["leaf_index"],
                    record=decode_row(RECORDS, document["record"]),
                    metadata=_decoded(METADATA, document["metadata"]),
                    access=[decode_row(ACCESS, row) for row in document["access"]],
                )

        return _decoded(CHECKPOINTS, checkpoint), leaves()


def _decoded(table: Table, document: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if document is None else decode_row(table, document)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for begin in range(0, len(values), _IN_CHUNK):
        yield values[begin : begin + _IN_CHUNK]


def leaves_for_archive(session: Session, *, start: int, stop: int) -> list[dict[str, Any]]:
    """The leaves [start, stop) as archive lines: index, record, metadata and access rows."""
    leaves = session.execute(
        select(LEAVES.c.leaf_index, LEAVES.c.event_id)
        .where(LEAVES.c.leaf_index >= start, LEAVES.c.leaf_index < stop)
        .order_by(LEAVES.c.leaf_index)
    ).all()
    if len(leaves) != stop - start:
        raise ArchiveError(f"leaves {start}..{stop - 1} are not all integrated")
    event_ids = [row.event_id for row in leaves]
    records: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    access: dict[str, list[dict[str, Any]]] = {}
    for chunk in _chunks(event_ids):
        for row in session.execute(select(RECORDS).where(RECORDS.c.event_id.in_(chunk))).mappings():
            records[row["event_id"]] = encode_row(RECORDS, row)
        for row in session.execute(select(METADATA).where(METADATA.c.event_id.in_(chunk))).mappings():
            encoded = encode_row(METADATA, row)
            encoded["label_note"] = ""
            metadata[row["event_id"]] = encoded
        for row in session.execute(
            select(ACCESS).where(ACCESS.c.event_id.in_(chunk)).order_by(ACCESS.c.event_id, ACCESS.c.ordinal)
        ).mappings():
            access.setdefault(row["event_id"], []).append(encode_row(ACCESS, row))
    return [
        {
            "leaf_index": row.leaf_index,
            "record": records[row.event_id],
            "metadata": metadata.get(row.event_id),
            "access": access.get(row.event_id, []),
        }
        for row in leaves
    ]


def archive_through(
    archive: LogArchive, session: Session, *, tree_size: int, checkpoint: Mapping[str, Any]
) -> int:
    """Write segments up to ``tree_size`` (the last one ends with ``checkpoint``); leaves written."""
    start = archive.archived_size()
    if start > tree_size:
        raise ArchiveError(
            f"the archive holds {start} leaves, more than the log's {tree_size}: "
            "is it another log's archive, or was the database restored without reconciliation?"
        )
    written = 0
    while start < tree_size:
        stop = min(tree_size, start + SEGMENT_LEAVES)
        leaves = leaves_for_archive(session, start=start, stop=stop)
        ending = checkpoint if stop == tree_size else None
        archive.write_segment(start=start, leaves=leaves, checkpoint=ending)
        written += stop - start
        start = stop
    return written
