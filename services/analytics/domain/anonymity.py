"""k-anonymity of figures by group: a group of fewer than k distinct people is shown as suppressed."""

from __future__ import annotations

from typing import Final

DEFAULT_K: Final = 5


def suppressed(distinct_people: int, *, k: int) -> bool:
    """Whether a group's figures must be withheld: fewer than ``k`` distinct people are in it."""
    return distinct_people < k
