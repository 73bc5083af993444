"""`awareness directory import` as a real process against the running gdpr (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from awareness.gdpr.v1 import gdpr_pb2

from tests.gdpr.conftest import running_harness
from tests.gdpr.test_cli import awareness
from tests.gdpr.test_directory import departments, stored_rows


def people(count: int, tag: str) -> list[str]:
    return [f"p{index}-{tag}@example.org" for index in range(count)]


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = ["subject,department,manager", *(",".join(row) for row in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def test_cli_imports_in_chunks_then_a_full_sync_removes_who_left(
    tmp_path: Path, database_url: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    everyone = people(12001, tag)  # three calls: 5000, 5000, 2001
    boss = everyone[0]
    rows = [(p, f"Dept {i % 9}", boss if i else "") for i, p in enumerate(everyone)]
    async with running_harness(tmp_path / "var", database_url) as harness:
        code, out, err = await awareness(
            "directory", "import", str(write_csv(tmp_path / "people.csv", rows)),
            address=harness.address, data_dir=tmp_path,
        )  # fmt: skip
        assert code == 0, err
        assert json.loads(out) == {
            "people": 12001,
            "created": 12001,
            "updated": 0,
            "unchanged": 0,
            "removed": 0,
        }
        bars = err.strip().splitlines()
        assert [line.rsplit(" ", 2)[-2] for line in bars] == ["5000/12001", "10000/12001", "12001/12001"]
        assert bars[-1].startswith("directory import [" + "#" * 30 + "]")
        assert await departments(harness, everyone[1], everyone[12000]) == ["Dept 1", "Dept 3"]

        # The next export: two people left, one moved; --replace over chunks removes only the leavers.
        kept = rows[:6000] + rows[6002:]
        kept[1] = (kept[1][0], "Board", boss)
        code, out, err = await awareness(
            "directory", "import", str(write_csv(tmp_path / "people2.csv", kept)), "--replace", "--quiet",
            address=harness.address, data_dir=tmp_path,
        )  # fmt: skip
        assert code == 0, err
        assert err == ""
        assert json.loads(out) == {
            "people": 11999,
            "created": 0,
            "updated": 1,
            "unchanged": 11998,
            "removed": 2,
        }
        assert await departments(harness, everyone[1], everyone[6000], everyone[6001]) == ["Board", "", ""]
        assert len(stored_rows(harness)) == 11999
        audit = await harness.dpo.ListAuditRecords(
            gdpr_pb2.ListAuditRecordsRequest(actor="cli:directory-import")
        )
        assert [r.action for r in audit.audit_records] == ["directory.import"] * 6


async def test_cli_refuses_a_bad_row_by_line_number_and_sends_nothing(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    good, other = people(2, tag)
    bad = tmp_path / "bad.csv"
    bad.write_text(f"subject,department,manager\n{good},Finance,{other}\n{other},Finance\n", encoding="utf-8")
    async with running_harness(tmp_path / "var", "") as harness:
        code, out, err = await awareness(
            "directory", "import", str(bad), address=harness.address, data_dir=tmp_path
        )
        assert code == 2 and out == ""
        assert f"{bad}: line 3: 2 fields where the header has 3; nothing was imported" in err
        assert good not in err and other not in err
        assert stored_rows(harness) == {}

        missing = await awareness(
            "directory", "import", str(tmp_path / "nope.csv"), address=harness.address, data_dir=tmp_path
        )
        assert missing[0] == 2 and "cannot read" in missing[2]
        header_only = write_csv(tmp_path / "empty.csv", [])
        empty = await awareness(
            "directory", "import", str(header_only), address=harness.address, data_dir=tmp_path
        )
        assert empty[0] == 2 and "lists nobody" in empty[2]

    down = await awareness(
        "directory", "import", str(write_csv(tmp_path / "ok.csv", [(good, "Finance", "")])),
        address="127.0.0.1:1", data_dir=tmp_path,
    )  # fmt: skip
    assert down[0] == 1 and "UNAVAILABLE" in down[2]


async def test_cli_help_names_the_csv_format_and_scim_as_the_next_step(tmp_path: Path) -> None:
    code, out, _ = await awareness("directory", "import", "--help", address="127.0.0.1:1", data_dir=tmp_path)
    assert code == 0
    assert "subject,department,manager" in out and "--replace" in out and "SCIM" in out
