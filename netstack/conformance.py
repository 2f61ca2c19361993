"""The conformance suite every Stack and every TCP transport must pass.

Why it exists (STYLE 11, in the spirit of trio's ``check_two_way_stream``):
the direct stack (``stack.py``) and the socket stack (host kernel sockets)
promise one contract, asyncio's. Applications are written once against it,
so the two must be indistinguishable to them. One suite, parametrized by a
*pair factory*, checks both.

The API
-------
A **pair factory** is a zero-argument callable returning an async context
manager that yields a ``StackPair``: two stack-like objects that can reach
each other (they may be one and the same object, for the socket stack on
loopback), the address each is reachable at, and a ``quiesce`` coroutine
function. A stack-like object offers ``create_server``,
``create_connection``, ``start_server``, ``open_connection`` and
``create_datagram_endpoint`` with asyncio's signatures.

Every check is an ``async def check_*(pair) -> None`` that raises
``AssertionError`` on a breach of contract; ``CHECKS`` lists them all, so a
driver parametrizes over them::

    @pytest.mark.parametrize("check", CHECKS, ids=check_id)
    async def test_stack(check):
        await run_check(check, my_pair_factory)

``run_check`` opens a fresh pair for the one check, runs it under a
real-time safety timeout, and fails it if anything reached the event loop's
exception handler meanwhile (a protocol callback that raised, a transport
that reported a fatal error): a transport can break the contract without
any await in the check seeing it.

``quiesce()`` means "let everything in flight land": when it returns, no
segment is on the way and nothing will happen until some timer fires. The
checks use it where they must tell *stuck* from *slow*: a sender that stays
paused, a datagram that was lost and is to be sent again. A pair over real
sockets implements it as a short real sleep; ``VirtualTime`` implements it
exactly, without letting virtual time pass, for stacks timed by a
``ManualClock``.

What the checks assume about the contract
-----------------------------------------
Protocol callbacks follow asyncio's grammar, checked on every callback by
``Peer``::

    connection_made -> (data_received | pause_writing | resume_writing)*
                    -> [eof_received -> (pause_writing | resume_writing)*]
                    -> connection_lost

(``pause_writing`` and ``resume_writing`` alternate, pause first.)

``abort()`` must make the peer see an error (``connection_lost`` with a
``ConnectionError``, or ``ConnectionResetError`` from a stream): a transport
over a kernel socket has to set ``SO_LINGER`` to ``(1, 0)`` before closing
for that, or the kernel sends a FIN and the peer sees a clean end of file.
``write()`` after ``write_eof()`` raises ``RuntimeError``, as asyncio's
socket transports do, rather than dropping the data silently.

``direct_stack_pair`` is the pair factory for two direct stacks joined by
an in-memory link (optionally through a ``FaultInjector``), used by this
project's own drivers and usable by anyone testing code over a ``Stack``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import random
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from netstack.clock import ManualClock
from netstack.devices.faults import FaultConfig, FaultInjector
from netstack.devices.link import link_pair

KIB = 1024
MIB = 1024 * 1024


# -- the pair ------------------------------------------------------------------


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
    from netstack.stack import Stack  # here, not at the top: stack.py imports the world

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
            task = loop.create_task(check(pair))
            done, _ = await asyncio.wait({task}, timeout=pair.timeout)
            if not done:
                where = "".join(traceback.format_list(traceback.extract_stack(task.get_stack()[-1])[-3:])) if task.get_stack() else ""
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise AssertionError(f"{check.__name__} made no progress in {pair.timeout} s; it waited at:\n{where}")
            task.result()
            # Callbacks scheduled by the last events (connection_lost) run now.
            for _ in range(3):
                await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    if reported:
        lines = [f"{context.get('message')}: {context.get('exception')!r}" for context in reported]
        raise AssertionError("the event loop's exception handler was called:\n  " + "\n  ".join(lines))


def check_id(check: Callable[..., Any]) -> str:
    """A readable pytest id: the check's name without ``check_``."""
    return check.__name__.removeprefix("check_")


# -- helpers -------------------------------------------------------------------


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
    return await _first(awaitable, pair.quiesce())


async def wait_or_stall(pair: StackPair, awaitable: Awaitable[Any]) -> bool:
    """Await ``awaitable`` unless the network goes quiet and then ``stall_seconds`` pass; True if it completed."""
    task = asyncio.ensure_future(awaitable)
    if await _first(task, pair.quiesce(), cancel=False):
        return True
    return await _first(task, pair.sleep(pair.stall_seconds))


async def _first(awaitable: Awaitable[Any], deadline: Awaitable[None], *, cancel: bool = True) -> bool:
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


