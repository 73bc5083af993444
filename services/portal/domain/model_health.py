"""What a model's health page shows (GetModelHealth, ListPromotionDecisions): live quality per window
beside the card's, the reliability curve, input drift per feature, and the promotion decisions, as
figures and as chart geometry for server-rendered SVG. Pure: no I/O. Figures are written as on the
model card (``figure``, also the template's ``domain.figure``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from awareness.scoring.v1 import scoring_pb2
from google.protobuf import timestamp_pb2

from services.portal.domain import charts
from services.portal.domain.models import figure, status_name

LiveQuality = scoring_pb2.LiveQuality
Decision = scoring_pb2.PromotionDecision

QUALITY_WINDOWS: Final = ("7d", "30d")
# The longer window first: it is the one promotion and the alert rules read.
DRIFT_WINDOWS: Final = ("24h", "1h")
DRIFT_WINDOW_NAMES: Final = {"24h": "the last 24 hours", "1h": "the last hour"}
CALIBRATION_WINDOW: Final = "30d"
# The thresholds of docs/model-monitoring.md (scoring's WATCH_THRESHOLD and ACT_THRESHOLD).
WATCH_THRESHOLD: Final = 0.1
ACT_THRESHOLD: Final = 0.25
# A drift window below this many events has no PSI (scoring's own rule; the page only explains it).
MIN_DRIFT_EVENTS: Final = 100
LEVEL_CLASSES: Final = {"stable": "series-2", "watch": "risk-moderate", "act": "risk-critical"}
SCORER_NAMES: Final = {LiveQuality.SCORER_MODEL: "model", LiveQuality.SCORER_CHALLENGER: "challenger"}
OUTCOMES: Final = {Decision.OUTCOME_PROMOTED: "promoted", Decision.OUTCOME_KEPT: "kept"}
QUALITY_SERIES: Final = (("precision", "Precision"), ("recall", "Recall"), ("f1", "F1"))
CARD_GROUP: Final = "card (held-out)"


# --- live quality ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QualityRow:
    """One scorer's figures over one window, at the model card's decision threshold."""

    window: str
    scorer: str  # "model" or "challenger"
    model_version: str
    labelled: int
    true_positives: int
    false_positives: int
    true_negatives: int
    false_negatives: int
    precision: float
    recall: float
    f1: float
    brier_score: float

    @property
    def label(self) -> str:
        return f"{self.window} {self.scorer}"


def _window_order(window: str, order: Sequence[str]) -> int:
    return order.index(window) if window in order else len(order)


def quality_rows(live_quality: Iterable[scoring_pb2.LiveQuality]) -> list[QualityRow]:
    """The live figures, shortest window first and the model before the challenger within one."""
    rows = [
        QualityRow(
            window=row.window,
            scorer=SCORER_NAMES.get(row.scorer, "model"),
            model_version=row.model_version,
            labelled=row.figures.labelled_events,
            true_positives=row.figures.true_positives,
            false_positives=row.figures.false_positives,
            true_negatives=row.figures.true_negatives,
            false_negatives=row.figures.false_negatives,
            precision=row.figures.precision,
            recall=row.figures.recall,
            f1=row.figures.f1,
            brier_score=row.figures.brier_score,
        )
        for row in live_quality
    ]
    return sorted(rows, key=lambda row: (_window_order(row.window, QUALITY_WINDOWS), row.scorer != "model"))


def quality_chart(rows: Sequence[QualityRow], card: scoring_pb2.QualityFigures) -> charts.Chart:
    """Precision, recall and F1 side by side per window and scorer, then the card's held-out figures
    as the reference group. A row without labelled events draws no bars and reads as "none"."""
    groups: list[tuple[str, tuple[float, float, float] | None]] = [
        (row.label, (row.precision, row.recall, row.f1) if row.labelled else None) for row in rows
    ]
    groups.append((CARD_GROUP, (card.precision, card.recall, card.f1)))
    plot_height = charts.HEIGHT - charts.MARGIN_BOTTOM - charts.MARGIN_TOP
    slot = (charts.WIDTH - charts.MARGIN_LEFT) / len(groups)
    bar = slot * 0.7 / len(QUALITY_SERIES)
    rects, axis, parts = [], [], []
    for position, (label, values) in enumerate(groups):
        x = charts.MARGIN_LEFT + position * slot + slot * 0.15
        axis.append(charts.AxisLabel(charts.MARGIN_LEFT + position * slot + slot / 2, label))
        if values is None:
            parts.append(f"{label}: none (no labelled events)")
            continue
        for index, ((_, name), value) in enumerate(zip(QUALITY_SERIES, values, strict=True)):
            height = plot_height * min(max(value, 0.0), 1.0)
            rects.append(
                charts.Rect(
                    x + index * bar,
                    charts.MARGIN_TOP + plot_height - height,
                    bar,
                    height,
                    f"series-{index}",
                    f"{label} {name}: {value:.3f}",
                )
            )
        figures = ", ".join(
            f"{name} {value:.3f}" for (_, name), value in zip(QUALITY_SERIES, values, strict=True)
        )
        parts.append(f"{label}: {figures}")
    ticks = tuple(
        charts.Tick(y=charts.MARGIN_TOP + plot_height * (1 - fraction), label=f"{fraction:g}")
        for fraction in (0.0, 0.5, 1.0)
    )
    return charts.Chart(
        title="Precision, recall and F1 on labelled events, beside the card's",
        summary="; ".join(parts) + ".",
        rects=tuple(rects),
        ticks=ticks,
        axis=tuple(axis),
        legend=tuple(
            charts.LegendEntry(name, f"series-{index}") for index, (_, name) in enumerate(QUALITY_SERIES)
        ),
        # The card's group alone is no live figure.
        empty=not any(row.labelled for row in rows),
    )


# --- reliability ----------------------------------------------------------------------------------

RELIABILITY_SIZE: Final = 320
RELIABILITY_MARGIN: Final = 40


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float
    tooltip: str


@dataclass(frozen=True, slots=True)
class AxisTick:
    """A tick on both axes of a square chart: ``position`` along the axis, ``label`` its value."""

    position: float
    label: str


@dataclass(frozen=True, slots=True)
class CalibrationRow:
    lower: float
    upper: float
    events: int
    mean_score: float | None  # None: no event in the bin
    observed_rate: float | None


@dataclass(frozen=True)
class ReliabilityChart:
    """Mean score (x) against the share labelled risky (y) per score bin, with the diagonal a
    perfectly calibrated model would follow."""

    title: str
    summary: str
    points: tuple[Point, ...]
    ticks: tuple[AxisTick, ...]
    size: int = RELIABILITY_SIZE
    margin: int = RELIABILITY_MARGIN

    @property
    def empty(self) -> bool:
        return not self.points

    @property
    def plot_size(self) -> int:
        return self.size - 2 * self.margin

    @property
    def left(self) -> int:
        return self.margin

    @property
    def right(self) -> int:
        return self.size - self.margin

    @property
    def top(self) -> int:
        return self.margin

    @property
    def bottom(self) -> int:
        return self.size - self.margin

    @property
    def path(self) -> str:
        """The points joined in order, as an SVG polyline's ``points``."""
        return " ".join(f"{point.x:.1f},{point.y:.1f}" for point in self.points)


