"""Checkpoints as C2SP signed notes (c2sp.org/tlog-checkpoint, c2sp.org/signed-note), Ed25519 only.

A checkpoint note::

    <origin>\\n<tree size>\\n<base64 root hash>\\n[extension lines\\n]
    \\n
    — <key name> <base64(4-byte key hash || 64-byte Ed25519 signature)>\\n

The key hash is ``SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]``; a verifier key is
published as ``<name>+<hex key hash>+<base64(0x01 || public key)>`` (the Go ``note`` package format).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from services.evidence.errors import (
    InvalidSignatureError,
    MalformedNoteError,
    NoteError,
    UnknownSignerError,
)

ED25519_SIGNATURE_TYPE = 0x01
ROOT_HASH_SIZE = 32  # RFC 6962 with SHA-256
_EM_DASH = "\u2014"
_KEY_HASH_SIZE = 4
_ED25519_SIGNATURE_SIZE = 64
# The spec asks verifiers to cap signatures (it requires accepting at least 16) and overall size.
MAX_SIGNATURES = 64
MAX_NOTE_BYTES = 1 << 20
_TREE_SIZE = re.compile(r"0|[1-9][0-9]*")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x09\x0b-\x1f]")


def _check_key_name(name: str) -> None:
    if not name or any(character.isspace() or character == "+" for character in name):
        raise MalformedNoteError(
            f"invalid note key name {name!r}: it must be non-empty, without spaces or '+'"
        )


def _raw_public_key(public_key: ed25519.Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def note_key_hash(name: str, public_key: ed25519.Ed25519PublicKey) -> bytes:
    """The 4-byte key id of a signed-note Ed25519 key."""
    material = name.encode() + b"\n" + bytes([ED25519_SIGNATURE_TYPE]) + _raw_public_key(public_key)
    return hashlib.sha256(material).digest()[:_KEY_HASH_SIZE]


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """A trusted note key: its name and Ed25519 public key."""

    name: str
    public_key: ed25519.Ed25519PublicKey

    def __post_init__(self) -> None:
        _check_key_name(self.name)

    @property
    def key_hash(self) -> bytes:
        return note_key_hash(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        """``<name>+<hex key hash>+<base64(0x01 || public key)>``."""
        encoded_key = base64.b64encode(bytes([ED25519_SIGNATURE_TYPE]) + _raw_public_key(self.public_key))
        return f"{self.name}+{self.key_hash.hex()}+{encoded_key.decode()}"

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        parts = vkey.split("+", 2)  # the base64 key itself may contain "+"
        if len(parts) != 3 or len(parts[1]) != 2 * _KEY_HASH_SIZE:
            raise MalformedNoteError("a verifier key has the form <name>+<hex key hash>+<base64 key>")
        name, key_hash_hex, encoded_key = parts
        try:
            key_hash = bytes.fromhex(key_hash_hex)
            typed_key = base64.b64decode(encoded_key, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise MalformedNoteError(f"invalid verifier key: {exc}") from exc
        if len(typed_key) != 33 or typed_key[0] != ED25519_SIGNATURE_TYPE:
            raise MalformedNoteError("only Ed25519 (type 0x01) verifier keys are supported")
        verifier = cls(name=name, public_key=ed25519.Ed25519PublicKey.from_public_bytes(typed_key[1:]))
        if verifier.key_hash != key_hash:
            raise MalformedNoteError("the verifier key's hash does not match its name and public key")
        return verifier

    def verify(self, text: bytes, signature: bytes) -> bool:
        try:
            self.public_key.verify(signature, text)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True)
class NoteSigner:
    """A note key able to sign: its name (usually the log origin) and Ed25519 private key."""

    name: str
    private_key: ed25519.Ed25519PrivateKey

    def __post_init__(self) -> None:
        _check_key_name(self.name)

    @property
    def verifier(self) -> NoteVerifier:
        return NoteVerifier(name=self.name, public_key=self.private_key.public_key())


def verifier_key(name: str, public_key: ed25519.Ed25519PublicKey) -> str:
    """The published verifier string for a note key (``<name>+<hex>+<base64>``)."""
    return NoteVerifier(name=name, public_key=public_key).vkey


@dataclass(frozen=True, slots=True)
class NoteSignature:
    key_name: str
    key_hash: bytes
    signature: bytes

    def line(self) -> str:
        encoded = base64.b64encode(self.key_hash + self.signature).decode()
        return f"{_EM_DASH} {self.key_name} {encoded}\n"


@dataclass(frozen=True, slots=True)
class SignedNote:
    """A note's text (ending in a newline) and its signature lines."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def encode(self) -> str:
        return self.text + "\n" + "".join(signature.line() for signature in self.signatures)

    def to_bytes(self) -> bytes:
        return self.encode().encode()

    def __str__(self) -> str:
        return self.encode()