class _Conditions:
    """``until(predicate)``: await a condition re-evaluated whenever ``_changed()`` is called."""

    def __init__(self) -> None:
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for predicate, future in waiters:
            if future.done():
                continue
            if predicate():
                future.set_result(None)
            else:
                self._waiters.append((predicate, future))

    async def until(self, predicate: Callable[[], bool]) -> None:
        if predicate():
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        await future


class Peer(_Conditions, asyncio.Protocol):
    """A protocol that records its callbacks and checks asyncio's grammar on each.

    ``keep_open_on_eof`` is what ``eof_received`` returns (false, as
    ``asyncio.Protocol``'s, unless told: an asyncio transport over a socket
    reports ``connection_lost`` after a kept-open EOF only once it is
    closed, so a check that keeps one open must close it itself); ``on_made``,
    ``on_data`` and ``on_eof`` are hooks (called with the peer, and the data
    for ``on_data``) so that a check can script behaviour. ``until``
    awaits a condition re-evaluated after every callback.
    """

    def __init__(
        self,
        *,
        keep_open_on_eof: bool = False,
        on_made: Callable[[Peer], None] | None = None,
        on_data: Callable[[Peer, bytes], None] | None = None,
        on_eof: Callable[[Peer], None] | None = None,
    ) -> None:
        self.transport: Any = None
        self.keep_open_on_eof = keep_open_on_eof
        self.on_made, self.on_data, self.on_eof = on_made, on_data, on_eof
        self.events: list[str] = []
        self.data = bytearray()
        self.eof = False
        self.lost = False
        self.lost_error: BaseException | None = None
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.violations: list[str] = []
        super().__init__()

    # -- grammar -------------------------------------------------------------

    def _expect(self, condition: bool, what: str) -> None:
        if not condition:
            message = f"{what} out of order after {self.events[-5:]}"
            self.violations.append(message)
            raise AssertionError(message)

    def _record(self, event: str) -> None:
        self.events.append(event)
        self._changed()

    def reads(self) -> list[str]:
        """The events without pause/resume_writing: the reading side's story."""
        return [event for event in self.events if event not in ("pause", "resume")]

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._expect(not self.events, "connection_made")
        self.transport = transport
        self._record("made")
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        self._expect(bool(self.events) and not self.eof and not self.lost, "data_received")
        self._expect(len(data) > 0, "empty data_received")
        self.data += data
        self._record("data")
        if self.on_data is not None:
            self.on_data(self, data)

    def eof_received(self) -> bool:
        self._expect(bool(self.events) and not self.eof and not self.lost, "eof_received")
        self.eof = True
        self._record("eof")
        if self.on_eof is not None:
            self.on_eof(self)
        return self.keep_open_on_eof

    def connection_lost(self, exc: BaseException | None) -> None:
        self._expect(bool(self.events) and not self.lost, "connection_lost")
        self.lost = True
        self.lost_error = exc
        self._record("lost")

    def pause_writing(self) -> None:
        self._expect(bool(self.events) and not self.lost and not self.paused, "pause_writing")
        self.paused = True
        self.pauses += 1
        self._record("pause")

    def resume_writing(self) -> None:
        self._expect(bool(self.events) and not self.lost and self.paused, "resume_writing")
        self.paused = False
        self.resumes += 1
        self._record("resume")


class Echo(Peer):
    """Writes back whatever arrives; closes once the peer's EOF arrives."""

    def __init__(self, **hooks: Any) -> None:
        super().__init__(keep_open_on_eof=False, on_data=lambda peer, data: peer.transport.write(data), **hooks)


class Accepted:
    """A protocol factory for servers that hands each accepted ``Peer`` to the check."""

    def __init__(self, protocol: Callable[[], Peer] = Peer) -> None:
        self._protocol = protocol
        self.peers: list[Peer] = []
        self._queue: asyncio.Queue[Peer] = asyncio.Queue()

    def __call__(self) -> Peer:
        peer = self._protocol()
        self.peers.append(peer)
        self._queue.put_nowait(peer)
        return peer

    async def next(self) -> Peer:
        """The next accepted peer, once its ``connection_made`` has run."""
        peer = await self._queue.get()
        await peer.until(lambda: bool(peer.events))
        return peer


async def _listen(stack: Any, host: str, factory: Callable[[], asyncio.BaseProtocol]) -> tuple[Any, int]:
    server = await stack.create_server(factory, host, 0)
    return server, server_port(server)


async def _close_server(server: Any) -> None:
    server.close()
    await server.wait_closed()


def _assert_clean(*peers: Peer) -> None:
    for peer in peers:
        assert not peer.violations, peer.violations


# -- the checks ----------------------------------------------------------------