def calibration_rows(bins: Iterable[scoring_pb2.CalibrationBin]) -> list[CalibrationRow]:
    return [
        CalibrationRow(
            lower=item.lower,
            upper=item.upper,
            events=item.events,
            mean_score=item.mean_score if item.events else None,
            observed_rate=item.observed_rate if item.events else None,
        )
        for item in bins
    ]


def reliability_chart(rows: Sequence[CalibrationRow], window: str = CALIBRATION_WINDOW) -> ReliabilityChart:
    """The bins that hold events, as points on the unit square (y grows upwards)."""
    plot = RELIABILITY_SIZE - 2 * RELIABILITY_MARGIN
    points, parts = [], []
    for row in sorted(rows, key=lambda row: row.lower):
        if row.mean_score is None or row.observed_rate is None:
            continue
        bin_name = f"scores {row.lower:.1f} to {row.upper:.1f}"
        text = (
            f"{bin_name}: {row.events:,} events, mean score {row.mean_score:.3f}, "
            f"observed rate {row.observed_rate:.3f}"
        )
        points.append(
            Point(
                x=RELIABILITY_MARGIN + plot * min(max(row.mean_score, 0.0), 1.0),
                y=RELIABILITY_MARGIN + plot * (1 - min(max(row.observed_rate, 0.0), 1.0)),
                tooltip=text,
            )
        )
        parts.append(text)
    ticks = tuple(AxisTick(plot * fraction, f"{fraction:g}") for fraction in (0.0, 0.5, 1.0))
    summary = (
        "; ".join(parts) + ". A perfectly calibrated model lies on the diagonal."
        if parts
        else "no labelled events"
    )
    return ReliabilityChart(
        title=f"Reliability over {window}: mean score against the share labelled risky",
        summary=summary,
        points=tuple(points),
        ticks=ticks,
    )


