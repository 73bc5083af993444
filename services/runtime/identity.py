"""Who a process is on the wire: one mTLS certificate per service, named by a SPIFFE-style URI SAN.

Each service holds its own certificate and key, issued by the project's PKI (cert-manager in
Kubernetes, the development CA under ``awareness up``). Its URI SAN is
``spiffe://awareness.internal/service/<name>`` and its DNS SAN ``<name>.awareness.internal``.
Servers accept only clients with a certificate from that CA, and the callee reads the caller's
identity from the handshake, never from metadata. Clients check the server's DNS SAN, so a
channel to gdpr reaches gdpr and nothing else that holds a certificate.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc

TRUST_DOMAIN: Final = "awareness.internal"
SPIFFE_PREFIX: Final = f"spiffe://{TRUST_DOMAIN}/service/"
_PEER_SPIFFE_ID: Final = "peer_spiffe_id"
# How often a process looks for a renewed certificate; cert-manager renews weeks before expiry.
RENEWAL_CHECK_SECONDS: Final = 60.0
# Replicas see a renewal within the same minute; each waits a random part of this before it
# stops, so they do not all restart at once.
RENEWAL_SPREAD_SECONDS: Final = 300.0

log = logging.getLogger("awareness.identity")


def spiffe_id(service: str) -> str:
    return f"{SPIFFE_PREFIX}{service}"


def server_name(service: str) -> str:
    """The DNS SAN every certificate of ``service`` carries, checked by its callers."""
    return f"{service}.{TRUST_DOMAIN}"


@dataclass(frozen=True, slots=True)
class MtlsFiles:
    """A process's certificate chain (PEM, leaf first), its key, and the CA bundle it trusts."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    @classmethod
    def in_directory(cls, directory: Path, service: str) -> MtlsFiles:
        """The layout ``awareness up`` writes: ``<service>.crt``, ``<service>.key`` and ``ca.crt``."""
        return cls(directory / f"{service}.crt", directory / f"{service}.key", directory / "ca.crt")

    def exist(self) -> bool:
        return self.cert_file.exists() and self.key_file.exists() and self.ca_file.exists()

    def fingerprint(self) -> tuple[float, ...]:
        """Changes when any file is replaced (cert-manager renews by writing a new Secret version)."""
        return tuple(path.stat().st_mtime for path in (self.cert_file, self.key_file, self.ca_file))

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=self.ca_file.read_bytes(),
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.key_file.read_bytes(),
            certificate_chain=self.cert_file.read_bytes(),
        )


def channel_options(service: str) -> list[tuple[str, Any]]:
    """Verify the server as ``service`` whatever address reaches it (an IP, a headless Service)."""
    return [("grpc.ssl_target_name_override", server_name(service))]


def peer_service(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The calling service, proven by its client certificate; None on a connection without one."""
    values = context.auth_context().get(_PEER_SPIFFE_ID) or ()
    for value in values:
        text = value.decode() if isinstance(value, bytes) else str(value)
        if text.startswith(SPIFFE_PREFIX):
            name = text.removeprefix(SPIFFE_PREFIX)
            if name and "/" not in name:
                return name
    return None


async def renewed(
    files: MtlsFiles,
    *,
    interval_seconds: float = RENEWAL_CHECK_SECONDS,
    spread_seconds: float = RENEWAL_SPREAD_SECONDS,
) -> None:
    """Return once any of ``files`` is replaced.

    gRPC reads a certificate when a server or channel is built, so a process serves the renewed
    one by stopping gracefully and being started again (by Kubernetes, or the operator).
    """
    seen = files.fingerprint()
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            current = files.fingerprint()
        except OSError:
            continue  # caught between the removal and the creation of a file: look again later
        if current != seen:
            log.info(
                "certificate renewed: stopping, to be started again with it",
                extra={"cert": str(files.cert_file)},
            )
            return
