"""The organisation's directory as gdpr keeps it: who belongs to which department, and who manages whom.

Pure logic, no I/O: checking imported entries (from the API or a CSV file), parsing the CSV file the CLI
reads, and the diff of an import against what is stored (including the people a full sync removes).
Identifiers appear here only on their way in: the store keeps pseudonyms, and a violation or CSV error
names a field or a line, never the identifier itself.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from services.gdpr.domain.keys import normalise_identifier
from services.runtime.errors import FieldViolation

MAX_IMPORT_ENTRIES = 5000  # entries per ImportDirectory call (the CLI sends chunks of this size)
MAX_SUBJECT_LENGTH = 320
MAX_DEPARTMENT_LENGTH = 128
CSV_COLUMNS = ("subject", "department", "manager")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One person as imported: identifiers in clear (on their way to a pseudonym), the department."""

    subject: str
    department: str = ""
    manager_subject: str = ""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a person sits in the organisation, as stored: department and manager's pseudonym."""

    department: str
    manager_pseudonym: str | None


@dataclass(frozen=True, slots=True)
class DirectoryDiff:
    """An import against the stored entries, by pseudonym."""

    created: dict[str, Placement]
    updated: dict[str, Placement]
    unchanged: list[str]


def normalise_department(department: str) -> str:
    """The stored form of a department: NFKC, surrounding spaces removed, inner runs of spaces as one.

    Case is kept (it is how the organisation writes its group names); two spellings that differ only by
    spacing are one group, so an aggregate does not split a department into groups smaller than k.
    """
    return " ".join(unicodedata.normalize("NFKC", department).split())


def _department_problem(department: str) -> str | None:
    if _CONTROL.search(department):
        return "must not contain control characters"
    value = normalise_department(department)
    if len(value) > MAX_DEPARTMENT_LENGTH:
        return f"must be at most {MAX_DEPARTMENT_LENGTH} characters"
    if "@" in value:
        # A group name, never an address: departments are used in aggregates and are not personal data.
        return "must be a group name, not an address (no '@')"
    return None


def _identifier_problem(value: str) -> str | None:
    if _CONTROL.search(value.strip()):
        return "must not contain control characters"
    if len(value) > MAX_SUBJECT_LENGTH:
        return f"must be at most {MAX_SUBJECT_LENGTH} characters"
    try:
        normalise_identifier(value)
    except ValueError:
        return "must name a data subject"
    return None


def entry_violations(entries: Sequence[DirectoryEntry], *, field: str = "entries") -> list[FieldViolation]:
    """Every problem of one import call, by field path (``entries[3].department``); none when valid.

    A subject may appear once per call, and may not be their own manager.
    """
    violations: list[FieldViolation] = []
    if not entries:
        violations.append(FieldViolation(field, "must not be empty"))
    elif len(entries) > MAX_IMPORT_ENTRIES:
        violations.append(FieldViolation(field, f"at most {MAX_IMPORT_ENTRIES} entries per call"))
    first_index: dict[str, int] = {}
    for index, entry in enumerate(entries):
        path = f"{field}[{index}]"
        subject_problem = _identifier_problem(entry.subject)
        if subject_problem is not None:
            violations.append(FieldViolation(f"{path}.subject", subject_problem))
        department_problem = _department_problem(entry.department)
        if department_problem is not None:
            violations.append(FieldViolation(f"{path}.department", department_problem))
        has_manager = bool(entry.manager_subject.strip())
        manager_problem = _identifier_problem(entry.manager_subject) if has_manager else None
        if manager_problem is not None:
            violations.append(FieldViolation(f"{path}.manager_subject", manager_problem))
        if subject_problem is not None:
            continue
        subject = normalise_identifier(entry.subject)
        if subject in first_index:
            violations.append(
                FieldViolation(f"{path}.subject", f"appears twice (also {field}[{first_index[subject]}])")
            )
        first_index.setdefault(subject, index)
        if has_manager and manager_problem is None and normalise_identifier(entry.manager_subject) == subject:
            violations.append(FieldViolation(f"{path}.manager_subject", "must not be the person"))
    return violations


