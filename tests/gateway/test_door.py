"""The gRPC door's pure parts: which methods it serves, and whose bucket a peer counts in."""

from __future__ import annotations

from services.gateway.domain.descriptors import door_methods, import_generated_modules, load_descriptor_set
from services.gateway.door import peer_ip


def _methods() -> dict[str, str]:
    import_generated_modules()
    return {method.rpc: method.permission for method in door_methods(load_descriptor_set())}


def test_the_door_serves_client_streams_and_every_public_method() -> None:
    served = _methods()
    assert served["/awareness.ingest.v1.IngestService/StreamAppendEvents"] == "ingest:write"
    assert served["/awareness.ingest.v1.IngestService/ListEvents"] == "events:read"
    assert served["/awareness.gdpr.v1.GdprService/EraseSubject"] == "gdpr:erase"


def test_the_door_never_serves_internal_methods() -> None:
    served = _methods()
    assert "/awareness.gdpr.v1.GdprService/UnwrapDataKeys" not in served
    assert "/awareness.ingest.v1.IngestService/ForgetSubject" not in served
    assert "internal:call" not in served.values()


def test_a_peer_counts_in_its_address_bucket() -> None:
    assert peer_ip("ipv4:10.1.2.3:55012") == "10.1.2.3"
    assert peer_ip("ipv6:[::1]:55012") == "::1"
    assert peer_ip("unix:/tmp/door.sock") == "unix:/tmp/door.sock"
    assert peer_ip("") == "unknown"
