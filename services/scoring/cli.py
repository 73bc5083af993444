"""``awareness model ...``: train, list, show and promote risk models.

``awareness model train`` trains locally on the synthetic generator and prints each stage as it happens
(data, grid search, held-out metrics, baseline, ONNX parity): a dry run that registers nothing, with
``--output DIR`` to keep the ONNX file and model card. ``awareness model train --register`` asks the
running scoring service to train instead (TrainModel): only the service can add the analyst labels it
fetches from ingest and register the result as CHALLENGER; the command prints elapsed time while it
waits, and the service logs each stage. ``awareness model promote NAME`` makes a model champion; every
replica switches within seconds. ``awareness model health [NAME]`` prints a model's (by default the
champion's) live quality on analysts' labels and its input drift.

Calls go over mTLS with the scoring service's own certificate (AWARENESS_MTLS_* or var/mtls/scoring.*),
which may name the principal ``cli:model`` with the ``ml_engineer`` role.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from services.runtime.auth import Principal
from services.runtime.timestamps import from_timestamp

MODEL_PRINCIPAL = Principal(subject="cli:model", roles=frozenset({"ml_engineer"}))
TRAIN_TIMEOUT_SECONDS = 1800.0
HEARTBEAT_SECONDS = 10.0
_STATUSES = ("challenger", "champion", "retired")


def register(subparsers: Any) -> None:
    model = subparsers.add_parser("model", help="risk models: train, list, show, promote")
    commands = model.add_subparsers(dest="model_command", required=True, metavar="MODEL_COMMAND")

    train = commands.add_parser(
        "train", help="train a risk model (locally, or in the running service with --register)"
    )
    train.add_argument(
        "--register",
        action="store_true",
        help="train in the running scoring service (adds analyst labels) and register it as challenger",
    )
    train.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    train.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    train.add_argument(
        "--algorithm",
        action="append",
        choices=("random_forest", "gradient_boosting"),
        help="grid-search only this algorithm (repeatable; default both)",
    )
    train.add_argument(
        "--output", type=Path, help="local training: write model.onnx and model-card.json here"
    )
    train.add_argument("--request-id", default="", help="--register: idempotency key (generated if omitted)")
    train.add_argument(
        "--decide",
        action="store_true",
        help="--register: then decide on evidence whether the new challenger replaces the champion",
    )
    train.set_defaults(handler=_train)

    listing = commands.add_parser("list", help="list registered models, newest first")
    listing.add_argument("--status", choices=_STATUSES, help="only models with this status")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=_list)

    show = commands.add_parser("show", help="show a model with its model card")
    show.add_argument("name", help="models/{version} or just the version")
    show.set_defaults(handler=_show)

    promote = commands.add_parser("promote", help="make a model the champion (every replica hot-reloads)")
    promote.add_argument("name", help="models/{version} or just the version")
    promote.set_defaults(handler=_promote)

    health = commands.add_parser(
        "health", help="a model's live precision, recall, F1 and calibration on analysts' labels, and drift"
    )
    health.add_argument("name", nargs="?", default="", help="models/{version} or the version (the champion)")
    health.add_argument("--json", action="store_true", help="print the figures as JSON, unrounded")
    health.set_defaults(handler=_health)

    decide = commands.add_parser(
        "decide", help="promote a challenger if the evidence says so (live F1 with a bootstrap CI, drift)"
    )
    decide.add_argument("name", help="the challenger: models/{version} or the version")
    decide.set_defaults(handler=_decide)

    decisions = commands.add_parser("decisions", help="the promotion decisions taken about a challenger")
    decisions.add_argument("name", help="models/{version} or the version")
    decisions.add_argument("--json", action="store_true", help="print JSON instead of lines")
    decisions.set_defaults(handler=_decisions)


def _model_name(value: str) -> str:
    return value if value.startswith("models/") else f"models/{value}"


# --- local training ---------------------------------------------------------------------------------


def _train(args: argparse.Namespace) -> int:
    if args.folds < 2:
        print("--folds must be at least 2", file=sys.stderr)
        return 2
    if args.register:
        return _train_in_service(args)
    return _train_locally(args)


def _train_locally(args: argparse.Namespace) -> int:
    from services.scoring.domain.generator import GeneratorConfig, generate
    from services.scoring.domain.training import ALGORITHMS, DEFAULT_DAYS, DEFAULT_PEOPLE, train

    started = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", flush=True)

    progress(f"generating synthetic events (seed {args.seed})")
    dataset = generate(GeneratorConfig(people=DEFAULT_PEOPLE, days=DEFAULT_DAYS, seed=args.seed))
    progress(
        f"generated {dataset.version}: {len(dataset.inputs)} events, {sum(dataset.labels)} labelled risky"
    )
    result = train(
        events=dataset.inputs,
        labels=dataset.labels,
        seed=args.seed,
        folds=args.folds,
        progress=progress,
        data_card_version=dataset.version,
        algorithms=tuple(args.algorithm or ALGORITHMS),
    )
    metrics, baseline = result.metrics, result.baseline
    progress(f"done: {result.algorithm}, sha256 {result.sha256}")
    print(
        f"held-out: ROC AUC {metrics.roc_auc:.4f}, PR AUC {metrics.pr_auc:.4f}, F1 {metrics.f1:.4f} "
        f"(precision {metrics.precision:.4f}, recall {metrics.recall:.4f}); "
        f"rule baseline F1 {baseline.f1:.4f}"
    )
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "model.onnx").write_bytes(result.onnx_bytes)
        (args.output / "model-card.json").write_text(json.dumps(result.model_card, indent=2, sort_keys=True))
        print(f"wrote {args.output / 'model.onnx'} and {args.output / 'model-card.json'}")
    print(
        "not registered (local run); `awareness model train --register` trains and registers in the service"
    )
    return 0


# --- calls to the running service -------------------------------------------------------------------


async def _call(method: str, request: Any, *, timeout_seconds: float | None = None) -> Any:
    from awareness.scoring.v1 import scoring_pb2_grpc

    from services.runtime.clients import call_from_cli
    from services.runtime.config import load_settings

    settings = load_settings("scoring")
    return await call_from_cli(
        settings,
        service="scoring",
        stub_class=scoring_pb2_grpc.ScoringServiceStub,
        method=method,
        request=request,
        identity=MODEL_PRINCIPAL,
        timeout_seconds=timeout_seconds or settings.call_timeout_seconds,
        attempts=settings.retry_attempts,
    )


def _run(method: str, request: Any, *, timeout_seconds: float | None = None) -> Any | None:
    import grpc

    try:
        return asyncio.run(_call(method, request, timeout_seconds=timeout_seconds))
    except grpc.aio.AioRpcError as exc:
        print(f"scoring {method} failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return None


def _train_in_service(args: argparse.Namespace) -> int:
    from awareness.scoring.v1 import scoring_pb2

    request = scoring_pb2.TrainModelRequest(
        request_id=args.request_id or str(uuid.uuid4()),
        algorithms=args.algorithm or [],
        cv_folds=args.folds,
        seed=args.seed,
    )
    print(f"asking the scoring service to train (request {request.request_id}); stages go to its log")

    async def train_with_heartbeat() -> Any:
        started = time.perf_counter()
        call = asyncio.create_task(_call("TrainModel", request, timeout_seconds=TRAIN_TIMEOUT_SECONDS))
        while True:
            done, _ = await asyncio.wait({call}, timeout=HEARTBEAT_SECONDS)
            if done:
                return call.result()
            print(f"[{time.perf_counter() - started:6.1f}s] training in the service...", flush=True)

    import grpc

    try:
        model = asyncio.run(train_with_heartbeat())
    except grpc.aio.AioRpcError as exc:
        print(f"scoring TrainModel failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    _print_model(model)
    if args.decide and model.status == scoring_pb2.Model.STATUS_CHALLENGER:
        return _decide_on(model.name)
    return 0


def _list(args: argparse.Namespace) -> int:
    from awareness.scoring.v1 import scoring_pb2

    status = scoring_pb2.Model.Status.Value("STATUS_" + (args.status or "unspecified").upper())
    models: list[Any] = []
    token = ""
    while True:
        response = _run(
            "ListModels", scoring_pb2.ListModelsRequest(page_size=200, page_token=token, status=status)
        )
        if response is None:
            return 1
        models.extend(response.models)
        token = response.next_page_token
        if not token:
            break
    if args.json:
        print(json.dumps([_as_dict(m) for m in models], indent=2, sort_keys=True))
        return 0
    if not models:
        print("no models registered")
        return 0
    header = f"{'NAME':<40} {'STATUS':<11} {'ALGORITHM':<18} {'ROC AUC':>8} {'F1':>7} {'CREATED':<20}"
    print(header)
    for model in models:
        status_name = scoring_pb2.Model.Status.Name(model.status).removeprefix("STATUS_")
        created = from_timestamp(model.create_time).strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{model.name:<40} {status_name:<11} {model.algorithm:<18} "
            f"{_metric(model, 'roc_auc'):>8.4f} {_metric(model, 'f1'):>7.4f} "
            f"{created:<20}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    from awareness.scoring.v1 import scoring_pb2

    model = _run("GetModel", scoring_pb2.GetModelRequest(name=_model_name(args.name)))
    if model is None:
        return 1
    document = _as_dict(model)
    if model.model_card:
        document["model_card"] = json.loads(model.model_card)
    print(json.dumps(document, indent=2, sort_keys=True))
    return 0


def _promote(args: argparse.Namespace) -> int:
    from awareness.scoring.v1 import scoring_pb2

    request = scoring_pb2.PromoteModelRequest(name=_model_name(args.name), request_id=str(uuid.uuid4()))
    model = _run("PromoteModel", request)
    if model is None:
        return 1
    print(f"{model.name} is the champion; every scoring replica switches to it within seconds")
    return 0


def _metric(model: Any, name: str) -> float:
    return float(model.metrics.get(name, float("nan")))


def _as_dict(model: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    document: dict[str, Any] = MessageToDict(model, preserving_proto_field_name=True)
    return document


def _print_model(model: Any) -> None:
    from awareness.scoring.v1 import scoring_pb2

    status_name = scoring_pb2.Model.Status.Name(model.status).removeprefix("STATUS_")
    print(f"registered {model.name} ({status_name}, {model.algorithm}, sha256 {model.sha256})")
    print(
        f"held-out: ROC AUC {_metric(model, 'roc_auc'):.4f}, F1 {_metric(model, 'f1'):.4f}; "
        f"rule baseline F1 {_metric(model, 'baseline_f1'):.4f}; "
        f"{model.training_example_count} training examples"
    )
    if model.status == scoring_pb2.Model.STATUS_CHALLENGER:
        print(f"promote it with: awareness model promote {model.name}")


def _champion_name() -> str | None:
    from awareness.scoring.v1 import scoring_pb2

    response = _run(
        "ListModels", scoring_pb2.ListModelsRequest(page_size=1, status=scoring_pb2.Model.STATUS_CHAMPION)
    )
    if response is None:
        return None
    if not response.models:
        print("no champion model: name one, e.g. awareness model health models/VERSION", file=sys.stderr)
        return None
    return str(response.models[0].name)


def _health(args: argparse.Namespace) -> int:
    from awareness.scoring.v1 import scoring_pb2

    name = _model_name(args.name) if args.name else _champion_name()
    if name is None:
        return 1
    health = _run("GetModelHealth", scoring_pb2.GetModelHealthRequest(name=f"{name}/health"))
    if health is None:
        return 1
    if args.json:
        print(json.dumps(_as_dict(health), indent=2, sort_keys=True))
        return 0
    for line in health_lines(health):
        print(line)
    return 0


def health_lines(health: Any) -> list[str]:
    """GetModelHealth as tables: live quality per window and scorer, calibration, then drift."""
    from awareness.scoring.v1 import scoring_pb2

    status = scoring_pb2.Model.Status.Name(health.status).removeprefix("STATUS_")
    card = health.card
    latest = (
        from_timestamp(health.latest_label_time).isoformat()
        if health.HasField("latest_label_time")
        else "none"
    )
    lines = [
        f"{health.name.removesuffix('/health')} ({status}), decision threshold {health.decision_threshold:g}",
        f"model card (held-out): precision {card.precision:.4f}, recall {card.recall:.4f}, F1 {card.f1:.4f}",
        "latest label: " + latest,
        "",
        "live quality on analysts' labels (events that occurred in the window):",
        f"{'WINDOW':<7} {'SCORER':<11} {'MODEL':<28} {'LABELLED':>8} {'TP':>6} {'FP':>6} {'TN':>6} {'FN':>6} "
        f"{'PRECISION':>10} {'RECALL':>10} {'F1':>10} {'BRIER':>8}",
    ]
    for row in health.live_quality:
        figures = row.figures
        scorer = "challenger" if row.scorer == scoring_pb2.LiveQuality.SCORER_CHALLENGER else "model"
        lines.append(
            f"{row.window:<7} {scorer:<11} {row.model_version:<28} {figures.labelled_events:>8} "
            f"{figures.true_positives:>6} {figures.false_positives:>6} {figures.true_negatives:>6} "
            f"{figures.false_negatives:>6} {figures.precision:>10.6f} {figures.recall:>10.6f} "
            f"{figures.f1:>10.6f} {figures.brier_score:>8.4f}"
        )
    own = [r for r in health.live_quality if r.scorer == scoring_pb2.LiveQuality.SCORER_MODEL]
    if own and own[-1].figures.labelled_events:
        lines += ["", f"reliability ({own[-1].window}, model): score bin, events, mean score, observed rate"]
        lines += [
            f"  [{b.lower:.1f}, {b.upper:.1f})  {b.events:>6}  {b.mean_score:.3f}  {b.observed_rate:.3f}"
            for b in own[-1].figures.calibration
            if b.events
        ]
    lines.append("")
    if not health.drift:
        lines.append("input drift: none measured (only the champion's, on the replica that answered)")
        return lines
    windows = list(health.drift)
    lines.append(
        "input drift (PSI against the training data; 0.1 watch, 0.25 act): "
        + ", ".join(f"{w.window} {w.events} events" for w in windows)
    )
    lines.append(f"{'FEATURE':<34} " + " ".join(f"{w.window:>8}" for w in windows) + "  LEVEL")

    def psi_text(reading: Any) -> str:
        return f"{reading.psi:>8.3f}" if reading.HasField("psi") else f"{'-':>8}"

    score_row = " ".join(f"{w.score_psi:>8.3f}" if w.HasField("score_psi") else f"{'-':>8}" for w in windows)
    lines.append(f"{'(score)':<34} {score_row}")
    for index, feature in enumerate(windows[0].features):
        readings = [w.features[index] for w in windows]
        level = readings[-1].level or "-"
        lines.append(f"{feature.feature:<34} " + " ".join(psi_text(r) for r in readings) + f"  {level}")
    return lines


def _decide(args: argparse.Namespace) -> int:
    return _decide_on(_model_name(args.name))


def _decide_on(name: str) -> int:
    from awareness.scoring.v1 import scoring_pb2

    decision = _run("DecidePromotion", scoring_pb2.DecidePromotionRequest(name=name))
    if decision is None:
        return 1
    print(_decision_line(decision))
    return 0


def _decisions(args: argparse.Namespace) -> int:
    from awareness.scoring.v1 import scoring_pb2

    found: list[Any] = []
    token = ""
    while True:
        request = scoring_pb2.ListPromotionDecisionsRequest(
            parent=_model_name(args.name), page_size=200, page_token=token
        )
        response = _run("ListPromotionDecisions", request)
        if response is None:
            return 1
        found.extend(response.promotion_decisions)
        token = response.next_page_token
        if not token:
            break
    if args.json:
        print(json.dumps([_as_dict(d) for d in found], indent=2, sort_keys=True))
    elif not found:
        print("no decisions taken about this model")
    for decision in [] if args.json else found:
        print(_decision_line(decision))
    return 0


def _decision_line(decision: Any) -> str:
    from awareness.scoring.v1 import scoring_pb2

    outcome = scoring_pb2.PromotionDecision.Outcome.Name(decision.outcome).removeprefix("OUTCOME_").lower()
    when = from_timestamp(decision.decide_time).strftime("%Y-%m-%d %H:%M:%S")
    challenger = decision.name.split("/promotionDecisions/")[0]
    return f"{when} {challenger} {outcome} (champion models/{decision.champion_version}): {decision.reason}"
