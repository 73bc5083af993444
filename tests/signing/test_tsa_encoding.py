"""The TSA's hand-assembled DER is exactly what asn1crypto encodes for the same values.

The authority pre-encodes the parts of a token that never change and joins bytes for the rest;
these tests rebuild each token with asn1crypto from its decoded values and compare byte for byte,
so a length, tag or SET OF ordering slip cannot hide behind a lenient verifier.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from asn1crypto import cms, core, tsp
from asn1crypto import x509 as asn1_x509
from cryptography.x509.oid import NameOID

from services.signing.domain.errors import TimestampVerificationError
from services.signing.domain.pki import KeyPurpose, Keyring
from services.signing.domain.tsa import (
    CountingSerialSource,
    TimeStampAuthority,
    build_timestamp_request,
    verify_timestamp_token,
)


class _Response(core.Sequence):  # type: ignore[misc]
    _fields = [("status", tsp.PKIStatusInfo), ("time_stamp_token", cms.ContentInfo, {"optional": True})]


def _rebuilt_with_asn1crypto(response_der: bytes) -> bytes:
    token = _Response.load(response_der)["time_stamp_token"]
    signed_data = token["content"]
    tst_info = signed_data["encap_content_info"]["content"].parsed
    signer_info = signed_data["signer_infos"][0]
    rebuilt_tst_info = tsp.TSTInfo(
        {
            name: tst_info[name].native if name != "policy" else tst_info[name].dotted
            for name in ("version", "policy", "serial_number", "gen_time", "accuracy", "nonce")
            if not isinstance(tst_info[name], core.Void)
        }
        | {
            "message_imprint": tsp.MessageImprint.load(tst_info["message_imprint"].dump()),
            "tsa": tst_info["tsa"].untag(),
        }
    )
    attributes = cms.CMSAttributes(
        [
            cms.CMSAttribute({"type": attribute["type"].native, "values": [attribute["values"][0]]})
            for attribute in signer_info["signed_attrs"]
        ]
    )
    fields: dict[str, object] = {
        "version": "v3",
        "digest_algorithms": [{"algorithm": signer_info["digest_algorithm"]["algorithm"].native}],
        "encap_content_info": {
            "content_type": "tst_info",
            "content": core.ParsableOctetString(rebuilt_tst_info.dump()),
        },
        "signer_infos": [
            {
                "version": "v1",
                "sid": cms.SignerIdentifier.load(signer_info["sid"].dump()),
                "digest_algorithm": {"algorithm": signer_info["digest_algorithm"]["algorithm"].native},
                "signed_attrs": attributes,
                "signature_algorithm": {"algorithm": signer_info["signature_algorithm"]["algorithm"].native},
                "signature": signer_info["signature"].native,
            }
        ],
    }
    if not isinstance(signed_data["certificates"], core.Void):
        fields["certificates"] = [
            cms.CertificateChoices.load(choice.dump()) for choice in signed_data["certificates"]
        ]
    rebuilt = cms.ContentInfo({"content_type": "signed_data", "content": cms.SignedData(fields)})
    return bytes(_Response({"status": {"status": "granted"}, "time_stamp_token": rebuilt}).dump(force=True))


@pytest.mark.parametrize(
    ("hash_algorithm", "nonce", "certificate_requested", "serial_start", "year"),
    [
        ("sha256", 7, True, 1, 2026),
        ("sha384", None, False, 2**127 + 12345, 2049),
        ("sha512", 2**70 + 3, True, 2**159, 2051),  # GeneralizedTime signing-time, 160-bit serial
        ("sha256", 128, True, 255, 1999),
    ],
)
def test_token_der_matches_asn1crypto(
    keyring: Keyring,
    hash_algorithm: str,
    nonce: int | None,
    certificate_requested: bool,
    serial_start: int,
    year: int,
) -> None:
    active = keyring.active(KeyPurpose.TIMESTAMP)
    authority = TimeStampAuthority(
        key=active.ecdsa_private_key(),
        certificate=active.certificate,
        chain=[keyring.root_certificate],
        serial_source=CountingSerialSource(start=serial_start),
        clock=lambda: datetime(year, 6, 1, 12, 30, 45, 999, tzinfo=UTC),
    )
    request = build_timestamp_request(
        data=b"evidence",
        hash_algorithm=hash_algorithm,
        nonce=nonce,
        certificate_requested=certificate_requested,
    )
    outcome = authority.issue(request)
    assert outcome.issued is not None and outcome.failure is None
    assert outcome.issued.serial_number == serial_start
    assert outcome.issued.gen_time == datetime(year, 6, 1, 12, 30, 45, tzinfo=UTC)
    assert outcome.response == _rebuilt_with_asn1crypto(outcome.response)


def _authority_naming(keyring: Keyring, name: asn1_x509.Name) -> TimeStampAuthority:
    authority = TimeStampAuthority.from_keyring(keyring)
    general_name = asn1_x509.GeneralName(name="directory_name", value=name)
    authority._tsa_field_der = b"\xa0" + bytes([len(general_name.dump())]) + general_name.dump()
    return authority


def test_the_tsa_field_must_name_the_signer(keyring: Keyring) -> None:
    subject = keyring.active(KeyPurpose.TIMESTAMP).certificate.subject
    common_name = subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    roots = [keyring.root_certificate]
    request = build_timestamp_request(data=b"evidence")

    # The same name in upper case and as a PrintableString: equal after RFC 5280 normalisation.
    equivalent = asn1_x509.Name.build(
        {"organization_name": "AWARENESS", "common_name": str(common_name).upper()}, use_printable=True
    )
    token = _authority_naming(keyring, equivalent).respond(request)
    assert verify_timestamp_token(token, data=b"evidence", trusted_roots=roots).tsa_name is not None

    other = asn1_x509.Name.build({"organization_name": "Awareness", "common_name": "Someone Else"})
    with pytest.raises(TimestampVerificationError, match="does not name its signer"):
        verify_timestamp_token(
            _authority_naming(keyring, other).respond(request), data=b"evidence", trusted_roots=roots
        )
