"""The weekly report (``domain/report.py``) as HTML, PDF or CSV bytes.

Pure rendering: no I/O besides reading the templates beside this module. The same report gives
the same bytes in every format (on one machine: the PDF embeds subsets of the installed fonts),
because an issued report is evidence whose SHA-256 is time-stamped and logged.

matplotlib and WeasyPrint are imported on first use, not at import: both are heavy, matplotlib
reads its configuration and font cache on import, and WeasyPrint loads Pango."""

from __future__ import annotations

import base64
import csv
import functools
import io
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import jinja2

from services.analytics.domain.report import DepartmentRow, RiskRow, ViolationRow, WeeklyRate, WeeklyReport

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.typing import RcKeyType

REPORT_FORMATS: Final = ("html", "pdf", "csv")
_MEDIA_TYPES: Final = {
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
    "csv": "text/csv; charset=utf-8",
}
TEMPLATES: Final = Path(__file__).resolve().parent / "templates"

# Severity names as policies and scoring use them, most severe first; others sort after.
_SEVERITY_ORDER: Final = ("CRITICAL", "HIGH", "MEDIUM", "LOW")
_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Okabe-Ito colours: distinguishable with every common colour-vision deficiency.
_CLICKED: Final = "#d55e00"
_SUBMITTED: Final = "#cc79a7"
_REPORTED: Final = "#0072b2"
_INK: Final = "#1a1f2b"
_RULE: Final = "#c9ced6"
_CHART_WIDTH_IN: Final = 7.0
_CHART_DPI: Final = 96  # the <img> width and height attributes, in CSS pixels
_LABEL_CHARS: Final = 32
# Fixed chart settings: a salt for the SVG's ids (else random), glyphs as paths (no font needed
# where the SVG is shown), and no mathtext, so that a "$" in a campaign id is just a character.
_CHART_RC: Final[dict[RcKeyType, Any]] = {
    "svg.hashsalt": "awareness-weekly-report",
    "svg.fonttype": "path",
    "text.parse_math": False,
    "font.family": "DejaVu Sans",
    "font.size": 8.5,
    "axes.edgecolor": _RULE,
    "axes.labelcolor": _INK,
    "xtick.color": _INK,
    "ytick.color": _INK,
    "text.color": _INK,
}
# rcParams are process-global: one chart at a time, so that no other thread's settings leak in.
_CHART_LOCK: Final = threading.Lock()


def media_type(fmt: str) -> str:
    """The Content-Type of a report rendered as ``fmt`` (one of REPORT_FORMATS)."""
    try:
        return _MEDIA_TYPES[fmt]
    except KeyError:
        raise ValueError(f"unknown report format {fmt!r}; one of {', '.join(REPORT_FORMATS)}") from None


def file_name(report: WeeklyReport, fmt: str) -> str:
    """``awareness-report-2026-W48.pdf``: a download's name."""
    media_type(fmt)
    return f"awareness-report-{report.week}.{fmt}"


def render(report: WeeklyReport, fmt: str) -> bytes:
    """``report`` as ``fmt``: "html", "pdf" or "csv"."""
    renderers: dict[str, Callable[[WeeklyReport], bytes]] = {
        "html": render_html,
        "pdf": render_pdf,
        "csv": render_csv,
    }
    media_type(fmt)
    return renderers[fmt](report)


# --- HTML -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Chart:
    data_uri: str
    alt: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class _Change:
    text: str
    tone: str  # "good", "bad" or "" (a CSS class)


def render_html(report: WeeklyReport) -> bytes:
    """One self-contained HTML document (styles and charts inline), UTF-8."""
    template = _environment().get_template("report.html")
    this_week, previous = report.this_week, report.previous_week
    text = template.render(
        report=report,
        this_week=this_week,
        click_change=_change(this_week, previous, "click_rate", lower_is_better=True),
        report_change=_change(this_week, previous, "report_rate", lower_is_better=False),
        departments=ranked_departments(report.departments),
        violations=ranked_violations(report.violations),
        riskiest=ranked_risk(report.riskiest),
        funnel_chart=_funnel_chart(report) if report.funnels else None,
        trend_chart=_trend_chart(report.trend) if report.trend else None,
    )
    return text.encode("utf-8")


@functools.cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(count=_count, pct=_pct, score=_score, day=_day, utc=_utc, w3c=_w3c)
    return environment


