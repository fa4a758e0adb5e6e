import pytest

from synthetic import make_trace
from traces import TraceEntry


@pytest.fixture
def small_trace() -> list[TraceEntry]:
    return make_trace(300, 20.0, (16, 1500), (2, 300))
