"""Copy the portal's third-party assets from node_modules into services/portal/static/vendor.

They come from the npm registry at build time (package.json pins them) and are served by the
gateway itself: the portal fetches nothing from a CDN at run time. ``make setup`` runs this.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENDOR = REPO / "services" / "portal" / "static" / "vendor"
# (file in node_modules, name served under /portal/static/vendor/)
ASSETS = (
    ("htmx.org/dist/htmx.min.js", "htmx.min.js"),
    ("@picocss/pico/css/pico.min.css", "pico.min.css"),
)


def main() -> int:
    VENDOR.mkdir(parents=True, exist_ok=True)
    for source, name in ASSETS:
        path = REPO / "node_modules" / source
        if not path.is_file():
            print(f"missing {path}: run npm ci first", file=sys.stderr)
            return 1
        shutil.copyfile(path, VENDOR / name)
    print(f"vendored {len(ASSETS)} portal assets into {VENDOR.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
