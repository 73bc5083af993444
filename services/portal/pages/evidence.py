"""The portal's evidence pages (see docs/portal.md), for auditors: the checkpoint timeline, a
consistency check between two checkpoints, checking a receipt, and time-stamping a file.

The browser does the checking (static/verify.js, static/evidence.js); these handlers only fetch
what it checks, as the person, from ingest and signing. A file to time-stamp never reaches the
portal: the browser hashes it and posts the hex digest.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace
from typing import Any

import grpc
from awareness.ingest.v1 import ingest_pb2
from awareness.signing.v1 import signing_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from services.evidence.timestamp import timestamp_request
from services.portal.api import failure_of, first, portal_state, render, signed_in
from services.portal.domain import evidence
from services.portal.service import Person, Services
from services.runtime.errors import (
    AwarenessError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
)

PEM_FILE = "application/x-pem-file"
NOTE_FILE = "text/plain; charset=utf-8"


def _checkpoint_keys() -> signing_pb2.ListPublicKeysRequest:
    return signing_pb2.ListPublicKeysRequest(
        purpose=signing_pb2.KEY_PURPOSE_CHECKPOINT, page_size=evidence.KEYS_PAGE_SIZE
    )


async def _list_checkpoints(
    services: Services, person: Person, page_token: str = ""
) -> ingest_pb2.ListCheckpointsResponse:
    request = ingest_pb2.ListCheckpointsRequest(page_size=evidence.PAGE_SIZE, page_token=page_token)
    return await services.as_person(person, lambda: services.ingest().ListCheckpoints(request))


async def _checkpoint(services: Services, person: Person, tree_size: int) -> signing_pb2.SignedCheckpoint:
    if not 0 < tree_size <= evidence.MAX_TREE_SIZE:
        raise NotFoundError(f"no checkpoint of tree size {tree_size}")
    request = ingest_pb2.GetCheckpointRequest(tree_size=tree_size)
    return await services.as_person(person, lambda: services.ingest().GetCheckpoint(request))


# --- the timeline and one checkpoint ------------------------------------------------------------


@signed_in("/portal/evidence")
async def timeline(request: Request, person: Person) -> Response:
    page_token = request.query_params.get("page_token", "").strip()[:2048]
    listed = await _list_checkpoints(portal_state(request).services, person, page_token)
    rows = [evidence.checkpoint_row(checkpoint) for checkpoint in listed.checkpoints]
    oldest, newest = evidence.default_pair([row.tree_size for row in rows])
    context = {
        "rows": rows,
        "page_token": page_token,
        "next_page_token": listed.next_page_token,
        "first": oldest or "",
        "second": newest or "",
    }
    return render(request, "evidence.html", context, person=person)


@signed_in("/portal/evidence/checkpoints/{tree_size}")
async def checkpoint_page(request: Request, person: Person) -> Response:
    services = portal_state(request).services
    found, keys = await asyncio.gather(
        _checkpoint(services, person, request.path_params["tree_size"]),
        services.as_person(person, lambda: services.signing().ListPublicKeys(_checkpoint_keys())),
    )
    context = {
        "checkpoint": found,
        "verifier_keys": evidence.verifier_keys(keys),
        "ca_file": evidence.CA_FILE,
        "row": evidence.checkpoint_row(found),
        "root_hex": bytes(found.root_hash).hex(),
        "root_base64": evidence.b64(found.root_hash),
        "files": evidence.CheckpointFiles(found.tree_size),
    }
    return render(request, "evidence_checkpoint.html", context, person=person)


@signed_in("/portal/evidence/checkpoints/{tree_size}/note")
async def checkpoint_note(request: Request, person: Person) -> Response:
    found = await _checkpoint(portal_state(request).services, person, request.path_params["tree_size"])
    files = evidence.CheckpointFiles(found.tree_size)
    # Byte for byte as signed: the note is what the signature and the time-stamp token cover.
    return Response(found.note.encode(), media_type=NOTE_FILE, headers=evidence.attachment(files.note))


@signed_in("/portal/evidence/checkpoints/{tree_size}/token")
async def checkpoint_token(request: Request, person: Person) -> Response:
    found = await _checkpoint(portal_state(request).services, person, request.path_params["tree_size"])
    if not found.timestamp_token:
        raise NotFoundError(f"the checkpoint of tree size {found.tree_size} carries no time-stamp token")
    files = evidence.CheckpointFiles(found.tree_size)
    return Response(
        bytes(found.timestamp_token),
        media_type=evidence.TIMESTAMP_REPLY,
        headers=evidence.attachment(files.token),
    )


# --- consistency between two checkpoints ----------------------------------------------------------


@signed_in("/portal/evidence/consistency")
async def consistency(request: Request, person: Person) -> Response:
    services = portal_state(request).services
    params = request.query_params
    default_first = default_second = None
    if not params.get("first", "").strip() or not params.get("second", "").strip():
        listed = await _list_checkpoints(services, person)
        default_first, default_second = evidence.default_pair([c.tree_size for c in listed.checkpoints])
    choice = evidence.parse_consistency(params, default_first=default_first, default_second=default_second)
    context: dict[str, Any] = {
        "choice": choice,
        "evidence": None,
        "first_checkpoint": None,
        "second_checkpoint": None,
    }
    if not choice.complete:
        return render(
            request,
            "evidence_consistency.html",
            context,
            person=person,
            status=400 if choice.violations else 200,
        )
    first_size, second_size = choice.first or 0, choice.second or 0
    ingest, signing = services.ingest(), services.signing()

    async def gather() -> tuple[Any, ...]:
        return tuple(
            await asyncio.gather(
                ingest.GetConsistencyProof(
                    ingest_pb2.GetConsistencyProofRequest(
                        first_tree_size=first_size, second_tree_size=second_size
                    )
                ),
                ingest.GetCheckpoint(ingest_pb2.GetCheckpointRequest(tree_size=first_size)),
                ingest.GetCheckpoint(ingest_pb2.GetCheckpointRequest(tree_size=second_size)),
                signing.ListPublicKeys(_checkpoint_keys()),
                return_exceptions=True,
            )
        )

    results = await services.as_person(person, gather)
    proof, older, newer, keys = results
    # A size without a checkpoint is the person's choice to correct: say so beside the field.
    missing = [
        FieldViolation(field, f"there is no checkpoint of tree size {size}; choose one from the list")
        for field, size, found in (("first", first_size, older), ("second", second_size, newer))
        if isinstance(found, grpc.aio.AioRpcError) and found.code() == grpc.StatusCode.NOT_FOUND
    ]
    if missing:
        context["choice"] = replace(choice, violations=tuple(missing))
        return render(request, "evidence_consistency.html", context, person=person, status=404)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    context.update(
        evidence=evidence.consistency_json(
            first=older,
            second=newer,
            proof=[bytes(node) for node in proof.hashes],
            keys=evidence.verifier_keys(keys),
        ),
        first_checkpoint=evidence.checkpoint_row(older),
        second_checkpoint=evidence.checkpoint_row(newer),
    )
    return render(request, "evidence_consistency.html", context, person=person)


# --- a receipt, checked in the browser ------------------------------------------------------------


@signed_in("/portal/evidence/receipt")
async def receipt_page(request: Request, person: Person) -> Response:
    return render(request, "evidence_receipt.html", {}, person=person)


def _json_failure(exc: grpc.aio.AioRpcError | AwarenessError) -> JSONResponse:
    failed = failure_of(exc)
    http_status, headline = failed.page
    return JSONResponse(
        evidence.error_json(failed.message or headline, failed.violations), status_code=http_status
    )


@signed_in("/portal/evidence/proof")
async def inclusion_proof(request: Request, person: Person) -> Response:
    """JSON for static/evidence.js: the audit path of a receipt's leaf in its checkpoint's tree,
    and the log's keys. Failures are JSON too, for the script to show."""
    services = portal_state(request).services
    try:
        leaf, size = evidence.parse_proof_query(request.query_params)
        ingest, signing = services.ingest(), services.signing()

        async def gather() -> tuple[Any, ...]:
            return tuple(
                await asyncio.gather(
                    ingest.GetInclusionProof(
                        ingest_pb2.GetInclusionProofRequest(leaf_index=leaf, tree_size=size)
                    ),
                    signing.ListPublicKeys(_checkpoint_keys()),
                )
            )

        proof, keys = await services.as_person(person, gather)
    except (grpc.aio.AioRpcError, AwarenessError) as exc:
        return _json_failure(exc)
    return JSONResponse(
        evidence.inclusion_proof_json(
            leaf_index=proof.leaf_index,
            tree_size=proof.tree_size,
            proof=[bytes(node) for node in proof.hashes],
            keys=evidence.verifier_keys(keys),
        )
    )