async def check_connect_both_directions(pair: StackPair) -> None:
    """create_server on either stack, create_connection from the other; bytes both ways."""
    for listener, host, connector in ((pair.server, pair.server_host, pair.client), (pair.client, pair.client_host, pair.server)):
        accepted = Accepted(Echo)
        server, port = await _listen(listener, host, accepted)
        transport, client = await connector.create_connection(Peer, host, port)
        assert isinstance(transport, asyncio.Transport)
        assert client.transport is transport and client.events == ["made"]
        assert transport.get_protocol() is client and not transport.is_closing() and transport.is_reading()
        transport.write(b"ping")
        await client.until(lambda: len(client.data) >= 4)
        assert client.data == b"ping"
        transport.close()
        assert transport.is_closing()
        await client.until(lambda: client.lost)
        echo = await accepted.next()
        await echo.until(lambda: echo.lost)
        assert client.lost_error is None and echo.lost_error is None
        assert echo.events[0] == "made" and echo.reads()[-2:] == ["eof", "lost"], echo.events
        await _close_server(server)
        _assert_clean(client, echo)


WRITE_SIZES = (
    0, 1, 2, 3, 7, 100, 535, 536, 537, 1023, 1024, 1447, 1448, 1449, 1460, 1461, 2896, 2897,
    4095, 4096, 8191, 8192, 16384, 65535, 65536, 65537, 100_000, 262_144, MIB,
)


async def check_data_integrity_write_sizes(pair: StackPair) -> None:
    """Writes of every size from 0 to 1 MiB, as bytes, bytearray and memoryview, arrive intact and in order."""
    accepted = Accepted(Echo)
    server, port = await _listen(pair.server, pair.server_host, accepted)
    transport, client = await pair.client.create_connection(Peer, pair.server_host, port)
    expected = bytearray()
    for index, size in enumerate(WRITE_SIZES):
        data = payload(size, index)
        kind = index % 3
        transport.write(data if kind == 0 else bytearray(data) if kind == 1 else memoryview(data))
        expected += data
    # The transport must have copied what it was given: reusing a buffer is allowed.
    scratch = bytearray(b"before")
    transport.write(scratch)
    scratch[:] = b"AFTER!"
    expected += b"before"
    transport.write_eof()
    await client.until(lambda: client.lost)
    assert client.lost_error is None
    assert len(client.data) == len(expected), (len(client.data), len(expected))
    assert hashlib.sha256(client.data).digest() == hashlib.sha256(expected).digest(), "echoed bytes differ"
    assert client.reads()[-2:] == ["eof", "lost"]
    await _close_server(server)
    _assert_clean(client, *accepted.peers)


async def check_writelines(pair: StackPair) -> None:
    """writelines takes any iterable of bytes-like objects."""
    accepted = Accepted(Echo)
    server, port = await _listen(pair.server, pair.server_host, accepted)
    transport, client = await pair.client.create_connection(Peer, pair.server_host, port)
    pieces = [b"alpha ", bytearray(b"beta "), memoryview(b"gamma "), b"", payload(70_000, 1)]
    transport.writelines(pieces)
    transport.writelines(bytes([65 + i]) for i in range(26))
    transport.writelines([])
    expected = b"".join(bytes(piece) for piece in pieces) + bytes(range(65, 91))
    transport.write_eof()
    await client.until(lambda: client.lost)
    assert bytes(client.data) == expected
    await _close_server(server)
    _assert_clean(client, *accepted.peers)


async def check_half_close_client_first(pair: StackPair) -> None:
    """write_eof from the client: the server sees EOF and can still answer, then closes."""

    def answer(peer: Peer) -> None:
        peer.transport.write(b"response to " + bytes(peer.data))
        peer.transport.close()

    accepted = Accepted(lambda: Peer(keep_open_on_eof=True, on_eof=answer))
    server, port = await _listen(pair.server, pair.server_host, accepted)
    transport, client = await pair.client.create_connection(Peer, pair.server_host, port)
    assert transport.can_write_eof()
    transport.write(b"request")
    transport.write_eof()
    transport.write_eof()  # a second write_eof is harmless
    await client.until(lambda: client.lost)
    assert bytes(client.data) == b"response to request"
    assert client.reads()[-2:] == ["eof", "lost"] and client.lost_error is None
    peer = accepted.peers[0]
    await peer.until(lambda: peer.lost)
    assert peer.events[0] == "made" and peer.reads()[-2:] == ["eof", "lost"], peer.events
    assert bytes(peer.data) == b"request" and peer.lost_error is None
    await _close_server(server)
    _assert_clean(client, peer)


async def check_half_close_server_first(pair: StackPair) -> None:
    """write_eof from the server: the client sees EOF, keeps sending, and both end cleanly."""

    def greet(peer: Peer) -> None:
        peer.transport.write(b"hello, then EOF")
        peer.transport.write_eof()

    accepted = Accepted(lambda: Peer(keep_open_on_eof=False, on_made=greet))
    server, port = await _listen(pair.server, pair.server_host, accepted)
    transport, client = await pair.client.create_connection(lambda: Peer(keep_open_on_eof=True), pair.server_host, port)
    await client.until(lambda: client.eof)
    assert bytes(client.data) == b"hello, then EOF"
    big = payload(300_000, 3)
    transport.write(big)
    transport.close()
    peer = accepted.peers[0]
    await peer.until(lambda: peer.lost)
    assert bytes(peer.data) == big and peer.reads()[-2:] == ["eof", "lost"] and peer.lost_error is None
    await client.until(lambda: client.lost)
    assert client.lost_error is None
    await _close_server(server)
    _assert_clean(client, peer)


