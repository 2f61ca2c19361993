"""The protocols the conformance checks drive: recorders that check asyncio's callback grammar.

``Peer`` records every callback of an ``asyncio.Protocol``, checks the order
on each, and lets a check await any condition on what it recorded;
``Echo`` writes back what it reads; ``Accepted`` is a server's protocol
factory that hands each accepted ``Peer`` to the check. ``Collector`` is
the ``BufferedProtocol`` flavour and ``Datagrams`` the UDP one. The small
functions at the end are the checks' shared moves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from netstack.conformance.harness import StackPair, first_of, server_port, wait_or_quiet


class Conditions:
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


class Peer(Conditions, asyncio.Protocol):
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


async def listen(stack: Any, host: str, factory: Callable[[], asyncio.BaseProtocol]) -> tuple[Any, int]:
    server = await stack.create_server(factory, host, 0)
    return server, server_port(server)


async def close_server(server: Any) -> None:
    server.close()
    await server.wait_closed()


def assert_clean(*peers: Peer) -> None:
    for peer in peers:
        assert not peer.violations, peer.violations


class Collector(asyncio.BufferedProtocol):
    """A BufferedProtocol reading into small buffers of its own (so one delivery spans several)."""

    def __init__(self) -> None:
        self.buffer = bytearray(1000)
        self.received = bytearray()
        self.eof = False
        self.done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        assert 0 < nbytes <= len(self.buffer)
        self.received += self.buffer[:nbytes]

    def eof_received(self) -> None:
        self.eof = True

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.done.done():
            self.done.set_result(exc)


class Datagrams(Conditions, asyncio.DatagramProtocol):
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


async def send_until(
    pair: StackPair, send: Callable[[], None], receiver: Datagrams, arrived: Callable[[], bool], what: str
) -> None:
    """Send, and again every 2 s (the stacks' time) until ``arrived()``: datagrams may be lost."""
    for _attempt in range(30):
        send()
        if await first_of(receiver.until(arrived), pair.sleep(2.0)):
            return
    raise AssertionError(f"{what}: nothing after 30 attempts, 2 s apart")


async def provoke_until_lost(pair: StackPair, peer: Peer) -> None:
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