# --- time-stamping a file ----------------------------------------------------------------------


def _timestamp_form(
    request: Request, person: Person, *, sha256: str = "", violations: list[FieldViolation] | None = None
) -> Response:
    context = {"sha256": sha256, "violations": violations or [], "ca_file": evidence.CA_FILE}
    status = 400 if violations else 200
    return render(request, "evidence_timestamp.html", context, person=person, status=status)


@signed_in("/portal/evidence/timestamp")
async def timestamp_page(request: Request, person: Person) -> Response:
    return _timestamp_form(request, person)


@signed_in("/portal/evidence/timestamp")
async def timestamp_file(request: Request, person: Person) -> Response:
    """Time-stamps the SHA-256 the browser computed, as the person, and hands back the reply."""
    form: dict[str, list[str]] = request.state.form
    typed = first(form, "sha256")
    try:
        digest = evidence.parse_sha256_hex(typed)
    except InvalidArgumentError as exc:
        return _timestamp_form(request, person, sha256=typed[:128], violations=list(exc.violations))
    nonce = secrets.randbits(64) | 1
    query = signing_pb2.TimestampRequest(request=timestamp_request(digest, nonce=nonce))
    services = portal_state(request).services
    reply = await services.as_person(person, lambda: services.signing().Timestamp(query))
    der = bytes(reply.response)
    evidence.check_timestamp_reply(der, digest=digest, nonce=nonce)
    filename = evidence.tsr_filename(digest.hex())
    return Response(der, media_type=evidence.TIMESTAMP_REPLY, headers=evidence.attachment(filename))