# --- the CSV file ------------------------------------------------------------------------------------


class DirectoryCsvError(ValueError):
    """A CSV file the import refuses, with the (1-based) line that is wrong; never the line's content."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class CsvRow:
    line: int
    entry: DirectoryEntry


def _header(row: Sequence[str]) -> tuple[str, ...]:
    names = tuple(name.strip().casefold() for name in row)
    if names and names[0].startswith("\ufeff"):  # a byte-order mark written by spreadsheet programs
        names = (names[0].removeprefix("\ufeff"), *names[1:])
    if names not in (CSV_COLUMNS, CSV_COLUMNS[:2]):
        raise DirectoryCsvError(
            1, f"the header must be {','.join(CSV_COLUMNS)} (manager may be left out), not {','.join(names)}"
        )
    return names


def parse_directory_csv(lines: Iterable[str]) -> Iterator[CsvRow]:
    """The entries of a directory CSV file, in file order, each checked as an import call checks it.

    The header is ``subject,department,manager`` (``manager`` optional). Blank lines are skipped. Raises
    :class:`DirectoryCsvError` at the first bad row (wrong number of fields, missing or invalid subject,
    invalid department or manager, a subject listed twice), naming its line number.
    """
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DirectoryCsvError(reader.line_num, f"not valid CSV ({exc})") from None
    if header is None:
        raise DirectoryCsvError(1, f"the file is empty; the header {','.join(CSV_COLUMNS)} is expected")
    columns = _header(header)
    seen: dict[str, int] = {}
    while True:
        line = reader.line_num + 1  # where the row starts (a quoted field may span lines)
        try:
            row = next(reader, None)
        except csv.Error as exc:
            raise DirectoryCsvError(line, f"not valid CSV ({exc})") from None
        if row is None:
            return
        if not any(field.strip() for field in row):
            continue
        if len(row) != len(columns):
            raise DirectoryCsvError(line, f"{len(row)} fields where the header has {len(columns)}")
        values = dict(zip(columns, row, strict=True))
        entry = DirectoryEntry(
            subject=values["subject"].strip(),
            department=values["department"],
            manager_subject=values.get("manager", "").strip(),
        )
        violation = next(iter(entry_violations([entry], field="row")), None)
        if violation is not None:
            column = violation.field.rpartition(".")[2].replace("manager_subject", "manager")
            raise DirectoryCsvError(line, f"{column} {violation.description}")
        subject = normalise_identifier(entry.subject)
        if subject in seen:
            raise DirectoryCsvError(line, f"this subject is already listed on line {seen[subject]}")
        seen[subject] = line
        yield CsvRow(line=line, entry=entry)


# --- the diff ----------------------------------------------------------------------------------------


def diff_directory(stored: Mapping[str, Placement], incoming: Mapping[str, Placement]) -> DirectoryDiff:
    """What an import changes: the incoming people new to the directory, those moved, those as they were.

    Both sides are keyed by pseudonym; ``stored`` may hold more people than ``incoming`` (only the
    incoming ones are compared: removal is :func:`absentees`).
    """
    created: dict[str, Placement] = {}
    updated: dict[str, Placement] = {}
    unchanged: list[str] = []
    for pseudonym, placement in incoming.items():
        before = stored.get(pseudonym)
        if before is None:
            created[pseudonym] = placement
        elif before != placement:
            updated[pseudonym] = placement
        else:
            unchanged.append(pseudonym)
    return DirectoryDiff(created=created, updated=updated, unchanged=unchanged)


def absentees(
    stored_imports: Mapping[str, str | None], *, present: Iterable[str], import_id: str
) -> list[str]:
    """The people a full sync removes: stored, not in this call, and not seen by this import's other calls.

    ``stored_imports`` maps each stored pseudonym to the import that last listed it. Without an
    ``import_id`` the import is this call alone, so everyone not ``present`` goes.
    """
    here = set(present)
    return sorted(
        pseudonym
        for pseudonym, last_import in stored_imports.items()
        if pseudonym not in here and not (import_id and last_import == import_id)
    )
