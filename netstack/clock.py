"""Clocks: the loop's own clock for real runs, and a manual clock for tests.

``LoopClock`` reads ``time.monotonic_ns`` and arms timers on the running
asyncio loop; every platform whose loop tracks ``time.monotonic`` (asyncio,
uvloop) can return it from ``clock()``.

``ManualClock`` is virtual time, in the manner of trio's ``MockClock`` and
gVisor's ``ManualClock``: ``now`` moves only when a test calls ``advance``
(or, with ``autojump``, whenever the event loop has nothing else to do), and
timers whose deadline has been reached run in deadline order, each seeing
``monotonic_ns()`` equal to its own deadline. Tests of timers therefore never
sleep.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable


class LoopClock:
    """Real time; timers on the running event loop."""

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    def wall_ns(self) -> int:
        return time.time_ns()

    def call_at(self, deadline_ns: int, callback: Callable[[], None]) -> asyncio.TimerHandle:
        loop = asyncio.get_running_loop()
        delay = (deadline_ns - time.monotonic_ns()) / 1e9
        # loop.call_later rounds nothing away; a negative delay runs at the
        # next iteration, which is what the contract promises.
        return loop.call_later(max(delay, 0.0), callback)


class _ManualTimer:
    __slots__ = ("deadline", "callback", "cancelled")

    def __init__(self, deadline: int, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """Virtual time for tests.

    ``advance(ns)`` moves time forward, running every timer that falls due on
    the way in deadline order (ties in the order they were armed). Timers
    armed by a callback during ``advance`` run too when they fall inside the
    interval. Callbacks run synchronously inside ``advance``; anything they
    schedule on the event loop runs when the test next yields.

    ``autojump()`` (an async context manager) jumps time to the next deadline
    whenever the event loop has no ready callbacks, so that
    ``await asyncio.wait_for(x, 30)``-style code completes instantly in
    virtual time. Its effect on asyncio's own timers: none; code under test
    takes its time from this clock, not from ``loop.time()``.
    """

    def __init__(self, start_ns: int = 1_000_000_000, wall_start_ns: int = 1_780_000_000 * 10**9) -> None:
        self._now = start_ns
        self._wall_offset = wall_start_ns - start_ns
        self._timers: list[tuple[int, int, _ManualTimer]] = []
        self._sequence = itertools.count()

    # -- the Clock contract --------------------------------------------------

    def monotonic_ns(self) -> int:
        return self._now

    def wall_ns(self) -> int:
        return self._now + self._wall_offset

    def call_at(self, deadline_ns: int, callback: Callable[[], None]) -> _ManualTimer:
        timer = _ManualTimer(deadline_ns, callback)
        heapq.heappush(self._timers, (deadline_ns, next(self._sequence), timer))
        return timer

    # -- test controls -------------------------------------------------------

    def next_deadline(self) -> int | None:
        """The earliest pending (not cancelled) timer deadline, or ``None``."""
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def advance(self, ns: int) -> None:
        """Move time forward by ``ns`` nanoseconds, running due timers."""
        if ns < 0:
            raise ValueError("time does not go backwards")
        self.advance_to(self._now + ns)

    def advance_to(self, deadline_ns: int) -> None:
        if deadline_ns < self._now:
            raise ValueError("time does not go backwards")
        while True:
            upcoming = self.next_deadline()
            if upcoming is None or upcoming > deadline_ns:
                break
            _, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, timer.deadline)
            timer.cancelled = True
            timer.callback()
        self._now = deadline_ns

    def jump(self) -> bool:
        """Advance to the next deadline and run its timers; ``False`` if none."""
        upcoming = self.next_deadline()
        if upcoming is None:
            return False
        self.advance_to(max(upcoming, self._now))
        return True

    async def settle(self) -> None:
        """Yield until the event loop has no ready callbacks left."""
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)
        for _ in range(10_000):
            await asyncio.sleep(0)
            if ready is not None and not ready:
                return
        # Loops that hide their ready queue (uvloop) get a generous number
        # of yields instead; tests run on the default loop.

    async def run_for(self, ns: int) -> None:
        """Let ``ns`` of virtual time pass, letting the loop run between timers."""
        end = self._now + ns
        await self.settle()
        while True:
            upcoming = self.next_deadline()
            if upcoming is None or upcoming > end:
                break
            self.advance_to(max(upcoming, self._now))
            await self.settle()
        self._now = end
        await self.settle()

    def autojump(self) -> _Autojump:
        return _Autojump(self)


class _Autojump:
    """Background task: whenever the loop is idle, jump to the next deadline."""

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            await self._clock.settle()
            if not self._clock.jump():
                # Nothing to jump to: wait for real activity (I/O) instead of
                # spinning.
                await asyncio.sleep(0.001)

    async def __aenter__(self) -> ManualClock:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self._clock

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
