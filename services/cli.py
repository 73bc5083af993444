"""The ``awareness`` command line.

``awareness up`` runs the whole suite on one machine; ``awareness serve <service>`` runs
one service (the container entrypoint). Each service adds its own subcommands through
``services.<service>.cli.register``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from services.runtime.config import ALL_PROCESSES, SERVICES

_EXTENSIONS = ("signing", "gdpr", "scoring", "policy", "ingest", "gateway", "analytics", "backup")


# sysexits.h EX_CONFIG: the pod's configuration, not the code, is wrong.
EXIT_CONFIG = 78


def _serve(args: argparse.Namespace) -> int:
    from services.runtime.config import ConfigError, load_settings

    try:
        settings = load_settings(args.service)
        from services.runtime import workers

        if workers.is_supervisor(settings):
            # AWARENESS_<SERVICE>_WORKERS > 1: start the workers (local replicas) and watch them.
            return workers.supervise(settings)
        if args.service == "gateway":
            from services.gateway.app import run_gateway

            run_gateway(settings)
            return 0
        from services.runtime.server import serve

        module = importlib.import_module(f"services.{args.service}.app")
        serve(settings, module.create_app)
    except ConfigError as exc:
        # One line naming the setting, instead of a traceback, and no retry hidden in a loop.
        print(f"awareness serve {args.service}: refusing to start: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from services.runtime import db, migrations
    from services.runtime.config import load_settings

    targets = [*SERVICES, "gateway"] if args.all else [args.service]
    for service in targets:
        if service is None:
            raise SystemExit("name a service or pass --all")
        settings = load_settings(service)
        engine = db.create_db_engine(settings.database_url, service=service)
        migrations.upgrade(service, engine)
        engine.dispose()
        print(f"migrated {service}")
    return 0


def _up(args: argparse.Namespace) -> int:
    from services.launcher import run_suite
    from services.runtime.config import ConfigError

    try:
        return run_suite(data_dir=args.data_dir, gateway_port=args.gateway_port, ready_timeout=args.timeout)
    except ConfigError as exc:
        # Checked before any process starts (e.g. workers on SQLite): one line, as `serve` does.
        print(f"awareness up: refusing to start: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="awareness",
        description="Awareness: verifiable human-layer security events.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start every service and the gateway on this machine (embedded defaults)")
    up.add_argument("--data-dir", default=None, help="where SQLite files and development keys live (./var)")
    up.add_argument("--gateway-port", type=int, default=None, help="HTTP port of the gateway (8080)")
    up.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for every service to be healthy"
    )
    up.set_defaults(handler=_up)

    serve = sub.add_parser("serve", help="run one service in the foreground (the container entrypoint)")
    serve.add_argument("service", choices=ALL_PROCESSES)
    serve.set_defaults(handler=_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("service", nargs="?", choices=(*SERVICES, "gateway"))
    migrate.add_argument("--all", action="store_true", help="migrate every service")
    migrate.set_defaults(handler=_migrate)

    for name in _EXTENSIONS:
        try:
            module = importlib.import_module(f"services.{name}.cli")
        except ModuleNotFoundError as exc:
            if exc.name != f"services.{name}.cli":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result = args.handler(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
