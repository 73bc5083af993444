"""TrainModel: synthetic data plus analyst labels from ingest, trained in a worker thread, registered.

Analyst labels come from ingest.ListTrainingExamples. Only subjects who granted the `training_data`
purpose and did not object to `profiling` contribute (gdpr: withheld until granted; no for the
erased), and never the labels held out for promotion decisions. If ingest or gdpr cannot answer, the
model is trained on the generator alone and its model card says so: a training run never fails because
a peer is down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.runtime.clients import call_peer
from services.runtime.db import run_db, transaction
from services.runtime.errors import AwarenessError, InvalidArgumentError
from services.scoring import repository
from services.scoring.consent import ConsentChecker, peer_cause
from services.scoring.convert import feature_input
from services.scoring.domain.features import FEATURE_SCHEMA_VERSION, FeatureInput
from services.scoring.domain.generator import GeneratorConfig, generate
from services.scoring.domain.promotion import held_out
from services.scoring.domain.training import (
    ALGORITHMS,
    DEFAULT_DAYS,
    DEFAULT_PEOPLE,
    Progress,
    TrainingResult,
    algorithm_name,
    train,
)
from services.scoring.models import ModelRow, ModelStatus

log = logging.getLogger("awareness.scoring")

DEFAULT_SEED: Final = 7
DEFAULT_FOLDS: Final = 5
MAX_ANALYST_EXAMPLES: Final = 100_000
_PAGE_SIZE: Final = 5_000
_ALGORITHM_ABBREVIATIONS: Final = {"random_forest": "rf", "gradient_boosting": "gb"}


@dataclass(frozen=True, kw_only=True)
class AnalystExamples:
    events: tuple[FeatureInput, ...] = ()
    labels: tuple[int, ...] = ()
    card: dict[str, Any] = field(default_factory=dict)


def model_version(result: TrainingResult, *, created: datetime) -> str:
    """`2026.01.06-rf-1a2b3c4d5e6f`: registration day, algorithm, and the start of the sha256."""
    name = algorithm_name(result.algorithm)
    return f"{created:%Y.%m.%d}-{_ALGORITHM_ABBREVIATIONS.get(name, 'm')}-{result.sha256[:12]}"


def registry_metrics(result: TrainingResult) -> dict[str, float]:
    """Held-out metrics, cross-validation and the baseline, flat, as Model.metrics shows them."""
    return {
        "precision": result.metrics.precision,
        "recall": result.metrics.recall,
        "f1": result.metrics.f1,
        "roc_auc": result.metrics.roc_auc,
        "pr_auc": result.metrics.pr_auc,
        f"cv_{result.cv_scoring}_mean": round(result.cv_mean, 6),
        f"cv_{result.cv_scoring}_std": round(result.cv_std, 6),
        "baseline_precision": result.baseline.precision,
        "baseline_recall": result.baseline.recall,
        "baseline_f1": result.baseline.f1,
        "parity_max_abs_difference": result.parity_max_abs_difference,
    }


def register_result(
    session: Session,
    *,
    result: TrainingResult,
    status: ModelStatus,
    request_id: str | None = None,
    extra_card: dict[str, Any] | None = None,
) -> tuple[ModelRow, bool]:
    """Register a trained model; identical bytes already registered return that model (and False)."""
    existing = repository.find_model_by_sha256(session, sha256=result.sha256)
    if existing is not None:
        return existing, False
    created = datetime.now(UTC)
    card = {**result.model_card, **(extra_card or {})}
    rows = card.get("rows", {})
    examples = int(rows.get("train", 0)) + int(rows.get("test", 0)) if isinstance(rows, dict) else 0
    row = repository.register_model(
        session,
        version=model_version(result, created=created),
        onnx=result.onnx_bytes,
        sha256=result.sha256,
        algorithm=algorithm_name(result.algorithm),
        parameters=dict(result.params),
        metrics=registry_metrics(result),
        data_card_version=str(card.get("data_card_version", "")),
        feature_schema_version=FEATURE_SCHEMA_VERSION,
        training_example_count=examples,
        model_card=card,
        status=status,
        request_id=request_id,
        created_at_us=int(created.timestamp() * 1_000_000),
    )
    return row, True


class TrainingJobs:
    """Runs TrainModel calls one at a time; a retry with the same request_id joins or returns the first."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        ingest: Callable[[], ingest_pb2_grpc.IngestServiceStub],
        training_consent: ConsentChecker,
        profiling_consent: ConsentChecker,
        synthetic_people: int = DEFAULT_PEOPLE,
        synthetic_days: int = DEFAULT_DAYS,
        n_jobs: int = 1,
    ) -> None:
        self._sessions = sessions
        self._synthetic = (synthetic_people, synthetic_days)
        self._ingest = ingest
        self._consent = training_consent
        self._profiling = profiling_consent
        self._n_jobs = n_jobs
        self._lock = asyncio.Lock()
        self._running: dict[str, asyncio.Task[ModelRow]] = {}

    async def train(
        self,
        *,
        request_id: str,
        seed: int,
        folds: int,
        algorithms: Sequence[str],
        progress: Progress | None = None,
    ) -> ModelRow:
        unknown = sorted(set(algorithms) - set(ALGORITHMS))
        if unknown:
            raise InvalidArgumentError(
                f"unknown algorithms {unknown}; choose from {', '.join(ALGORITHMS)}",
                reason="INVALID_ALGORITHM",
            )
        if request_id:
            existing = await run_db(self._by_request_id, request_id)
            if existing is not None:
                return existing
            running = self._running.get(request_id)
            if running is not None:
                return await asyncio.shield(running)
        task = asyncio.create_task(
            self._train(
                request_id=request_id,
                seed=seed,
                folds=folds,
                algorithms=tuple(algorithms) or ALGORITHMS,
                progress=progress,
            )
        )
        if request_id:
            self._running[request_id] = task
            task.add_done_callback(lambda _task: self._running.pop(request_id, None))
        # Shielded: a caller that gives up (deadline) does not waste a half-finished training run.
        return await asyncio.shield(task)

    def _by_request_id(self, request_id: str) -> ModelRow | None:
        with self._sessions() as session:
            return repository.find_model_by_request_id(session, request_id=request_id)

    async def _train(
        self,
        *,
        request_id: str,
        seed: int,
        folds: int,
        algorithms: tuple[str, ...],
        progress: Progress | None,
    ) -> ModelRow:
        async with self._lock:
            report = _logging_progress(progress, request_id=request_id)
            analyst = await self.analyst_examples()
            report(f"analyst labels: {analyst.card.get('used', 0)} used ({analyst.card.get('note', '')})")
            result = await asyncio.to_thread(
                _train_sync,
                synthetic=GeneratorConfig(people=self._synthetic[0], days=self._synthetic[1], seed=seed),
                seed=seed,
                folds=folds,
                algorithms=algorithms,
                analyst=analyst,
                progress=report,
                n_jobs=self._n_jobs,
            )
            row = await run_db(self._register, result, analyst, request_id)
            report(f"registered models/{row.version} as {row.status}")
            return row

    def _register(self, result: TrainingResult, analyst: AnalystExamples, request_id: str) -> ModelRow:
        card = {"analyst_labels": analyst.card}
        try:
            with transaction(self._sessions) as session:
                row, _created = register_result(
                    session,
                    result=result,
                    status=ModelStatus.CHALLENGER,
                    request_id=request_id or None,
                    extra_card=card,
                )
                return row
        except IntegrityError:
            # A concurrent registration of the same bytes (another replica) won; return that one.
            with self._sessions() as session:
                existing = repository.find_model_by_sha256(session, sha256=result.sha256)
                if existing is None:
                    raise
                return existing

    async def analyst_examples(self) -> AnalystExamples:
        """Labelled events from ingest whose subjects granted `training_data`; never raises for a peer."""
        examples: list[ingest_pb2.TrainingExample] = []
        token = ""
        try:
            while len(examples) < MAX_ANALYST_EXAMPLES:
                response = await call_peer(
                    self._ingest().ListTrainingExamples(
                        ingest_pb2.ListTrainingExamplesRequest(page_size=_PAGE_SIZE, page_token=token)
                    ),
                    target="ingest",
                )
                examples.extend(response.examples)
                token = response.next_page_token
                if not token:
                    break
        except AwarenessError as error:
            code = peer_cause(error)
            log.warning("ingest unavailable: training on the generator alone", extra={"cause": code})
            return AnalystExamples(
                card={
                    "fetched": 0,
                    "used": 0,
                    "note": f"ingest unavailable ({code}): trained on the synthetic generator alone",
                }
            )
        labelled = [e for e in examples if e.label in _LABELS]
        if not labelled:
            return AnalystExamples(
                card={"fetched": len(examples), "used": 0, "note": "no analyst labels yet"}
            )
        # Promotion decisions are taken on these: no model may learn them (domain/promotion.py).
        trainable = [e for e in labelled if not held_out(e.input.event_id)]
        pseudonyms = [e.input.subject_pseudonym for e in trainable]
        try:
            training, profiling = await asyncio.gather(
                self._consent.granted(pseudonyms), self._profiling.granted(pseudonyms)
            )
        except AwarenessError as error:
            log.warning(
                "gdpr unavailable: analyst labels withheld from training", extra={"cause": error.reason}
            )
            return AnalystExamples(
                card={
                    "fetched": len(labelled),
                    "used": 0,
                    "note": "gdpr unavailable: training_data consent unknown, analyst labels withheld",
                }
            )
        events: list[FeatureInput] = []
        labels: list[int] = []
        invalid = 0
        for example in trainable:
            pseudonym = example.input.subject_pseudonym
            # Erased people are neither: gdpr answers no for a pseudonym it no longer knows.
            if not (training.get(pseudonym, False) and profiling.get(pseudonym, False)):
                continue
            try:
                events.append(feature_input(example.input, field="example.input"))
            except AwarenessError:
                invalid += 1
                continue
            labels.append(_LABELS[example.label])
        withheld = len(trainable) - len(events) - invalid
        return AnalystExamples(
            events=tuple(events),
            labels=tuple(labels),
            card={
                "fetched": len(labelled),
                "used": len(events),
                "held_out_for_promotion_decisions": len(labelled) - len(trainable),
                "withheld_without_consent": withheld,
                "invalid": invalid,
                "note": "analyst labels from ingest (subjects who granted training_data and did not "
                "object to profiling; one in five held out for promotion decisions)",
            },
        )


_LABELS: Final = {ingest_pb2.LABEL_TRUE_POSITIVE: 1, ingest_pb2.LABEL_FALSE_POSITIVE: 0}


def _train_sync(
    *,
    synthetic: GeneratorConfig,
    seed: int,
    folds: int,
    algorithms: tuple[str, ...],
    analyst: AnalystExamples,
    progress: Progress,
    n_jobs: int,
) -> TrainingResult:
    dataset = generate(synthetic)
    progress(
        f"generated {dataset.version}: {len(dataset.inputs)} events, {sum(dataset.labels)} labelled risky"
    )
    return train(
        events=dataset.inputs,
        labels=dataset.labels,
        seed=seed,
        folds=folds,
        progress=progress,
        extra_events=analyst.events,
        extra_labels=analyst.labels,
        data_card_version=dataset.version,
        n_jobs=n_jobs,
        algorithms=algorithms,
    )


def _logging_progress(progress: Progress | None, *, request_id: str) -> Progress:
    def report(message: str) -> None:
        log.info("training: " + message, extra={"request_id": request_id})
        if progress is not None:
            progress(message)

    return report