def calibration_of(live_quality: Iterable[scoring_pb2.LiveQuality]) -> list[CalibrationRow]:
    """The model's own reliability bins over the calibration window (none when it has no labels)."""
    for row in live_quality:
        if row.window == CALIBRATION_WINDOW and row.scorer == LiveQuality.SCORER_MODEL:
            return calibration_rows(row.figures.calibration) if row.figures.labelled_events else []
    return []


# --- drift ----------------------------------------------------------------------------------------

# Wider than the other charts: it takes the page's width, its table below it.
PSI_WIDTH: Final = 900
PSI_LABELS: Final = 224  # room for the longest feature name at the chart's font size
PSI_VALUE_ROOM: Final = 96  # right of the plot: a bar's value and level
PSI_AXIS_END: Final = 1.0
PSI_ROW: Final = 20
PSI_TOP: Final = 22  # the thresholds' labels
PSI_BOTTOM: Final = 24  # the value axis


@dataclass(frozen=True, slots=True)
class FeatureRow:
    feature: str
    psi: float | None
    level: str  # stable, watch or act; empty without a PSI


@dataclass(frozen=True, slots=True)
class HorizontalBar:
    label: str
    y: float
    width: float
    css_class: str
    value_text: str
    tooltip: str


@dataclass(frozen=True, slots=True)
class Threshold:
    x: float
    label: str


@dataclass(frozen=True)
class PsiChart:
    """PSI per feature as horizontal bars, largest first, with the watch and act thresholds."""

    title: str
    summary: str
    bars: tuple[HorizontalBar, ...]
    thresholds: tuple[Threshold, ...]
    ticks: tuple[Threshold, ...]
    height: int
    width: int = PSI_WIDTH
    left: int = PSI_LABELS
    row: int = PSI_ROW
    top: int = PSI_TOP

    @property
    def right(self) -> int:
        return self.width - PSI_VALUE_ROOM

    @property
    def bottom(self) -> int:
        return self.height - PSI_BOTTOM

    @property
    def empty(self) -> bool:
        return not self.bars


@dataclass(frozen=True)
class DriftView:
    """One drift window: its reading, and the chart when there is one."""

    window: str
    events: int
    score_psi: float | None
    score_level: str
    features: tuple[FeatureRow, ...]  # largest PSI first; those without one last, by name
    chart: PsiChart | None

    @property
    def name(self) -> str:
        return DRIFT_WINDOW_NAMES.get(self.window, self.window)

    @property
    def measured(self) -> bool:
        return self.chart is not None


def level_of(psi: float) -> str:
    """The level docs/model-monitoring.md gives a PSI (used only when scoring sent none)."""
    if psi >= ACT_THRESHOLD:
        return "act"
    return "watch" if psi >= WATCH_THRESHOLD else "stable"


def _psi_scale(largest: float) -> float:
    """The value axis' end: 0.5 while every PSI fits, else 1. A PSI can reach 5 or more, and on such
    a scale the thresholds that matter (0.1, 0.25) would sit on top of each other; a longer bar is
    cut at 1 and its value written beside it."""
    return 0.5 if largest <= 0.5 else PSI_AXIS_END


def psi_chart(window: str, features: Sequence[FeatureRow]) -> PsiChart:
    measured = [(row, row.psi) for row in features if row.psi is not None]
    name = DRIFT_WINDOW_NAMES.get(window, window)
    largest = max((psi for _, psi in measured), default=0.0)
    scale = _psi_scale(largest)
    cut = largest > scale
    plot_width = PSI_WIDTH - PSI_LABELS - PSI_VALUE_ROOM

    def at(value: float) -> float:
        return PSI_LABELS + plot_width * min(value, scale) / scale

    bars = []
    for position, (row, psi) in enumerate(measured):
        level = row.level or level_of(psi)
        bars.append(
            HorizontalBar(
                label=row.feature,
                y=PSI_TOP + position * PSI_ROW,
                width=at(psi) - PSI_LABELS,
                css_class=LEVEL_CLASSES.get(level, "series-5"),
                value_text=f"{psi:.3f} {level}",
                tooltip=f"{row.feature}: PSI {psi:.3f}, {level}",
            )
        )
    height = PSI_TOP + max(len(bars), 1) * PSI_ROW + PSI_BOTTOM
    summary = "; ".join(f"{bar.label} {bar.value_text}" for bar in bars)
    return PsiChart(
        title=f"Input drift over {name}: PSI per feature, largest first",
        summary=(summary or "no reading")
        + f". Thresholds: {WATCH_THRESHOLD:g} watch, {ACT_THRESHOLD:g} act.",
        bars=tuple(bars),
        thresholds=(
            Threshold(at(WATCH_THRESHOLD), f"{WATCH_THRESHOLD:g} watch"),
            Threshold(at(ACT_THRESHOLD), f"{ACT_THRESHOLD:g} act"),
        ),
        ticks=(
            Threshold(at(0.0), "0"),
            Threshold(at(scale / 2), f"{scale / 2:g}"),
            Threshold(at(scale), f"{scale:g}+" if cut else f"{scale:g}"),
        ),
        height=height,
    )