def ranked_departments(rows: Iterable[DepartmentRow]) -> tuple[DepartmentRow, ...]:
    """Highest click rate first (ties by name); suppressed departments last, by name."""
    shown = sorted((row for row in rows if not row.suppressed), key=lambda r: (-r.click_rate, r.department))
    hidden = sorted((row for row in rows if row.suppressed), key=lambda r: r.department)
    return (*shown, *hidden)


def ranked_violations(rows: Iterable[ViolationRow]) -> tuple[ViolationRow, ...]:
    """Most severe first, then most events, then by policy."""

    def rank(row: ViolationRow) -> tuple[int, int, str]:
        severity = row.severity.upper()
        order = _SEVERITY_ORDER.index(severity) if severity in _SEVERITY_ORDER else len(_SEVERITY_ORDER)
        return order, -row.events, row.policy

    return tuple(sorted(rows, key=rank))


def ranked_risk(rows: Iterable[RiskRow]) -> tuple[RiskRow, ...]:
    """Highest score first (ties by pseudonym)."""
    return tuple(sorted(rows, key=lambda r: (-r.score, r.pseudonym)))


def _count(value: int) -> str:
    return f"{value:,}"


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def _score(value: float) -> str:
    return f"{value:.1f}"


def _day(value: date) -> str:
    # Not strftime: its names follow the process locale, and the bytes must not.
    return f"{_DAYS[value.weekday()]} {value.day} {_MONTHS[value.month - 1]} {value.year}"


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _w3c(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _change(
    this_week: WeeklyRate | None, previous: WeeklyRate | None, rate: str, *, lower_is_better: bool
) -> _Change:
    if this_week is None or previous is None:
        return _Change("no earlier week to compare", "")
    delta: float = getattr(this_week, rate) - getattr(previous, rate)
    points = round(delta * 100, 1)
    if points == 0:
        return _Change(f"unchanged from {previous.week}", "")
    better = (points < 0) == lower_is_better
    sign = "+" if points > 0 else "\u2212"
    return _Change(f"{sign}{abs(points):.1f} pp from {previous.week}", "good" if better else "bad")


# --- charts -----------------------------------------------------------------------------------


def _label(text: str) -> str:
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "\u2026"


def _draw(height_in: float, draw: Callable[[Figure], None]) -> tuple[bytes, int, int]:
    """An SVG of ``draw``'s figure, the same bytes for the same input."""
    import matplotlib
    from matplotlib.figure import Figure

    with _CHART_LOCK, matplotlib.rc_context(_CHART_RC):
        # Figure, not pyplot: no global figure manager, no GUI backend.
        figure = Figure(figsize=(_CHART_WIDTH_IN, height_in), dpi=_CHART_DPI, layout="constrained")
        draw(figure)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return buffer.getvalue(), round(_CHART_WIDTH_IN * _CHART_DPI), round(height_in * _CHART_DPI)


def _data_uri(svg: bytes) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


def _funnel_chart(report: WeeklyReport) -> _Chart:
    rows = report.funnels
    series = (
        ("Clicked", _CLICKED, [row.click_rate for row in rows]),
        ("Submitted data", _SUBMITTED, [row.submit_rate for row in rows]),
        ("Reported", _REPORTED, [row.report_rate for row in rows]),
    )
    bar = 0.26

    def draw(figure: Figure) -> None:
        axes = figure.add_subplot()
        positions = range(len(rows))
        for index, (name, colour, values) in enumerate(series):
            axes.barh(
                [p + (index - 1) * bar for p in positions],
                [value * 100 for value in values],
                height=bar,
                color=colour,
                label=name,
            )
        axes.set_yticks(list(positions), labels=[_label(row.campaign_id) for row in rows])
        axes.invert_yaxis()  # the table's order, top to bottom
        top = max(max(values) for _, _, values in series) * 100
        axes.set_xlim(0, min(100, max(10, math.ceil(top / 10) * 10)))
        axes.set_xlabel("% of e-mails sent")
        axes.xaxis.grid(True, color=_RULE, linewidth=0.6)
        axes.set_axisbelow(True)
        axes.tick_params(axis="y", length=0)
        for side in ("top", "right"):
            axes.spines[side].set_visible(False)
        axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=3, frameon=False)

    svg, width, height = _draw(0.9 + 0.22 * len(rows), draw)
    worst = max(rows, key=lambda row: (row.click_rate, row.campaign_id))
    best = max(rows, key=lambda row: (row.report_rate, row.campaign_id))
    alt = (
        f"Bar chart of {len(rows)} campaigns: the share of e-mails clicked, leading to submitted "
        f"data and reported. Highest click rate: {worst.campaign_id} at "
        f"{_pct(worst.click_rate)}. Highest report rate: {best.campaign_id} at {_pct(best.report_rate)}. "
        "Every figure is in the table above."
    )
    return _Chart(_data_uri(svg), alt, width, height)


