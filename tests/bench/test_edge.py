"""bench/edge.py: the edge alone answers a parsed event, and refuses what the gateway would."""

from __future__ import annotations

import json

import httpx

from bench.edge import create_app, event_problem, server_config
from bench.loadgen import make_event
from services.gateway.protocol import BoundedHttpToolsProtocol

HEADERS = {"Authorization": "Bearer k", "Content-Type": "application/json"}


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app()), base_url="http://edge.test")


async def test_the_edge_answers_a_parsed_event_with_a_receipt() -> None:
    event = make_event(7, namespace="edge-")
    async with _client() as client:
        answer = await client.post("/v1/events", content=json.dumps(event), headers=HEADERS)
    assert answer.status_code == 200
    assert answer.json() == {
        "receipt": {"eventId": event["eventId"], "state": "STATE_ACCEPTED"},
        "replayed": False,
    }


async def test_the_edge_refuses_what_it_cannot_parse_or_check() -> None:
    async with _client() as client:
        assert (await client.post("/v1/events", content=b"{", headers=HEADERS)).status_code == 400
        assert (await client.post("/v1/events", content=b"[]", headers=HEADERS)).status_code == 400
        no_key = {"Content-Type": "application/json"}
        assert (
            await client.post("/v1/events", content=json.dumps(make_event(1)), headers=no_key)
        ).status_code == 401
        plain = {**HEADERS, "Content-Type": "text/plain"}
        assert (
            await client.post("/v1/events", content=json.dumps(make_event(1)), headers=plain)
        ).status_code == 415
        assert (await client.get("/v1/events")).status_code == 405


def test_event_checks_need_the_fields_every_event_has() -> None:
    assert event_problem(make_event(1)) is None
    assert event_problem({**make_event(1), "subject": ""}) == "subject is required"
    assert event_problem({**make_event(1), "details": {"n": 1}}) == "details must map strings to strings"


def test_the_edge_runs_under_the_gateways_uvicorn_settings() -> None:
    config = server_config(create_app(), host="127.0.0.1", port=1)
    assert (config.access_log, config.server_header, config.date_header) == (False, False, True)
    assert config.timeout_keep_alive == 5
    assert config.http is BoundedHttpToolsProtocol  # the gateway's own, head size capped
    assert (config.loop, config.workers) == ("auto", 1)
