"""The log archive: every leaf a checkpoint covers is written outside the database before the
checkpoint is stored, so no checkpoint anybody holds can outrun what a restore can bring back.

With ``AWARENESS_ARCHIVE_DIR`` set, the integrator's leader writes, before it stores each signed
checkpoint, the records of the leaves since the last archived one as gzip JSON-lines segments
under ``<dir>/log/``: ``<start>-<end>.jsonl.gz`` (zero-padded leaf indices, end exclusive). The first
line of a segment is its header (format, start, end, the checkpoint that ends it if one does, and
the column names of each kind of row); each further line is one leaf, ``[index, record row, metadata
row, access-record index rows]``, each row its values in column order, binary columns in base64.
A segment is written to a temporary name, fsynced and renamed, so a reader never sees half of one.

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

from sqlalchemy import LargeBinary, Table
from sqlalchemy.orm import Session

from services.ingest.repository import ACCESS, CHECKPOINTS, LEAVES, METADATA, RECORDS

# What each position of a leaf line holds (the header lists their columns).
_LINE_TABLES = {"record": RECORDS, "metadata": METADATA, "access": ACCESS}

FORMAT = 1
SEGMENT_LEAVES = 5_000
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

    def forget(self) -> None:
        """Read the directory again before the next write (another writer may have added segments)."""
        self._archived_size = None

    def write_segment(
        self,
        *,
        start: int,
        leaves: Sequence[Sequence[Any]],
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
            "columns": {
                name: [column.name for column in table.columns] for name, table in _LINE_TABLES.items()
            },
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

        names = header["columns"]

        def leaves() -> Iterator[ArchivedLeaf]:
            for offset, line in enumerate(lines[1:]):
                leaf_index, record, metadata, access = json.loads(line)
                if leaf_index != segment.start + offset:
                    raise ArchiveError(f"{segment.path.name}: leaf {segment.start + offset} is out of order")
                yield ArchivedLeaf(
                    leaf_index=leaf_index,
                    record=decode_row(RECORDS, dict(zip(names["record"], record, strict=True))),
                    metadata=(
                        None
                        if metadata is None
                        else decode_row(METADATA, dict(zip(names["metadata"], metadata, strict=True)))
                    ),
                    access=[
                        decode_row(ACCESS, dict(zip(names["access"], row, strict=True))) for row in access
                    ],
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


def _binary_positions(table: Table) -> frozenset[int]:
    return frozenset(i for i, column in enumerate(table.columns) if isinstance(column.type, LargeBinary))


def _encoded(values: Sequence[Any], binary: frozenset[int]) -> list[Any]:
    return [
        base64.b64encode(bytes(value)).decode("ascii") if i in binary and value is not None else value
        for i, value in enumerate(values)
    ]


def leaves_for_archive(session: Session, *, start: int, stop: int) -> list[list[Any]]:
    """The leaves [start, stop) as archive lines: ``[index, record, metadata, access rows]``, each row
    a list of values in its table's column order (the segment header names the columns).

    Two range queries through the driver's cursor (binary results on PostgreSQL), as the integrator
    reads records: the archive reads every leaf once more, and SQLAlchemy's row handling, IN lists
    and one JSON object per row cost more than the queries (86 µs a leaf that way, 5,000 leaves).
    """
    connection = session.connection()
    raw: Any = connection.connection.dbapi_connection
    assert raw is not None
    postgres = connection.dialect.name == "postgresql"
    mark = "%s" if postgres else "?"
    record_names = [column.name for column in RECORDS.columns]
    metadata_names = [column.name for column in METADATA.columns]
    access_names = [column.name for column in ACCESS.columns]
    columns = ", ".join([*(f"r.{n}" for n in record_names), *(f"m.{n}" for n in metadata_names)])
    leaves_statement = (
        f"SELECT l.leaf_index, {columns} FROM {LEAVES.name} l"
        f" JOIN {RECORDS.name} r ON r.seq = l.seq"
        f" LEFT JOIN {METADATA.name} m ON m.event_id = l.event_id"
        f" WHERE l.leaf_index >= {mark} AND l.leaf_index < {mark} ORDER BY l.leaf_index"
    )
    access_statement = (
        f"SELECT {', '.join(f'a.{n}' for n in access_names)} FROM {ACCESS.name} a"
        f" JOIN {LEAVES.name} l ON l.event_id = a.event_id"
        f" WHERE l.leaf_index >= {mark} AND l.leaf_index < {mark} ORDER BY a.event_id, a.ordinal"
    )
    cursor = raw.cursor(binary=True) if postgres else raw.cursor()
    try:
        cursor.execute(leaves_statement, (start, stop))
        rows = cursor.fetchall()
        cursor.execute(access_statement, (start, stop))
        access_rows = cursor.fetchall()
    finally:
        cursor.close()
    if len(rows) != stop - start:
        raise ArchiveError(f"leaves {start}..{stop - 1} are not all integrated")
    record_binary, metadata_binary = _binary_positions(RECORDS), _binary_positions(METADATA)
    access_binary = _binary_positions(ACCESS)
    access: dict[str, list[list[Any]]] = {}
    event_position = access_names.index("event_id")
    for row in access_rows:
        access.setdefault(row[event_position], []).append(_encoded(row, access_binary))
    split = 1 + len(record_names)
    record_event = record_names.index("event_id")
    note = metadata_names.index("label_note")
    lines: list[list[Any]] = []
    for row in rows:
        record = _encoded(row[1:split], record_binary)
        metadata: list[Any] | None = None
        if row[split] is not None:
            metadata = _encoded(row[split:], metadata_binary)
            metadata[note] = ""
        lines.append([row[0], record, metadata, access.get(record[record_event], [])])
    return lines


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
