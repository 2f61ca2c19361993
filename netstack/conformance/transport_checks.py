"""Conformance checks of the TCP transport contract: data, half close, close, abort, flow control.

Each check opens its own server and connections on the pair it is given
and leaves nothing open behind it; see ``netstack.conformance`` for the
contract they encode.
"""

from __future__ import annotations

import asyncio
import hashlib

from netstack.conformance.harness import KIB, MIB, StackPair, payload, wait_or_stall
from netstack.conformance.peers import (
    Accepted,
    Collector,
    Echo,
    Peer,
    assert_clean,
    close_server,
    listen,
    provoke_until_lost,
)


async def check_connect_both_directions(pair: StackPair) -> None:
    """create_server on either stack, create_connection from the other; bytes both ways."""
    for listener, host, connector in ((pair.server, pair.server_host, pair.client), (pair.client, pair.client_host, pair.server)):
        accepted = Accepted(Echo)
        server, port = await listen(listener, host, accepted)
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
        await close_server(server)
        assert_clean(client, echo)


WRITE_SIZES = (
    0, 1, 2, 3, 7, 100, 535, 536, 537, 1023, 1024, 1447, 1448, 1449, 1460, 1461, 2896, 2897,
    4095, 4096, 8191, 8192, 16384, 65535, 65536, 65537, 100_000, 262_144, MIB,
)


async def check_data_integrity_write_sizes(pair: StackPair) -> None:
    """Writes of every size from 0 to 1 MiB, as bytes, bytearray and memoryview, arrive intact and in order."""
    accepted = Accepted(Echo)
    server, port = await listen(pair.server, pair.server_host, accepted)
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
    await close_server(server)
    assert_clean(client, *accepted.peers)


async def check_writelines(pair: StackPair) -> None:
    """writelines takes any iterable of bytes-like objects."""
    accepted = Accepted(Echo)
    server, port = await listen(pair.server, pair.server_host, accepted)
    transport, client = await pair.client.create_connection(Peer, pair.server_host, port)
    pieces = [b"alpha ", bytearray(b"beta "), memoryview(b"gamma "), b"", payload(70_000, 1)]
    transport.writelines(pieces)
    transport.writelines(bytes([65 + i]) for i in range(26))
    transport.writelines([])
    expected = b"".join(bytes(piece) for piece in pieces) + bytes(range(65, 91))
    transport.write_eof()
    await client.until(lambda: client.lost)
    assert bytes(client.data) == expected
    await close_server(server)
    assert_clean(client, *accepted.peers)


async def check_half_close_client_first(pair: StackPair) -> None:
    """write_eof from the client: the server sees EOF and can still answer, then closes."""

    def answer(peer: Peer) -> None:
        peer.transport.write(b"response to " + bytes(peer.data))
        peer.transport.close()

    accepted = Accepted(lambda: Peer(keep_open_on_eof=True, on_eof=answer))
    server, port = await listen(pair.server, pair.server_host, accepted)
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
    await close_server(server)
    assert_clean(client, peer)


async def check_half_close_server_first(pair: StackPair) -> None:
    """write_eof from the server: the client sees EOF, keeps sending, and both end cleanly."""

    def greet(peer: Peer) -> None:
        peer.transport.write(b"hello, then EOF")
        peer.transport.write_eof()

    accepted = Accepted(lambda: Peer(keep_open_on_eof=False, on_made=greet))
    server, port = await listen(pair.server, pair.server_host, accepted)
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
    await close_server(server)
    assert_clean(client, peer)


async def check_write_after_write_eof_raises(pair: StackPair) -> None:
    """Data written after write_eof cannot be sent: asyncio raises RuntimeError, never drops it silently."""
    accepted = Accepted(lambda: Peer(keep_open_on_eof=True))
    server, port = await listen(pair.server, pair.server_host, accepted)
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
    await provoke_until_lost(pair, peer)
    await close_server(server)
    assert_clean(client, peer)


async def check_close_after_write_eof(pair: StackPair) -> None:
    """close() after write_eof, while the peer keeps its side open: connection_lost(None) follows all the same."""
    accepted = Accepted(lambda: Peer(keep_open_on_eof=True))
    server, port = await listen(pair.server, pair.server_host, accepted)
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
    await close_server(server)
    assert_clean(client, peer)


