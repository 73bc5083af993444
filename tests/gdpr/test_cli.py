"""`awareness gdpr apply-retention` and `awareness gdpr rotate-kek` as real processes against the service."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from awareness.gdpr.v1 import gdpr_pb2

from tests.conftest import IDENTITY_ENV
from tests.gdpr.conftest import running_harness
from tests.gdpr.test_service_keys_and_erasure import unique_subject
from tests.gdpr.test_service_retention_and_kek import issue, months_ago, readable


async def awareness(*args: str, address: str, data_dir: Path) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "AWARENESS_GDPR_TARGET": address,
        **IDENTITY_ENV,
        "AWARENESS_DATA_DIR": str(data_dir),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_cli_apply_retention_dry_run_then_real_run(tmp_path: Path) -> None:
    async with running_harness(tmp_path / "var", "") as harness:
        expired = await issue(harness, unique_subject(), months_ago(9 * 12), "phishing.clicked")
        kept = await issue(harness, unique_subject(), months_ago(1), "phishing.clicked")

        code, out, err = await awareness(
            "gdpr", "apply-retention", "--dry-run", address=harness.address, data_dir=tmp_path
        )
        assert code == 0, err
        assert json.loads(out)["keys_shredded"] == "1" and json.loads(out)["dry_run"] is True
        assert None not in (await readable(harness, [expired, kept])).values()

        code, out, err = await awareness(
            "gdpr", "apply-retention", address=harness.address, data_dir=tmp_path
        )
        assert code == 0, err
        assert json.loads(out)["keys_shredded"] == "1"
        after = await readable(harness, [expired, kept])
        assert after[(expired.pseudonym, expired.key_period)] is None
        assert after[(kept.pseudonym, kept.key_period)] == kept.data_key
        audit = await harness.dpo.ListAuditRecords(gdpr_pb2.ListAuditRecordsRequest(actor="cli:retention"))
        assert [r.action for r in audit.audit_records] == ["retention.apply", "retention.dry_run"]


async def test_cli_rotate_kek(tmp_path: Path) -> None:
    async with running_harness(tmp_path / "var", "") as harness:
        key = await issue(harness, unique_subject(), months_ago(0), "phishing.clicked")
        code, out, err = await awareness("gdpr", "rotate-kek", address=harness.address, data_dir=tmp_path)
        assert code == 0, err
        assert json.loads(out)["keys_rewrapped"] == "1"
        assert (await readable(harness, [key]))[(key.pseudonym, key.key_period)] == key.data_key

        bad = await awareness("gdpr", "rotate-kek", address="127.0.0.1:1", data_dir=tmp_path)
        assert bad[0] == 1 and "UNAVAILABLE" in bad[2]
