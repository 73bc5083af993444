"""Issue 15's done-when for item 1: an outsider forging page tokens on every list route gets a
4xx every time, no breaker anywhere opens, and another caller's appends succeed throughout.

The whole suite runs as real processes on PostgreSQL and Redis (tests/resilience/harness.py).
The list routes come from the contracts: every GET route whose request has a ``page_token``, so
a new list route is covered without touching this file.
"""

from __future__ import annotations

import base64
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.descriptor_pool import Default

from services.gateway.domain.descriptors import HttpRoute
from tests.gateway.routes import contract_routes
from tests.resilience.harness import ProcessSuite, metric_value, parse_metrics, wait_until
from tests.support.resources import temporary_database

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SUBJECT = "forgery.victim@example.org"
POLICY_ID = f"forgery-{uuid.uuid4().hex[:8]}"
# Path variables of the list routes that have them: an existing parent, so a real token exists.
PARENT_IDS = {"ListPolicyHistory": POLICY_ID}
# Query fields without which a list route refuses the request before it looks at the token.
REQUIRED_QUERY = {"ListConsentHistory": {"subject": SUBJECT, "purpose": "profiling"}}
# Other filters where the first free query field is not the one to change.
OTHER_FILTERS = {"ListConsentHistory": {"purpose": "training_data"}}


def list_routes() -> list[HttpRoute]:
    routes = []
    for route in contract_routes():
        message = Default().FindMessageTypeByName(route.input_type)
        if route.http_method == "GET" and "page_token" in message.fields_by_name:
            routes.append(route)
    return sorted(routes, key=lambda r: r.rpc)


def _request_type(route: HttpRoute) -> Descriptor:
    return Default().FindMessageTypeByName(route.input_type)


def _path(route: HttpRoute, parent: str) -> str:
    parts = [s.text if s.kind == "literal" else parent for s in route.template.segments]
    return "/" + "/".join(parts) + (f":{route.template.verb}" if route.template.verb else "")


def _other_filter(route: HttpRoute) -> dict[str, str] | None:
    """Query parameters naming other filters than the first page's (None: the route has none)."""
    if route.method_name in OTHER_FILTERS:
        return OTHER_FILTERS[route.method_name]
    bound = {v.field_path for v in route.template.variables} | {"page_token", "page_size"}
    bound |= set(REQUIRED_QUERY.get(route.method_name, {}))
    for field in _request_type(route).fields:
        if field.name in bound or field.is_repeated:
            continue
        if field.type == FieldDescriptor.TYPE_STRING:
            return {field.json_name: "zz-other-filter"}
        if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
            return {field.json_name: field.enum_type.values[-1].name}
    return None


