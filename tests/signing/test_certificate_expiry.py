"""The certificate expiry gauges behind AwarenessSigningCertificateExpiringSoon: one per certificate
new signatures chain to, read from the keys signing uses, and following a rotation."""

from __future__ import annotations

from awareness.signing.v1 import signing_pb2

from services.signing.domain.pki import KeyPurpose, load_keyring
from tests.signing.conftest import SigningHarness

EXPIRY = "awareness_signing_certificate_expiry_timestamp_seconds"


async def test_each_certificate_exports_its_expiry_and_a_rotation_moves_it(signing: SigningHarness) -> None:
    keyring = load_keyring(signing.pki_dir)
    expected = {
        "root": keyring.root_certificate,
        "timestamp": keyring.active(KeyPurpose.TIMESTAMP).certificate,
        "checkpoint": keyring.active(KeyPurpose.CHECKPOINT).certificate,
    }
    for name, certificate in expected.items():
        assert signing.metric(EXPIRY, certificate=name) == certificate.not_valid_after_utc.timestamp()

    rotated = await signing.stub("admin").RotateKey(
        signing_pb2.RotateKeyRequest(purpose=signing_pb2.KEY_PURPOSE_TIMESTAMP)
    )
    active = load_keyring(signing.pki_dir).active(KeyPurpose.TIMESTAMP)
    assert active.key_id == rotated.key.key_id != rotated.previous_key.key_id
    assert (
        signing.metric(EXPIRY, certificate="timestamp") == active.certificate.not_valid_after_utc.timestamp()
    )
    assert signing.metric(EXPIRY, certificate="root") == expected["root"].not_valid_after_utc.timestamp()
