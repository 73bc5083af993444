"""The repository keeps the rules of docs/architecture.md that a parser can check.

- No module under ``services/<a>/`` imports ``services.<b>`` for two different services: services
  share only the protos, ``services.runtime`` and the shared package ("Service shape").
- No file cites a design document outside the repository: docs/architecture.md is the design.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("ingest", "policy", "scoring", "signing", "gdpr", "gateway", "analytics")

# (importing file, imported module) pairs still allowed while the shared package takes over what
# two services share. Each entry is a debt: remove it when its import is gone (the test below
# fails on an entry that no longer matches anything, so the list can only shrink).
# None left: what two services share lives in services/evidence (envelope, checkpoint notes).
ALLOWED_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()

# Spelled in two parts so that this file does not cite it.
OUTSIDE_DESIGN_DOC = "DESIGN" + ".md"
# Not the project's own files: tools, caches, generated code, local data.
SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".venv",
        "node_modules",
        "__pycache__",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        "var",
        "build",
        "dist",
        "bench-results",
    }
)
SKIPPED_PATHS = frozenset({"clients/python/src"})


def _package_of(path: Path, root: Path) -> list[str]:
    """The package a relative import starts from: the file's own directory, as module parts."""
    return list(path.relative_to(root).parent.parts)


def imported_modules(path: Path, root: Path) -> set[str]:
    """Every module a file imports, at any depth of the file (lazy imports too), relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _package_of(path, root)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            # `from services import ingest` imports the module services.ingest.
            found.update(f"{module}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


def cross_service_imports(root: Path) -> set[tuple[str, str]]:
    """(file, module) for every import of services.<b> from a file under services/<a>/, a != b."""
    crossings: set[tuple[str, str]] = set()
    for service in SERVICES:
        for path in sorted((root / "services" / service).rglob("*.py")):
            for module in imported_modules(path, root):
                parts = module.split(".")
                if (
                    len(parts) >= 2
                    and parts[0] == "services"
                    and parts[1] in SERVICES
                    and parts[1] != service
                ):
                    crossings.add((path.relative_to(root).as_posix(), module))
    return crossings


def _violations(root: Path) -> set[tuple[str, str]]:
    return {
        (file, module)
        for file, module in cross_service_imports(root)
        if not any(
            file == allowed_file and _within(module, allowed) for allowed_file, allowed in ALLOWED_EXCEPTIONS
        )
    }


def _within(module: str, allowed: str) -> bool:
    return module == allowed or module.startswith(allowed + ".")


def files_citing(root: Path, needle: str) -> list[str]:
    citing: list[str] = []
    for directory, dirs, files in os.walk(root):
        here = Path(directory)
        dirs[:] = [
            d
            for d in dirs
            if d not in SKIPPED_DIRS
            and not d.endswith(".egg-info")
            and (here / d).relative_to(root).as_posix() not in SKIPPED_PATHS
        ]
        for name in files:
            path = here / name
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # binary files cite nothing
            if needle in text:
                citing.append(path.relative_to(root).as_posix())
    return sorted(citing)


def test_no_service_imports_another_service() -> None:
    assert sorted(_violations(ROOT)) == [], (
        "a service imports another service's module; move what both need to the shared package "
        "or services/runtime (docs/architecture.md, Service shape)"
    )


def test_the_shared_package_imports_no_service() -> None:
    # services/evidence is what two services share: it may lean on the runtime, never on a service.
    imports = {
        module
        for path in (ROOT / "services" / "evidence").rglob("*.py")
        for module in imported_modules(path, ROOT)
        if module.split(".")[:2] in [["services", service] for service in SERVICES]
    }
    assert imports == set()


def test_every_allowed_exception_is_still_needed() -> None:
    crossings = cross_service_imports(ROOT)
    stale = {
        (file, allowed)
        for file, allowed in ALLOWED_EXCEPTIONS
        if not any(f == file and _within(m, allowed) for f, m in crossings)
    }
    assert stale == set(), "these imports are gone: remove them from ALLOWED_EXCEPTIONS"


def documented_calls(markdown: str) -> dict[str, set[str]]:
    """Caller -> callees from the "Who calls whom" table of docs/architecture.md."""
    section = markdown.split("## Who calls whom\n", 1)[1].split("\n## ", 1)[0]
    calls: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or cells[0] == "caller" or set(cells[0]) <= {"-", " "}:
            continue
        callees = set() if cells[1] == "nobody" else {callee.strip() for callee in cells[1].split(",")}
        # "retrain job (`awareness model train`)" is the chart's component "retrain".
        for caller in cells[0].split(" (")[0].split(","):
            calls.setdefault(caller.split()[0], set()).update(callees)
    return calls


def chart_calls() -> dict[str, set[str]]:
    """The allow-list the chart builds its NetworkPolicies from ("awareness.callGraph")."""
    helpers = (ROOT / "helm" / "awareness" / "templates" / "_helpers.tpl").read_text(encoding="utf-8")
    body = helpers.split('{{- define "awareness.callGraph" -}}', 1)[1].split("{{- end -}}", 1)[0]
    graph = yaml.safe_load(body)
    return {component: set(callees) for component, callees in graph.items()}


def test_who_calls_whom_is_the_charts_call_graph() -> None:
    documented = documented_calls((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    assert {k: v for k, v in documented.items() if v} == {k: v for k, v in chart_calls().items() if v}


def test_every_caller_an_internal_method_names_is_in_who_calls_whom() -> None:
    from google.protobuf import descriptor_pool

    from services.runtime.protos import allowed_callers, required_permission

    documented = documented_calls((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    named: set[tuple[str, str]] = set()
    for service in ("gdpr", "ingest", "policy", "scoring", "signing", "analytics"):
        full_name = f"awareness.{service}.v1.{service.capitalize()}Service"
        required_permission(f"/{full_name}/Any")  # loads the generated descriptors
        for method in descriptor_pool.Default().FindServiceByName(full_name).methods:
            path = f"/{full_name}/{method.name}"
            for caller in allowed_callers(path) or ():
                named.add((caller, service))
                assert method.name in (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
            assert required_permission(path) != "internal:call" or allowed_callers(path), path
    assert named, "internal methods name their callers"
    missing = {(caller, service) for caller, service in named if service not in documented.get(caller, set())}
    assert missing == set()


def test_no_file_cites_the_outside_design_document() -> None:
    assert files_citing(ROOT, OUTSIDE_DESIGN_DOC) == []


@pytest.mark.parametrize(
    ("relative", "source"),
    [
        ("services/gdpr/api.py", "from services.ingest.domain.records import open_personal\n"),
        ("services/gdpr/api.py", "import services.ingest.domain.records\n"),
        ("services/gdpr/api.py", "from services import ingest\n"),
        ("services/gdpr/api.py", "def f() -> None:\n    from ..ingest.domain import records\n"),
        ("services/gdpr/service/__init__.py", "from ...ingest.domain import records\n"),
        ("services/ingest/verify.py", "import importlib\nimportlib.import_module('services.signing.keys')\n"),
    ],
)
def test_the_checker_finds_a_crossing_however_it_is_spelled(
    tmp_path: Path, relative: str, source: str
) -> None:
    path = tmp_path / relative
    path.parent.mkdir(parents=True)
    path.write_text(source, encoding="utf-8")
    assert {file for file, _ in cross_service_imports(tmp_path)} == {relative}


def test_the_checker_allows_runtime_own_service_and_protos(tmp_path: Path) -> None:
    path = tmp_path / "services" / "gdpr" / "api.py"
    path.parent.mkdir(parents=True)
    path.write_text(
        "from services.runtime.errors import AwarenessError\n"
        "from services.gdpr.domain import keys\n"
        "from . import repository\n"
        "from awareness.ingest.v1 import ingest_pb2\n",
        encoding="utf-8",
    )
    assert cross_service_imports(tmp_path) == set()


def test_the_citation_check_finds_a_citation(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.md").write_text(f"see {OUTSIDE_DESIGN_DOC}\n", encoding="utf-8")
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "y.md").write_text(OUTSIDE_DESIGN_DOC, encoding="utf-8")
    assert files_citing(tmp_path, OUTSIDE_DESIGN_DOC) == ["docs/x.md"]
