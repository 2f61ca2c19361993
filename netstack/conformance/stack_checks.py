"""Conformance checks of the Stack contract: streams, servers, many connections, UDP endpoints."""

from __future__ import annotations

import asyncio
import hashlib
import random

from netstack.conformance.harness import KIB, MIB, StackPair, payload, server_port
from netstack.conformance.peers import Accepted, Datagrams, Echo, Peer, assert_clean, close_server, listen, send_until


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
    assert_clean(client, *accepted.peers)


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
    server, port = await listen(pair.server, pair.server_host, accepted)

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
    await close_server(server)
    assert_clean(*accepted.peers)


async def check_udp_echo(pair: StackPair) -> None:
    """Datagram endpoints: a connected client and an echoing server; each datagram comes back whole.

    A datagram may be lost on a lossy path; it is sent again when its echo
    has not come back within 2 s.
    """
    echo_transport, echo = await pair.server.create_datagram_endpoint(
        lambda: Datagrams(echo=True), local_addr=(pair.server_host, 0))
    host, port = echo_transport.get_extra_info("sockname")[:2]
    assert host == pair.server_host and port > 0
    transport, client = await pair.client.create_datagram_endpoint(Datagrams, remote_addr=(pair.server_host, port))
    local = transport.get_extra_info("sockname")
    assert local[0] == pair.client_host, local
    assert tuple(transport.get_extra_info("peername")[:2]) == (pair.server_host, port)
    # No empty datagram: asyncio's socket transport drops it silently before Python 3.13.
    for index, size in enumerate((1, 512, 1472, 1473, 4000, 9000)):
        data = payload(size, 100 + index)
        await send_until(
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
    probe_transport, _ = await pair.server.create_datagram_endpoint(Datagrams, local_addr=(pair.server_host, 0))
    port = probe_transport.get_extra_info("sockname")[1]
    probe_transport.close()
    transport, client = await pair.client.create_datagram_endpoint(Datagrams, remote_addr=(pair.server_host, port))
    await send_until(pair, lambda: transport.sendto(b"anyone there?"), client, lambda: bool(client.errors),
                      "error_received for a closed port")
    assert all(isinstance(error, ConnectionRefusedError) for error in client.errors), client.errors
    assert not client.datagrams
    transport.close()
    assert await client.lost is None
