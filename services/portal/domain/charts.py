"""Charts as geometry for server-rendered SVG: they draw without JavaScript and without inline
styles (colours come from CSS classes), and each carries a text summary for screen readers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

WIDTH: Final = 640
HEIGHT: Final = 240
MARGIN_LEFT: Final = 44
MARGIN_BOTTOM: Final = 36
MARGIN_TOP: Final = 12
MAX_SERIES: Final = 6  # the largest series get a colour each; the rest are summed as "other"


@dataclass(frozen=True, slots=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    css_class: str
    tooltip: str


@dataclass(frozen=True, slots=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True, slots=True)
class AxisLabel:
    x: float
    label: str


@dataclass(frozen=True, slots=True)
class LegendEntry:
    label: str
    css_class: str


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    summary: str
    rects: tuple[Rect, ...]
    ticks: tuple[Tick, ...]
    axis: tuple[AxisLabel, ...]
    legend: tuple[LegendEntry, ...]
    width: int = WIDTH
    height: int = HEIGHT
    empty: bool = False

    @property
    def baseline(self) -> float:
        return self.height - MARGIN_BOTTOM

    @property
    def left(self) -> int:
        return MARGIN_LEFT


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (at least 1)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def _ticks(top: int, plot_height: float) -> tuple[Tick, ...]:
    return tuple(
        Tick(y=MARGIN_TOP + plot_height * (1 - fraction), label=f"{round(top * fraction):,}")
        for fraction in (0.0, 0.5, 1.0)
    )


def bar_chart(
    title: str,
    items: Sequence[tuple[str, int]],
    *,
    css_classes: Sequence[str] | None = None,
    unit: str = "events",
) -> Chart:
    """One bar per item, in the given order."""
    plot_height = HEIGHT - MARGIN_BOTTOM - MARGIN_TOP
    top = _nice_ceiling(max((value for _, value in items), default=0))
    slot = (WIDTH - MARGIN_LEFT) / max(len(items), 1)
    rects, axis = [], []
    for position, (label, value) in enumerate(items):
        height = plot_height * value / top
        css = css_classes[position] if css_classes else "series-0"
        x = MARGIN_LEFT + position * slot
        rects.append(
            Rect(
                x + slot * 0.15,
                MARGIN_TOP + plot_height - height,
                slot * 0.7,
                height,
                css,
                f"{label}: {value:,}",
            )
        )
        axis.append(AxisLabel(x + slot / 2, label))
    summary = "; ".join(f"{label}: {value:,} {unit}" for label, value in items) or f"no {unit}"
    return Chart(
        title=title,
        summary=summary,
        rects=tuple(rects),
        ticks=_ticks(top, plot_height),
        axis=tuple(axis),
        legend=(),
        empty=not any(value for _, value in items),
    )


def stacked_by_day(title: str, days: Sequence[str], points: Iterable[tuple[str, str]]) -> Chart:
    """Stacked bars per day; ``points`` are (day, series) pairs, one per event."""
    counts = Counter(points)
    totals = Counter(series for _, series in counts.elements())
    kept = MAX_SERIES if len(totals) <= MAX_SERIES else MAX_SERIES - 1
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    named = [series for series, _ in ranked[:kept]]
    per_day: dict[str, Counter[str]] = {day: Counter() for day in days}
    for (day, series), count in counts.items():
        if day in per_day:
            per_day[day][series if series in named else "other"] += count
    order = [*named, *(["other"] if any(s not in named for s in totals) else [])]
    classes = {series: f"series-{index}" for index, series in enumerate(order)}
    plot_height = HEIGHT - MARGIN_BOTTOM - MARGIN_TOP
    top = _nice_ceiling(max((sum(c.values()) for c in per_day.values()), default=0))
    slot = (WIDTH - MARGIN_LEFT) / max(len(days), 1)
    rects, axis = [], []
    for position, day in enumerate(days):
        x = MARGIN_LEFT + position * slot
        y: float = MARGIN_TOP + plot_height
        for series in order:
            value = per_day[day][series]
            if not value:
                continue
            height = plot_height * value / top
            y -= height
            rects.append(
                Rect(x + slot * 0.15, y, slot * 0.7, height, classes[series], f"{day} {series}: {value:,}")
            )
        # Every other day is labelled when there are many, so the labels stay readable.
        if len(days) <= 8 or position % 2 == 0:
            axis.append(AxisLabel(x + slot / 2, day[5:]))
    day_totals = ", ".join(f"{day}: {sum(per_day[day].values()):,}" for day in days)
    by_series = ", ".join(f"{series} {totals[series]:,}" for series in named)
    summary = f"Events per day. {day_totals}. By type: {by_series or 'none'}."
    return Chart(
        title=title,
        summary=summary,
        rects=tuple(rects),
        ticks=_ticks(top, plot_height),
        axis=tuple(axis),
        legend=tuple(LegendEntry(series, classes[series]) for series in order),
        empty=not counts,
    )
