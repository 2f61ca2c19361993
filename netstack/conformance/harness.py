"""The harness of the conformance suite: pairs of stacks, virtual time, running one check.

``StackPair`` is what a check sees; ``direct_stack_pair`` builds one from
two direct stacks on an in-memory link; ``VirtualTime`` drives their
``ManualClock`` and gives the exact ``quiesce``; ``run_check`` runs one
check on a fresh pair and fails it on anything reported to the loop's
exception handler. The waiting helpers tell *stuck* from *slow*:
``wait_or_quiet`` gives up when the network goes quiet, ``wait_or_stall``
when it then stays without progress for ``stall_seconds`` of the stacks'
own time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from netstack.clock import ManualClock
from netstack.devices.faults import FaultConfig, FaultInjector
from netstack.devices.link import link_pair
from netstack.stack import Stack

KIB = 1024
MIB = 1024 * 1024


async def _real_quiesce() -> None:
    await asyncio.sleep(0.05)


@dataclasses.dataclass
class StackPair:
    """Two stacks that reach each other, as a check sees them.

    ``server`` listens at ``server_host``; ``client`` is reachable at
    ``client_host`` (checks also listen there, to test the other
    direction). ``flow_control_bytes`` must exceed everything the path can
    buffer between a writer and a reader that stopped reading (send buffer,
    receive buffer, bytes in flight); 32 MiB covers Linux's default socket
    buffer limits. ``timeout`` is the real-time limit for one check.
    ``sleep(seconds)`` waits in the stacks' own time (virtual time for a
    ``ManualClock``). ``stall_seconds`` is how long, in that time and after
    ``quiesce``, a transfer may make no progress before a check calls it
    stuck: long enough for retransmission timers on a lossy path.
    """

    server: Any
    client: Any
    server_host: str
    client_host: str
    quiesce: Callable[[], Awaitable[None]] = _real_quiesce
    flow_control_bytes: int = 32 * MIB
    timeout: float = 60.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    stall_seconds: float = 0.5


PairFactory = Callable[[], contextlib.AbstractAsyncContextManager[StackPair]]


class VirtualTime:
    """Drives a ``ManualClock`` for a whole in-process network, with an exact ``quiesce``.

    Like ``ManualClock.autojump``, a background task jumps the clock to its
    next deadline whenever the event loop has nothing ready to run, so timers
    (delayed ACKs, retransmissions, TIME-WAIT) cost no real time. Unlike it,
    a task awaiting ``quiesce()`` is woken *instead of* the jump: at that
    moment every frame written has been delivered and handled, and only a
    timer could make anything else happen. Nothing else in the process may
    be waiting for real I/O, since "nothing ready" is taken to mean "only
    timers can wake anyone".

    ``sleep(ns)`` waits ``ns`` of virtual time (the jumps make it instant).
    Runs on loops that expose their ready queue (asyncio's own).
    """

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    async def quiesce(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    async def sleep(self, ns: int) -> None:
        waiter = asyncio.get_running_loop().create_future()
        handle = self.clock.call_at(self.clock.monotonic_ns() + ns, lambda: waiter.done() or waiter.set_result(None))
        try:
            await waiter
        finally:
            handle.cancel()

    async def _run(self) -> None:
        ready = asyncio.get_running_loop()._ready  # type: ignore[attr-defined]
        while True:
            await asyncio.sleep(0)
            if ready:
                continue  # someone else can still run: not idle yet
            if self._waiters:
                waiters, self._waiters = self._waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                continue
            if not self.clock.jump():
                # No timer at all: only something outside the simulation can
                # wake anyone (or nobody will: the timeout reports it).
                await asyncio.sleep(0.001)

    async def __aenter__(self) -> VirtualTime:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def direct_stack_pair(
    *,
    faults: FaultConfig | None = None,
    clock: Any = None,
    tcp_config: Any = None,
    flow_control_bytes: int = 4 * MIB,
    timeout: float = 30.0,
) -> contextlib.AbstractAsyncContextManager[StackPair]:
    """Two direct stacks, 10.0.0.1 (server) and 10.0.0.2 (client), on one in-memory link.

    ``faults`` wraps the client's end in a ``FaultInjector`` (both
    directions, so every frame meets the faults exactly once). ``clock``
    defaults to a fresh ``ManualClock`` driven by ``VirtualTime``; any other
    clock (``LoopClock``) runs in real time with a real-sleep ``quiesce``.
    """
    @contextlib.asynccontextmanager
    async def open_pair() -> AsyncIterator[StackPair]:
        time = ManualClock() if clock is None else clock
        server_netif, client_netif = link_pair()
        netif: Any = client_netif
        if faults is not None:
            netif = FaultInjector(client_netif, faults, clock=time)
        server = Stack(server_netif, time, ipv4="10.0.0.1/24", tcp_config=tcp_config)
        client = Stack(netif, time, ipv4="10.0.0.2/24", tcp_config=tcp_config)
        server.start()
        client.start()
        try:
            if isinstance(time, ManualClock):
                async with VirtualTime(time) as driver:
                    yield StackPair(
                        server, client, "10.0.0.1", "10.0.0.2", driver.quiesce, flow_control_bytes, timeout,
                        sleep=lambda seconds: driver.sleep(int(seconds * 1e9)), stall_seconds=5.0,
                    )
            else:
                yield StackPair(server, client, "10.0.0.1", "10.0.0.2", _real_quiesce, flow_control_bytes, timeout)
        finally:
            server.close()
            client.close()
            netif.close()
            server_netif.close()

    return open_pair()


async def run_check(check: Callable[[StackPair], Awaitable[None]], pair_factory: PairFactory) -> None:
    """Run one check on a fresh pair; fail on anything reported to the loop's exception handler."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        async with pair_factory() as pair:
            before = asyncio.all_tasks()
            task = loop.create_task(check(pair))
            try:
                done, _ = await asyncio.wait({task}, timeout=pair.timeout)
                if not done:
                    frames = task.get_stack()
                    where = "".join(traceback.format_list(traceback.extract_stack(frames[-1])[-3:])) if frames else ""
                    raise AssertionError(f"{check.__name__} made no progress in {pair.timeout} s; it waited at:\n{where}")
                task.result()
                # Callbacks scheduled by the last events (connection_lost) run now.
                for _ in range(3):
                    await asyncio.sleep(0)
            finally:
                # Leave nothing running (a server's handler task, say): a
                # pending coroutine would otherwise be finalized at some later
                # garbage collection, inside another test.
                leftover = asyncio.all_tasks() - before - {asyncio.current_task()}
                for pending in leftover:
                    pending.cancel()
                await asyncio.gather(*leftover, return_exceptions=True)
    finally:
        loop.set_exception_handler(previous)
    if reported:
        lines = [f"{context.get('message')}: {context.get('exception')!r}" for context in reported]
        raise AssertionError("the event loop's exception handler was called:\n  " + "\n  ".join(lines))


