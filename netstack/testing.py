"""A pytest plugin shipped with netstack (registered as the ``netstack`` entry point).

Fixtures:

``manual_clock``
    A fresh ``ManualClock``; tests advance it instead of sleeping.
"""

from __future__ import annotations

import pytest

from netstack.clock import ManualClock


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()
