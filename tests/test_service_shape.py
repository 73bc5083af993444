"""Services in the common shape keep it: a transport-only ``api.py`` over ``service.py``.

A service listed in SHAPED has ``api.py`` (servicer), ``service.py`` (use cases), ``repository.py``,
``app.py`` and ``domain/``; its ``api.py`` stays under API_MAX_LINES, touches no database (no SQLAlchemy
import), and its servicer methods define no inner functions (closures doing the work belong in the
service layer). No function in a shaped service is longer than FUNCTION_MAX_LINES, and none but the CLI
(which talks to the user) catches a raw gRPC error: a failed call to a peer becomes an AwarenessError
by the runtime's one rule (``services.runtime.clients.call_peer``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHAPED = ("policy", "scoring", "gdpr", "signing", "ingest", "analytics")
ROLES = ("api.py", "service.py", "repository.py", "app.py", "domain/__init__.py")
# A large service layer may be a package instead of one module (gdpr: use cases over units of work;
# ingest: the append path and the reads).
PACKAGE_ROLES = {"service.py": "service/__init__.py"}
# Services whose peer calls already go through call_peer (the others are being moved to it).
PEER_RULE = ("policy", "scoring", "gdpr", "signing", "ingest", "analytics")
API_MAX_LINES = 450
FUNCTION_MAX_LINES = 80


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def persistence_imports(path: Path) -> list[str]:
    """The SQLAlchemy modules a file imports."""
    found: list[str] = []
    for node in ast.walk(_tree(path)):
        names = (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
        found.extend(name for name in names if name.split(".")[0] == "sqlalchemy")
    return found


def servicer_closures(path: Path) -> list[str]:
    """``Class.method.inner`` for every function defined inside a method of a class in ``path``."""
    found: list[str] = []
    for cls in (node for node in _tree(path).body if isinstance(node, ast.ClassDef)):
        for method in cls.body:
            if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            found.extend(
                f"{cls.name}.{method.name}.{inner.name}"
                for inner in ast.walk(method)
                if inner is not method and isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return found


def long_functions(directory: Path, *, limit: int) -> list[str]:
    """``file:function (lines)`` for every function (decorators included) longer than ``limit`` lines."""
    found: list[str] = []
    for path in sorted(directory.rglob("*.py")):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                first = min([node.lineno, *(decorator.lineno for decorator in node.decorator_list)])
                length = node.end_lineno - first + 1
                if length > limit:
                    found.append(f"{path.relative_to(directory.parent).as_posix()}:{node.name} ({length})")
    return found


def raw_grpc_handlers(directory: Path, *, skip: frozenset[str] = frozenset({"cli.py"})) -> list[str]:
    """``file:line`` of every ``except`` clause that names ``AioRpcError`` or ``RpcError``."""
    found: list[str] = []
    for path in sorted(directory.rglob("*.py")):
        if path.name in skip:
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                names = {
                    part.attr if isinstance(part, ast.Attribute) else part.id
                    for part in ast.walk(node.type)
                    if isinstance(part, ast.Attribute | ast.Name)
                }
                if names & {"AioRpcError", "RpcError"}:
                    found.append(f"{path.relative_to(directory.parent).as_posix()}:{node.lineno}")
    return found


@pytest.mark.parametrize("service", SHAPED)
def test_every_role_has_its_module(service: str) -> None:
    folder = ROOT / "services" / service
    missing = [
        role
        for role in ROLES
        if not (folder / role).is_file()
        and not (role in PACKAGE_ROLES and (folder / PACKAGE_ROLES[role]).is_file())
    ]
    assert missing == []


@pytest.mark.parametrize("service", SHAPED)
def test_api_is_transport_only(service: str) -> None:
    api = ROOT / "services" / service / "api.py"
    assert len(api.read_text(encoding="utf-8").splitlines()) < API_MAX_LINES
    assert persistence_imports(api) == []
    assert servicer_closures(api) == []


@pytest.mark.parametrize("service", SHAPED)
def test_no_function_is_longer_than_the_limit(service: str) -> None:
    assert long_functions(ROOT / "services" / service, limit=FUNCTION_MAX_LINES) == []


@pytest.mark.parametrize("service", PEER_RULE)
def test_peer_failures_go_through_the_runtime_rule(service: str) -> None:
    assert raw_grpc_handlers(ROOT / "services" / service) == []


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    api = tmp_path / "svc" / "api.py"
    api.parent.mkdir()
    body = "\n".join(f"    x{index} = {index}" for index in range(FUNCTION_MAX_LINES))
    api.write_text(
        "from sqlalchemy.orm import Session\n"
        "import sqlalchemy\n"
        "class Servicer:\n"
        "    async def Get(self) -> None:\n"
        "        def load() -> None: ...\n"
        "        key = lambda row: row\n"
        f"def long() -> None:\n{body}\n"
        "async def call(stub: object) -> None:\n"
        "    try:\n"
        "        pass\n"
        "    except (grpc.aio.AioRpcError, KeyError):\n"
        "        pass\n",
        encoding="utf-8",
    )
    assert persistence_imports(api) == ["sqlalchemy.orm", "sqlalchemy"]
    assert servicer_closures(api) == ["Servicer.Get.load"]
    assert long_functions(tmp_path / "svc", limit=FUNCTION_MAX_LINES) == [
        f"svc/api.py:long ({FUNCTION_MAX_LINES + 1})"
    ]
    assert raw_grpc_handlers(tmp_path / "svc") == [f"svc/api.py:{FUNCTION_MAX_LINES + 11}"]
