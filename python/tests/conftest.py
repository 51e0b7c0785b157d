"""Test setup: import the package from this checkout and restore process-wide settings."""

import sys
from pathlib import Path

import pytest

PYTHON_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = PYTHON_DIR.parent
if str(PYTHON_DIR) not in sys.path:
    sys.path.insert(0, str(PYTHON_DIR))

import msp  # noqa: E402  (after the path set-up)


@pytest.fixture(autouse=True)
def _default_threads():
    """Every test starts from the default thread count (one per core)."""
    msp.set_num_threads(0)
    yield
    msp.set_num_threads(0)