async def check_write_after_write_eof_raises(pair: StackPair) -> None:
    """Data written after write_eof cannot be sent: asyncio raises RuntimeError, never drops it silently."""
    accepted = Accepted(lambda: Peer(keep_open_on_eof=True))
    server, port = await _listen(pair.server, pair.server_host, accepted)
    transport, client = await pair.client.create_connection(Peer, pair.server_host, port)
    transport.write(b"last words")
    transport.write_eof()
    try:
        transport.write(b"too late")
    except RuntimeError:
        pass
    else:
        raise AssertionError("write() after write_eof() neither raised nor sent anything")
    peer = await accepted.next()
    await peer.until(lambda: peer.eof)
    assert bytes(peer.data) == b"last words"
    transport.abort()
    await _provoke_until_lost(pair, peer)
    await _close_server(server)
    _assert_clean(client, peer)


async def check_close_after_write_eof(pair: StackPair) -> None:
    """close() after write_eof, while the peer keeps its side open: connection_lost(None) follows all the same."""
    accepted = Accepted(lambda: Peer(keep_open_on_eof=True))
    server, port = await _listen(pair.server, pair.server_host, accepted)
    transport, client = await pair.client.create_connection(Peer, pair.server_host, port)
    transport.write(b"done")
    transport.write_eof()
    peer = await accepted.next()
    await peer.until(lambda: peer.eof)
    await pair.quiesce()  # our FIN is acknowledged by now
    transport.close()
    await client.until(lambda: client.lost)
    assert client.lost_error is None and client.reads() == ["made", "lost"], client.events
    peer.transport.close()
    await peer.until(lambda: peer.lost)
    assert peer.lost_error is None and bytes(peer.data) == b"done"
    await _close_server(server)
    _assert_clean(client, peer)


async def check_close_flushes_buffered_data(pair: StackPair) -> None:
    """close() right after a big write: every byte arrives before EOF; both ends lose the connection cleanly."""
    accepted = Accepted(lambda: Peer(keep_open_on_eof=False))
    server, port = await _listen(pair.server, pair.server_host, accepted)
    transport, client = await pair.client.create_connection(Peer, pair.server_host, port)
    data = payload(MIB, 4)
    transport.write(data)
    transport.close()
    assert transport.is_closing()
    transport.close()  # idempotent
    transport.write(b"ignored")  # asyncio ignores writes to a closing transport
    peer = await accepted.next()
    await peer.until(lambda: peer.lost)
    assert len(peer.data) == len(data) and bytes(peer.data) == data
    assert peer.reads()[-2:] == ["eof", "lost"] and peer.lost_error is None
    await client.until(lambda: client.lost)
    # After close() nothing more is read: asyncio stops reading a closing transport.
    assert client.lost_error is None and client.reads() == ["made", "lost"], client.events
    await _close_server(server)
    _assert_clean(client, peer)


async def _provoke_until_lost(pair: StackPair, peer: Peer) -> None:
    """Wait for ``peer`` to lose its connection; whenever the network goes quiet, send a byte.

    A reset can be lost like any segment; then only the next segment the
    peer sends draws a fresh RST from the other end (as with any TCP).
    """
    for _ in range(100):
        if await wait_or_quiet(pair, peer.until(lambda: peer.lost)):
            return
        if not peer.transport.is_closing():
            peer.transport.write(b"?")
    raise AssertionError("the peer never noticed the reset")


async def check_abort_resets_the_peer(pair: StackPair) -> None:
    """abort() from either end: connection_lost(None) here at once, a ConnectionError there, no EOF."""
    for aborting_side in ("client", "server"):
        accepted = Accepted(Peer)
        server, port = await _listen(pair.server, pair.server_host, accepted)
        transport, client = await pair.client.create_connection(Peer, pair.server_host, port)
        transport.write(b"hello")
        peer = await accepted.next()
        await peer.until(lambda: len(peer.data) == 5)
        aborter, victim = (client, peer) if aborting_side == "client" else (peer, client)
        aborter.transport.write(payload(200_000, 5))  # unsent data is discarded, not flushed
        aborter.transport.abort()
        assert aborter.transport.is_closing()
        aborter.transport.abort()  # idempotent
        aborter.transport.write(b"ignored")
        await aborter.until(lambda: aborter.lost)
        assert aborter.lost_error is None
        await _provoke_until_lost(pair, victim)
        assert isinstance(victim.lost_error, ConnectionError), f"{aborting_side} abort: peer got {victim.lost_error!r}"
        assert not victim.eof, f"{aborting_side} abort looked like a clean close to the peer"
        await _close_server(server)
        _assert_clean(client, peer)


