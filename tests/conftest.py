"""Fixtures live in support.py so tests can import its helpers by name."""

import pytest
from support import backend, bank, db, policy, postgres

__all__ = ["backend", "bank", "db", "policy", "postgres"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a test that takes ``db`` on each backend its closest ``backends`` mark names."""
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None and "db" in metafunc.fixturenames:
        metafunc.parametrize("backend", marker.args, indirect=True)
