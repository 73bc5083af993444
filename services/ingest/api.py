"""The gRPC servicer of the ingest service: transport only, the work is in the service layer
(``service.append`` and ``service.reads``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from awareness.signing.v1 import signing_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2

from services.ingest.service import (
    MAX_BATCH_EVENTS,
    Accepted,
    AccessRecordReader,
    AppendOutcome,
    EventReader,
    LogWriter,
    receipt_of,
)
from services.runtime import auth
from services.runtime.errors import InvalidArgumentError


def _system_writer() -> str | None:
    """The service calling, proven by its certificate, which may append the system events it writes."""
    principal = auth.current_principal()
    return principal.service if principal is not None else None


def _response(outcomes: Sequence[AppendOutcome]) -> ingest_pb2.AppendEventsResponse:
    """A batch's answer, each result filled in place (built apart, it would be copied in)."""
    response = ingest_pb2.AppendEventsResponse()
    add = response.results.add
    stamps: dict[int, Timestamp] = {}
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, Accepted):
            receipt_of(outcome, stamps, into=add(index=index, replayed=outcome.replayed).receipt)
        else:
            status: status_pb2.Status = outcome.to_status()
            add(index=index, error=status)
    return response


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, *, writer: LogWriter, reader: EventReader, access: AccessRecordReader) -> None:
        self._writer = writer
        self._reader = reader
        self._access = access

    async def AppendEvent(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.AppendEventRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.AppendEventResponse:
        return await self._writer.append_event(request.event, system_writer=_system_writer())

    async def AppendEvents(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.AppendEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.AppendEventsResponse:
        return await self._append_batch(request.events)

    async def StreamAppendEvents(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[ingest_pb2.AppendEventsRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[ingest_pb2.AppendEventsResponse]:
        async for request in request_iterator:
            yield await self._append_batch(request.events)

    async def _append_batch(self, events: Sequence[ingest_pb2.Event]) -> ingest_pb2.AppendEventsResponse:
        if not events:
            raise InvalidArgumentError("events must not be empty", reason="EMPTY_BATCH")
        if len(events) > MAX_BATCH_EVENTS:
            raise InvalidArgumentError(
                f"at most {MAX_BATCH_EVENTS} events per batch, got {len(events)}", reason="BATCH_TOO_LARGE"
            )
        return _response(await self._writer.append(events, system_writer=_system_writer()))

    async def GetEvent(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.GetEventRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.Event:
        return await self._reader.get_event(request.name)

    async def ListEvents(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.ListEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.ListEventsResponse:
        return await self._reader.list_events(request)

    async def LabelEvent(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.LabelEventRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.Event:
        principal = auth.current_principal()
        return await self._reader.label_event(request, labeled_by=principal.subject if principal else "")

    async def GetReceipt(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.GetReceiptRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.Receipt:
        return await self._reader.get_receipt(request.name)

    async def GetCheckpoint(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.GetCheckpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> signing_pb2.SignedCheckpoint:
        return await self._reader.get_checkpoint(request.tree_size if request.HasField("tree_size") else None)

    async def ListCheckpoints(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.ListCheckpointsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.ListCheckpointsResponse:
        return await self._reader.list_checkpoints(request)

    async def GetInclusionProof(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.GetInclusionProofRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.GetInclusionProofResponse:
        return await self._reader.inclusion(request)

    async def GetConsistencyProof(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.GetConsistencyProofRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.GetConsistencyProofResponse:
        return await self._reader.consistency(request)

    async def ListSubjectRecords(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.ListSubjectRecordsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.ListSubjectRecordsResponse:
        return await self._reader.subject_records(request)

    async def ForgetSubject(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.ForgetSubjectRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.ForgetSubjectResponse:
        return await self._reader.forget_subject(request.pseudonym)

    async def ListTrainingExamples(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.ListTrainingExamplesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.ListTrainingExamplesResponse:
        return await self._reader.training_examples(request)

    async def ListAccessRecords(  # noqa: N802 - gRPC method name
        self, request: ingest_pb2.ListAccessRecordsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.ListAccessRecordsResponse:
        return await self._access.list_records(request)
