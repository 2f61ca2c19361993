"""Unmodified asyncio applications over the direct stack.

The applications below are written against asyncio alone -- the chat room
for ``asyncio.start_server``/``open_connection``, the key-value store as
plain ``asyncio.Protocol`` subclasses, the bulk reader as an
``asyncio.BufferedProtocol`` -- and import nothing from netstack. Each test
runs the same application code twice: on the host's kernel sockets over
loopback (the reference) and on two of our stacks joined by an in-memory
link, where only the four entry points change (``stack.start_server``
instead of ``asyncio.start_server``, and so on). Whatever the kernel run
shows, ours must show too.

The last test pins down the callback order when a connection is already
over before its protocol exists: one batch from the network carrying the
handshake's ACK, data and a RST.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from netstack.clock import ManualClock
from netstack.conformance import Accepted, Peer, VirtualTime, direct_stack_pair, payload
from netstack.devices.link import link_pair
from netstack.stack import Stack

# ----------------------------------------------------------------------------
# The applications: asyncio only.


class ChatRoom:
    """A line-based chat server, written for ``asyncio.start_server`` and nothing else.

    A client first sends its name; then every line it sends goes to every
    other member as ``<name> text``; ``/who`` lists the members to the
    asker; ``/quit`` (or EOF) leaves. Joins and departures are announced.
    """

    def __init__(self) -> None:
        self.members: dict[asyncio.StreamWriter, str] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Welcome! Your name?\n")
        await writer.drain()
        name = (await reader.readline()).decode().strip() or "anonymous"
        self.members[writer] = name
        await self.broadcast(f"* {name} joined\n")
        try:
            while line := await reader.readline():
                text = line.decode().rstrip("\n")
                if text == "/quit":
                    break
                if text == "/who":
                    writer.write(("members: " + ", ".join(sorted(self.members.values())) + "\n").encode())
                    await writer.drain()
                    continue
                await self.broadcast(f"<{name}> {text}\n", exclude=writer)
        finally:
            del self.members[writer]
            writer.write(b"Goodbye.\n")
            writer.close()
            await writer.wait_closed()
            await self.broadcast(f"* {name} left\n")

    async def broadcast(self, text: str, exclude: asyncio.StreamWriter | None = None) -> None:
        recipients = [member for member in self.members if member is not exclude]
        for member in recipients:
            member.write(text.encode())
        for member in recipients:
            with contextlib.suppress(ConnectionError):
                await member.drain()


class KeyValueServer(asyncio.Protocol):
    """A key-value store over length-prefixed frames: a plain ``asyncio.Protocol``.

    Requests and replies are ``!I``-length-prefixed frames; a request is
    ``SET key value``, ``GET key`` or ``DUMP n`` (n bytes of a fixed
    pattern, written with flow control: only while the transport has not
    called ``pause_writing``).
    """

    store: dict[bytes, bytes] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buffer = bytearray()
        self.pending_dump = 0
        self.paused = False
        self.transport.set_write_buffer_limits(high=32 * 1024)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 4:
            (length,) = struct.unpack_from("!I", self.buffer)
            if len(self.buffer) < 4 + length:
                break
            request = bytes(self.buffer[4 : 4 + length])
            del self.buffer[: 4 + length]
            self.handle(request)

    def handle(self, request: bytes) -> None:
        command, _, rest = request.partition(b" ")
        if command == b"SET":
            key, _, value = rest.partition(b" ")
            self.store[key] = value
            self.reply(b"OK")
        elif command == b"GET":
            self.reply(self.store.get(rest, b"(nil)"))
        elif command == b"DUMP":
            self.transport.write(struct.pack("!I", int(rest)))
            self.pending_dump = int(rest)
            self.dump()
        else:
            self.reply(b"ERR unknown command")

    def reply(self, body: bytes) -> None:
        self.transport.write(struct.pack("!I", len(body)) + body)

    def dump(self) -> None:
        while self.pending_dump and not self.paused:
            piece = min(self.pending_dump, 16 * 1024)
            self.transport.write(bytes([self.pending_dump % 251]) * piece)
            self.pending_dump -= piece

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.dump()

    def eof_received(self) -> None:
        return None  # close our side too


class KeyValueClient(asyncio.Protocol):
    """The matching client: one outstanding request at a time, replies as futures."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buffer = bytearray()
        self.waiting: asyncio.Future[bytes] | None = None
        self.closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def request(self, body: bytes) -> bytes:
        self.waiting = asyncio.get_running_loop().create_future()
        self.transport.write(struct.pack("!I", len(body)) + body)
        return await self.waiting

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= 4 and self.waiting is not None:
            (length,) = struct.unpack_from("!I", self.buffer)
            if len(self.buffer) >= 4 + length:
                body = bytes(self.buffer[4 : 4 + length])
                del self.buffer[: 4 + length]
                self.waiting.set_result(body)
                self.waiting = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed.set_result(exc)


