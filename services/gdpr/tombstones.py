"""Erasure tombstones: one file per erasure, outside the database, written before the erasure commits.

A restore brings back the database as it was at the backup, with the data keys of everybody erased
since. The tombstones are what ``awareness backup reconcile`` replays so that none of them comes back
(docs/disaster-recovery.md). They live under ``<AWARENESS_ARCHIVE_DIR>/tombstones``, next to the log
archive and the backup sets, on storage that outlives the database.

A tombstone holds the erasure's id, the pseudonym and the time: what the erasure record in the log
holds too, and no identifier (gdpr itself no longer knows it). Not the reason nor the actor: those
are free text a person typed and a staff member's name. A tombstone whose erasure then failed to
commit erases the person on replay, which is what was asked for.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from services.runtime.errors import UnavailableError

TOMBSTONE_UNAVAILABLE = "TOMBSTONE_UNAVAILABLE"
_NAME = re.compile(r"^[0-9a-f-]{36}\.json$")


@dataclass(frozen=True, slots=True)
class Tombstone:
    erasure_id: str
    pseudonym: str
    erase_time: datetime


class TombstoneJournal:
    def __init__(self, root: Path) -> None:
        self.directory = root / "tombstones"

    def write(self, *, erasure_id: str, pseudonym: str, erase_time: datetime) -> None:
        """Durably, or not at all: raises UnavailableError, and the erasure rolls back."""
        document = {"erasure_id": erasure_id, "pseudonym": pseudonym, "erase_time": erase_time.isoformat()}
        path = self.directory / f"{erasure_id}.json"
        temporary = path.with_name(f".{path.name}.partial")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with temporary.open("w", encoding="utf-8") as stream:
                json.dump(document, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
            descriptor = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        except OSError as error:
            raise UnavailableError(
                "the erasure tombstone cannot be written; nothing was erased, retry later",
                reason=TOMBSTONE_UNAVAILABLE,
            ) from error

    def read(self) -> list[Tombstone]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.iterdir()):
            if not _NAME.match(path.name):
                continue
            document = json.loads(path.read_text(encoding="utf-8"))
            found.append(
                Tombstone(
                    erasure_id=str(document["erasure_id"]),
                    pseudonym=str(document["pseudonym"]),
                    erase_time=datetime.fromisoformat(document["erase_time"]),
                )
            )
        found.sort(key=lambda tombstone: tombstone.erase_time)
        return found