def _trend_chart(trend: Sequence[WeeklyRate]) -> _Chart:
    weeks = [rate.week for rate in trend]

    def draw(figure: Figure) -> None:
        axes = figure.add_subplot()
        clicks = [rate.click_rate * 100 for rate in trend]
        reports = [rate.report_rate * 100 for rate in trend]
        axes.plot(weeks, clicks, color=_CLICKED, marker="o", linewidth=2, label="Click rate")
        axes.plot(
            weeks, reports, color=_REPORTED, marker="s", linestyle="--", linewidth=2, label="Report rate"
        )
        top = max(10.0, max(clicks + reports) * 1.25)
        axes.set_ylim(0, top)
        for x, (click, report) in enumerate(zip(clicks, reports, strict=True)):
            # A week's higher point is labelled above, its lower one below (unless near the axis):
            # the two labels never collide.
            for value, colour, higher in (
                (click, _CLICKED, click > report),
                (report, _REPORTED, report >= click),
            ):
                above = higher or value < 0.15 * top
                axes.annotate(
                    f"{value:.1f}%",
                    (x, value),
                    textcoords="offset points",
                    xytext=(0, 7 if above else -13),
                    ha="center",
                    fontsize=7.5,
                    color=colour,
                )
        axes.set_ylabel("% of e-mails sent")
        axes.yaxis.grid(True, color=_RULE, linewidth=0.6)
        axes.set_axisbelow(True)
        axes.tick_params(axis="x", length=0)
        for side in ("top", "right"):
            axes.spines[side].set_visible(False)
        axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False)

    svg, width, height = _draw(2.4, draw)
    first, last = trend[0], trend[-1]
    alt = (
        f"Line chart by week from {first.week} to {last.week}. Click rate went from "
        f"{_pct(first.click_rate)} to {_pct(last.click_rate)}; report rate from "
        f"{_pct(first.report_rate)} to {_pct(last.report_rate)}. Every figure is in the table above."
    )
    return _Chart(_data_uri(svg), alt, width, height)


# --- PDF --------------------------------------------------------------------------------------


def render_pdf(report: WeeklyReport) -> bytes:
    """The HTML printed on A4 by WeasyPrint, text as text (``pdftotext`` reads the figures),
    tagged for screen readers. Its metadata carries the report's title and ``generated_at`` as
    creation date, and no random identifier: the same report gives the same bytes."""
    import weasyprint

    # Everything is inline: no URL but data: is ever fetched (no file, no network).
    fetcher = weasyprint.URLFetcher(allowed_protocols={"data"})
    document = weasyprint.HTML(string=render_html(report).decode("utf-8"), url_fetcher=fetcher)
    pdf: bytes = document.write_pdf(pdf_tags=True)
    return pdf


# --- CSV --------------------------------------------------------------------------------------


