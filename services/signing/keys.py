"""The keys one signing process signs with: a snapshot of the keyring, swapped whole on reload.

A snapshot is immutable, so a request that started with one key finishes with it even if a
rotation (here or in another replica) lands meanwhile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from services.evidence.checkpoint import NoteSigner, NoteVerifier
from services.signing.config import SigningConfig
from services.signing.domain.pki import MANIFEST_FILE, KeyMaterial, KeyPurpose, Keyring, load_keyring
from services.signing.domain.tsa import SerialSource, TimeStampAuthority

ManifestStamp = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class ActiveKeys:
    keyring: Keyring
    authority: TimeStampAuthority
    note_signer: NoteSigner
    checkpoint_key: KeyMaterial
    manifest_stamp: ManifestStamp

    def checkpoint_keys(self) -> tuple[KeyMaterial, ...]:
        """Every checkpoint key generation, newest first."""
        return tuple(reversed(self.keyring.for_purpose(KeyPurpose.CHECKPOINT)))

    def verifier_for(self, key: KeyMaterial, *, name: str) -> NoteVerifier:
        return NoteVerifier(name=name, public_key=key.ed25519_public_key())

    def certificates(self) -> dict[str, x509.Certificate]:
        """The certificates new signatures chain to, by role: the root CA and the active keys'."""
        return {
            "root": self.keyring.root_certificate,
            "timestamp": self.authority.certificate,
            "checkpoint": self.checkpoint_key.certificate,
        }


def manifest_stamp(directory: Path) -> ManifestStamp:
    """Changes whenever the manifest is rewritten (a rotation, or a new Secret version)."""
    status = os.stat(directory / MANIFEST_FILE)
    return (status.st_ino, status.st_mtime_ns, status.st_size)


def load_active_keys(config: SigningConfig, *, serial_source: SerialSource | None = None) -> ActiveKeys:
    """Read the key directory (blocking file I/O: call it off the event loop)."""
    stamp = manifest_stamp(config.pki_dir)
    keyring = load_keyring(config.pki_dir)
    active_timestamp = keyring.active(KeyPurpose.TIMESTAMP)
    authority = TimeStampAuthority(
        key=active_timestamp.ecdsa_private_key(),
        certificate=active_timestamp.certificate,
        chain=[keyring.root_certificate],
        policy_oid=config.policy_oid,
        accepted_policies=config.accepted_policies,
        accuracy_seconds=config.accuracy_seconds,
        serial_source=serial_source,
    )
    checkpoint_key = keyring.active(KeyPurpose.CHECKPOINT)
    return ActiveKeys(
        keyring=keyring,
        authority=authority,
        note_signer=NoteSigner(name=config.log_origin, private_key=checkpoint_key.ed25519_private_key()),
        checkpoint_key=checkpoint_key,
        manifest_stamp=stamp,
    )
