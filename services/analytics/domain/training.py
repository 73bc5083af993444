"""Training assignments: which event type is which step, and the figures of a group (pure)."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from services.analytics.domain.anonymity import suppressed
from services.analytics.domain.funnel import rate


class TrainingStep(enum.StrEnum):
    ASSIGNED = "assigned"
    COMPLETED = "completed"
    OVERDUE = "overdue"


# The training event types of services/ingest/domain; each carries a `training_module` dimension.
TRAINING_BY_TYPE: Final[Mapping[str, TrainingStep]] = {
    "training.assigned": TrainingStep.ASSIGNED,
    "training.completed": TrainingStep.COMPLETED,
    "training.overdue": TrainingStep.OVERDUE,
}


@dataclass(frozen=True, slots=True)
class Assignment:
    """One person's assignment of one module: whether it was completed, whether it went overdue."""

    completed: bool
    overdue: bool


@dataclass(frozen=True, slots=True)
class TrainingFigures:
    assigned: int
    completed: int
    overdue: int

    @property
    def completion_rate(self) -> float:
        return rate(self.completed, self.assigned)

    @property
    def overdue_rate(self) -> float:
        return rate(self.overdue, self.assigned)


def figures(assignments: Iterable[Assignment]) -> TrainingFigures:
    """Counts of a group; overdue counts only assignments still not completed."""
    assigned = completed = overdue = 0
    for item in assignments:
        assigned += 1
        completed += item.completed
        overdue += item.overdue and not item.completed
    return TrainingFigures(assigned=assigned, completed=completed, overdue=overdue)


@dataclass(frozen=True, slots=True)
class PersonAssignment:
    module: str
    department: str
    pseudonym: str
    assignment: Assignment


@dataclass(frozen=True, slots=True)
class DepartmentTraining:
    department: str
    suppressed: bool
    figures: TrainingFigures


@dataclass(frozen=True, slots=True)
class TrainingSummary:
    total: TrainingFigures
    modules: tuple[tuple[str, TrainingFigures], ...]
    departments: tuple[DepartmentTraining, ...]


def summarise(rows: Sequence[PersonAssignment], *, k: int) -> TrainingSummary:
    """Totals, per module, and per department (withheld below ``k`` distinct people)."""
    modules: dict[str, list[Assignment]] = {}
    departments: dict[str, list[PersonAssignment]] = {}
    for row in rows:
        modules.setdefault(row.module, []).append(row.assignment)
        departments.setdefault(row.department, []).append(row)
    by_department = []
    for name in sorted(departments):
        members = departments[name]
        if suppressed(len({row.pseudonym for row in members}), k=k):
            by_department.append(DepartmentTraining(name, True, TrainingFigures(0, 0, 0)))
        else:
            by_department.append(DepartmentTraining(name, False, figures(row.assignment for row in members)))
    return TrainingSummary(
        total=figures(row.assignment for row in rows),
        modules=tuple((name, figures(modules[name])) for name in sorted(modules)),
        departments=tuple(by_department),
    )
