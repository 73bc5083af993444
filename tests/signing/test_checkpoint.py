"""Checkpoint notes signed with the keys of signing's PKI (the note format: tests/evidence)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from services.evidence.checkpoint import (
    CheckpointBody,
    NoteSigner,
    NoteVerifier,
    sign_checkpoint,
    verify_checkpoint,
)
from services.evidence.errors import UnknownSignerError
from services.signing.domain.pki import KeyPurpose, init_pki, load_keyring, rotate_key
from tests.evidence.test_checkpoint import independent_verify

ORIGIN = "awareness.example/log"


def _signer_from_keyring(directory: Path) -> NoteSigner:
    private_key = load_keyring(directory).active(KeyPurpose.CHECKPOINT).ed25519_private_key()
    return NoteSigner(name=ORIGIN, private_key=private_key)


def test_checkpoint_verifies_with_only_the_published_public_key(pki_dir: Path) -> None:
    signer = _signer_from_keyring(pki_dir)
    root = hashlib.sha256(b"root").digest()
    note = sign_checkpoint(origin=ORIGIN, tree_size=42, root_hash=root, key=signer).encode()

    # The verifier holds only the published certificate (PEM), nothing from our code.
    certificate_path = init_pki(pki_dir, common_name_prefix="Awareness Test").checkpoint_certificate
    published = x509.load_pem_x509_certificate(certificate_path.read_bytes()).public_key()
    assert isinstance(published, ed25519.Ed25519PublicKey)
    independent_verify(note, public_key=published, origin=ORIGIN, size=42, root=root)

    body = verify_checkpoint(
        note, verifier_keys=[NoteVerifier(name=ORIGIN, public_key=published)], origin=ORIGIN
    )
    assert body == CheckpointBody(origin=ORIGIN, tree_size=42, root_hash=root)


def test_rotation_keeps_old_checkpoints_verifiable(tmp_path: Path) -> None:
    init_pki(tmp_path)
    root = hashlib.sha256(b"first").digest()
    old_note = sign_checkpoint(
        origin=ORIGIN, tree_size=10, root_hash=root, key=_signer_from_keyring(tmp_path)
    ).encode()

    rotate_key(tmp_path, KeyPurpose.CHECKPOINT)
    new_signer = _signer_from_keyring(tmp_path)
    new_note = sign_checkpoint(origin=ORIGIN, tree_size=20, root_hash=root, key=new_signer).encode()

    generations = load_keyring(tmp_path).for_purpose(KeyPurpose.CHECKPOINT)
    assert len(generations) == 2
    verifiers = [NoteVerifier(name=ORIGIN, public_key=key.ed25519_public_key()) for key in generations]
    assert verify_checkpoint(old_note, verifier_keys=verifiers).tree_size == 10
    assert verify_checkpoint(new_note, verifier_keys=verifiers).tree_size == 20
    # The new key alone does not vouch for the old checkpoint.
    with pytest.raises(UnknownSignerError):
        verify_checkpoint(old_note, verifier_keys=[new_signer.verifier])