async def check_close_flushes_buffered_data(pair: StackPair) -> None:
    """close() right after a big write: every byte arrives before EOF; both ends lose the connection cleanly."""
    accepted = Accepted(lambda: Peer(keep_open_on_eof=False))
    server, port = await listen(pair.server, pair.server_host, accepted)
    transport, client = await pair.client.create_connection(Peer, pair.server_host, port)
    data = payload(MIB, 4)
    transport.write(data)
    transport.close()
    assert transport.is_closing()
    transport.close()  # idempotent
    peer = await accepted.next()
    await peer.until(lambda: peer.lost)
    assert len(peer.data) == len(data) and bytes(peer.data) == data
    assert peer.reads()[-2:] == ["eof", "lost"] and peer.lost_error is None
    await client.until(lambda: client.lost)
    # After close() nothing more is read: asyncio stops reading a closing transport.
    assert client.lost_error is None and client.reads() == ["made", "lost"], client.events
    await close_server(server)
    assert_clean(client, peer)


async def check_abort_resets_the_peer(pair: StackPair) -> None:
    """abort() from either end: connection_lost(None) here at once, a ConnectionError there, no EOF."""
    for aborting_side in ("client", "server"):
        accepted = Accepted(Peer)
        server, port = await listen(pair.server, pair.server_host, accepted)
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
        await provoke_until_lost(pair, victim)
        assert isinstance(victim.lost_error, ConnectionError), f"{aborting_side} abort: peer got {victim.lost_error!r}"
        assert not victim.eof, f"{aborting_side} abort looked like a clean close to the peer"
        await close_server(server)
        assert_clean(client, peer)


async def check_buffered_protocol(pair: StackPair) -> None:
    """An asyncio.BufferedProtocol gets its bytes through get_buffer/buffer_updated, as on asyncio's own transports."""
    data = payload(200_000, 10)

    def send_and_close(peer: Peer) -> None:
        peer.transport.write(data)
        peer.transport.close()

    accepted = Accepted(lambda: Peer(on_made=send_and_close))
    server, port = await listen(pair.server, pair.server_host, accepted)
    transport, collector = await pair.client.create_connection(Collector, pair.server_host, port)
    assert await collector.done is None
    assert collector.eof and bytes(collector.received) == data
    await close_server(server)


async def check_connection_refused(pair: StackPair) -> None:
    """A port nobody listens on refuses: ConnectionRefusedError from create_connection and open_connection."""
    server, port = await listen(pair.server, pair.server_host, Peer)
    await close_server(server)
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
    server, port = await listen(pair.server, pair.server_host, accepted)
    reader, writer = await pair.client.open_connection(pair.server_host, port)
    writer.write(b"still here")
    writer.write_eof()
    assert await reader.read() == b"still here"
    writer.close()
    await writer.wait_closed()
    await close_server(server)


async def check_extra_info(pair: StackPair) -> None:
    """peername and sockname agree across the two ends, for transports and streams."""
    accepted = Accepted(lambda: Peer(keep_open_on_eof=False))
    server, port = await listen(pair.server, pair.server_host, accepted)
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
    await close_server(server)
    assert_clean(client, peer)


async def check_write_buffer_limits(pair: StackPair) -> None:
    """set/get_write_buffer_limits as asyncio defines them: (low, high), validated, defaults derived."""
    server, port = await listen(pair.server, pair.server_host, lambda: Peer(keep_open_on_eof=False))
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
    await close_server(server)
    assert_clean(client)


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
    server, port = await listen(pair.server, pair.server_host, accepted)
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
    await close_server(server)
    assert_clean(sender, receiver)


async def check_pause_reading_holds_data_and_eof(pair: StackPair) -> None:
    """While paused, neither data nor EOF is delivered; resume_reading delivers both, in order."""
    accepted = Accepted(lambda: Peer(keep_open_on_eof=False, on_made=lambda p: p.transport.pause_reading()))
    server, port = await listen(pair.server, pair.server_host, accepted)
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
    await close_server(server)
    assert_clean(client, peer)


async def check_paused_reader_after_write_eof_gets_late_data(pair: StackPair) -> None:
    """A side that half-closed and paused reading still gets the peer's later data and EOF on resume.

    The connection is fully closed on the wire (both FINs exchanged) while
    the reader is paused; the bytes are the application's all the same.
    """

    def reply_and_close(peer: Peer) -> None:
        peer.transport.write(b"late data " * 1000)
        peer.transport.close()

    accepted = Accepted(lambda: Peer(keep_open_on_eof=True, on_eof=reply_and_close))
    server, port = await listen(pair.server, pair.server_host, accepted)
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
    await close_server(server)
    assert_clean(client, peer)
