"""The evidence pages' pure rules (services/portal/domain/evidence.py): the timeline's rows, the
choice of two checkpoints, the JSON the browser checks, and a file's RFC 3161 request and reply,
answered by the project's own time-stamp authority."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asn1crypto import tsp
from awareness.signing.v1 import signing_pb2
from cryptography.hazmat.primitives.asymmetric import ed25519

from services.evidence.checkpoint import NoteSigner, NoteVerifier, sign_checkpoint, verify_checkpoint
from services.evidence.timestamp import timestamp_request
from services.ingest.domain import merkle
from services.portal.domain import evidence
from services.runtime.errors import FailedPreconditionError, FieldViolation, InvalidArgumentError
from services.signing.domain.pki import init_pki, load_keyring
from services.signing.domain.tsa import (
    FailureInfo,
    TimeStampAuthority,
    rejection_response,
    verify_timestamp_token,
)

ORIGIN = "awareness.test/log"
DIGEST = bytes(range(32))


def _checkpoint(
    size: int, store: merkle.InMemoryNodeStore, signer: NoteSigner
) -> signing_pb2.SignedCheckpoint:
    root = merkle.root_hash(size, store)
    note = sign_checkpoint(origin=ORIGIN, tree_size=size, root_hash=root, key=signer).encode()
    return signing_pb2.SignedCheckpoint(
        origin=ORIGIN, tree_size=size, root_hash=root, note=note, key_id="ab" * 32
    )


# --- the timeline ----------------------------------------------------------------------------------


def test_a_row_says_whether_the_checkpoint_carries_a_time_stamp_token() -> None:
    stamped = signing_pb2.SignedCheckpoint(
        tree_size=7, key_id="0123456789abcdef" * 4, timestamp_token=b"t", tsa="internal"
    )
    stamped.timestamp.FromDatetime(datetime(2026, 12, 6, 4, 31, tzinfo=UTC))
    row = evidence.checkpoint_row(stamped)
    assert (row.tree_size, row.token, row.short_key_id) == (7, "yes (internal)", "0123456789abcdef")
    assert row.signed == "2026-12-06 04:31 UTC"
    assert row.signed_iso.startswith("2026-12-06T04:31:00")
    assert evidence.checkpoint_row(signing_pb2.SignedCheckpoint(tree_size=8)).token == "no"
    assert evidence.checkpoint_row(signing_pb2.SignedCheckpoint(tree_size=8)).signed == ""


def test_only_keys_with_a_note_verifier_key_are_used() -> None:
    keys = signing_pb2.ListPublicKeysResponse(
        public_keys=[
            signing_pb2.PublicKey(key_id="a", note_verifier_key="log+01020304+AQ=="),
            signing_pb2.PublicKey(key_id="b", purpose=signing_pb2.KEY_PURPOSE_TIMESTAMP),
        ],
        certificate_chain_pem=["-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----"],
    )
    assert evidence.verifier_keys(keys) == ["log+01020304+AQ=="]
    assert evidence.ca_bundle(keys) == "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n"


# --- the choice of two checkpoints -------------------------------------------------------------------


def test_empty_fields_take_the_oldest_and_newest_listed() -> None:
    first, second = evidence.default_pair([40, 31, 12])
    assert (first, second) == (12, 40)
    choice = evidence.parse_consistency({}, default_first=first, default_second=second)
    assert (choice.first, choice.second, choice.complete) == (12, 40, True)
    assert evidence.default_pair([]) == (None, None)
    nothing = evidence.parse_consistency(
        {"first": "", "second": " "}, default_first=None, default_second=None
    )
    assert not nothing.complete and nothing.violations == ()


def test_two_sizes_in_either_order_check_the_smaller_against_the_larger() -> None:
    choice = evidence.parse_consistency({"first": "40", "second": " 12 "}, default_first=1, default_second=2)
    assert (choice.first, choice.second) == (12, 40)


@pytest.mark.parametrize("typed", ["0", "-3", "1.5", "ten", "1e3", "0012", str(1 << 63)])
def test_what_is_not_a_tree_size_is_a_field_violation(typed: str) -> None:
    choice = evidence.parse_consistency({"first": typed, "second": "9"}, default_first=1, default_second=2)
    assert not choice.complete
    assert [violation.field for violation in choice.violations] == ["first"]


def test_the_consistency_json_is_what_verify_js_reads_and_the_python_verifier_accepts() -> None:
    store = merkle.InMemoryNodeStore()
    leaves = [merkle.leaf_hash(f"event {number}".encode()) for number in range(21)]
    store.put_nodes(merkle.nodes_for_append(tree_size=0, leaf_hashes=leaves, store=store).nodes)
    signer = NoteSigner(name=ORIGIN, private_key=ed25519.Ed25519PrivateKey.generate())
    older, newer = _checkpoint(6, store, signer), _checkpoint(21, store, signer)
    proof = merkle.consistency_proof(old_size=6, new_size=21, store=store)

    data = evidence.consistency_json(first=older, second=newer, proof=proof, keys=[signer.verifier.vkey])

    assert data["kind"] == "consistency"
    assert (data["firstSize"], data["secondSize"]) == (6, 21)
    assert data["firstNote"] == older.note and data["note"] == newer.note
    assert data["verifierKeys"] == [signer.verifier.vkey]
    verifiers = [NoteVerifier.from_vkey(key) for key in data["verifierKeys"]]
    second_root = verify_checkpoint(data["note"], verifier_keys=verifiers).root_hash
    assert verify_checkpoint(data["firstNote"], verifier_keys=verifiers).root_hash == base64.b64decode(
        data["firstRoot"]
    )
    assert merkle.verify_consistency(
        old_size=6,
        new_size=21,
        old_root=base64.b64decode(data["firstRoot"]),
        new_root=second_root,
        proof=[base64.b64decode(node) for node in data["proof"]],
    )


# --- a receipt's proof -------------------------------------------------------------------------------


def test_a_proof_query_names_a_leaf_inside_the_tree() -> None:
    assert evidence.parse_proof_query({"leaf": "0", "size": "1"}) == (0, 1)
    assert evidence.parse_proof_query({"leaf": "11", "size": "12"}) == (11, 12)


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"leaf": "12", "size": "12"}, ["leaf"]),
        ({"leaf": "-1", "size": "12"}, ["leaf"]),
        ({"leaf": "1"}, ["size"]),
        ({"leaf": "x", "size": "0"}, ["leaf", "size"]),
        ({}, ["leaf", "size"]),
    ],
)
def test_a_proof_query_outside_the_tree_is_refused(params: dict[str, str], fields: list[str]) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        evidence.parse_proof_query(params)
    assert [violation.field for violation in refused.value.violations] == fields


def test_the_proof_json_carries_the_path_and_keys_but_no_leaf_hash_or_note() -> None:
    data = evidence.inclusion_proof_json(leaf_index=3, tree_size=9, proof=[b"\x01" * 32], keys=["k"])
    assert data == {
        "leafIndex": 3,
        "treeSize": 9,
        "proof": [base64.b64encode(b"\x01" * 32).decode()],
        "verifierKeys": ["k"],
    }
    assert evidence.error_json("no proof", [FieldViolation("leaf", "below the tree size 9")]) == {
        "error": "no proof",
        "violations": [{"field": "leaf", "description": "below the tree size 9"}],
    }


# --- time-stamping a file's hash -----------------------------------------------------------------------


@pytest.mark.parametrize("typed", ["", "ab" * 31, "ab" * 33, "g" * 64, "ab" * 31 + "a b"])
def test_a_hash_that_is_not_64_hex_characters_is_a_field_violation(typed: str) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        evidence.parse_sha256_hex(typed)
    assert [violation.field for violation in refused.value.violations] == ["sha256"]


def test_a_hash_in_either_case_is_read() -> None:
    assert evidence.parse_sha256_hex(f" {DIGEST.hex().upper()} ") == DIGEST


def test_the_request_asks_for_the_certificate_and_carries_the_nonce() -> None:
    request = tsp.TimeStampReq.load(timestamp_request(DIGEST, nonce=12345))
    assert request["version"].native == "v1"
    assert request["message_imprint"]["hash_algorithm"]["algorithm"].native == "sha256"
    assert request["message_imprint"]["hashed_message"].native == DIGEST
    assert request["nonce"].native == 12345
    assert request["cert_req"].native is True


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> tuple[TimeStampAuthority, Path]:
    directory = tmp_path_factory.mktemp("pki")
    init_pki(directory, common_name_prefix="Portal Test")
    keyring = load_keyring(directory)
    return TimeStampAuthority.from_keyring(keyring), directory


def test_the_project_tsa_grants_the_request_and_its_reply_passes(
    authority: tuple[TimeStampAuthority, Path],
) -> None:
    tsa, directory = authority
    reply = tsa.respond(timestamp_request(DIGEST, nonce=99))
    evidence.check_timestamp_reply(reply, digest=DIGEST, nonce=99)
    keyring = load_keyring(directory)
    info = verify_timestamp_token(reply, digest=DIGEST, trusted_roots=[keyring.root_certificate])
    assert info.nonce == 99


def test_a_reply_for_another_hash_or_nonce_or_a_refusal_is_not_handed_out(
    authority: tuple[TimeStampAuthority, Path],
) -> None:
    tsa, _ = authority
    reply = tsa.respond(timestamp_request(DIGEST, nonce=99))
    with pytest.raises(FailedPreconditionError, match="not for this file"):
        evidence.check_timestamp_reply(reply, digest=DIGEST, nonce=100)
    with pytest.raises(FailedPreconditionError, match="not for this file"):
        evidence.check_timestamp_reply(reply, digest=bytes(32), nonce=99)
    refused = rejection_response(FailureInfo.BAD_ALG, "unsupported algorithm")
    with pytest.raises(FailedPreconditionError, match="refused the request: unsupported algorithm"):
        evidence.check_timestamp_reply(refused, digest=DIGEST, nonce=99)
    with pytest.raises(FailedPreconditionError, match="not a valid RFC 3161 reply"):
        evidence.check_timestamp_reply(b"\x30\x03\x02\x01\x00", digest=DIGEST, nonce=99)


def test_the_reply_file_and_the_openssl_command_name_the_same_file() -> None:
    hex_digest = DIGEST.hex().upper()
    assert evidence.tsr_filename(hex_digest) == "timestamp-0001020304050607.tsr"
    assert evidence.openssl_command(hex_digest) == (
        f"openssl ts -verify -digest {DIGEST.hex()} -in timestamp-0001020304050607.tsr "
        f"-CAfile {evidence.CA_FILE}"
    )
    assert evidence.attachment("a.tsr") == {"content-disposition": 'attachment; filename="a.tsr"'}
    files = evidence.CheckpointFiles(12)
    assert files.openssl_command == (
        "openssl ts -verify -data checkpoint-12.note -in checkpoint-12.tsr -token_in "
        f"-CAfile {evidence.CA_FILE}"
    )