def check_id(check: Callable[..., Any]) -> str:
    """A readable pytest id: the check's name without ``check_``."""
    return check.__name__.removeprefix("check_")


def server_port(server: Any) -> int:
    """The port a server listens on: from its sockets (asyncio) or ``.port`` (direct stack)."""
    sockets = getattr(server, "sockets", None)
    if sockets:
        return int(sockets[0].getsockname()[1])
    return int(server.port)


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(f"{seed}/{size}").randbytes(size)


async def wait_or_quiet(pair: StackPair, awaitable: Awaitable[Any]) -> bool:
    """Await ``awaitable`` unless the network goes quiet first; True if it completed."""
    return await first_of(awaitable, pair.quiesce())


async def wait_or_stall(pair: StackPair, awaitable: Awaitable[Any]) -> bool:
    """Await ``awaitable`` unless the network goes quiet and then ``stall_seconds`` pass; True if it completed."""
    task = asyncio.ensure_future(awaitable)
    if await first_of(task, pair.quiesce(), cancel=False):
        return True
    return await first_of(task, pair.sleep(pair.stall_seconds))


async def first_of(awaitable: Awaitable[Any], deadline: Awaitable[None], *, cancel: bool = True) -> bool:
    """True if ``awaitable`` completes before ``deadline``; the loser is cancelled (``awaitable`` only if ``cancel``)."""
    task = asyncio.ensure_future(awaitable)
    quiet = asyncio.ensure_future(deadline)
    done, _ = await asyncio.wait({task, quiet}, return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, quiet):
        if pending not in done and (pending is quiet or cancel):
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
    if task in done:
        task.result()
        return True
    return False