def render_csv(report: WeeklyReport) -> bytes:
    """One CSV: the first column names the section; a row whose first cell is ``section`` is the
    header of the rows after it. Counts are integers, rates decimals with 4 places, times ISO 8601
    in UTC. Sections: report, funnel, trend, department, training, violation, risk, model, log."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for build in _CSV_SECTIONS:
        name, header, rows = build(report)
        writer.writerow(["section", *header])
        writer.writerows([name, *(_cell(value) for value in row)] for row in rows)
    return buffer.getvalue().encode("utf-8")


_CsvSection = tuple[str, Sequence[str], Iterable[Sequence[object]]]


def _csv_report(report: WeeklyReport) -> _CsvSection:
    when = (
        report.week,
        report.start.isoformat(),
        report.end.isoformat(),
        _w3c(report.generated_at),
        report.k,
    )
    return "report", ("week", "start", "end", "generated_at", "k"), [when]


def _csv_funnel(report: WeeklyReport) -> _CsvSection:
    header = ("campaign_id", "sent", "opened", "clicked", "submitted", "reported")
    rates = ("click_rate", "submit_rate", "report_rate")
    rows = (
        (
            r.campaign_id,
            r.sent,
            r.opened,
            r.clicked,
            r.submitted,
            r.reported,
            _rate(r.click_rate),
            _rate(r.submit_rate),
            _rate(r.report_rate),
        )
        for r in report.funnels
    )
    return "funnel", header + rates, rows


def _csv_trend(report: WeeklyReport) -> _CsvSection:
    rows = (
        (r.week, r.sent, r.clicked, r.reported, _rate(r.click_rate), _rate(r.report_rate))
        for r in report.trend
    )
    return "trend", ("week", "sent", "clicked", "reported", "click_rate", "report_rate"), rows


def _csv_departments(report: WeeklyReport) -> _CsvSection:
    header = (
        "rank",
        "department",
        "people",
        "click_rate",
        "report_rate",
        "training_completion",
        "suppressed",
    )
    # A suppressed department keeps its name and loses every figure, its size included.
    rows = (
        ("", r.department, "", "", "", "", "true")
        if r.suppressed
        else (
            rank,
            r.department,
            r.people,
            _rate(r.click_rate),
            _rate(r.report_rate),
            _rate(r.training_completion),
            "false",
        )
        for rank, r in enumerate(ranked_departments(report.departments), start=1)
    )
    return "department", header, rows


def _csv_training(report: WeeklyReport) -> _CsvSection:
    rows = (
        (r.module, r.assigned, r.completed, r.overdue, _rate(r.completion_rate), _rate(r.overdue_rate))
        for r in report.training
    )
    return "training", ("module", "assigned", "completed", "overdue", "completion_rate", "overdue_rate"), rows


def _csv_violations(report: WeeklyReport) -> _CsvSection:
    rows = ((r.policy, r.severity, r.events) for r in ranked_violations(report.violations))
    return "violation", ("policy", "severity", "events"), rows


def _csv_risk(report: WeeklyReport) -> _CsvSection:
    rows = (
        (rank, r.pseudonym, f"{r.score:.2f}", r.level, r.top_factor)
        for rank, r in enumerate(ranked_risk(report.riskiest), start=1)
    )
    return "risk", ("rank", "pseudonym", "score", "level", "top_factor"), rows


def _csv_model(report: WeeklyReport) -> _CsvSection:
    """One row for the champion (window empty: card F1, drift, note), then one per live quality row."""
    model = report.model
    header = (
        "champion_version",
        "window",
        "scores_of",
        "labelled",
        "precision",
        "recall",
        "f1",
        "card_f1",
        "drift_psi",
        "drift_on",
        "note",
    )
    card = "" if model.card_f1 is None else f"{model.card_f1:.4f}"
    psi = "" if model.drift_psi is None else f"{model.drift_psi:.4f}"
    rows: list[tuple[object, ...]] = [
        (model.champion_version, "", "", "", "", "", "", card, psi, model.drift_on, model.note)
    ]
    rows += [
        (
            model.champion_version,
            row.window,
            f"{row.model_version} (challenger)" if row.challenger else row.model_version,
            row.labelled,
            f"{row.precision:.4f}",
            f"{row.recall:.4f}",
            f"{row.f1:.4f}",
            "",
            "",
            "",
            "",
        )
        for row in model.live
    ]
    return "model", header, rows


def _csv_log(report: WeeklyReport) -> _CsvSection:
    log = report.log_state
    row = (
        log.size,
        log.checkpoint_size,
        _w3c(log.checkpoint_time) if log.checkpoint_time else "",
        log.root_hash_hex,
        "true" if log.verified else "false",
        log.note,
    )
    return "log", ("size", "checkpoint_size", "checkpoint_time", "root_hash_hex", "verified", "note"), [row]


_CSV_SECTIONS: tuple[Callable[[WeeklyReport], _CsvSection], ...] = (
    _csv_report,
    _csv_funnel,
    _csv_trend,
    _csv_departments,
    _csv_training,
    _csv_violations,
    _csv_risk,
    _csv_model,
    _csv_log,
)


def _rate(value: float) -> str:
    return f"{value:.4f}"


def _cell(value: object) -> str:
    text = str(value)
    # A text cell that a spreadsheet would run as a formula (=, +, -, @, tab, CR) gets a leading
    # apostrophe (the OWASP advice); figures are never negative, so only names are touched.
    if isinstance(value, str) and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text
