"""Wiring: the portal as an ASGI app that the gateway mounts at ``/portal``.

It shares the gateway's channels, admission (authentication, rate limits) and store, so a person
in a browser meets the same rules as a client of the JSON API.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import jinja2
from markupsafe import Markup
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.admission import Admission
from services.portal import api
from services.portal.config import PortalConfig
from services.portal.oidc import OidcSignIn
from services.portal.pages import admin, evidence, models, policies, privacy, programme, reports
from services.portal.service import Services, Sessions
from services.runtime.clients import ChannelFactory

PACKAGE: Final = Path(__file__).resolve().parent
# No inline script or style anywhere: scripts and styles come from /portal/static only.
CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
SECURITY_HEADERS: Final = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
)


class SecurityHeaders:
    """Adds the CSP and friends to every portal response; pages (not static files) are never
    cached, since they may hold personal data."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/portal/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(SECURITY_HEADERS)
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _json_script(value: Any) -> Markup:
    """JSON for a ``<script type="application/json">`` element: ``<``, ``>`` and ``&`` escaped, so
    no value can close the element."""
    text = json.dumps(value, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)  # noqa: S704 - escaped above for this one context


def templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PACKAGE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["json_script"] = _json_script
    return environment


def create_portal(
    *,
    channels: ChannelFactory,
    admission: Admission,
    store: sessionmaker[Session],
    config: PortalConfig,
    secret: bytes,
    health: Callable[[], Awaitable[dict[str, Any]]],
) -> ASGIApp:
    """``store`` is the gateway's own (API keys, sessions), ``secret`` too (it MACs the OpenID
    Connect flow's cookie), and ``health`` its report of every dependency."""
    state = api.PortalState(
        sessions=Sessions(store=store, authenticator=admission.authenticator, config=config),
        services=Services(channels),
        admission=admission,
        templates=templates(),
        config=config,
        oidc=OidcSignIn(config.oidc, secret=secret) if config.oidc is not None else None,
        store=store,
        health=health,
    )
    app = Starlette(
        routes=[
            Route("/", api.home, methods=["GET"]),
            Route("/sign-in", api.sign_in_page, methods=["GET"]),
            Route("/sign-in", api.sign_in, methods=["POST"]),
            Route("/sign-out", api.sign_out, methods=["POST"]),
            Route("/oidc/start", api.oidc_start, methods=["GET"]),
            Route("/oidc/callback", api.oidc_callback, methods=["GET"]),
            Route("/events", api.events, methods=["GET"]),
            Route("/events:label", api.label_many, methods=["POST"]),
            Route("/events/{event_id}", api.event_page, methods=["GET"]),
            Route("/events/{event_id}:label", api.label_one, methods=["POST"]),
            *policies.routes,
            *privacy.routes,
            *models.routes,
            *evidence.routes,
            *programme.routes,
            *reports.routes,
            *admin.routes,
            Mount("/static", StaticFiles(directory=PACKAGE / "static"), name="static"),
        ]
    )
    app.state.portal = state
    return SecurityHeaders(app)
