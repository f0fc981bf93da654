"""The two ways a pipeline task runs on ``InMemoryBroker``: the in-process lane
(:mod:`taskiq_flow.run.local`) and taskiq's own ``kiq()`` (``TASKIQ_FLOW_FAST_PATH=0``).

A test module runs every test on both with::

    from lanes import lane  # noqa: F401 - the fixture
    pytestmark = pytest.mark.usefixtures("lane")
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from taskiq import InMemoryBroker

from taskiq_flow.run.local import ENV_VAR

FAST, KIQ = "fast", "kiq"


@pytest.fixture(scope="module", params=[FAST, KIQ])
def lane(request: pytest.FixtureRequest) -> Iterator[str]:
    """``"fast"`` or ``"kiq"``: which way runs start while the test runs (module-scoped, so that
    Hypothesis' tests may use it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_VAR, "1" if request.param == FAST else "0")
        yield request.param


def went_through_kiq(broker: InMemoryBroker) -> bool:
    """Whether the pipeline tasks run so far on ``broker`` went through ``kiq()``: taskiq's
    receiver stores every result in the broker's result backend, the in-process lane only what
    something reads back (no middleware here does)."""
    return bool(broker.result_backend.results)