def drift_views(drift: Iterable[scoring_pb2.DriftWindow]) -> list[DriftView]:
    """Each window's reading, the longest first; a chart only for a window with a PSI."""
    views = []
    for window in drift:
        features = [
            FeatureRow(item.feature, item.psi if item.HasField("psi") else None, item.level)
            for item in window.features
        ]
        features.sort(key=lambda row: (row.psi is None, -(row.psi or 0.0), row.feature))
        score_psi = window.score_psi if window.HasField("score_psi") else None
        measured = score_psi is not None or any(row.psi is not None for row in features)
        views.append(
            DriftView(
                window=window.window,
                events=window.events,
                score_psi=score_psi,
                score_level=window.score_level or ("" if score_psi is None else level_of(score_psi)),
                features=tuple(features),
                chart=psi_chart(window.window, features) if measured else None,
            )
        )
    return sorted(views, key=lambda view: _window_order(view.window, DRIFT_WINDOWS))


def no_drift_reason(status: int) -> str:
    """Why the health answer holds no drift reading, in a sentence."""
    if status != scoring_pb2.Model.STATUS_CHAMPION:
        return (
            "Input drift is measured only for the champion, on the events it scores; "
            "this model is not the champion."
        )
    return (
        "No drift reading: this champion's model card holds no training distribution to compare "
        "with (it was trained before drift monitoring), or the scoring replica that answered does "
        "not serve it yet."
    )


def unmeasured_reason(view: DriftView) -> str:
    """Why one window has no PSI."""
    return (
        f"No reading over {view.name}: {view.events:,} events scored, and a PSI needs at least "
        f"{MIN_DRIFT_EVENTS} (with fewer it is mostly sampling noise)."
    )


# --- promotion decisions --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecisionRow:
    decide_time: timestamp_pb2.Timestamp
    outcome: str  # promoted or kept
    champion_version: str
    reason: str
    labelled: int
    challenger_f1: str
    champion_f1: str
    interval: str  # the 95 % CI of the F1 difference, challenger minus champion
    decider: str


def decision_rows(decisions: Iterable[scoring_pb2.PromotionDecision]) -> list[DecisionRow]:
    """The decisions as the service lists them (newest first)."""
    return [
        DecisionRow(
            decide_time=decision.decide_time,
            outcome=OUTCOMES.get(decision.outcome, "unknown"),
            champion_version=decision.champion_version,
            reason=decision.reason,
            labelled=decision.labelled_events,
            challenger_f1=figure(decision.challenger_f1) if decision.labelled_events else "—",
            champion_f1=figure(decision.champion_f1) if decision.labelled_events else "—",
            interval=(
                f"[{decision.f1_difference_lower:+.3f}, {decision.f1_difference_upper:+.3f}]"
                if decision.labelled_events
                else "—"
            ),
            decider=decision.decider,
        )
        for decision in decisions
    ]


# --- the page -------------------------------------------------------------------------------------


def page(
    version: str,
    health: scoring_pb2.ModelHealth | str,
    decisions: scoring_pb2.ListPromotionDecisionsResponse | str,
) -> dict[str, Any]:
    """The health page's template context (but the module itself, ``domain``) from its two answers;
    a string is why one is unavailable, and the sections that need it say so while the others show."""
    context: dict[str, Any] = {
        "version": version,
        "health": None,
        "health_unavailable": health if isinstance(health, str) else "",
        "decisions": None,
        "more_decisions": False,
        "decisions_unavailable": decisions if isinstance(decisions, str) else "",
    }
    if not isinstance(health, str):
        rows = quality_rows(health.live_quality)
        calibration = calibration_of(health.live_quality)
        context.update(
            health=health,
            state=status_name(health.status),
            quality=rows,
            quality_chart=quality_chart(rows, health.card),
            calibration=calibration,
            reliability_chart=reliability_chart(calibration),
            drift=drift_views(health.drift),
        )
    if not isinstance(decisions, str):
        context.update(
            decisions=decision_rows(decisions.promotion_decisions),
            more_decisions=bool(decisions.next_page_token),
        )
    return context
