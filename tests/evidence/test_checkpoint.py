"""C2SP signed notes and checkpoints (signed by signing, verified by ingest's offline verifier)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from services.evidence.checkpoint import (
    CheckpointBody,
    NoteSigner,
    NoteVerifier,
    parse_signed_note,
    sign_checkpoint,
    sign_digests,
    sign_note,
    verifier_key,
    verify_checkpoint,
    verify_note,
)
from services.evidence.errors import InvalidSignatureError, MalformedNoteError, UnknownSignerError

ORIGIN = "awareness.example/log"

# Known-answer vector of golang.org/x/mod/sumdb/note (note.go documentation and note_test.go).
GO_SIGNER_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
GO_SIGNATURE = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
GO_NOTE = GO_TEXT + "\n— PeterNeumann " + GO_SIGNATURE + "\n"


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner(name=ORIGIN, private_key=ed25519.Ed25519PrivateKey.generate())


def independent_verify(
    note: str, *, public_key: ed25519.Ed25519PublicKey, origin: str, size: int, root: bytes
) -> None:
    """Rebuild the signed bytes from the C2SP spec alone and verify with cryptography directly."""
    body = f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n".encode()
    assert note.startswith(body.decode() + "\n")
    signature_line = note[len(body) + 1 :]
    assert signature_line.endswith("\n") and signature_line.count("\n") == 1
    dash, name, encoded = signature_line[:-1].split(" ")
    assert dash == "\u2014" and name == origin
    blob = base64.b64decode(encoded, validate=True)
    raw_public_key = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert blob[:4] == hashlib.sha256(origin.encode() + b"\n\x01" + raw_public_key).digest()[:4]
    assert len(blob) == 4 + 64
    public_key.verify(blob[4:], body)


def test_go_note_known_answer() -> None:
    typed_seed = base64.b64decode(GO_SIGNER_KEY.split("+", 4)[4])
    assert typed_seed[0] == 0x01
    signer = NoteSigner(
        name="PeterNeumann", private_key=ed25519.Ed25519PrivateKey.from_private_bytes(typed_seed[1:])
    )
    assert signer.verifier.vkey == GO_VERIFIER_KEY
    assert sign_note(GO_TEXT, signers=[signer]).encode() == GO_NOTE  # Ed25519 is deterministic
    note, verified_by = verify_note(GO_NOTE, verifier_keys=[NoteVerifier.from_vkey(GO_VERIFIER_KEY)])
    assert note.text == GO_TEXT and verified_by == ("PeterNeumann",)


def test_tampered_tree_size_fails(signer: NoteSigner) -> None:
    root = hashlib.sha256(b"root").digest()
    note = sign_checkpoint(origin=ORIGIN, tree_size=42, root_hash=root, key=signer).encode()
    tampered = note.replace("\n42\n", "\n43\n", 1)
    assert tampered != note
    with pytest.raises(InvalidSignature):
        independent_verify(
            tampered, public_key=signer.private_key.public_key(), origin=ORIGIN, size=43, root=root
        )
    with pytest.raises(InvalidSignatureError):
        verify_checkpoint(tampered, verifier_keys=[signer.verifier])


def test_unknown_and_same_name_keys_are_not_trusted(signer: NoteSigner) -> None:
    note = sign_checkpoint(origin=ORIGIN, tree_size=1, root_hash=bytes(32), key=signer).encode()
    impostor = NoteVerifier(name=ORIGIN, public_key=ed25519.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(UnknownSignerError):
        verify_checkpoint(note, verifier_keys=[impostor])
    other_name = NoteVerifier(name="other.example/log", public_key=signer.private_key.public_key())
    with pytest.raises(UnknownSignerError):
        verify_checkpoint(note, verifier_keys=[other_name])
    with pytest.raises(MalformedNoteError, match="origin"):
        verify_checkpoint(note, verifier_keys=[signer.verifier], origin="other.example/log")


def test_unknown_cosignatures_are_ignored(signer: NoteSigner) -> None:
    witness = NoteSigner(name="witness.example", private_key=ed25519.Ed25519PrivateKey.generate())
    body = CheckpointBody(origin=ORIGIN, tree_size=7, root_hash=bytes(range(32))).encode()
    note = sign_note(body, signers=[witness, signer]).encode()
    assert verify_checkpoint(note, verifier_keys=[signer.verifier]).tree_size == 7


@pytest.mark.parametrize(
    "note",
    [
        "",
        "no blank line\n— a AAAAAAAA\n",
        f"{ORIGIN}\n1\n{base64.b64encode(bytes(32)).decode()}\n\n",
        f"{ORIGIN}\n1\n{base64.b64encode(bytes(32)).decode()}\n\n- {ORIGIN} AAAAAAAAAA==\n",
        f"{ORIGIN}\n1\n{base64.b64encode(bytes(32)).decode()}\n\n— {ORIGIN} not*base64\n",
        f"{ORIGIN}\n1\n{base64.b64encode(bytes(32)).decode()}\n\n— {ORIGIN} AAAA\n",
        f"{ORIGIN}\x07\n1\n{base64.b64encode(bytes(32)).decode()}\n\n— {ORIGIN} AAAAAAAAAA==\n",
    ],
)
def test_malformed_notes_are_rejected(note: str) -> None:
    with pytest.raises(MalformedNoteError):
        parse_signed_note(note)


@pytest.mark.parametrize(
    "text",
    [
        f"{ORIGIN}\n01\n{base64.b64encode(bytes(32)).decode()}\n",  # leading zero
        f"{ORIGIN}\n-1\n{base64.b64encode(bytes(32)).decode()}\n",
        f"{ORIGIN}\n1\nnot base64!\n",
        f"{ORIGIN}\n1\n",
        f"\n1\n{base64.b64encode(bytes(32)).decode()}\n",
    ],
)
def test_malformed_checkpoint_bodies_are_rejected(signer: NoteSigner, text: str) -> None:
    note = sign_note(text, signers=[signer]).encode()  # correctly signed, but not a checkpoint
    with pytest.raises(MalformedNoteError):
        verify_checkpoint(note, verifier_keys=[signer.verifier])


def test_verifier_key_round_trip() -> None:
    public_key = ed25519.Ed25519PrivateKey.generate().public_key()
    vkey = verifier_key(ORIGIN, public_key)
    name, key_hash, encoded = vkey.split("+", 2)
    assert name == ORIGIN and len(key_hash) == 8
    assert base64.b64decode(encoded)[0] == 0x01
    parsed = NoteVerifier.from_vkey(vkey)
    assert parsed.vkey == vkey
    corrupted = f"{name}+{'0' * 8 if key_hash != '0' * 8 else '1' * 8}+{encoded}"
    with pytest.raises(MalformedNoteError):
        NoteVerifier.from_vkey(corrupted)


def test_sign_digests_signs_each_digest(signer: NoteSigner) -> None:
    private_key = signer.private_key
    digests = [hashlib.sha256(bytes([i])).digest() for i in range(5)]
    signatures = sign_digests(digests, private_key)
    assert len(signatures) == 5
    for digest, signature in zip(digests, signatures, strict=True):
        private_key.public_key().verify(signature, digest)
    with pytest.raises(InvalidSignature):
        private_key.public_key().verify(signatures[0], digests[1])


def test_sign_checkpoint_validates_inputs(signer: NoteSigner) -> None:
    with pytest.raises(MalformedNoteError):
        sign_checkpoint(origin=ORIGIN, tree_size=-1, root_hash=bytes(32), key=signer)
    with pytest.raises(MalformedNoteError):
        sign_checkpoint(origin=ORIGIN, tree_size=1, root_hash=bytes(31), key=signer)
    with pytest.raises(MalformedNoteError):
        sign_checkpoint(origin="two\nlines", tree_size=1, root_hash=bytes(32), key=signer)
    with pytest.raises(MalformedNoteError):
        NoteSigner(name="has space", private_key=signer.private_key)