async def check_connection_refused(pair: StackPair) -> None:
    """A port nobody listens on refuses: ConnectionRefusedError from create_connection and open_connection."""
    server, port = await _listen(pair.server, pair.server_host, Peer)
    await _close_server(server)
    for attempt in (
        lambda: pair.client.create_connection(Peer, pair.server_host, port),
        lambda: pair.client.open_connection(pair.server_host, port),
    ):
        try:
            await attempt()
        except ConnectionRefusedError:
            pass
        else:
            raise AssertionError(f"connecting to closed port {port} did not raise ConnectionRefusedError")
    # The stack is still fine afterwards.
    accepted = Accepted(Echo)
    server, port = await _listen(pair.server, pair.server_host, accepted)
    reader, writer = await pair.client.open_connection(pair.server_host, port)
    writer.write(b"still here")
    writer.write_eof()
    assert await reader.read() == b"still here"
    writer.close()
    await writer.wait_closed()
    await _close_server(server)


async def check_extra_info(pair: StackPair) -> None:
    """peername and sockname agree across the two ends, for transports and streams."""
    accepted = Accepted(lambda: Peer(keep_open_on_eof=False))
    server, port = await _listen(pair.server, pair.server_host, accepted)
    transport, client = await pair.client.create_connection(Peer, pair.server_host, port)
    peer = await accepted.next()
    near_peer, near_sock = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    far_peer, far_sock = peer.transport.get_extra_info("peername"), peer.transport.get_extra_info("sockname")
    assert tuple(near_peer[:2]) == (pair.server_host, port), near_peer
    assert near_sock[0] == pair.client_host and 0 < near_sock[1] < 65536, near_sock
    assert tuple(far_peer[:2]) == tuple(near_sock[:2]), (far_peer, near_sock)
    assert tuple(far_sock[:2]) == tuple(near_peer[:2]), (far_sock, near_peer)
    assert transport.get_extra_info("no such key", "default") == "default"
    assert transport.get_extra_info("no such key") is None
    reader, writer = await pair.client.open_connection(pair.server_host, port)
    assert tuple(writer.get_extra_info("peername")[:2]) == (pair.server_host, port)
    assert writer.get_extra_info("sockname")[1] != near_sock[1], "two connections share a local port"
    writer.close()
    await writer.wait_closed()
    transport.close()
    await client.until(lambda: client.lost)
    await _close_server(server)
    _assert_clean(client, peer)


async def check_write_buffer_limits(pair: StackPair) -> None:
    """set/get_write_buffer_limits as asyncio defines them: (low, high), validated, defaults derived."""
    server, port = await _listen(pair.server, pair.server_host, lambda: Peer(keep_open_on_eof=False))
    transport, client = await pair.client.create_connection(Peer, pair.server_host, port)
    transport.set_write_buffer_limits(high=1000, low=100)
    assert transport.get_write_buffer_limits() == (100, 1000)
    transport.set_write_buffer_limits(high=4000)
    assert transport.get_write_buffer_limits() == (1000, 4000)
    transport.set_write_buffer_limits(low=500)
    assert transport.get_write_buffer_limits() == (500, 2000)
    for high, low in ((10, 20), (-1, None), (None, -1)):
        try:
            transport.set_write_buffer_limits(high=high, low=low)
        except ValueError:
            pass
        else:
            raise AssertionError(f"set_write_buffer_limits(high={high}, low={low}) was accepted")
    assert transport.get_write_buffer_size() == 0
    transport.close()
    await client.until(lambda: client.lost)
    await _close_server(server)
    _assert_clean(client)


