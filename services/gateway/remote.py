"""``awareness events`` and ``awareness policies``: the gateway's HTTP API from a terminal.

For analysts and policy authors, who hold an API key, not a service certificate: every call
goes through the gateway (authentication, rate limits, permissions) like any other client's.
The key is read from ``AWARENESS_API_KEY`` or ``--api-key-file``, never from an argument, so it
stays out of the process list and the shell history. Answers are printed as the gateway's JSON;
a refusal prints its status, ErrorInfo reason and message on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

GATEWAY_URL_VAR = "AWARENESS_GATEWAY_URL"
API_KEY_VAR = "AWARENESS_API_KEY"
DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080"
TIMEOUT_SECONDS = 30.0
EXIT_REFUSED = 1
EXIT_USAGE = 2

LABELS = {"true_positive": "LABEL_TRUE_POSITIVE", "false_positive": "LABEL_FALSE_POSITIVE"}
TRIAGE_STATES = {
    "new": "TRIAGE_STATE_NEW",
    "in_review": "TRIAGE_STATE_IN_REVIEW",
    "closed": "TRIAGE_STATE_CLOSED",
}
POLICY_STATES = {
    "draft": "STATE_DRAFT",
    "review": "STATE_REVIEW",
    "active": "STATE_ACTIVE",
    "retired": "STATE_RETIRED",
}


class RemoteError(Exception):
    """A call the gateway refused or could not be made; the message is for the user."""

    def __init__(self, message: str, *, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _api_key(args: argparse.Namespace) -> str:
    if args.api_key_file:
        key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
    else:
        key = os.environ.get(API_KEY_VAR, "").strip()
    if not key:
        raise RemoteError(f"no API key: set {API_KEY_VAR} or pass --api-key-file", exit_code=EXIT_USAGE)
    return key


def _reason(body: Any) -> str:
    details = body.get("details", []) if isinstance(body, dict) else []
    return next((d.get("reason", "") for d in details if "ErrorInfo" in str(d.get("@type", ""))), "")


def call(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> Any:
    """One request to the gateway; the decoded JSON answer, or a RemoteError saying why not."""
    url = args.gateway.rstrip("/") + path
    headers = {"Authorization": f"Bearer {_api_key(args)}"}
    try:
        with httpx.Client(timeout=TIMEOUT_SECONDS) as client:
            response = client.request(method, url, params=params, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise RemoteError(f"gateway {args.gateway} unreachable: {exc}") from exc
    try:
        decoded = response.json()
    except ValueError:
        decoded = None
    if response.status_code >= 400:
        message = decoded.get("message", "") if isinstance(decoded, dict) else response.text[:200]
        reason = _reason(decoded)
        raise RemoteError(
            f"{response.status_code} {reason}: {message}" if reason else f"{response.status_code}: {message}"
        )
    return decoded


def _event_name(event_id: str) -> str:
    return "/v1/events/" + quote(event_id.removeprefix("events/"), safe="")


def _policy_name(policy_id: str) -> str:
    return "/v1/policies/" + quote(policy_id.removeprefix("policies/"), safe="")


def _paging(args: argparse.Namespace) -> dict[str, str]:
    params: dict[str, str] = {}
    if args.page_size:
        params["pageSize"] = str(args.page_size)
    if args.page_token:
        params["pageToken"] = args.page_token
    return params


def _events_list(args: argparse.Namespace) -> Any:
    params = _paging(args)
    for field, value in (("type", args.type), ("source", args.source)):
        if value:
            params[field] = value
    if args.label:
        params["label"] = LABELS[args.label]
    if args.triage_state:
        params["triageState"] = TRIAGE_STATES[args.triage_state]
    return call(args, "GET", "/v1/events", params=params)


def _events_get(args: argparse.Namespace) -> Any:
    return call(args, "GET", _event_name(args.event_id))


def _events_label(args: argparse.Namespace) -> Any:
    if not (args.label or args.triage_state):
        raise RemoteError("give --label, --triage-state or both", exit_code=EXIT_USAGE)
    body: dict[str, Any] = {}
    if args.label:
        body["label"] = LABELS[args.label]
    if args.note:
        body["note"] = args.note
    if args.triage_state:
        body["triageState"] = TRIAGE_STATES[args.triage_state]
    return call(args, "POST", _event_name(args.event_id) + ":label", body=body)


def _policies_list(args: argparse.Namespace) -> Any:
    params = _paging(args)
    if args.state:
        params["state"] = POLICY_STATES[args.state]
    return call(args, "GET", "/v1/policies", params=params)


def _policies_get(args: argparse.Namespace) -> Any:
    return call(args, "GET", _policy_name(args.policy_id))


def _run(args: argparse.Namespace) -> int:
    try:
        answer = args.remote_handler(args)
    except RemoteError as exc:
        print(f"awareness {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(answer, indent=2, ensure_ascii=False))
    return 0


def connection_options(parser: argparse.ArgumentParser) -> None:
    """--gateway and --api-key-file: how every command of the gateway's HTTP API reaches it."""
    parser.add_argument(
        "--gateway",
        default=os.environ.get(GATEWAY_URL_VAR, DEFAULT_GATEWAY_URL),
        help=f"the gateway's URL (${GATEWAY_URL_VAR}, else {DEFAULT_GATEWAY_URL})",
    )
    parser.add_argument(
        "--api-key-file", default=None, help=f"file holding the API key (else ${API_KEY_VAR})"
    )


def _page_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--page-size", type=int, default=0, help="results per page (the server's default)")
    parser.add_argument("--page-token", default="", help="nextPageToken of the previous page")


def _action(sub: Any, name: str, help_text: str, handler: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    connection_options(parser)
    parser.set_defaults(handler=_run, remote_handler=handler)
    return parser


def register(subparsers: Any) -> None:
    events = subparsers.add_parser("events", help="list, read and label events through the gateway")
    actions = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    listing = _action(actions, "list", "list events, newest first", _events_list)
    _page_options(listing)
    listing.add_argument("--type", default="", help="only this event type, e.g. phishing.clicked")
    listing.add_argument("--source", default="", help="only events from this source")
    listing.add_argument("--label", choices=sorted(LABELS), default=None)
    listing.add_argument("--triage-state", choices=sorted(TRIAGE_STATES), default=None)
    get = _action(
        actions,
        "get",
        "show one event (its label history: awareness audit --action event.label --resource events/<id>)",
        _events_get,
    )
    get.add_argument("event_id", metavar="EVENT_ID")
    label = _action(actions, "label", "label an event and/or move it through triage", _events_label)
    label.add_argument("event_id", metavar="EVENT_ID")
    label.add_argument("--label", choices=sorted(LABELS), default=None)
    label.add_argument("--note", default="", help="why (kept only with a label; sealed as personal data)")
    label.add_argument("--triage-state", choices=sorted(TRIAGE_STATES), default=None)

    policies = subparsers.add_parser("policies", help="list and read policies through the gateway")
    actions = policies.add_subparsers(dest="policies_command", required=True, metavar="ACTION")
    listing = _action(actions, "list", "list policies", _policies_list)
    _page_options(listing)
    listing.add_argument("--state", choices=sorted(POLICY_STATES), default=None)
    get = _action(actions, "get", "show one policy (its current version)", _policies_get)
    get.add_argument("policy_id", metavar="POLICY_ID")