class BulkCounter(asyncio.BufferedProtocol):
    """Reads a stream into one small reusable buffer and hashes it: an ``asyncio.BufferedProtocol``."""

    def __init__(self) -> None:
        self.buffer = bytearray(4096)
        self.digest = hashlib.sha256()
        self.size = 0
        self.finished: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.digest.update(memoryview(self.buffer)[:nbytes])
        self.size += nbytes

    def connection_lost(self, exc: BaseException | None) -> None:
        if exc is not None:
            self.finished.set_exception(exc)
        else:
            self.finished.set_result((self.size, self.digest.hexdigest()))


class BulkSender(asyncio.Protocol):
    def __init__(self, data: bytes) -> None:
        self.data = data

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.data)  # type: ignore[attr-defined]
        transport.close()


# ----------------------------------------------------------------------------
# Where the applications run: the kernel's loopback, or two direct stacks.


@dataclasses.dataclass
class Network:
    """The four asyncio entry points an application needs, and the server's address."""

    start_server: Callable[..., Awaitable[Any]]
    open_connection: Callable[..., Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
    create_server: Callable[..., Awaitable[Any]]
    create_connection: Callable[..., Awaitable[tuple[Any, Any]]]
    host: str


def port_of(server: Any) -> int:
    return server.sockets[0].getsockname()[1] if server.sockets else server.port


@contextlib.asynccontextmanager
async def kernel_network() -> AsyncIterator[Network]:
    loop = asyncio.get_running_loop()
    yield Network(asyncio.start_server, asyncio.open_connection, loop.create_server, loop.create_connection, "127.0.0.1")


@contextlib.asynccontextmanager
async def netstack_network() -> AsyncIterator[Network]:
    async with direct_stack_pair() as pair:
        yield Network(
            pair.server.start_server, pair.client.open_connection,
            pair.server.create_server, pair.client.create_connection, pair.server_host,
        )


NETWORKS = [pytest.param(kernel_network, id="kernel-loopback"), pytest.param(netstack_network, id="netstack")]


# ----------------------------------------------------------------------------
# The tests: the same assertions on both networks.


async def expect(reader: asyncio.StreamReader, *lines: str) -> None:
    for line in lines:
        got = await asyncio.wait_for(reader.readline(), 10)
        assert got.decode() == line, (got, line)


@pytest.mark.asyncio
@pytest.mark.parametrize("network", NETWORKS)
async def test_stream_chat_application(network) -> None:
    async with network() as net:
        room = ChatRoom()
        server = await net.start_server(room.handle, net.host, 0)
        port = port_of(server)
        clients: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        for name in ("alice", "bob", "carol"):
            reader, writer = await net.open_connection(net.host, port)
            await expect(reader, "Welcome! Your name?\n")
            writer.write(f"{name}\n".encode())
            await writer.drain()
            clients[name] = (reader, writer)
            for member in clients:
                await expect(clients[member][0], f"* {name} joined\n")
        alice, bob, carol = clients["alice"], clients["bob"], clients["carol"]
        alice[1].write(b"hello, everyone\n")
        await expect(bob[0], "<alice> hello, everyone\n")
        await expect(carol[0], "<alice> hello, everyone\n")
        # A long line, in many small writes: StreamReader reassembles it.
        long_line = "x" * 50_000
        for offset in range(0, len(long_line), 999):
            bob[1].write(long_line[offset : offset + 999].encode())
        bob[1].write(b"\n")
        await bob[1].drain()
        await expect(alice[0], f"<bob> {long_line}\n")
        await expect(carol[0], f"<bob> {long_line}\n")
        carol[1].write(b"/who\n")
        await expect(carol[0], "members: alice, bob, carol\n")
        carol[1].write(b"/quit\n")
        await expect(carol[0], "Goodbye.\n")
        assert await carol[0].read() == b""
        await expect(alice[0], "* carol left\n")
        await expect(bob[0], "* carol left\n")
        # EOF instead of /quit.
        bob[1].write_eof()
        await expect(bob[0], "Goodbye.\n")
        await expect(alice[0], "* bob left\n")
        alice[1].write(b"/quit\n")
        await expect(alice[0], "Goodbye.\n")
        for reader, writer in clients.values():
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        assert not room.members


@pytest.mark.asyncio
@pytest.mark.parametrize("network", NETWORKS)
async def test_plain_protocol_application(network) -> None:
    async with network() as net:
        KeyValueServer.store = {}
        server = await net.create_server(KeyValueServer, net.host, 0)
        port = port_of(server)
        transport, client = await net.create_connection(KeyValueClient, net.host, port)
        assert await client.request(b"SET train 14:20") == b"OK"
        assert await client.request(b"GET train") == b"14:20"
        assert await client.request(b"GET bus") == b"(nil)"
        assert await client.request(b"FLY") == b"ERR unknown command"
        # 3 MB through the server's pause_writing/resume_writing loop.
        size = 3_000_000
        reply = await client.request(b"DUMP %d" % size)
        assert len(reply) == size
        expected = bytearray()
        left = size
        while left:
            piece = min(left, 16 * 1024)
            expected += bytes([left % 251]) * piece
            left -= piece
        assert reply == expected
        # A second client sees the same store.
        transport2, client2 = await net.create_connection(KeyValueClient, net.host, port)
        assert await client2.request(b"GET train") == b"14:20"
        for each in (transport, transport2):
            each.write_eof()
        assert await client.closed is None and await client2.closed is None
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
@pytest.mark.parametrize("network", NETWORKS)
async def test_buffered_protocol_application(network) -> None:
    async with network() as net:
        data = payload(2_000_000, 3)
        server = await net.create_server(lambda: BulkSender(data), net.host, 0)
        _, counter = await net.create_connection(BulkCounter, net.host, port_of(server))
        assert await counter.finished == (len(data), hashlib.sha256(data).hexdigest())
        server.close()
        await server.wait_closed()


# ----------------------------------------------------------------------------
# A connection that is over before its protocol exists.


class Gate:
    """A Netif wrapper that lets ARP and the first TCP frame through, then holds TCP frames
    until ``release()`` writes them all at once -- so that they reach the peer as one batch."""

    def __init__(self, netif: Any) -> None:
        self._netif = netif
        self.held: list[bytes] = []
        self.tcp_frames = 0
        self.open = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._netif, name)

    def write(self, frame: Any) -> None:
        is_tcp = bytes(frame[12:14]) == b"\x08\x00" and frame[23] == 6
        if is_tcp and not self.open:
            self.tcp_frames += 1
            if self.tcp_frames > 1:
                self.held.append(bytes(frame))
                return
        self._netif.write(frame)

    def release(self) -> None:
        self.open = True
        held, self.held = self.held, []
        for frame in held:
            self._netif.write(frame)


