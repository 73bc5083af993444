"""Static checks of the Dockerfile the chart deploys (no Docker engine here): the image and the chart
must agree on the user, and the final stage must carry only the virtual environment."""

from __future__ import annotations

import json
import re

from tests.helm.rendering import REPO_ROOT, pod_templates, render

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped.removesuffix("\\").strip() + " "
        if not stripped.endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for instruction, arguments in _instructions():
        if instruction == "FROM":
            name = (
                arguments.split(" AS ")[-1].strip().lower()
                if " AS " in arguments.upper()
                else str(len(stages))
            )
            current = stages.setdefault(name, [])
        if current is not None:
            current.append((instruction, arguments))
    return stages


def _base_image() -> str:
    (default,) = [a for i, a in _instructions() if i == "ARG" and a.startswith("PYTHON_IMAGE=")]
    return default.split("=", 1)[1]


def test_base_image_is_a_slim_python_3_11_pinned_to_an_exact_patch() -> None:
    assert re.fullmatch(r"python:3\.11\.\d+-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?", _base_image())


def test_python_stages_from_the_same_pinned_base_and_assets_from_a_pinned_node() -> None:
    stages = _stages()
    assert list(stages) == ["assets", "build", "runtime"]
    for name in ("build", "runtime"):
        assert stages[name][0][1].split()[0] == "${PYTHON_IMAGE}"
    assert stages["assets"][0][1].split()[0] == "${NODE_IMAGE}"
    assert re.search(r"ARG NODE_IMAGE=node:\d+\.\d+\.\d+-bookworm-slim\n", DOCKERFILE.read_text())
    # Only the lock file's packages, and no install scripts run.
    (install,) = [a for i, a in stages["assets"] if i == "RUN"]
    assert "npm ci" in install and "--ignore-scripts" in install


def test_build_stage_installs_with_constraints_and_generates_the_protos() -> None:
    commands = [
        command.strip()
        for instruction, arguments in _stages()["build"]
        if instruction == "RUN"
        for command in re.split(r"&&|;", arguments)
    ]
    project_installs = [
        c
        for c in commands
        if c.startswith("/opt/venv/bin/pip install") and ("-r " in c or c.endswith((" .", "/python")))
    ]
    assert len(project_installs) == 3  # dependencies, the generated client package, the services
    assert all("-c constraints.txt" in c for c in project_installs)
    generate = next(i for i, c in enumerate(commands) if "scripts/gen_protos.py" in c)
    install_client = next(i for i, c in enumerate(commands) if c.endswith("./clients/python"))
    assert generate < install_client


def test_final_stage_copies_only_the_venv_and_runs_as_the_chart_user() -> None:
    runtime = _stages()["runtime"]
    copies = [a for i, a in runtime if i == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    runs = " ".join(a for i, a in runtime if i == "RUN")
    assert "gcc" not in runs and "build-essential" not in runs and "-dev" not in runs
    # Only the shared libraries and the font the weekly report's PDF needs (WeasyPrint), no
    # recommended extras, and no package lists left behind.
    installs = [a for i, a in runtime if i == "RUN" and "apt-get install" in a]
    assert len(installs) <= 1
    for install in installs:
        packages = install.split("--no-install-recommends", 1)[1].split("&&", 1)[0].split()
        assert set(packages) <= {
            "libpango-1.0-0",
            "libpangoft2-1.0-0",
            "libharfbuzz-subset0",
            "fonts-dejavu-core",
            "postgresql-client",
        }
        assert "rm -rf /var/lib/apt/lists/*" in install
    (user,) = [a for i, a in runtime if i == "USER"]
    uid, gid = (int(part) for part in user.split(":"))
    for pod in pod_templates(render()):
        assert pod.spec["securityContext"]["runAsUser"] == uid
        assert pod.spec["securityContext"]["runAsGroup"] == gid
    assert any(i == "WORKDIR" for i, _ in runtime)


def test_entrypoint_is_the_cli_and_the_default_command_serves_the_gateway() -> None:
    runtime = dict(_stages()["runtime"])
    assert json.loads(runtime["ENTRYPOINT"]) == ["awareness"]
    assert json.loads(runtime["CMD"]) == ["serve", "gateway"]


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = {
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")
    }
    assert {
        ".venv",
        "var",
        "node_modules",
        ".git",
        "clients/python/src/awareness",
        ".pytest_cache",
        ".mypy_cache",
    } <= patterns
