"""The evidence pages' pure rules: the checkpoint timeline's rows, which two checkpoints to check
for consistency, the JSON the browser's checks read (static/verify.js, static/evidence.js), and the
RFC 3161 request and reply of a file's time-stamp. No I/O."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from awareness.signing.v1 import signing_pb2

from services.evidence.timestamp import granted_token
from services.portal.domain import display
from services.runtime.errors import FieldViolation, InvalidArgumentError

PAGE_SIZE: Final = 25
# ListPublicKeys' own maximum: every checkpoint key ever used, so old notes still verify.
KEYS_PAGE_SIZE: Final = 1000
MAX_TREE_SIZE: Final = (1 << 63) - 1
SHA256_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")
SIZE_PATTERN: Final = re.compile(r"(?:0|[1-9][0-9]{0,18})")
# The file a verifier saves the TSA's CA chain as; the page's openssl command names it.
CA_FILE: Final = "awareness-tsa-ca.pem"
TIMESTAMP_REPLY: Final = "application/timestamp-reply"


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


# --- the timeline -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """One checkpoint as the timeline shows it."""

    tree_size: int
    signed: str
    signed_iso: str
    key_id: str
    token: str  # "yes (internal)", or "no" when no TSA answered

    @property
    def short_key_id(self) -> str:
        return self.key_id[:16]


def checkpoint_row(checkpoint: signing_pb2.SignedCheckpoint) -> CheckpointRow:
    return CheckpointRow(
        tree_size=checkpoint.tree_size,
        signed=display.when(checkpoint.timestamp),
        signed_iso=display.iso(checkpoint.timestamp),
        key_id=checkpoint.key_id,
        token=token_presence(checkpoint),
    )


def token_presence(checkpoint: signing_pb2.SignedCheckpoint) -> str:
    if not checkpoint.timestamp_token:
        return "no"
    return f"yes ({checkpoint.tsa})" if checkpoint.tsa else "yes"


def verifier_keys(keys: signing_pb2.ListPublicKeysResponse) -> list[str]:
    """The C2SP verifier keys of the log's checkpoint keys, current and retired."""
    return [key.note_verifier_key for key in keys.public_keys if key.note_verifier_key]


# --- consistency between two checkpoints --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsistencyChoice:
    """The two tree sizes to check, as the form holds them, and what did not parse."""

    first: int | None
    second: int | None
    violations: tuple[FieldViolation, ...] = ()

    @property
    def complete(self) -> bool:
        return self.first is not None and self.second is not None and not self.violations


def parse_tree_size(value: str, field: str, violations: list[FieldViolation]) -> int | None:
    """A positive tree size, or None (with a violation when something else was typed)."""
    text = value.strip()
    if not text:
        return None
    if not SIZE_PATTERN.fullmatch(text) or not 0 < int(text) <= MAX_TREE_SIZE:
        violations.append(FieldViolation(field, "a tree size: a whole number above 0"))
        return None
    return int(text)


def parse_consistency(
    params: Mapping[str, str], *, default_first: int | None, default_second: int | None
) -> ConsistencyChoice:
    """The two sizes of the form, the defaults where a field is empty; given in either order, the
    smaller is the older tree."""
    violations: list[FieldViolation] = []
    first = parse_tree_size(params.get("first", ""), "first", violations)
    second = parse_tree_size(params.get("second", ""), "second", violations)
    if violations:
        return ConsistencyChoice(first, second, tuple(violations))
    first = default_first if first is None else first
    second = default_second if second is None else second
    if first is not None and second is not None and first > second:
        first, second = second, first
    return ConsistencyChoice(first, second)


def default_pair(sizes: Sequence[int]) -> tuple[int | None, int | None]:
    """The oldest and the newest of the listed checkpoints (listed newest first)."""
    if not sizes:
        return None, None
    return min(sizes), max(sizes)


def consistency_json(
    *,
    first: signing_pb2.SignedCheckpoint,
    second: signing_pb2.SignedCheckpoint,
    proof: Sequence[bytes],
    keys: Sequence[str],
) -> dict[str, Any]:
    """A consistency proof between two signed checkpoints, as static/verify.js reads it: the
    browser checks both notes' signatures, that the older note is the tree the proof starts from,
    and that the proof leads from it to the newer note's root."""
    return {
        "kind": "consistency",
        "firstSize": first.tree_size,
        "firstRoot": b64(first.root_hash),
        "secondSize": second.tree_size,
        "proof": [b64(node) for node in proof],
        "note": second.note,
        "firstNote": first.note,
        "verifierKeys": list(keys),
    }


