"""Fixtures shared by the test modules."""

import pytest

from superdiff._torch import one_thread as _one_thread


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and shared CPUs make OpenMP spin for seconds)."""
    with _one_thread():
        yield
