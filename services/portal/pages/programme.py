"""The portal's programme pages (see docs/portal.md): the phishing campaigns and their funnels, the
trends (weekly click and report rates, training, violations), and the people at risk by pseudonym.

Every read is a call to the analytics service as the signed-in person, so the service checks
``analytics:read`` and ``analytics:read_risk``, applies k-anonymity to every figure by department,
and records who read whose risk. The pages only hide what a role lacks. No identifier is ever
shown here: the Data protection pages are where a pseudonym is looked up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar
from urllib.parse import urlencode

from awareness.analytics.v1 import analytics_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from services.portal.api import part, portal_state, render, signed_in
from services.portal.domain import display, programme
from services.portal.service import Person, Services

T = TypeVar("T")
PAGE_SIZE: Final = 25


async def _call(services: Services, person: Person, call: Callable[[], Awaitable[T]]) -> T:
    return await services.as_person(person, call)


@signed_in("/portal/programme")
async def campaigns(request: Request, person: Person) -> Response:
    services = portal_state(request).services
    page_token = request.query_params.get("page_token", "")
    listed = await _call(
        services,
        person,
        lambda: services.analytics().ListCampaigns(
            analytics_pb2.ListCampaignsRequest(page_size=PAGE_SIZE, page_token=page_token)
        ),
    )
    context = {
        "campaigns": listed.campaigns,
        "next_query": urlencode({"page_token": listed.next_page_token}) if listed.next_page_token else "",
        "first_page": not page_token,
    }
    return render(request, "programme_campaigns.html", context, person=person)


@signed_in("/portal/programme/campaigns/{campaign_id}")
async def campaign(request: Request, person: Person) -> Response:
    campaign_id = request.path_params["campaign_id"]
    services = portal_state(request).services
    funnel = await _call(
        services,
        person,
        lambda: services.analytics().GetCampaignFunnel(
            analytics_pb2.GetCampaignFunnelRequest(campaign_id=campaign_id)
        ),
    )
    stages = programme.stage_rows(funnel.stages, funnel.rates)
    context = {
        "funnel": funnel,
        "stages": stages,
        "chart": programme.funnel_chart(stages),
        "departments": programme.department_rows(funnel.departments),
        "stage_names": [programme.STAGE_NAMES[stage] for stage in programme.STAGES],
        "domain": programme,
    }
    return render(request, "programme_campaign.html", context, person=person)


@signed_in("/portal/programme/trends")
async def trends(request: Request, person: Person) -> Response:
    services = portal_state(request).services
    weeks = programme.trend_weeks(display.now().date())
    start_day, end_day = weeks[0][1].isoformat(), weeks[-1][2].isoformat()
    analytics = services.analytics()
    counts, training, violations = await asyncio.gather(
        part(
            services,
            person,
            lambda: analytics.QueryEventCounts(
                analytics_pb2.QueryEventCountsRequest(
                    start_day=start_day, end_day=end_day, types=list(programme.TREND_TYPES)
                )
            ),
        ),
        part(
            services, person, lambda: analytics.GetTrainingSummary(analytics_pb2.GetTrainingSummaryRequest())
        ),
        part(
            services,
            person,
            lambda: analytics.QueryViolations(
                analytics_pb2.QueryViolationsRequest(start_day=start_day, end_day=end_day)
            ),
        ),
    )
    context: dict[str, Any] = {
        "start_day": start_day,
        "end_day": end_day,
        "weeks": len(weeks),
        "domain": programme,
        "rates": None,
        "rates_chart": None,
        "rates_unavailable": counts if isinstance(counts, str) else "",
        "training": None,
        "training_unavailable": training if isinstance(training, str) else "",
        "violations": None,
        "violations_chart": None,
        "violations_unavailable": violations if isinstance(violations, str) else "",
    }
    if not isinstance(counts, str):
        rates = programme.weekly_rates(counts.counts, weeks)
        context.update(rates=rates, rates_chart=programme.rates_chart(rates))
    if not isinstance(training, str):
        context["training"] = training
    if not isinstance(violations, str):
        rows = programme.violations_by_policy(violations.counts)
        context.update(violations=rows, violations_chart=programme.violations_chart(rows))
    return render(request, "programme_trends.html", context, person=person)


@signed_in("/portal/programme/risks")
async def risks(request: Request, person: Person) -> Response:
    services = portal_state(request).services
    page_token = request.query_params.get("page_token", "")
    listed = await _call(
        services,
        person,
        lambda: services.analytics().ListSubjectRisks(
            analytics_pb2.ListSubjectRisksRequest(page_size=PAGE_SIZE, page_token=page_token)
        ),
    )
    context = {
        "risks": listed.subject_risks,
        "next_query": urlencode({"page_token": listed.next_page_token}) if listed.next_page_token else "",
        "first_page": not page_token,
        "domain": programme,
    }
    return render(request, "programme_risks.html", context, person=person)


@signed_in("/portal/programme/risks/{pseudonym}")
async def risk(request: Request, person: Person) -> Response:
    pseudonym = request.path_params["pseudonym"]
    services = portal_state(request).services
    found = await _call(
        services,
        person,
        lambda: services.analytics().GetSubjectRisk(
            analytics_pb2.GetSubjectRiskRequest(subject_pseudonym=pseudonym)
        ),
    )
    context = {
        "risk": found,
        "level": programme.RISK_LEVELS.get(found.level, ""),
        "chart": programme.risk_trend_chart(found.trend) if found.trend else None,
        "domain": programme,
    }
    return render(request, "programme_risk.html", context, person=person)


routes: list[BaseRoute] = [
    Route("/programme", campaigns, methods=["GET"]),
    # ":path": a campaign id is the sender's own, and may hold a "/" (sent as %2F, decoded before routing).
    Route("/programme/campaigns/{campaign_id:path}", campaign, methods=["GET"]),
    Route("/programme/trends", trends, methods=["GET"]),
    Route("/programme/risks", risks, methods=["GET"]),
    Route("/programme/risks/{pseudonym}", risk, methods=["GET"]),
]