# --- a receipt's inclusion proof ----------------------------------------------------------------


def parse_proof_query(params: Mapping[str, str]) -> tuple[int, int]:
    """The leaf index and tree size of a proof request from static/evidence.js."""
    violations: list[FieldViolation] = []
    leaf_text = params.get("leaf", "").strip()
    leaf = int(leaf_text) if SIZE_PATTERN.fullmatch(leaf_text) else None
    if leaf is None or leaf > MAX_TREE_SIZE:
        violations.append(FieldViolation("leaf", "a leaf index: a whole number from 0"))
    size = parse_tree_size(params.get("size", ""), "size", violations)
    if size is None and not any(violation.field == "size" for violation in violations):
        violations.append(FieldViolation("size", "a tree size is required"))
    if leaf is not None and size is not None and leaf >= size:
        violations.append(FieldViolation("leaf", f"below the tree size {size}"))
    if violations or leaf is None or size is None:
        raise InvalidArgumentError("not a leaf index and tree size", violations=violations)
    return leaf, size


def inclusion_proof_json(
    *, leaf_index: int, tree_size: int, proof: Sequence[bytes], keys: Sequence[str]
) -> dict[str, Any]:
    """What the receipt check fetches: the audit path and the keys to check the note with. The
    leaf hash and the note come from the receipt the person holds, not from here."""
    return {
        "leafIndex": leaf_index,
        "treeSize": tree_size,
        "proof": [b64(node) for node in proof],
        "verifierKeys": list(keys),
    }


def error_json(message: str, violations: Sequence[FieldViolation] = ()) -> dict[str, Any]:
    return {
        "error": message,
        "violations": [{"field": item.field, "description": item.description} for item in violations],
    }


# --- time-stamping a file's hash ------------------------------------------------------------------


def parse_sha256_hex(value: str) -> bytes:
    """The 32-byte digest a form's hex holds; anything else is a field violation."""
    text = value.strip()
    if not SHA256_HEX.fullmatch(text):
        raise InvalidArgumentError(
            "not a SHA-256 digest",
            violations=[FieldViolation("sha256", "64 hexadecimal characters: the file's SHA-256")],
        )
    return bytes.fromhex(text)


def check_timestamp_reply(reply: bytes, *, digest: bytes, nonce: int) -> None:
    """Refuse a reply that grants no token, or one for another digest or nonce: the person would
    otherwise download a .tsr that can never verify."""
    granted_token(reply, digest=digest, nonce=nonce)


def tsr_filename(digest_hex: str) -> str:
    """The reply's file name; static/evidence.js names it the same way in the openssl command. The
    file's own name never leaves the browser."""
    return f"timestamp-{digest_hex.lower()[:16]}.tsr"


def openssl_command(digest_hex: str) -> str:
    return f"openssl ts -verify -digest {digest_hex.lower()} -in {tsr_filename(digest_hex)} -CAfile {CA_FILE}"


def ca_bundle(keys: signing_pb2.ListPublicKeysResponse) -> str:
    """The CA chain that certifies the TSA's keys, as one PEM file for ``-CAfile``."""
    return "".join(pem if pem.endswith("\n") else f"{pem}\n" for pem in keys.certificate_chain_pem)


def attachment(filename: str) -> dict[str, str]:
    return {"content-disposition": f'attachment; filename="{filename}"'}


@dataclass(frozen=True, slots=True)
class CheckpointFiles:
    """A checkpoint's note and time-stamp token as files, and the openssl command over them."""

    tree_size: int

    @property
    def note(self) -> str:
        return f"checkpoint-{self.tree_size}.note"

    @property
    def token(self) -> str:
        return f"checkpoint-{self.tree_size}.tsr"

    @property
    def openssl_command(self) -> str:
        return f"openssl ts -verify -data {self.note} -in {self.token} -token_in -CAfile {CA_FILE}"
