"""Fixtures for the trainer tests (helpers live in train_helpers.py)."""

import pytest


@pytest.fixture(autouse=True)
def fresh_accelerate():
    """A fresh accelerate state per test (it is process-global; a test may pick another precision)."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
