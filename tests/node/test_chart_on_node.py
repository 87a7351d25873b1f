"""The chart's Deployment running the image built from the Dockerfile on a real node."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.node.scenarios import SCENARIOS, NodeEnv, run_scenario

pytestmark = pytest.mark.node


# A scenario installs, upgrades and uninstalls a release: minutes, not the suite's 300 s default.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_scenario(node_env: NodeEnv, scenario: Callable[[NodeEnv], None]) -> None:
    run_scenario(node_env, scenario)
