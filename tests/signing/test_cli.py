from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from services.signing import cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="awareness")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    status: int = args.handler(args)
    return status


def test_init_rotate_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "pki"
    assert _run("pki", "init", "--dir", str(directory)) == 0
    assert (directory / "root-ca.pem").exists()

    assert _run("pki", "rotate", "--purpose", "checkpoint", "--dir", str(directory)) == 0
    manifest = json.loads((directory / "keys.json").read_text())
    states = [(entry["purpose"], entry["state"]) for entry in manifest["keys"]]
    assert states.count(("checkpoint", "retired")) == 1
    assert states.count(("checkpoint", "active")) == 1
    assert states.count(("timestamp", "active")) == 1

    capsys.readouterr()
    assert _run("pki", "list", "--dir", str(directory)) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 3
    assert sum("retired" in line for line in listed) == 1


def test_default_directory_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWARENESS_PKI_DIR", str(tmp_path / "from-env"))
    assert _run("pki", "init") == 0
    assert (tmp_path / "from-env" / "keys.json").exists()

    monkeypatch.delenv("AWARENESS_PKI_DIR")
    monkeypatch.chdir(tmp_path)
    assert cli.default_pki_dir() == Path("var/pki")


def test_force_replaces_the_root(tmp_path: Path) -> None:
    assert _run("pki", "init", "--dir", str(tmp_path)) == 0
    first_root = (tmp_path / "root-ca.pem").read_bytes()
    assert _run("pki", "init", "--dir", str(tmp_path)) == 0
    assert (tmp_path / "root-ca.pem").read_bytes() == first_root
    assert _run("pki", "init", "--dir", str(tmp_path), "--force") == 0
    assert (tmp_path / "root-ca.pem").read_bytes() != first_root


def test_rotate_rejects_unknown_purpose(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["pki", "rotate", "--purpose", "encryption", "--dir", str(tmp_path)])
