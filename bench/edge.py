"""``python -m bench.edge --port N``: the edge alone, the ceiling the suite is measured against.

A minimal Starlette app with the gateway's route for single events, served by uvicorn with the
gateway's settings (services/gateway/app.py, ``run_gateway``: one process, the same event loop,
garbage-collector tuning and HTTP protocol class, no access log, the same keep-alive and header
limits). It parses the same JSON body and checks that the fields an event needs are there, then
answers 200 with a receipt of the shape the gateway's: no authentication lookup, no gRPC, no
database. The suite's
throughput divided by this one's is the fraction of what the edge alone can do.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.gateway.protocol import BoundedHttpToolsProtocol

REQUIRED_FIELDS = ("eventId", "type", "source", "subject", "occurredAt")
KEEP_ALIVE_SECONDS = 5  # the gateway's default AWARENESS_GATEWAY_KEEP_ALIVE_SECONDS


def problem_response(status: int, code: int, message: str) -> JSONResponse:
    """An error body of the gateway's shape (google.rpc.Status as JSON)."""
    return JSONResponse({"code": code, "message": message, "details": []}, status_code=status)


def event_problem(event: Any) -> str | None:
    """What is wrong with a parsed body as an event, or None: the gateway's cheapest checks."""
    if not isinstance(event, dict):
        return "the body must be a JSON object"
    for name in REQUIRED_FIELDS:
        value = event.get(name)
        if not isinstance(value, str) or not value:
            return f"{name} is required"
    details = event.get("details", {})
    if not isinstance(details, dict) or not all(isinstance(v, str) for v in details.values()):
        return "details must map strings to strings"
    return None


async def append_event(request: Request) -> Response:
    if not request.headers.get("authorization", "").startswith("Bearer "):
        return problem_response(401, 16, "an API key is required")
    if not request.headers.get("content-type", "").startswith("application/json"):
        return problem_response(415, 3, "request body must be application/json")
    try:
        event = json.loads(await request.body())
    except ValueError:
        return problem_response(400, 3, "malformed JSON")
    problem = event_problem(event)
    if problem is not None:
        return problem_response(400, 3, problem)
    return JSONResponse(
        {"receipt": {"eventId": event["eventId"], "state": "STATE_ACCEPTED"}, "replayed": False}
    )


def create_app() -> Starlette:
    return Starlette(routes=[Route("/v1/events", append_event, methods=["POST"])])


def server_config(app: Starlette, *, host: str, port: int) -> uvicorn.Config:
    """uvicorn as run_gateway configures its public server."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=True,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        http=BoundedHttpToolsProtocol,  # the gateway's httptools, with its cap on request heads
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.edge", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    serve_as_the_gateway(create_app(), host=args.host, port=args.port)
    return 0


def serve_as_the_gateway(app: Starlette, *, host: str, port: int) -> None:
    """uvicorn's Server.serve on the services' event loop, after their collector tuning, as
    ``run_gateway`` does (uvicorn's own run() would pick the loop itself)."""
    from services.runtime.process import run_main, tune_garbage_collector

    tune_garbage_collector()
    run_main(uvicorn.Server(server_config(app, host=host, port=port)).serve())


if __name__ == "__main__":
    sys.exit(main())
