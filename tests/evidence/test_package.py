"""The shared package stays below the services: it imports the runtime, never a service."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "evidence"


def test_evidence_imports_no_service() -> None:
    imported: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import"
                imported.add(node.module or "")
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    ours = {module for module in imported if module.split(".")[0] == "services"}
    assert ours, "the parser found no import of services.* at all"
    assert {module.split(".")[1] for module in ours} <= {"evidence", "runtime"}, sorted(ours)
