"""The AnalyticsService servicer: transport only; each RPC calls one use case of :mod:`.service`."""

from __future__ import annotations

from typing import Any

import grpc
from awareness.analytics.v1 import analytics_pb2, analytics_pb2_grpc

from services.analytics import convert
from services.analytics.service import AnalyticsOperations
from services.runtime import audit
from services.runtime.paging import PageTokens, invalid_page_token, page_size
from services.runtime.timestamps import timestamp_from_us

RISKS = "subjectRisks"


def _rank(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise invalid_page_token("page_token holds no position of this list") from None


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, *, operations: AnalyticsOperations, page_tokens: PageTokens) -> None:
        self._operations = operations
        self._tokens = page_tokens

    # --- feed (internal) ----------------------------------------------------------------------------

    async def RecordEvents(  # noqa: N802 - gRPC method name
        self, request: analytics_pb2.RecordEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> analytics_pb2.RecordEventsResponse:
        result = await self._operations.record(convert.facts_from(request))
        return analytics_pb2.RecordEventsResponse(
            folded=result.folded, duplicates=result.duplicates, excluded=result.excluded
        )

    async def ForgetSubjects(  # noqa: N802 - gRPC method name
        self, request: analytics_pb2.ForgetSubjectsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> analytics_pb2.ForgetSubjectsResponse:
        forgotten = await self._operations.forget(convert.pseudonyms_from(request))
        return analytics_pb2.ForgetSubjectsResponse(forgotten=forgotten)

    # --- aggregates ---------------------------------------------------------------------------------

    async def ListCampaigns(  # noqa: N802 - gRPC method name
        self, request: analytics_pb2.ListCampaignsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> analytics_pb2.ListCampaignsResponse:
        size = page_size(request.page_size, default=50)
        method = "analytics.ListCampaigns"
        before = self._tokens.decode(request.page_token, method=method, shape=(int, str))
        rows, next_page_token = await self._tokens.fetch_page(
            lambda limit: self._operations.list_campaigns(
                limit=limit, before=(before[0], before[1]) if before else None
            ),
            size=size,
            position=lambda row: (row.first_event_us, row.campaign_id),
            method=method,
        )
        return analytics_pb2.ListCampaignsResponse(
            campaigns=[
                analytics_pb2.Campaign(
                    campaign_id=row.campaign_id,
                    first_event_time=timestamp_from_us(row.first_event_us),
                    last_event_time=timestamp_from_us(row.last_event_us),
                    people_sent=row.people_sent,
                )
                for row in rows
            ],
            next_page_token=next_page_token,
        )

    async def GetCampaignFunnel(  # noqa: N802 - gRPC method name
        self, request: analytics_pb2.GetCampaignFunnelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> analytics_pb2.CampaignFunnel:
        if not request.campaign_id:
            raise convert.invalid("campaign_id", "is required")
        return convert.funnel_proto(await self._operations.funnel(request.campaign_id))

    async def QueryEventCounts(  # noqa: N802 - gRPC method name
        self, request: analytics_pb2.QueryEventCountsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> analytics_pb2.QueryEventCountsResponse:
        counts = await self._operations.event_counts(
            days=convert.day_range(request.start_day, request.end_day),
            types=list(request.types),
            dimension=convert.dimension_filter(request.dimension_key, request.dimension_value),
            department=request.department or None,
        )
        return analytics_pb2.QueryEventCountsResponse(
            counts=convert.counts_rows(counts.rows), suppressed=counts.suppressed
        )

    async def GetTrainingSummary(  # noqa: N802 - gRPC method name
        self, request: analytics_pb2.GetTrainingSummaryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> analytics_pb2.TrainingSummary:
        return convert.training_proto(await self._operations.training(module=request.training_module))

    async def QueryViolations(  # noqa: N802 - gRPC method name
        self, request: analytics_pb2.QueryViolationsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> analytics_pb2.QueryViolationsResponse:
        counts = await self._operations.violations(
            days=convert.day_range(request.start_day, request.end_day),
            policy=request.policy,
            department=request.department or None,
        )
        return analytics_pb2.QueryViolationsResponse(
            counts=convert.violation_rows(counts.rows), suppressed=counts.suppressed
        )

    # --- risk ---------------------------------------------------------------------------------------

    async def GetSubjectRisk(  # noqa: N802 - gRPC method name
        self, request: analytics_pb2.GetSubjectRiskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> analytics_pb2.SubjectRisk:
        if not request.subject_pseudonym:
            raise convert.invalid("subject_pseudonym", "is required")
        audit.note(resource=RISKS, pseudonyms=[request.subject_pseudonym])
        return convert.risk_proto(await self._operations.subject_risk(request.subject_pseudonym))

    async def ListSubjectRisks(  # noqa: N802 - gRPC method name
        self, request: analytics_pb2.ListSubjectRisksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> analytics_pb2.ListSubjectRisksResponse:
        audit.note(resource=RISKS)
        size = page_size(request.page_size, default=50)
        method = "analytics.ListSubjectRisks"
        after = self._tokens.decode(request.page_token, method=method, shape=(int, str, str))
        rows, next_page_token = await self._tokens.fetch_page(
            lambda limit: self._operations.list_risks(
                limit=limit, after=(after[0], _rank(after[1]), after[2]) if after else None
            ),
            size=size,
            # The rank as its repr: exact through JSON, and a token holds ints and strings only.
            position=lambda row: (row.day, repr(row.rank), row.risk.pseudonym),
            method=method,
        )
        audit.note(pseudonyms=[row.risk.pseudonym for row in rows])
        return analytics_pb2.ListSubjectRisksResponse(
            subject_risks=[convert.risk_proto(row.risk) for row in rows], next_page_token=next_page_token
        )