@dataclass(frozen=True, slots=True)
class CheckpointBody:
    """The note text of a checkpoint."""

    origin: str
    tree_size: int
    root_hash: bytes
    extension_lines: tuple[str, ...] = ()

    def encode(self) -> str:
        lines = [
            self.origin,
            str(self.tree_size),
            base64.b64encode(self.root_hash).decode(),
            *self.extension_lines,
        ]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> CheckpointBody:
        if not text.endswith("\n"):
            raise MalformedNoteError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise MalformedNoteError("a checkpoint has at least three lines: origin, tree size, root hash")
        origin, size_line, hash_line, *extension_lines = lines
        if not origin:
            raise MalformedNoteError("checkpoint origin is empty")
        if not _TREE_SIZE.fullmatch(size_line):
            raise MalformedNoteError("checkpoint tree size must be decimal without leading zeros")
        try:
            root_hash = base64.b64decode(hash_line, validate=True)
        except binascii.Error as exc:
            raise MalformedNoteError("checkpoint root hash is not standard base64") from exc
        if not root_hash:
            raise MalformedNoteError("checkpoint root hash is empty")
        if any(not line for line in extension_lines):
            raise MalformedNoteError("checkpoint extension lines must be non-empty")
        return cls(
            origin=origin,
            tree_size=int(size_line),
            root_hash=root_hash,
            extension_lines=tuple(extension_lines),
        )


def parse_signed_note(note: str | bytes) -> SignedNote:
    """Split a note into text and signature lines, checking the format only (no verification)."""
    if isinstance(note, bytes):
        if len(note) > MAX_NOTE_BYTES:
            raise MalformedNoteError("note is too large")
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedNoteError("note is not valid UTF-8") from exc
    if len(note) > MAX_NOTE_BYTES:
        raise MalformedNoteError("note is too large")
    if _CONTROL_CHARACTERS.search(note):
        raise MalformedNoteError("note contains control characters other than newline")
    separator = note.rfind("\n\n")
    if separator < 0:
        raise MalformedNoteError("note has no blank line before its signatures")
    text, signature_block = note[: separator + 1], note[separator + 2 :]
    if not signature_block or not signature_block.endswith("\n"):
        raise MalformedNoteError("note has no signature lines, or they do not end with a newline")
    lines = signature_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNoteError(f"note has more than {MAX_SIGNATURES} signatures")
    return SignedNote(text=text, signatures=tuple(_parse_signature_line(line) for line in lines))


def _parse_signature_line(line: str) -> NoteSignature:
    prefix = _EM_DASH + " "
    if not line.startswith(prefix):
        raise MalformedNoteError("signature lines start with an em dash and a space")
    name, space, encoded = line[len(prefix) :].partition(" ")
    if not space or " " in encoded:
        raise MalformedNoteError("signature line must be '— <key name> <base64 signature>'")
    _check_key_name(name)
    try:
        decoded = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise MalformedNoteError("signature is not standard base64") from exc
    if len(decoded) <= _KEY_HASH_SIZE:
        raise MalformedNoteError("signature is too short")
    return NoteSignature(key_name=name, key_hash=decoded[:_KEY_HASH_SIZE], signature=decoded[_KEY_HASH_SIZE:])


