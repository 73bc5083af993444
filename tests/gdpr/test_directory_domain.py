"""The directory's pure logic: checking entries, parsing the CSV file, and the diff of an import."""

from __future__ import annotations

import io

import pytest

from services.gdpr.domain.directory import (
    MAX_IMPORT_ENTRIES,
    DirectoryCsvError,
    DirectoryEntry,
    Placement,
    absentees,
    diff_directory,
    entry_violations,
    normalise_department,
    parse_directory_csv,
)


def parse(text: str) -> list[tuple[int, DirectoryEntry]]:
    return [(row.line, row.entry) for row in parse_directory_csv(io.StringIO(text, newline=""))]


def csv_error(text: str) -> DirectoryCsvError:
    with pytest.raises(DirectoryCsvError) as caught:
        parse(text)
    return caught.value


# --- entries -----------------------------------------------------------------------------------------


def test_valid_entries_have_no_violations() -> None:
    entries = [
        DirectoryEntry("ada@example.org", "Finance", "grace@example.org"),
        DirectoryEntry("grace@example.org", "Finance"),
        DirectoryEntry("uid-4711", ""),  # a directory id; no department, no manager
    ]
    assert entry_violations(entries) == []


def test_each_bad_field_is_named_by_its_path_never_by_its_value() -> None:
    entries = [
        DirectoryEntry("   ", "Finance"),
        DirectoryEntry("ada@example.org", "x" * 129),
        DirectoryEntry("bob@example.org", "alice@example.org"),
        DirectoryEntry("carol@example.org", "Sales\x00"),
        DirectoryEntry(" ADA@example.org ", "Finance"),  # the same person as entries[1]
        DirectoryEntry("dan@example.org", "Sales", "DAN@example.org"),
        DirectoryEntry("erin@example.org", "Sales", "m" * 321),
    ]
    violations = {v.field: v.description for v in entry_violations(entries)}
    assert violations == {
        "entries[0].subject": "must name a data subject",
        "entries[1].department": "must be at most 128 characters",
        "entries[2].department": "must be a group name, not an address (no '@')",
        "entries[3].department": "must not contain control characters",
        "entries[4].subject": "appears twice (also entries[1])",
        "entries[5].manager_subject": "must not be the person",
        "entries[6].manager_subject": "must be at most 320 characters",
    }
    assert not any("example.org" in description for description in violations.values())


def test_a_call_holds_between_one_and_the_maximum_entries() -> None:
    assert [v.field for v in entry_violations([])] == ["entries"]
    many = [DirectoryEntry(f"p{i}@example.org") for i in range(MAX_IMPORT_ENTRIES + 1)]
    assert [(v.field, v.description) for v in entry_violations(many)] == [
        ("entries", f"at most {MAX_IMPORT_ENTRIES} entries per call")
    ]
    assert entry_violations(many[:MAX_IMPORT_ENTRIES]) == []


def test_department_spacing_is_one_group_and_case_is_kept() -> None:
    assert normalise_department("  Sales   EMEA ") == "Sales EMEA"
    assert normalise_department("\uff26inance") == "Finance"  # NFKC: a full-width F
    assert normalise_department("R&D") == "R&D"


# --- CSV ---------------------------------------------------------------------------------------------


def test_csv_rows_are_parsed_with_their_line_numbers() -> None:
    text = (
        "subject,department,manager\r\n"
        "ada@example.org,Finance,grace@example.org\r\n"
        "\r\n"
        'grace@example.org,"Finance, Tax",\r\n'
        '"alan@example.org",Research,grace@example.org\r\n'
        "uid-17,,\r\n"
    )
    rows = parse(text)
    assert [line for line, _ in rows] == [2, 4, 5, 6]
    assert rows[0][1] == DirectoryEntry("ada@example.org", "Finance", "grace@example.org")
    assert rows[1][1] == DirectoryEntry("grace@example.org", "Finance, Tax", "")
    assert rows[3][1] == DirectoryEntry("uid-17", "", "")


def test_the_manager_column_may_be_left_out_and_the_header_is_case_blind() -> None:
    rows = parse("\ufeffSubject, Department\nada@example.org,Finance\n")
    assert rows == [(2, DirectoryEntry("ada@example.org", "Finance", ""))]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", 1, "the file is empty"),
        ("email,dept\na@example.org,x\n", 1, "the header must be subject,department,manager"),
        ("subject,department,manager\na@example.org,Finance\n", 2, "2 fields where the header has 3"),
        ("subject,department,manager\na@example.org,Fin,b@example.org,extra\n", 2, "4 fields"),
        ("subject,department,manager\n,Finance,b@example.org\n", 2, "subject must name a data subject"),
        ("subject,department\na@example.org,Finance\nb@example.org,b@example.org\n", 3, "department must be"),
        ("subject,department,manager\na@example.org,Finance,A@example.org\n", 2, "manager must not be the"),
        (
            "subject,department,manager\na@example.org,Finance,\nb@example.org,Tax,\nA@Example.org,Tax,\n",
            4,
            "this subject is already listed on line 2",
        ),
        ('subject,department,manager\na@example.org,"Fin"ance,\n', 2, "not valid CSV"),
        # A quoted field spanning lines: the row is named by the line it starts on.
        ('subject,department,manager\nb@example.org,,\na@example.org,"Research\nLab",\n', 3, "control"),
    ],
)
def test_a_bad_row_is_refused_with_its_line_number(text: str, line: int, message: str) -> None:
    error = csv_error(text)
    assert error.line == line
    assert message in str(error) and str(error).startswith(f"line {line}: ")
    # The message names the line, never the identifier on it.
    assert "a@example.org" not in error.message.casefold()


# --- diff --------------------------------------------------------------------------------------------


def test_the_diff_sorts_incoming_people_into_created_updated_and_unchanged() -> None:
    stored = {
        "psn_a": Placement("Finance", "psn_m"),
        "psn_b": Placement("Finance", None),
        "psn_c": Placement("Sales", None),  # not in this import: only removal (absentees) concerns it
    }
    incoming = {
        "psn_a": Placement("Finance", "psn_m"),
        "psn_b": Placement("Tax", None),
        "psn_d": Placement("Sales", "psn_a"),
        "psn_m": Placement("Finance", "psn_b"),
    }
    diff = diff_directory(stored, incoming)
    assert diff.created == {"psn_d": Placement("Sales", "psn_a"), "psn_m": Placement("Finance", "psn_b")}
    assert diff.updated == {"psn_b": Placement("Tax", None)}
    assert diff.unchanged == ["psn_a"]


def test_a_new_manager_alone_is_an_update() -> None:
    diff = diff_directory({"psn_a": Placement("Finance", None)}, {"psn_a": Placement("Finance", "psn_m")})
    assert diff.updated == {"psn_a": Placement("Finance", "psn_m")} and diff.unchanged == []


def test_a_full_sync_in_one_call_removes_everyone_it_does_not_list() -> None:
    stored = {"psn_a": None, "psn_b": "old-import", "psn_c": None}
    assert absentees(stored, present=["psn_a"], import_id="") == ["psn_b", "psn_c"]


def test_a_full_sync_in_chunks_keeps_the_people_its_earlier_calls_listed() -> None:
    stored = {"psn_a": "run-2", "psn_b": "run-1", "psn_c": "run-2", "psn_d": None}
    # psn_a and psn_c came with earlier chunks of run-2; psn_e is in this (last) chunk.
    assert absentees(stored, present=["psn_e"], import_id="run-2") == ["psn_b", "psn_d"]