def _flip(token: str, index: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    replacement = (
        alphabet[(alphabet.index(token[index]) + 1) % len(alphabet)] if token[index] in alphabet else "A"
    )
    return token[:index] + replacement + token[index + 1 :]


@dataclass
class Forgery:
    suite: ProcessSuite
    admin_key: str
    appender_key: str

    def get(self, http: httpx.Client, route: HttpRoute, *, parent: str, **params: str) -> httpx.Response:
        query = {**REQUIRED_QUERY.get(route.method_name, {}), **params}
        return http.get(
            _path(route, parent), params=query, headers={"Authorization": f"Bearer {self.admin_key}"}
        )


@pytest.fixture(scope="module")
def forgery(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_url: str) -> Iterator[Forgery]:
    directory: Path = tmp_path_factory.mktemp("page-token-forgery")
    with temporary_database(postgres_url, prefix="awareness_pt") as database_url:
        suite = ProcessSuite(
            data_dir=directory / "data",
            database_url=database_url,
            redis_url=redis_url,
            extra_env={
                "AWARENESS_GATEWAY_RATE_KEY_PREFIX": f"awareness-test-{uuid.uuid4().hex[:12]}:ratelimit"
            },
        )
        try:
            suite.start_all(timeout=180)
            yield Forgery(
                suite=suite,
                admin_key=suite.create_api_key(name="outsider", roles=("admin",)),
                appender_key=suite.create_api_key(name="honest", roles=("integration",)),
            )
        finally:
            suite.stop_all()


def _event(source: str) -> dict[str, Any]:
    return {
        "eventId": str(uuid.uuid4()),
        "type": "phishing.clicked",
        "source": source,
        "subject": SUBJECT,
        "occurredAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "severity": "SEVERITY_MEDIUM",
        "summary": "clicked",
    }


def _seed(forgery: Forgery, http: httpx.Client) -> None:
    """At least two items in every list the suite can fill cheaply, so each has a second page."""
    admin = {"Authorization": f"Bearer {forgery.admin_key}"}
    for round_ in range(2):
        for _ in range(3):
            assert http.post("/v1/events", json=_event(f"seed{round_}"), headers=admin).status_code == 200
        if round_ == 0:
            time.sleep(1.0)  # a checkpoint of the first round, another of the second
    for index in range(2):
        created = http.post(
            "/v1/policies",
            params={"policyId": f"{POLICY_ID}" if index == 0 else f"{POLICY_ID}-b"},
            json={"title": "Forgery", "rule": 'event.type == "phishing.clicked"', "severity": "SEVERITY_LOW"},
            headers=admin,
        )
        assert created.status_code == 200, created.text
    assert http.post(f"/v1/policies/{POLICY_ID}:submit", json={}, headers=admin).status_code == 200
    for action in ("grant", "withdraw", "grant"):
        answer = http.post(
            f"/v1/consents:{action}", json={"subject": SUBJECT, "purpose": "profiling"}, headers=admin
        )
        assert answer.status_code == 200, answer.text
    for event_type in ("phishing.clicked", "training.completed"):
        answer = http.post(
            "/v1/retentionRules:set",
            json={"rule": {"eventType": event_type, "retentionDays": 400}, "reason": "forgery test"},
            headers=admin,
        )
        assert answer.status_code == 200, answer.text
    for index in range(2):
        erased = {**_event("seed"), "subject": f"erased{index}@example.org"}
        assert http.post("/v1/events", json=erased, headers=admin).status_code == 200
        answer = http.post(
            "/v1/subjects:erase",
            json={"subject": erased["subject"], "reason": "forgery test", "requestId": str(uuid.uuid4())},
            headers=admin,
        )
        assert answer.status_code == 200, answer.text


def _real_tokens(forgery: Forgery, http: httpx.Client, routes: list[HttpRoute]) -> dict[str, str]:
    """The next_page_token of a first page of one item, for every route that has a second page."""

    def fetch() -> dict[str, str]:
        tokens = {}
        for route in routes:
            parent = PARENT_IDS.get(route.method_name, "zz0")
            answer = forgery.get(http, route, parent=parent, pageSize="1")
            if answer.status_code == 404:  # no such parent (a model's shadow scores): no first page
                continue
            assert answer.status_code == 200, (route.rpc, answer.text)
            token = answer.json().get("nextPageToken", "")
            if token:
                tokens[route.rpc] = token
        return tokens

    # Checkpoints are signed in the background: wait until there are two.
    wait_until(
        lambda: "/awareness.ingest.v1.IngestService/ListCheckpoints" in fetch(),
        timeout=60,
        what="2 checkpoints",
    )
    return fetch()


class Appender(threading.Thread):
    """Another caller, appending events with its own key for as long as the forgery lasts."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(name="honest-appender", daemon=True)
        self._url, self._key = url, key
        self.stop_event = threading.Event()
        self.statuses: list[int] = []

    def run(self) -> None:
        with httpx.Client(base_url=self._url, timeout=30) as http:
            while not self.stop_event.is_set() and len(self.statuses) < 5000:
                answer = http.post(
                    "/v1/events", json=_event("honest"), headers={"Authorization": f"Bearer {self._key}"}
                )
                self.statuses.append(answer.status_code)


def _open_breaker_transitions(suite: ProcessSuite) -> dict[str, float]:
    opened = {}
    for service in suite.processes:
        samples = parse_metrics(suite.scrape(service))
        name = f"awareness_{service}_circuit_breaker_transitions_total"
        opened[service] = metric_value(samples, name, state="open")
    return opened


def test_forged_page_tokens_are_4xx_on_every_list_route_and_harm_no_one(forgery: Forgery) -> None:
    routes = list_routes()
    assert len(routes) >= 11, [r.rpc for r in routes]  # the lists of every service
    assert {r.service for r in routes} == {"ingest", "gdpr", "policy", "scoring", "signing", "analytics"}
    rng = random.Random(15)
    with httpx.Client(base_url=forgery.suite.gateway_url, timeout=30) as http:
        _seed(forgery, http)
        real = _real_tokens(forgery, http, routes)
        # Scoring holds one model and no shadow scores, analytics no more campaigns, risks or reports
        # than a page: those lists lend another route's token.
        assert set(real) >= {r.rpc for r in routes if r.service not in ("scoring", "analytics")}, sorted(real)
        appender = Appender(forgery.suite.gateway_url, forgery.appender_key)
        appender.start()
        answers: list[tuple[str, str, int]] = []
        try:
            for route in routes:
                parent = PARENT_IDS.get(route.method_name, "zz0")
                own = real.get(route.rpc)
                others = [token for rpc, token in real.items() if rpc != route.rpc]
                donor = own or others[0]
                forged: dict[str, str] = {
                    "random": base64.urlsafe_b64encode(rng.randbytes(48)).decode().rstrip("="),
                    "random-padded": base64.urlsafe_b64encode(rng.randbytes(40)).decode(),
                    "nul-garbage": "\x00" + donor[:10] + "\x00\x00",
                    "truncated": donor[:-3],
                    "extended": donor + "AAAA",
                }
                forged.update({f"flip@{i}": _flip(donor, i) for i in range(len(donor))})
                forged.update({f"other-route:{i}": token for i, token in enumerate(others)})
                for kind, token in forged.items():
                    answer = forgery.get(http, route, parent=parent, pageToken=token)
                    answers.append((route.rpc, kind, answer.status_code))
                if own is not None:
                    other = _other_filter(route)
                    if other is not None:
                        answer = forgery.get(http, route, parent=parent, pageToken=own, **other)
                        answers.append((route.rpc, "other-filter", answer.status_code))
                    if route.template.variables:
                        answer = forgery.get(http, route, parent="zz0z", pageToken=own)
                        answers.append((route.rpc, "other-parent", answer.status_code))
        finally:
            appender.stop_event.set()
            appender.join(timeout=60)
        not_refused = [a for a in answers if a[2] != 400]
        assert not_refused == [], not_refused[:20]
        assert len(answers) > 500
        kinds = {kind.split(":")[0].split("@")[0] for _, kind, _ in answers}
        assert {"random", "flip", "other-route", "other-filter", "nul-garbage"} <= kinds
        # Another caller's appends all went through while the forgery went on.
        assert appender.statuses and set(appender.statuses) == {200}, sorted(set(appender.statuses))
        # No breaker opened: the gateway's view of each backend, and every process's own counters.
        status = httpx.get(
            f"http://127.0.0.1:{forgery.suite.gateway_admin_port}/health/dependencies", timeout=10
        )
        assert status.status_code == 200
        body = status.json()
        assert {
            s: body[s]["breaker"] for s in ("ingest", "gdpr", "policy", "scoring", "signing", "analytics")
        } == dict.fromkeys(("ingest", "gdpr", "policy", "scoring", "signing", "analytics"), "closed")
        assert set(_open_breaker_transitions(forgery.suite).values()) == {0.0}
