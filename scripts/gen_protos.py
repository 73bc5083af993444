"""Generate the Python client package from protos/awareness/**/*.proto.

Runs grpc_tools.protoc once over every Awareness contract and writes, under
``clients/python/src`` (or ``--out``):

* ``*_pb2.py`` / ``*_pb2_grpc.py``: messages and gRPC stubs;
* ``*_pb2.pyi`` / ``*_pb2_grpc.pyi``: typed stubs from mypy-protobuf;
* ``awareness/descriptors.binpb``: a serialized FileDescriptorSet (imports and
  source info included) from which the gateway builds HTTP routes and OpenAPI;
* ``__init__.py`` in every package directory and ``awareness/py.typed``.

google/api and google/rpc are imported, not generated: their Python modules
come from googleapis-common-protos at run time. Output is written to a
temporary directory first and swapped in only when protoc succeeds, so a
broken proto never leaves a half-empty package behind.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
DEFAULT_OUT = REPO_ROOT / "clients" / "python" / "src"
PACKAGE = "awareness"
DESCRIPTOR_SET_NAME = "descriptors.binpb"


class GenerationError(RuntimeError):
    """protoc or one of its plugins failed, or an input is missing."""


def _module_directory(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise GenerationError(f"cannot locate module {module!r}; is it installed in this environment?")
    return Path(spec.origin).parent


def googleapis_include_dir() -> Path:
    """The site-packages directory holding googleapis-common-protos' google/api/*.proto."""
    include_dir = _module_directory("google.api.annotations_pb2").parent.parent
    if not (include_dir / "google" / "api" / "annotations.proto").is_file():
        raise GenerationError(f"google/api/annotations.proto not found under {include_dir}")
    return include_dir


def well_known_include_dir() -> Path:
    """grpc_tools' bundled well-known protos (google/protobuf/*.proto)."""
    include_dir = _module_directory("grpc_tools") / "_proto"
    if not (include_dir / "google" / "protobuf" / "timestamp.proto").is_file():
        raise GenerationError(f"google/protobuf/timestamp.proto not found under {include_dir}")
    return include_dir


def plugin_path(name: str) -> Path:
    """A protoc plugin installed next to this interpreter (the virtualenv's bin/)."""
    # Not resolved: .venv/bin/python is usually a symlink out of the venv.
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return candidate
    found = shutil.which(name)
    if found is None:
        raise GenerationError(f"protoc plugin {name} not found; install mypy-protobuf")
    return Path(found)


def proto_sources(proto_root: Path) -> list[Path]:
    """Every contract file, relative to the proto root, in a stable order."""
    sources = sorted(path.relative_to(proto_root) for path in (proto_root / PACKAGE).rglob("*.proto"))
    if not sources:
        raise GenerationError(f"no .proto files under {proto_root / PACKAGE}")
    return sources


def protoc_arguments(*, proto_root: Path, out_dir: Path, sources: list[Path]) -> list[str]:
    out = str(out_dir)
    return [
        f"--proto_path={proto_root}",
        f"--proto_path={well_known_include_dir()}",
        f"--proto_path={googleapis_include_dir()}",
        f"--plugin=protoc-gen-mypy={plugin_path('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_path('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        f"--descriptor_set_out={out_dir / PACKAGE / DESCRIPTOR_SET_NAME}",
        "--include_imports",
        "--include_source_info",
        *(source.as_posix() for source in sources),
    ]


def add_package_markers(package_dir: Path) -> None:
    """Make every generated directory a regular package, and mark the tree as typed."""
    for directory in [package_dir, *sorted(p for p in package_dir.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    (package_dir / "py.typed").touch()


def generate(*, proto_root: Path = PROTO_ROOT, out_root: Path = DEFAULT_OUT) -> list[Path]:
    """Regenerate ``out_root/awareness``; returns the proto files compiled."""
    sources = proto_sources(proto_root)
    out_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gen_protos_", dir=out_root) as staging_name:
        staging = Path(staging_name)
        (staging / PACKAGE).mkdir()
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            *protoc_arguments(proto_root=proto_root, out_dir=staging, sources=sources),
        ]
        completed = subprocess.run(command, cwd=proto_root, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise GenerationError(f"protoc failed ({completed.returncode}):\n{completed.stderr.strip()}")
        stray = sorted(p.name for p in staging.iterdir() if p.name != PACKAGE)
        if stray:
            raise GenerationError(f"protoc wrote outside the {PACKAGE} package: {stray}")
        add_package_markers(staging / PACKAGE)
        # Swap in the fresh tree by renames (same filesystem), so readers never see a partial
        # package; stale modules of deleted protos disappear with the old tree.
        target = out_root / PACKAGE
        previous = staging / "previous"
        if target.exists():
            target.rename(previous)
        (staging / PACKAGE).rename(target)
    return sources


def _summary(*, sources: list[Path], out_root: Path) -> str:
    package_dir = out_root / PACKAGE
    modules = sum(1 for _ in package_dir.rglob("*_pb2*.py"))
    stubs = sum(1 for _ in package_dir.rglob("*.pyi"))
    return (
        f"gen_protos: {len(sources)} protos -> {modules} modules, {stubs} stubs, "
        f"{PACKAGE}/{DESCRIPTOR_SET_NAME} in {out_root}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root (default: %(default)s)")
    parser.add_argument("--protos", type=Path, default=PROTO_ROOT, help="proto root (default: %(default)s)")
    args = parser.parse_args(argv)
    out_root: Path = args.out.resolve()
    try:
        sources = generate(proto_root=args.protos.resolve(), out_root=out_root)
    except GenerationError as error:
        print(f"gen_protos: {error}", file=sys.stderr)
        return 1
    print(_summary(sources=sources, out_root=out_root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
