"""Risk levels by score, shared by scoring (per event) and analytics (per person, score / 100).

[0, 0.25) low, [0.25, 0.5) moderate, [0.5, 0.8) high, [0.8, 1] critical. "high" starts at the training
decision threshold (0.5), so every event the model calls risky is at least high; "critical" marks the
scores the held-out set shows to be almost always right.
"""

from __future__ import annotations

from typing import Final

RISK_LEVEL_THRESHOLDS: Final[tuple[tuple[float, str], ...]] = (
    (0.8, "critical"),
    (0.5, "high"),
    (0.25, "moderate"),
    (0.0, "low"),
)
