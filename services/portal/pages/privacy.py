"""The portal's privacy pages (see docs/portal.md)."""

from __future__ import annotations

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