@signed_in("/portal/evidence/tsa-ca.pem")
async def tsa_ca(request: Request, person: Person) -> Response:
    """The CA chain that certifies the TSA: what ``openssl ts -verify -CAfile`` trusts."""
    services = portal_state(request).services
    keys = await services.as_person(
        person, lambda: services.signing().ListPublicKeys(signing_pb2.ListPublicKeysRequest(page_size=1))
    )
    return Response(
        evidence.ca_bundle(keys), media_type=PEM_FILE, headers=evidence.attachment(evidence.CA_FILE)
    )


routes: list[BaseRoute] = [
    Route("/evidence", timeline, methods=["GET"]),
    Route("/evidence/checkpoints/{tree_size:int}", checkpoint_page, methods=["GET"]),
    Route("/evidence/checkpoints/{tree_size:int}/note", checkpoint_note, methods=["GET"]),
    Route("/evidence/checkpoints/{tree_size:int}/token", checkpoint_token, methods=["GET"]),
    Route("/evidence/consistency", consistency, methods=["GET"]),
    Route("/evidence/receipt", receipt_page, methods=["GET"]),
    Route("/evidence/proof", inclusion_proof, methods=["GET"]),
    Route("/evidence/timestamp", timestamp_page, methods=["GET"]),
    Route("/evidence/timestamp", timestamp_file, methods=["POST"]),
    Route("/evidence/tsa-ca.pem", tsa_ca, methods=["GET"]),
]
