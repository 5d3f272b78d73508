"""Fixtures for the deploy/ tests: the chart rendered once per shipped values combination."""

from __future__ import annotations

import pytest
from deploy_render import OVERLAYS, manifests, overlay_values, render


@pytest.fixture(scope="session", params=list(OVERLAYS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    """(overlay name, objects) for each shipped values combination."""
    return request.param, manifests(render(overlay_values(request.param)))


@pytest.fixture(scope="session")
def by_overlay() -> dict[str, list[dict]]:
    return {name: manifests(render(overlay_values(name))) for name in OVERLAYS}
