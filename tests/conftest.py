"""Fixture modules live in tests/fixtures/, one per area."""

pytest_plugins = [
    "tests.fixtures.net",
    "tests.fixtures.sim",
]
