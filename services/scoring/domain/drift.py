"""Input drift: the training data's binned distribution and the population stability index (PSI).

At training, every feature column and the model's score are cut into bins and the share of training rows
in each bin is kept in the model card (``training_distribution``). In service, live rows are counted into
the same bins, and ``psi`` compares the two:

    PSI = sum over bins of (a - e) * ln(a / e)

with ``e`` the training share and ``a`` the live share of a bin. A share of 0 is replaced by
``PSI_EPSILON`` on either side first, so ln never sees 0: a bin empty in both adds nothing, and a bin
that training never filled (an unseen category) adds about ``a * ln(a / PSI_EPSILON)``, i.e. 0.5 of the
live rows in an unseen category alone gives PSI 4.3.

Bins. The categorical columns (event type, source) and the booleans get one bin per value seen in
training plus a catch-all for anything else. Every other column gets quantile bins: the deciles of the
training values, taken as observed values and de-duplicated, as upper bounds ``(-inf, e0], (e0, e1], ...,
(e_last, +inf)``; the two end bins are open, so a live value beyond the training range still lands
somewhere. Ties collapse edges, so a count that is mostly 0 gets fewer, wider bins, and a small ordinal
(severity, day of week) ends up with about one bin per value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from services.scoring.domain.features import CATEGORICAL_CARDINALITIES, FEATURE_NAMES

# The usual reading of PSI: below 0.1 nothing to see, 0.1 to 0.25 watch, from 0.25 act (retrain).
WATCH_THRESHOLD: Final = 0.1
ACT_THRESHOLD: Final = 0.25
LEVEL_STABLE: Final = "stable"
LEVEL_WATCH: Final = "watch"
LEVEL_ACT: Final = "act"

# The share an empty bin counts as, one row in ten thousand: small enough that an empty-on-both-sides bin
# or a rare training category costs nothing visible, large enough that an unseen category is not infinite.
PSI_EPSILON: Final = 1e-4
QUANTILE_BINS: Final = 10

KIND_CATEGORICAL: Final = "categorical"
KIND_QUANTILE: Final = "quantile"
DISTRIBUTION_SCHEMA: Final = "awareness.scoring.training-distribution/v1"
CARD_SECTION: Final = "training_distribution"
SCORE: Final = "score"  # the score's key in BatchBinner.slices and .expected

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class DistributionFormatError(ValueError):
    """A model card's training distribution cannot be read (wrong schema, features or bin layout)."""


def level(psi_value: float) -> str:
    """``stable`` below WATCH_THRESHOLD, ``watch`` below ACT_THRESHOLD, ``act`` from there."""
    if psi_value >= ACT_THRESHOLD:
        return LEVEL_ACT
    if psi_value >= WATCH_THRESHOLD:
        return LEVEL_WATCH
    return LEVEL_STABLE


def psi(expected: Sequence[float] | FloatArray, actual_counts: Sequence[float] | npt.NDArray[Any]) -> float:
    """PSI of live bin counts against training shares (same bins, same order); 0 when nothing is live."""
    expected_share = np.asarray(expected, dtype=np.float64)
    counts = np.asarray(actual_counts, dtype=np.float64)
    if expected_share.shape != counts.shape:
        raise ValueError(f"{counts.shape[0]} live bins against {expected_share.shape[0]} training bins")
    total = counts.sum()
    if total <= 0:
        return 0.0
    a = np.maximum(counts / total, PSI_EPSILON)
    e = np.maximum(expected_share, PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True, slots=True)
