"""Analytics end to end: `awareness up` (analytics among the services), subjects resolved to their
pseudonyms by gdpr and facts fed to analytics, both over mTLS with the suite's own ingest certificate
(as ingest's append path and feed do; analytics checks each pseudonym's consent with gdpr), and a
campaign funnel read back through the gateway's HTTP route with an analyst's API key."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import httpx
import pytest
from awareness.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc

from services.runtime.config import load_settings
from services.runtime.identity import channel_options
from services.runtime.timestamps import to_timestamp
from tests.support.suite import Backend, UpSuite, awareness_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PEOPLE = [f"person{i:02d}@example.org" for i in range(8)]
CLICKED = {0: 45, 1: 300, 2: 80}  # person index -> seconds from sent to click
REPORTED = {5: 600, 6: 1200}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, suite_backend: Backend) -> Iterator[UpSuite]:
    data_dir = tmp_path_factory.mktemp(f"analytics-e2e-{suite_backend.name}")
    # Consent answers are not cached, so that an objection reaches analytics at once.
    with awareness_up(
        data_dir, suite_backend, extra_env={"AWARENESS_ANALYTICS_CONSENT_CACHE_SECONDS": "0"}
    ) as running:
        yield running


def _fact(index: int, kind: str, pseudonym: str, seconds: int) -> analytics_pb2.EventFact:
    return analytics_pb2.EventFact(
        event_id=f"e2e-{index:04d}",
        type=kind,
        occurred_at=to_timestamp(T0 + timedelta(seconds=seconds)),
        subject_pseudonym=pseudonym,
        severity=3,
        dimensions={"campaign_id": "spring-e2e"},
        department="finance",
    )


def _facts(pseudonyms: list[str]) -> list[analytics_pb2.EventFact]:
    facts = [("phishing.email_sent", person, 0) for person in range(len(PEOPLE))]
    facts += [("phishing.clicked", person, seconds) for person, seconds in CLICKED.items()]
    facts += [("phishing.reported", person, seconds) for person, seconds in REPORTED.items()]
    return [
        _fact(index, kind, pseudonyms[person], seconds) for index, (kind, person, seconds) in enumerate(facts)
    ]


def _as_ingest(suite: UpSuite, service: str) -> grpc.Channel:
    ingest = load_settings("ingest", suite.env).identity.channel_credentials()
    return grpc.secure_channel(suite.addresses[service], ingest, options=channel_options(service))


def _pseudonyms(suite: UpSuite) -> list[str]:
    """The subjects' pseudonyms, as ingest gets them from gdpr when it appends their events."""
    with _as_ingest(suite, "gdpr") as channel:
        response = gdpr_pb2_grpc.GdprServiceStub(channel).GetSubjectKeys(
            gdpr_pb2.GetSubjectKeysRequest(
                lookups=[
                    gdpr_pb2.SubjectKeyLookup(
                        subject=person, occurred_at=to_timestamp(T0), event_type="phishing.clicked"
                    )
                    for person in PEOPLE
                ]
            ),
            timeout=30,
        )
    return [key.pseudonym for key in response.keys]


def _feed(suite: UpSuite, facts: list[analytics_pb2.EventFact]) -> analytics_pb2.RecordEventsResponse:
    with _as_ingest(suite, "analytics") as channel:
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        response: analytics_pb2.RecordEventsResponse = stub.RecordEvents(
            analytics_pb2.RecordEventsRequest(facts=facts), timeout=30
        )
        return response


def test_a_funnel_fed_as_ingest_reads_back_through_the_gateway(suite: UpSuite) -> None:
    pseudonyms = _pseudonyms(suite)
    assert all(pseudonym.startswith("psn_") for pseudonym in pseudonyms)
    facts = _facts(pseudonyms)
    fed = _feed(suite, facts)
    assert (fed.folded, fed.duplicates, fed.excluded) == (len(facts), 0, 0)
    key = suite.create_key("analyst", name="analytics-e2e")
    response = httpx.get(
        f"{suite.url}/v1/analytics/campaigns/spring-e2e/funnel",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    funnel = response.json()
    people = {stage["stage"]: int(stage.get("people", 0)) for stage in funnel["stages"]}
    assert people["FUNNEL_STAGE_SENT"] == len(PEOPLE)
    assert people["FUNNEL_STAGE_CLICKED"] == len(CLICKED)
    assert people["FUNNEL_STAGE_REPORTED"] == len(REPORTED)
    assert funnel["rates"]["clickRate"] == pytest.approx(len(CLICKED) / len(PEOPLE))
    assert funnel["timeToClick"]["medianSeconds"] == pytest.approx(sorted(CLICKED.values())[1])
    (finance,) = funnel["departments"]
    assert finance["department"] == "finance" and not finance.get("suppressed", False)

    # An auditor reads aggregates but not per-person risk; nobody reaches the internal feed over HTTP.
    auditor = suite.create_key("auditor", name="analytics-e2e-auditor")
    denied = httpx.get(
        f"{suite.url}/v1/analytics/subjectRisks", headers={"Authorization": f"Bearer {auditor}"}, timeout=30
    )
    assert denied.status_code == 403, denied.text
    campaigns = httpx.get(
        f"{suite.url}/v1/analytics/campaigns", headers={"Authorization": f"Bearer {auditor}"}, timeout=30
    )
    assert [c["campaignId"] for c in campaigns.json()["campaigns"]] == ["spring-e2e"]


def test_objections_recorded_in_gdpr_reach_analytics(suite: UpSuite) -> None:
    """A DPO records two objections through the gateway; analytics, asking the suite's real gdpr, stops
    folding the first person's facts (and drops their per-person rows) and keeps no risk for the second."""
    pseudonyms = _pseudonyms(suite)
    _feed(suite, _facts(pseudonyms))  # the first test may not have run (duplicates then)
    scored = _fact(9000, "phishing.clicked", pseudonyms[1], 7200)
    scored.scored, scored.risk_score = True, 0.8
    assert _feed(suite, [scored]).folded == 1
    dpo = suite.create_key("dpo", name="analytics-e2e-dpo")
    analyst = suite.create_key("analyst", name="analytics-e2e-analyst")
    for person, purpose in ((PEOPLE[7], "analytics"), (PEOPLE[1], "profiling")):
        withdrawn = httpx.post(
            f"{suite.url}/v1/consents:withdraw",
            headers={"Authorization": f"Bearer {dpo}"},
            json={"subject": person, "purpose": purpose, "reason": "objection, ticket DPO-1"},
            timeout=30,
        )
        assert withdrawn.status_code == 200, withdrawn.text

    late = _fact(9001, "phishing.reported", pseudonyms[7], 9000)
    fed = _feed(suite, [late])
    assert (fed.folded, fed.excluded) == (0, 1)
    funnel = httpx.get(
        f"{suite.url}/v1/analytics/campaigns/spring-e2e/funnel",
        headers={"Authorization": f"Bearer {analyst}"},
        timeout=30,
    ).json()
    people = {stage["stage"]: int(stage.get("people", 0)) for stage in funnel["stages"]}
    assert people["FUNNEL_STAGE_SENT"] == len(PEOPLE) - 1
    risk = httpx.get(
        f"{suite.url}/v1/analytics/subjectRisks/{pseudonyms[1]}",
        headers={"Authorization": f"Bearer {analyst}"},
        timeout=30,
    )
    assert risk.status_code == 404, risk.text
