"""Development TLS under ``awareness up``: a local CA and the certificates it issues.

Server certificates for the gateway's doors, and each service's mTLS identity.

Only for a suite on one machine (``make run``). In Kubernetes certificates come from Secrets
(cert-manager or the operator), and nothing here runs. The CA's key stays under the data
directory (0600), so clients on this machine trust ``ca.crt`` and nothing else is needed.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.runtime import identity

CA_LIFETIME = timedelta(days=3650)
CERTIFICATE_LIFETIME = timedelta(days=365)
# A certificate this close to expiry is issued again at the next start.
RENEW_BEFORE = timedelta(days=30)
LOCAL_NAMES = ("localhost",)
LOCAL_ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class ServerCertificate:
    chain_file: Path  # the server certificate, then the CA's
    key_file: Path
    ca_file: Path  # what clients trust


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    temporary.replace(path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _still_valid(path: Path, now: datetime) -> bool:
    if not path.exists():
        return False
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return certificate.not_valid_after_utc - RENEW_BEFORE > now


def _ensure_ca(directory: Path, now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_file, ca_key_file = directory / "ca.crt", directory / "ca.key"
    if _still_valid(ca_file, now) and ca_key_file.exists():
        key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(ca_file.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Awareness development CA")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(ca_key_file, _pem_key(key))
    _write_private(ca_file, certificate.public_bytes(serialization.Encoding.PEM))
    return certificate, key


def ensure_server_certificate(
    directory: Path, name: str, *, now: datetime | None = None
) -> ServerCertificate:
    """``<name>.crt``/``<name>.key`` for localhost under ``directory``, issued by its CA (made once)."""
    return _ensure_certificate(directory, name, uris=(), dns_names=(), client=False, now=now)


def ensure_service_certificate(
    directory: Path, service: str, *, spiffe_id: str, dns_name: str, now: datetime | None = None
) -> ServerCertificate:
    """A service's mTLS identity under ``directory``: its SPIFFE ID as URI SAN, for server and client use."""
    return _ensure_certificate(
        directory, service, uris=(spiffe_id,), dns_names=(dns_name,), client=True, now=now
    )


def ensure_identity_certificate(directory: Path, service: str) -> ServerCertificate:
    """``service``'s development mTLS identity in the layout ``identity.MtlsFiles.in_directory`` reads."""
    return ensure_service_certificate(
        directory, service, spiffe_id=identity.spiffe_id(service), dns_name=identity.server_name(service)
    )


def _ensure_certificate(
    directory: Path,
    name: str,
    *,
    uris: tuple[str, ...],
    dns_names: tuple[str, ...],
    client: bool,
    now: datetime | None,
) -> ServerCertificate:
    now = now or datetime.now(UTC)
    result = ServerCertificate(
        chain_file=directory / f"{name}.crt", key_file=directory / f"{name}.key", ca_file=directory / "ca.crt"
    )
    ca, ca_key = _ensure_ca(directory, now)
    if _still_valid(result.chain_file, now) and result.key_file.exists():
        issued = x509.load_pem_x509_certificate(result.chain_file.read_bytes())
        try:
            issued.verify_directly_issued_by(ca)
            return result
        except (ValueError, TypeError, InvalidSignature):
            pass  # the CA was made again: issue anew
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(n) for n in (*dns_names, *LOCAL_NAMES)]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in LOCAL_ADDRESSES]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, *([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"awareness {name} (development)")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + CERTIFICATE_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(result.key_file, _pem_key(key))
    chain = certificate.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    _write_private(result.chain_file, chain)
    return result