async def check_flow_control(pair: StackPair) -> None:
    """A receiver that pauses reading makes the sender's buffer fill and pause; resuming delivers everything.

    The receiver pauses in ``connection_made``, before any data. The sender
    writes 64 KiB at a time while not paused. When it is paused and the
    network goes quiet without a ``resume_writing``, the sender is stuck on
    the receiver, as it must be: nothing may have been delivered. Then the
    receiver resumes, and every byte must arrive, in order, with the sender
    resumed to finish its writes.
    """
    high, low = 64 * KIB, 16 * KIB
    chunk = 64 * KIB
    total = pair.flow_control_bytes
    data = payload(total, 6)
    accepted = Accepted(lambda: Peer(keep_open_on_eof=False, on_made=lambda p: p.transport.pause_reading()))
    server, port = await _listen(pair.server, pair.server_host, accepted)
    transport, sender = await pair.client.create_connection(Peer, pair.server_host, port)
    transport.set_write_buffer_limits(high=high, low=low)
    receiver = await accepted.next()
    assert not receiver.transport.is_reading()
    written = 0
    stuck_at: int | None = None
    while written < total:
        if sender.paused:
            if await wait_or_stall(pair, sender.until(lambda: not sender.paused)):
                continue
            stuck_at = written
            break
        transport.write(data[written : written + chunk])
        written += min(chunk, total - written)
    assert stuck_at is not None, f"wrote all {total} bytes to a receiver that reads nothing: no back-pressure"
    assert sender.pauses >= 1
    assert transport.get_write_buffer_size() > low, "paused although the buffer is below the low-water mark"
    await pair.quiesce()
    assert receiver.events == ["made"], f"a paused receiver got {receiver.events[1:4]}..."
    # Resume: the held data arrives, the window opens, the sender is resumed.
    receiver.transport.resume_reading()
    assert receiver.transport.is_reading()
    while written < total:
        if sender.paused:
            await sender.until(lambda: not sender.paused)
            continue
        transport.write(data[written : written + chunk])
        written += min(chunk, total - written)
    transport.close()
    await receiver.until(lambda: receiver.lost)
    assert len(receiver.data) == total and bytes(receiver.data) == data, "bytes lost or reordered across a pause"
    assert receiver.reads()[-2:] == ["eof", "lost"]
    assert sender.resumes >= 1
    await sender.until(lambda: sender.lost)
    assert sender.lost_error is None
    await _close_server(server)
    _assert_clean(sender, receiver)


async def check_pause_reading_holds_data_and_eof(pair: StackPair) -> None:
    """While paused, neither data nor EOF is delivered; resume_reading delivers both, in order."""
    accepted = Accepted(lambda: Peer(keep_open_on_eof=False, on_made=lambda p: p.transport.pause_reading()))
    server, port = await _listen(pair.server, pair.server_host, accepted)
    transport, client = await pair.client.create_connection(Peer, pair.server_host, port)
    data = payload(10_000, 7)
    transport.write(data)
    transport.write_eof()
    peer = await accepted.next()
    await pair.quiesce()
    assert peer.events == ["made"] and not peer.transport.is_reading()
    peer.transport.pause_reading()  # pausing twice is harmless
    peer.transport.resume_reading()
    await peer.until(lambda: peer.lost)
    assert bytes(peer.data) == data and peer.reads()[-2:] == ["eof", "lost"] and peer.lost_error is None
    await client.until(lambda: client.lost)
    assert client.lost_error is None and client.eof
    await _close_server(server)
    _assert_clean(client, peer)


async def check_paused_reader_after_write_eof_gets_late_data(pair: StackPair) -> None:
    """A side that half-closed and paused reading still gets the peer's later data and EOF on resume.

    The connection is fully closed on the wire (both FINs exchanged) while
    the reader is paused; the bytes are the application's all the same.
    """

    def reply_and_close(peer: Peer) -> None:
        peer.transport.write(b"late data " * 1000)
        peer.transport.close()

    accepted = Accepted(lambda: Peer(keep_open_on_eof=True, on_eof=reply_and_close))
    server, port = await _listen(pair.server, pair.server_host, accepted)
    transport, client = await pair.client.create_connection(Peer, pair.server_host, port)
    transport.pause_reading()
    transport.write_eof()
    peer = await accepted.next()
    await peer.until(lambda: peer.lost)
    await pair.quiesce()
    assert client.reads() == ["made"], client.events
    transport.resume_reading()
    await client.until(lambda: client.lost)
    assert bytes(client.data) == b"late data " * 1000
    assert client.reads()[-2:] == ["eof", "lost"] and client.lost_error is None, client.events
    await _close_server(server)
    _assert_clean(client, peer)


async def check_streams(pair: StackPair) -> None:
    """start_server / open_connection: readline, readexactly, drain, IncompleteReadError, wait_closed."""
    failures: list[BaseException] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                command, _, argument = line.rstrip(b"\n").partition(b" ")
                if command == b"ECHO":
                    writer.write(argument + b"\n")
                elif command == b"BLOB":
                    blob = await reader.readexactly(int(argument))
                    writer.write(b"%d %s\n" % (len(blob), hashlib.sha256(blob).hexdigest().encode()))
                elif command == b"WANT":
                    try:
                        await reader.readexactly(int(argument))
                    except asyncio.IncompleteReadError as error:
                        writer.write(b"INCOMPLETE %d\n" % len(error.partial))
                    break
                elif command == b"QUIT":
                    writer.write(b"BYE\n")
                    break
                await writer.drain()
            await writer.drain()
        except BaseException as error:  # reported by the check, not lost in a task
            failures.append(error)
            raise
        finally:
            writer.close()
            await writer.wait_closed()

    server = await pair.server.start_server(handle, pair.server_host, 0)
    port = server_port(server)
    reader, writer = await pair.client.open_connection(pair.server_host, port)
    writer.write(b"ECHO hello\n")
    await writer.drain()
    assert await reader.readline() == b"hello\n"
    blob = payload(300_000, 8)
    writer.write(b"BLOB %d\n" % len(blob))
    writer.write(blob)
    await writer.drain()
    assert await reader.readline() == b"%d %s\n" % (len(blob), hashlib.sha256(blob).hexdigest().encode())
    writer.write(b"QUIT\n")
    await writer.drain()
    assert await reader.readline() == b"BYE\n"
    assert await reader.read() == b"" and reader.at_eof()
    writer.close()
    await writer.wait_closed()
    # A short read: the peer gets IncompleteReadError with what did arrive.
    reader, writer = await pair.client.open_connection(pair.server_host, port)
    writer.write(b"WANT 10\n12345")
    writer.write_eof()
    assert await reader.readline() == b"INCOMPLETE 5\n"
    assert await reader.read() == b""
    try:
        await reader.readexactly(1)
    except asyncio.IncompleteReadError as error:
        assert error.partial == b""
    else:
        raise AssertionError("readexactly after EOF did not raise")
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    assert not failures, failures


