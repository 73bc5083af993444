from __future__ import annotations

import copy

import pytest

from tests.helm.rendering import SCENARIOS, Manifest, render_scenario

_CACHE: dict[str, list[Manifest]] = {}


@pytest.fixture(params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def manifests(scenario: str) -> list[Manifest]:
    """The render of one scenario; rendered once per session because the chart does not change."""
    if scenario not in _CACHE:
        _CACHE[scenario] = render_scenario(scenario)
    return copy.deepcopy(_CACHE[scenario])
