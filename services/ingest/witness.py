"""``awareness witness``: watch the log from outside, as a transparency-log monitor does.

Over the public HTTP API (the gateway; an API key with the ``audit:verify`` permission, e.g. the
``auditor`` role, in ``AWARENESS_API_KEY``), with no database and no service certificate:

1. fetch the newest signed checkpoint (``GET /v1/checkpoints/latest``) and verify its signature
   against the trusted keys (``--keys``, loaded as ``awareness verify --keys`` loads them);
2. compare it with the checkpoint this witness saw last (``checkpoint.json`` in ``--state-dir``): the
   same origin; a tree size not smaller (smaller: the log was rolled back); at the same size the same
   root (another root: a fork); at a larger size an RFC 6962 consistency proof
   (``GET /v1/proofs:consistency``) that must verify from the old root to the new one (it does not:
   a fork, the log rewritten);
3. store the newest checkpoint as the one seen last, only when all of that holds.

Exit status: 0 consistent (or a first checkpoint seen), 1 inconsistent (nothing stored: the
evidence, the old checkpoint and the new note, stays on stdout), 2 usage, keys or an unreachable API.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "checkpoint.json"
# As the other API commands (services/gateway/remote.py): the key never on the command line.
GATEWAY_URL_VAR = "AWARENESS_GATEWAY_URL"
API_KEY_VAR = "AWARENESS_API_KEY"
DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080"
TIMEOUT_SECONDS = 30.0
EXIT_INCONSISTENT = 1
EXIT_UNUSABLE = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    witness = subparsers.add_parser(
        "witness",
        help="check the newest signed checkpoint is consistent with the last one seen (a log monitor)",
        description=(
            "Fetch the newest signed checkpoint over the gateway's API, verify its signature (--keys) "
            "and a consistency proof from the checkpoint seen last (kept in --state-dir); refuse a "
            "smaller tree (a rollback) or another root (a fork). Needs an API key with audit:verify "
            f"(e.g. the auditor role) in {API_KEY_VAR}; no database. Exit 1 on an inconsistency."
        ),
    )
    witness.add_argument(
        "--gateway",
        default=os.environ.get(GATEWAY_URL_VAR, DEFAULT_GATEWAY_URL),
        help=f"the gateway's URL (default ${GATEWAY_URL_VAR} or {DEFAULT_GATEWAY_URL})",
    )
    witness.add_argument(
        "--keys",
        type=Path,
        action="append",
        required=True,
        help="trusted checkpoint keys: ListPublicKeys JSON (GET /v1/keys), C2SP verifier keys or PEM; "
        "repeatable",
    )
    witness.add_argument(
        "--state-dir", type=Path, required=True, help="where the witness keeps the checkpoint it saw last"
    )
    witness.add_argument("--api-key-file", help=f"read the API key from this file instead of ${API_KEY_VAR}")
    witness.set_defaults(handler=run_witness)


class WitnessError(Exception):
    """The API could not be asked, or answered something unusable (not an inconsistency)."""


@dataclass(frozen=True)
class Seen:
    """A verified checkpoint: its signed note and what it says."""

    origin: str
    tree_size: int
    root_hash: bytes
    note: str

    def describe(self) -> str:
        return f"{self.origin} tree size {self.tree_size} root {self.root_hash.hex()}"


def verified(note: str, keys: Any) -> Seen:
    """The checkpoint a note signs, or NoteError when no trusted key signed it."""
    from services.evidence.checkpoint import verify_checkpoint

    body = verify_checkpoint(note, verifier_keys=keys.for_note(note))
    return Seen(origin=body.origin, tree_size=body.tree_size, root_hash=body.root_hash, note=note)


def compare(old: Seen, new: Seen, proof: list[bytes] | None) -> str | None:
    """Why ``new`` is not a consistent successor of ``old`` (None when it is). ``proof`` is the
    consistency proof from ``old.tree_size`` to ``new.tree_size`` (needed when the tree grew)."""
    from services.ingest.domain.merkle import verify_consistency

    if new.origin != old.origin:
        return f"the log's origin is now {new.origin!r}, it was {old.origin!r}: another log"
    if new.tree_size < old.tree_size:
        return (
            f"rollback: the newest checkpoint has tree size {new.tree_size}, smaller than the "
            f"{old.tree_size} seen before"
        )
    if new.tree_size == old.tree_size:
        if new.root_hash != old.root_hash:
            return f"fork: tree size {new.tree_size} has another root than the one seen before"
        return None
    if proof is None or not verify_consistency(
        old_size=old.tree_size,
        new_size=new.tree_size,
        old_root=old.root_hash,
        new_root=new.root_hash,
        proof=proof,
    ):
        return (
            f"fork: the consistency proof from tree size {old.tree_size} to {new.tree_size} does not "
            "verify: the log is not an extension of the one seen before"
        )
    return None


def _api_key(args: argparse.Namespace) -> str:
    if args.api_key_file:
        key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
    else:
        key = os.environ.get(API_KEY_VAR, "").strip()
    if not key:
        raise WitnessError(f"no API key: set {API_KEY_VAR} or pass --api-key-file")
    return key


def _get(args: argparse.Namespace, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
    import httpx

    url = args.gateway.rstrip("/") + path
    try:
        with httpx.Client(timeout=TIMEOUT_SECONDS) as client:
            response = client.get(url, params=params, headers={"Authorization": f"Bearer {_api_key(args)}"})
    except httpx.HTTPError as error:
        raise WitnessError(f"GET {url}: {type(error).__name__}: {error}") from error
    if response.status_code != 200:
        raise WitnessError(f"GET {url}: HTTP {response.status_code}: {response.text[:500]}")
    answer = response.json()
    if not isinstance(answer, dict):
        raise WitnessError(f"GET {url}: expected a JSON object")
    return answer


def load_seen(state_dir: Path, keys: Any) -> Seen | None:
    """The checkpoint seen last (its signature checked again: the state file is only a cache)."""
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    return verified(str(json.loads(path.read_text())["note"]), keys)


def store_seen(state_dir: Path, checkpoint: dict[str, Any]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    partial = state_dir / f".{STATE_FILE}.partial"
    partial.write_text(json.dumps(checkpoint, indent=2) + "\n")
    partial.replace(state_dir / STATE_FILE)


def run_witness(args: argparse.Namespace) -> int:
    from services.evidence.errors import NoteError
    from services.ingest.verify import load_keys

    try:
        keys = load_keys(args.keys)
    except (OSError, ValueError) as error:
        print(f"witness: cannot load the keys: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        old = load_seen(args.state_dir, keys)
    except NoteError as error:
        print(
            f"FAIL  the checkpoint seen last ({args.state_dir / STATE_FILE}) is not signed by a trusted key: "
            f"{error}"
        )
        return EXIT_INCONSISTENT
    except (OSError, ValueError, KeyError) as error:
        print(f"witness: cannot read {args.state_dir / STATE_FILE}: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        checkpoint = _get(args, "/v1/checkpoints/latest")
        try:
            new = verified(str(checkpoint.get("note", "")), keys)
        except NoteError as error:
            print(f"FAIL  the newest checkpoint is not signed by a trusted key: {error}")
            return EXIT_INCONSISTENT
        print(f"ok    checkpoint {new.describe()} signed by a trusted key")
        proof = None
        if old is not None and new.tree_size > old.tree_size and new.origin == old.origin:
            answer = _get(
                args,
                "/v1/proofs:consistency",
                {"firstTreeSize": str(old.tree_size), "secondTreeSize": str(new.tree_size)},
            )
            proof = [base64.b64decode(value) for value in answer.get("hashes", [])]
    except WitnessError as error:
        print(f"witness: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    if old is not None:
        problem = compare(old, new, proof)
        if problem is not None:
            print(f"FAIL  {problem}")
            print(f"seen before:\n{old.note}")
            print(f"served now:\n{new.note}")
            return EXIT_INCONSISTENT
        if new.tree_size > old.tree_size:
            print(f"ok    consistency proof from tree size {old.tree_size} to {new.tree_size} verifies")
        else:
            print(f"ok    same checkpoint as seen before (tree size {new.tree_size})")
    else:
        print("note  no checkpoint seen before: this one is the first")
    store_seen(args.state_dir, checkpoint)
    return 0