async def check_streams_bulk_with_drain(pair: StackPair) -> None:
    """4 MiB through StreamWriter.drain into a small-limit StreamReader: back-pressure both ways, bytes intact."""
    failures: list[BaseException] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            digest = hashlib.sha256()
            size = 0
            while chunk := await reader.read(10_000):
                digest.update(chunk)
                size += len(chunk)
            writer.write(b"%d %s" % (size, digest.hexdigest().encode()))
            await writer.drain()
        except BaseException as error:
            failures.append(error)
            raise
        finally:
            writer.close()
            await writer.wait_closed()

    server = await pair.server.start_server(handle, pair.server_host, 0, limit=16 * KIB)
    reader, writer = await pair.client.open_connection(pair.server_host, server_port(server))
    data = payload(4 * MIB, 9)
    view = memoryview(data)
    for offset in range(0, len(data), 64 * KIB):
        writer.write(view[offset : offset + 64 * KIB])
        await writer.drain()
    writer.write_eof()
    answer = await reader.read()
    assert answer == b"%d %s" % (len(data), hashlib.sha256(data).hexdigest().encode()), answer
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    assert not failures, failures


async def check_server_close_and_wait_closed(pair: StackPair) -> None:
    """server.close() stops accepting at once; open connections go on; wait_closed ends after them."""
    accepted = Accepted(Echo)
    server = await pair.server.create_server(accepted, pair.server_host, 0)
    port = server_port(server)
    assert server.is_serving()
    transport, client = await pair.client.create_connection(Peer, pair.server_host, port)
    # Accepted first: closing a listener resets connections it has not
    # accepted yet (as Linux does for its accept queue).
    await accepted.next()
    server.close()
    assert not server.is_serving()
    try:
        await pair.client.create_connection(Peer, pair.server_host, port)
    except ConnectionRefusedError:
        pass
    else:
        raise AssertionError("a closed server still accepted a connection")
    transport.write(b"still served")
    await client.until(lambda: len(client.data) >= 12)
    assert bytes(client.data) == b"still served"
    transport.close()
    await server.wait_closed()
    await client.until(lambda: client.lost)
    assert len(accepted.peers) == 1
    # The port can be listened on again, with the async context manager form.
    server = await pair.server.create_server(Echo, pair.server_host, port)
    async with server:
        reader, writer = await pair.client.open_connection(pair.server_host, port)
        writer.write(b"again")
        writer.write_eof()
        assert await reader.read() == b"again"
        writer.close()
        await writer.wait_closed()
    assert not server.is_serving()
    _assert_clean(client, *accepted.peers)


async def check_serve_forever_cancelled(pair: StackPair) -> None:
    """serve_forever serves until cancelled; cancelling it closes the server."""
    server = await pair.server.create_server(Echo, pair.server_host, 0, start_serving=False)
    port = server_port(server)
    serving = asyncio.ensure_future(server.serve_forever())
    await asyncio.sleep(0)
    assert server.is_serving()
    reader, writer = await pair.client.open_connection(pair.server_host, port)
    writer.write(b"x")
    writer.write_eof()
    assert await reader.read() == b"x"
    writer.close()
    await writer.wait_closed()
    serving.cancel()
    try:
        await serving
    except asyncio.CancelledError:
        pass
    assert not server.is_serving()
    await server.wait_closed()


