"""Fixture modules live in tests/fixtures/, one per area."""

from collections.abc import Iterator

import pytest
import structlog

pytest_plugins = [
    "tests.fixtures.net",
    "tests.fixtures.sim",
    "tests.fixtures.daemon",
    "tests.fixtures.replicas",
    "tests.fixtures.crm",
]


def pytest_configure(config: pytest.Config) -> None:
    """Markers of this suite (``--strict-markers`` refuses unregistered ones)."""
    config.addinivalue_line(
        "markers", "e2e: real `mtt-router simulate` and `mtt-router run` processes (-m e2e)"
    )


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Each test starts from structlog's defaults, whatever an earlier test configured."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