class BinnedColumn:
    """How one column is cut into bins, and the training share of each bin.

    ``categorical``: ``edges`` are the values seen in training (sorted); bin i holds ``edges[i]`` and the
    last bin everything else. ``quantile``: ``edges`` are upper bounds; bin i holds ``(edges[i-1],
    edges[i]]`` and the last bin everything above ``edges[-1]``. Either way there are len(edges) + 1 bins.
    """

    kind: str
    edges: tuple[float, ...]
    proportions: tuple[float, ...]

    @property
    def bins(self) -> int:
        return len(self.edges) + 1

    def bin_indices(self, values: npt.NDArray[Any]) -> IntArray:
        """The bin of each value (0 .. bins-1)."""
        column = np.asarray(values, dtype=np.float64)
        edges = np.asarray(self.edges, dtype=np.float64)
        if self.kind == KIND_QUANTILE:
            return np.searchsorted(edges, column, side="left").astype(np.int64)
        position = np.searchsorted(edges, column, side="left")
        found = position < edges.size
        found[found] = edges[position[found]] == column[found]
        return np.where(found, position, edges.size).astype(np.int64)

    def to_card(self) -> dict[str, object]:
        return {"kind": self.kind, "edges": list(self.edges), "proportions": list(self.proportions)}

    @classmethod
    def from_card(cls, section: Mapping[str, Any], *, what: str) -> BinnedColumn:
        try:
            kind = str(section["kind"])
            edges = tuple(float(v) for v in section["edges"])
            proportions = tuple(float(v) for v in section["proportions"])
        except (KeyError, TypeError, ValueError) as error:
            raise DistributionFormatError(f"{what}: {error!r}") from error
        if kind not in (KIND_CATEGORICAL, KIND_QUANTILE):
            raise DistributionFormatError(f"{what}: unknown kind {kind!r}")
        if any(math.isnan(v) for v in edges):
            raise DistributionFormatError(f"{what}: NaN edge")
        if len(proportions) != len(edges) + 1 or list(edges) != sorted(set(edges)):
            raise DistributionFormatError(
                f"{what}: edges must be sorted and distinct, one more bin than edges"
            )
        return cls(kind=kind, edges=edges, proportions=proportions)


def fit_column(values: npt.NDArray[Any], *, categorical: bool) -> BinnedColumn:
    """Bins for one training column (see the module docstring) and the training share of each."""
    column = np.asarray(values, dtype=np.float64)
    if column.size == 0:
        raise ValueError("cannot bin an empty column")
    if categorical:
        edges = np.unique(column)
        kind = KIND_CATEGORICAL
    else:
        # The k-th decile as an observed value (the ceil(n k / 10)-th smallest, in integers so that no
        # rounding moves it): the edges of a discrete column sit on its values.
        ranks = (np.arange(1, QUANTILE_BINS) * column.size + QUANTILE_BINS - 1) // QUANTILE_BINS - 1
        edges = np.unique(np.sort(column)[ranks])
        kind = KIND_QUANTILE
    unfitted = BinnedColumn(kind=kind, edges=tuple(float(v) for v in edges), proportions=())
    counts = np.bincount(unfitted.bin_indices(column), minlength=unfitted.bins)
    proportions = tuple(round(float(v), 8) for v in counts / column.size)
    return BinnedColumn(kind=kind, edges=unfitted.edges, proportions=proportions)


def _is_categorical(name: str, column: npt.NDArray[Any]) -> bool:
    return name in CATEGORICAL_CARDINALITIES or bool(np.isin(column, (0.0, 1.0)).all())


@dataclass(frozen=True, slots=True)
class TrainingDistribution:
    """The binned training distribution of every feature (FEATURE_NAMES order) and of the score."""

    features: Mapping[str, BinnedColumn]
    score: BinnedColumn
    feature_rows: int
    score_rows: int

    def to_card(self) -> dict[str, object]:
        return {
            "schema": DISTRIBUTION_SCHEMA,
            "psi_epsilon": PSI_EPSILON,
            "feature_rows": self.feature_rows,
            "score_rows": self.score_rows,
            "features": {name: self.features[name].to_card() for name in FEATURE_NAMES},
            "score": self.score.to_card(),
        }

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> TrainingDistribution | None:
        """The distribution a model card holds; None for cards written before drift monitoring existed."""
        section = card.get(CARD_SECTION)
        if section is None:
            return None
        if not isinstance(section, Mapping) or section.get("schema") != DISTRIBUTION_SCHEMA:
            raise DistributionFormatError(f"{CARD_SECTION}: not a {DISTRIBUTION_SCHEMA} section")
        features = section.get("features")
        if not isinstance(features, Mapping) or list(features) != list(FEATURE_NAMES):
            raise DistributionFormatError(f"{CARD_SECTION}: features do not match {FEATURE_NAMES}")
        return cls(
            features={name: BinnedColumn.from_card(features[name], what=name) for name in FEATURE_NAMES},
            score=BinnedColumn.from_card(section.get("score", {}), what="score"),
            feature_rows=int(section.get("feature_rows", 0)),
            score_rows=int(section.get("score_rows", 0)),
        )


