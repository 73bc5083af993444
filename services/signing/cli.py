"""``awareness pki ...``: create, rotate and list the signing service's keys."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from services.signing.domain.pki import KeyPurpose, init_pki, load_keyring, rotate_key

PKI_DIR_ENVIRONMENT_VARIABLE = "AWARENESS_PKI_DIR"
DEFAULT_PKI_DIR = Path("var/pki")


def default_pki_dir() -> Path:
    """``$AWARENESS_PKI_DIR``, else ``./var/pki`` (read when a command runs, not at import)."""
    configured = os.environ.get(PKI_DIR_ENVIRONMENT_VARIABLE)
    return Path(configured) if configured else DEFAULT_PKI_DIR


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``pki`` command group; each leaf sets ``handler(args) -> int`` (the exit status)."""
    pki = subparsers.add_parser("pki", help="manage the signing keys and certificates")
    commands = pki.add_subparsers(dest="pki_command", required=True, metavar="{init,rotate,list}")

    init = commands.add_parser("init", help="create the root CA and one active key per purpose, if missing")
    _add_dir_argument(init)
    init.add_argument("--force", action="store_true", help="discard the existing PKI and start a new one")
    init.set_defaults(handler=_run_init)

    rotate = commands.add_parser("rotate", help="add a new active key and retire the previous one")
    rotate.add_argument("--purpose", required=True, choices=[purpose.value for purpose in KeyPurpose])
    _add_dir_argument(rotate)
    rotate.set_defaults(handler=_run_rotate)

    listing = commands.add_parser("list", help="show every key generation and its state")
    _add_dir_argument(listing)
    listing.set_defaults(handler=_run_list)


def _add_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"key directory (default: ${PKI_DIR_ENVIRONMENT_VARIABLE} or {DEFAULT_PKI_DIR})",
    )


def _directory(args: argparse.Namespace) -> Path:
    return args.dir if args.dir is not None else default_pki_dir()


def _run_init(args: argparse.Namespace) -> int:
    paths = init_pki(_directory(args), force=args.force)
    print(f"root certificate:       {paths.root_certificate}")
    print(f"time-stamping cert:     {paths.timestamp_certificate}")
    print(f"checkpoint certificate: {paths.checkpoint_certificate}")
    return 0


def _run_rotate(args: argparse.Namespace) -> int:
    info = rotate_key(_directory(args), KeyPurpose(args.purpose))
    print(f"new active {info.purpose.value} key {info.key_id} ({info.certificate_file})")
    return 0


def _run_list(args: argparse.Namespace) -> int:
    keyring = load_keyring(_directory(args))
    for key in keyring.keys:
        info = key.info
        window = f"{info.not_before.isoformat()} .. {info.not_after.isoformat() if info.not_after else ''}"
        print(f"{info.purpose.value:<10} {info.state.value:<7} {info.algorithm:<10} {info.key_id}  {window}")
    return 0
