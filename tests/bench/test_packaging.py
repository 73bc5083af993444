"""The benchmarks and the load generator live in bench/, outside what the wheel and the image ship."""

from __future__ import annotations

import ast
import os
import tomllib
from pathlib import Path

from setuptools import find_namespace_packages  # type: ignore[import-untyped]

from tests.support.suite import run_module

REPO = Path(__file__).resolve().parents[2]


def _shipped_modules() -> list[Path]:
    """Every .py file of the packages that pyproject's package discovery puts in the wheel."""
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = find_namespace_packages(str(REPO), include=find["include"], exclude=find.get("exclude", ()))
    assert "services" in packages
    return [
        path
        for package in packages
        for path in (REPO / package.replace(".", "/")).glob("*.py")
        if "migrations/versions" not in path.as_posix()
    ]


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_wheel_ships_no_benchmark_and_no_load_generator() -> None:
    modules = _shipped_modules()
    assert not [p for p in modules if "bench" in p.name or "loadgen" in p.name]
    assert not any(path.is_relative_to(REPO / "bench") for path in modules)


def test_shipped_code_imports_neither_the_benchmarks_nor_the_tests() -> None:
    offenders = {
        str(path.relative_to(REPO)): roots & {"bench", "tests"}
        for path in _shipped_modules()
        if (roots := _imported_roots(path)) & {"bench", "tests"}
    }
    assert offenders == {}


def test_the_image_copies_no_benchmark() -> None:
    copies = [line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("COPY")]
    assert not [line for line in copies if "bench" in line or line.split()[1] == "."]
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert "bench" in ignored


def test_python_m_bench_runs_from_the_repository_root() -> None:
    # `make bench*` runs `python -m bench ...` from the root: the package is not installed.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    for command, expected in (
        (["bench", "suite", "--help"], "python -m bench suite"),
        (["bench", "--help"], "{signing,policy,scoring,ingest,analytics,all,suite}"),
        (["bench.loadgen", "--help"], "python -m bench.loadgen"),
    ):
        completed = run_module(*command, env=env, timeout=120)
        assert completed.returncode == 0, completed.stderr
        assert expected in completed.stdout
