"""Fixture modules live in tests/fixtures/, one per area."""

import pytest

pytest_plugins = [
    "tests.fixtures.net",
    "tests.fixtures.sim",
    "tests.fixtures.daemon",
    "tests.fixtures.replicas",
]


def pytest_configure(config: pytest.Config) -> None:
    """Markers of this suite (``--strict-markers`` refuses unregistered ones)."""
    config.addinivalue_line(
        "markers", "e2e: real `mtt-router simulate` and `mtt-router run` processes (-m e2e)"
    )