def fit_training_distribution(
    features: npt.NDArray[np.float32], scores: npt.NDArray[Any]
) -> TrainingDistribution:
    """Bins of every feature column (of the training rows) and of the score (of held-out probabilities)."""
    if features.ndim != 2 or features.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"features must have shape (n, {len(FEATURE_NAMES)})")
    columns = {
        name: fit_column(features[:, i], categorical=_is_categorical(name, features[:, i]))
        for i, name in enumerate(FEATURE_NAMES)
    }
    score_values = np.asarray(scores, dtype=np.float64).ravel()
    return TrainingDistribution(
        features=columns,
        score=fit_column(score_values, categorical=False),
        feature_rows=int(features.shape[0]),
        score_rows=int(score_values.size),
    )


class BatchBinner:
    """Bins whole batches at once, every feature and the score, into one flat array of counters.

    ``count`` is the serving path: one ``np.searchsorted`` per column and one ``np.bincount`` per batch,
    whatever its size. It counts *raw* bins, the same for both kinds: a categorical value v gets the raw
    bin ``(nextafter(v, -inf), v]``, which holds v alone, and the raw bins between values are the
    catch-all. ``bin_counts`` folds raw counters into the column bins, when a reading is taken.

    Column bin layout: the bins of FEATURE_NAMES[0], FEATURE_NAMES[1], ..., then the score's; ``slices``
    says where each column's bins are, ``expected`` their training shares.
    """

    def __init__(self, distribution: TrainingDistribution) -> None:
        names = (*FEATURE_NAMES, SCORE)
        columns = [distribution.features[name] for name in FEATURE_NAMES] + [distribution.score]
        self._raw_edges = [_raw_edges(column) for column in columns]
        raw_sizes = [edges.size + 1 for edges in self._raw_edges]
        self.raw_size = int(sum(raw_sizes))
        self._raw_starts = np.cumsum([0, *raw_sizes[:-1]]).astype(np.int64)[:, None]
        sizes = [column.bins for column in columns]
        starts = np.cumsum([0, *sizes[:-1]]).astype(np.int64)
        self.size = int(sum(sizes))
        self.slices: dict[str, slice] = {
            name: slice(int(start), int(start) + size)
            for name, start, size in zip(names, starts, sizes, strict=True)
        }
        self.expected: dict[str, tuple[float, ...]] = {
            name: column.proportions for name, column in zip(names, columns, strict=True)
        }
        self._bin_of_raw = np.concatenate(
            [_bin_of_raw(column) + start for column, start in zip(columns, starts, strict=True)]
        )

    def count(self, features: npt.NDArray[np.float32], scores: npt.NDArray[Any]) -> IntArray:
        """Raw counter increments for one batch: shape (raw_size,), summing to rows x (features + 1)."""
        rows = np.ascontiguousarray(np.asarray(features).T, dtype=np.float64)
        raw = np.empty((len(self._raw_edges), rows.shape[1]), dtype=np.int64)
        for index in range(rows.shape[0]):
            raw[index] = np.searchsorted(self._raw_edges[index], rows[index], side="left")
        raw[-1] = np.searchsorted(self._raw_edges[-1], np.asarray(scores, dtype=np.float64), side="left")
        raw += self._raw_starts
        return np.bincount(raw.ravel(), minlength=self.raw_size).astype(np.int64)

    def bin_counts(self, raw_counts: npt.NDArray[Any]) -> IntArray:
        """Counts per column bin (``slices`` layout) from raw counters."""
        folded = np.bincount(self._bin_of_raw, weights=raw_counts, minlength=self.size)
        return np.rint(folded).astype(np.int64)


def _raw_edges(column: BinnedColumn) -> FloatArray:
    edges = np.asarray(column.edges, dtype=np.float64)
    if column.kind == KIND_QUANTILE:
        return edges
    return np.column_stack([np.nextafter(edges, -np.inf), edges]).ravel()


def _bin_of_raw(column: BinnedColumn) -> IntArray:
    if column.kind == KIND_QUANTILE:
        return np.arange(column.bins, dtype=np.int64)
    # Raw bin 2i+1 holds category i; the even ones (below, between and above the values) the catch-all.
    raw = np.arange(2 * len(column.edges) + 1, dtype=np.int64)
    return np.where(raw % 2 == 1, raw // 2, len(column.edges))