@pytest.mark.asyncio
async def test_connection_reset_before_the_server_protocol_runs() -> None:
    """ACK, data and RST in one batch: connection_made, data_received, then connection_lost(error).

    The handshake completes, the data arrives and the RST ends the
    connection all while the server's transport waits for the loop to call
    ``connection_made``; the events the layer reported meanwhile must not be
    lost, or the protocol never hears of the end and ``wait_closed`` hangs.
    """
    clock = ManualClock()
    server_netif, client_netif = link_pair()
    gate = Gate(client_netif)
    server_stack = Stack(server_netif, clock, ipv4="10.0.0.1/24")
    client_stack = Stack(gate, clock, ipv4="10.0.0.2/24")
    server_stack.start()
    client_stack.start()
    async with VirtualTime(clock) as time:
        accepted = Accepted(Peer)
        server = await server_stack.create_server(accepted, "10.0.0.1", 80)
        transport, client = await client_stack.create_connection(Peer, "10.0.0.1", 80)  # its ACK is held
        transport.write(b"hello")
        await time.quiesce()  # the data segment is held too
        transport.abort()  # and the RST
        await time.quiesce()
        assert len(gate.held) == 3, len(gate.held)
        gate.release()
        peer = await accepted.next()
        await asyncio.wait_for(peer.until(lambda: peer.lost), 10)
        assert peer.events == ["made", "data", "lost"], peer.events
        assert bytes(peer.data) == b"hello"
        assert isinstance(peer.lost_error, ConnectionResetError), peer.lost_error
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
    server_stack.close()
    client_stack.close()
