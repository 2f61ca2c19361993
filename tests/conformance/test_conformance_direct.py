"""The shared conformance suite (``netstack.conformance``) over two direct stacks.

Three pairs, each running every check:

``manual``
    Two stacks on an in-memory ``link_pair``, timed by a ``ManualClock``
    under ``VirtualTime``. This is the main variant, and virtual time is
    the right clock for it: the checks touch every TCP timer (delayed ACK
    40 ms, RTO from 200 ms, persist, FIN-WAIT and TIME-WAIT), which cost
    nothing in virtual time, and ``quiesce`` is exact -- "every frame has
    landed and only a timer could wake anyone" -- instead of a guessed real
    sleep. No test sleeps to wait for a timer.
``faulty``
    The same, with the client's end wrapped in a ``FaultInjector`` (2% loss,
    1% duplication, 5% reordering, 0.5% corruption, both directions, fixed
    seed): every check must hold when recovery has to do real work.
``realtime``
    The fault-free pair on ``LoopClock``, as a platform runs it: nothing in
    the transports may depend on virtual time. ``quiesce`` is a 50 ms real
    sleep here, used only by the few checks that must tell stuck from slow.
"""

from __future__ import annotations

import pytest

from netstack.clock import LoopClock
from netstack.conformance import CHECKS, check_id, direct_stack_pair, run_check
from netstack.devices.faults import FaultConfig

FAULTS = FaultConfig(drop=0.02, duplicate=0.01, reorder=0.05, corrupt=0.005, seed=11)

KNOWN_BUGS: dict[tuple[str, str], str] = {
    # (variant, check name): reason -- a bug in a module this suite does not own. Each is a strict
    # xfail, so that fixing the bug fails the test until its entry is removed.
}


def checks(variant: str) -> list:
    params = []
    for check in CHECKS:
        reason = KNOWN_BUGS.get((variant, check_id(check)))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(check, marks=marks, id=check_id(check)))
    return params


@pytest.mark.asyncio
@pytest.mark.parametrize("check", checks("manual"))
async def test_manual_clock(check) -> None:
    await run_check(check, direct_stack_pair)


@pytest.mark.asyncio
@pytest.mark.parametrize("check", checks("faulty"))
async def test_faulty_link(check) -> None:
    await run_check(check, lambda: direct_stack_pair(faults=FAULTS))


@pytest.mark.asyncio
@pytest.mark.parametrize("check", checks("realtime"))
async def test_realtime_loop_clock(check) -> None:
    await run_check(check, lambda: direct_stack_pair(clock=LoopClock()))