def sign_note(text: str, *, signers: Sequence[NoteSigner]) -> SignedNote:
    if not text.endswith("\n"):
        raise MalformedNoteError("note text must end with a newline")
    if _CONTROL_CHARACTERS.search(text):
        raise MalformedNoteError("note text contains control characters other than newline")
    if not signers:
        raise NoteError("a note needs at least one signer")
    message = text.encode()
    return SignedNote(
        text=text,
        signatures=tuple(
            NoteSignature(
                key_name=signer.name,
                key_hash=note_key_hash(signer.name, signer.private_key.public_key()),
                signature=signer.private_key.sign(message),
            )
            for signer in signers
        ),
    )


def verify_note(
    note: str | bytes, *, verifier_keys: Iterable[NoteVerifier]
) -> tuple[SignedNote, tuple[str, ...]]:
    """Verify a note against trusted keys; returns the note and the names of the keys that signed it.

    As c2sp.org/signed-note requires: signatures from unknown keys are ignored, a failing signature
    from a known key rejects the whole note, and a note no known key signed is rejected.
    """
    signed_note = parse_signed_note(note)
    trusted = {(verifier.name, verifier.key_hash): verifier for verifier in verifier_keys}
    message = signed_note.text.encode()
    verified_by: list[str] = []
    for signature in signed_note.signatures:
        verifier = trusted.get((signature.key_name, signature.key_hash))
        if verifier is None:
            continue
        if len(signature.signature) != _ED25519_SIGNATURE_SIZE or not verifier.verify(
            message, signature.signature
        ):
            raise InvalidSignatureError(f"signature by {signature.key_name} does not verify")
        verified_by.append(signature.key_name)
    if not verified_by:
        raise UnknownSignerError("the note carries no signature from a trusted key")
    return signed_note, tuple(verified_by)


def sign_checkpoint(
    *,
    origin: str,
    tree_size: int,
    root_hash: bytes,
    key: NoteSigner,
    extension_lines: Sequence[str] = (),
) -> SignedNote:
    if not origin or "\n" in origin:
        raise MalformedNoteError("checkpoint origin must be one non-empty line")
    if tree_size < 0:
        raise MalformedNoteError("tree size cannot be negative")
    if len(root_hash) != ROOT_HASH_SIZE:
        raise MalformedNoteError(f"root hash must be {ROOT_HASH_SIZE} bytes (SHA-256)")
    if any(not line or "\n" in line for line in extension_lines):
        raise MalformedNoteError("extension lines must be single non-empty lines")
    body = CheckpointBody(
        origin=origin, tree_size=tree_size, root_hash=root_hash, extension_lines=tuple(extension_lines)
    )
    return sign_note(body.encode(), signers=[key])


def verify_checkpoint(
    note_text: str | bytes, *, verifier_keys: Iterable[NoteVerifier], origin: str | None = None
) -> CheckpointBody:
    """Verify a signed checkpoint and return its parsed body.

    ``origin``, when given, must match the checkpoint's first line (a log must not accept another
    log's checkpoint just because the same key signed it).
    """
    signed_note, _ = verify_note(note_text, verifier_keys=verifier_keys)
    body = CheckpointBody.parse(signed_note.text)
    if origin is not None and body.origin != origin:
        raise MalformedNoteError(f"checkpoint origin {body.origin!r} is not {origin!r}")
    return body


def sign_digests(digests: Iterable[bytes], key: ed25519.Ed25519PrivateKey) -> list[bytes]:
    """Ed25519 signatures over each digest, in order."""
    return [key.sign(digest) for digest in digests]
