"""Fixtures of the end-to-end tests: a fresh lab (tests/support/lab.py) per test."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lab import Lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A fresh lab (namespace, bridge br0, nothing running) whose files go under
    ``tmp_path / "lab"``; everything in it is killed and removed after the test."""
    with Lab(tmp_path / "lab") as each:
        yield each