async def check_many_concurrent_connections(pair: StackPair, count: int = 50) -> None:
    """50 connections at once, each echoing its own payload through one server."""
    accepted = Accepted(Echo)
    server, port = await _listen(pair.server, pair.server_host, accepted)

    async def one(index: int) -> None:
        data = payload(random.Random(index).randrange(1, 40_000), index)
        reader, writer = await pair.client.open_connection(pair.server_host, port)
        for offset in range(0, len(data), 7000):
            writer.write(data[offset : offset + 7000])
            await writer.drain()
        writer.write_eof()
        echoed = await reader.read()
        assert echoed == data, f"connection {index}: {len(echoed)} of {len(data)} bytes echoed correctly"
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(one(index) for index in range(count)))
    assert len(accepted.peers) == count
    for peer in accepted.peers:
        await peer.until(lambda peer=peer: peer.lost)  # type: ignore[misc]
    ports = {peer.transport.get_extra_info("peername")[1] for peer in accepted.peers}
    assert len(ports) == count, "client ports reused among concurrent connections"
    await _close_server(server)
    _assert_clean(*accepted.peers)


class _Datagrams(_Conditions, asyncio.DatagramProtocol):
    """Records datagrams and errors; echoes datagrams back when ``echo``."""

    def __init__(self, echo: bool = False) -> None:
        super().__init__()
        self.echo = echo
        self.transport: Any = None
        self.datagrams: list[tuple[bytes, Any]] = []
        self.errors: list[Exception] = []
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.echo:
            self.transport.sendto(data, addr)
        self.datagrams.append((data, addr))
        self._changed()

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)
        self._changed()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def _send_until(
    pair: StackPair, send: Callable[[], None], receiver: _Datagrams, arrived: Callable[[], bool], what: str
) -> None:
    """Send, and again every 2 s (the stacks' time) until ``arrived()``: datagrams may be lost."""
    for _attempt in range(30):
        send()
        if await _first(receiver.until(arrived), pair.sleep(2.0)):
            return
    raise AssertionError(f"{what}: nothing after 30 attempts, 2 s apart")


async def check_udp_echo(pair: StackPair) -> None:
    """Datagram endpoints: a connected client and an echoing server; each datagram comes back whole.

    A datagram may be lost on a lossy path; it is sent again when its echo
    has not come back within 2 s.
    """
    echo_transport, echo = await pair.server.create_datagram_endpoint(
        lambda: _Datagrams(echo=True), local_addr=(pair.server_host, 0))
    host, port = echo_transport.get_extra_info("sockname")[:2]
    assert host == pair.server_host and port > 0
    transport, client = await pair.client.create_datagram_endpoint(_Datagrams, remote_addr=(pair.server_host, port))
    local = transport.get_extra_info("sockname")
    assert local[0] == pair.client_host, local
    assert tuple(transport.get_extra_info("peername")[:2]) == (pair.server_host, port)
    for index, size in enumerate((0, 1, 512, 1472, 1473, 4000, 9000)):
        data = payload(size, 100 + index)
        await _send_until(
            pair, lambda: transport.sendto(data), client, lambda: any(got == data for got, _ in client.datagrams),
            f"echo of a {size}-byte datagram")
    for got, addr in client.datagrams:
        assert tuple(addr[:2]) == (pair.server_host, port), addr
    for got, source in echo.datagrams:
        assert tuple(source[:2]) == tuple(local[:2]), (source, local)
    transport.close()
    echo_transport.close()
    assert await client.lost is None and await echo.lost is None


async def check_udp_closed_port_refused(pair: StackPair) -> None:
    """A connected endpoint hears of a closed port as error_received(ConnectionRefusedError)."""
    probe_transport, _ = await pair.server.create_datagram_endpoint(_Datagrams, local_addr=(pair.server_host, 0))
    port = probe_transport.get_extra_info("sockname")[1]
    probe_transport.close()
    transport, client = await pair.client.create_datagram_endpoint(_Datagrams, remote_addr=(pair.server_host, port))
    await _send_until(pair, lambda: transport.sendto(b"anyone there?"), client, lambda: bool(client.errors),
                      "error_received for a closed port")
    assert all(isinstance(error, ConnectionRefusedError) for error in client.errors), client.errors
    assert not client.datagrams
    transport.close()
    assert await client.lost is None


CHECKS: tuple[Callable[[StackPair], Awaitable[None]], ...] = (
    check_connect_both_directions,
    check_data_integrity_write_sizes,
    check_writelines,
    check_half_close_client_first,
    check_half_close_server_first,
    check_write_after_write_eof_raises,
    check_close_after_write_eof,
    check_close_flushes_buffered_data,
    check_abort_resets_the_peer,
    check_connection_refused,
    check_extra_info,
    check_write_buffer_limits,
    check_flow_control,
    check_pause_reading_holds_data_and_eof,
    check_paused_reader_after_write_eof_gets_late_data,
    check_streams,
    check_streams_bulk_with_drain,
    check_server_close_and_wait_closed,
    check_serve_forever_cancelled,
    check_many_concurrent_connections,
    check_udp_echo,
    check_udp_closed_port_refused,
)
"""Every check, in a stable order; drivers parametrize over this."""
