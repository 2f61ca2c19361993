"""Test helpers for code served by ``Http``: an in-memory server and a raw client.

Why it exists: the HTTP server's behaviour at the edges -- pipelining,
limits, timeouts -- is only observable byte for byte, from a client that
sends exactly what a test says and reads exactly what comes back. A client
library would normalise both. ``RawClient`` writes raw bytes and parses
responses just enough to frame them (status line, headers, a
``Content-Length`` body); ``http_pair`` serves a callback on one direct
stack and connects clients from a second one, joined by an in-memory link
and timed by a ``ManualClock`` under ``VirtualTime``, so every timeout
happens at virtual time and no test sleeps.

``FakeTransport`` is the other level (h11's ``tr()``): it lets a test feed
an ``HttpConnection`` directly, byte by byte or all at once, with no stack
underneath, and compare what comes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any

from netstack.clock import ManualClock
from netstack.conformance import VirtualTime
from netstack.devices.link import link_pair
from netstack.http.limits import Limits
from netstack.http.server import Callback, Http, ListeningServer

SERVER_HOST = "10.0.0.1"
CLIENT_HOST = "10.0.0.2"


@dataclasses.dataclass
class RawResponse:
    """One response as received: ``raw`` is every byte of it, head and body."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]


def parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    """Status, reason and lowercased header pairs of a response head (blank line included or not)."""
    lines = head.decode("latin-1").split("\r\n")
    version, status, reason = (lines[0].split(" ", 2) + [""])[:3]
    assert version == "HTTP/1.1", f"unexpected status line {lines[0]!r}"
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return int(status), reason, headers


class RawClient:
    """A client that sends raw bytes and frames the responses it reads."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, stack: Any, host: str, port: int) -> RawClient:
        reader, writer = await stack.open_connection(host, port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def request(self, data: bytes, *, head_only: bool = False) -> RawResponse:
        """Send ``data`` and read one final response."""
        self.send(data)
        return await self.response(head_only=head_only)

    async def response(self, *, head_only: bool = False, interim: bool = False) -> RawResponse:
        """Read one response; interim (1xx) ones are skipped unless ``interim``."""
        while True:
            head = await self.reader.readuntil(b"\r\n\r\n")
            status, reason, headers = parse_head(head)
            if 100 <= status < 200:
                if interim:
                    return RawResponse(status, reason, headers, b"", head)
                continue
            body = b""
            length = next((int(v) for k, v in headers if k == "content-length"), 0)
            if not head_only and status not in (204, 304) and length:
                body = await self.reader.readexactly(length)
            return RawResponse(status, reason, headers, body, head + body)

    async def read_to_eof(self) -> bytes:
        """Everything until the server closes; raises ``ConnectionResetError`` on a reset."""
        return await self.reader.read()

    async def closed(self) -> bool:
        """Whether the server closed (clean EOF, nothing left unread)."""
        return await self.reader.read() == b""

    def close(self) -> None:
        self.writer.close()


@dataclasses.dataclass
class HttpPair:
    """A served ``Http`` and a stack to connect from, on virtual time."""

    http: Http
    listening: ListeningServer
    server_stack: Any
    client_stack: Any
    clock: ManualClock
    driver: VirtualTime
    port: int

    async def connect(self) -> RawClient:
        return await RawClient.connect(self.client_stack, SERVER_HOST, self.port)

    async def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass (instantly)."""
        await self.driver.sleep(int(seconds * 1e9))

    def now(self) -> float:
        return self.clock.monotonic_ns() / 1e9


@contextlib.asynccontextmanager
async def http_pair(
    callback: Callback,
    *,
    routes: Mapping[str, Collection[str]] | None = None,
    limits: Limits | None = None,
    port: int = 80,
) -> AsyncIterator[HttpPair]:
    """Serve ``callback`` on 10.0.0.1:``port``; clients connect from 10.0.0.2."""
    from netstack.stack import Stack  # here: stack.py imports the world

    clock = ManualClock()
    server_netif, client_netif = link_pair()
    server_stack = Stack(server_netif, clock, ipv4=f"{SERVER_HOST}/24")
    client_stack = Stack(client_netif, clock, ipv4=f"{CLIENT_HOST}/24")
    server_stack.start()
    client_stack.start()
    try:
        async with VirtualTime(clock) as driver:
            http = Http(server_stack, clock, limits=limits)
            listening = await http.listen(port, http.make(callback, routes=routes))
            try:
                yield HttpPair(http, listening, server_stack, client_stack, clock, driver, listening.port)
            finally:
                listening.abort()
    finally:
        server_stack.close()
        client_stack.close()
        server_netif.close()
        client_netif.close()


class FakeTransport(asyncio.Transport):
    """A transport that records writes, for feeding an ``HttpConnection`` directly."""

    def __init__(self, peer: tuple[str, int] = ("192.0.2.7", 40000)) -> None:
        super().__init__({"peername": peer})
        self.written = bytearray()
        self.closed = False
        self.eof_written = False
        self.aborted = False
        self.reading = True
        self.protocol: Any = None

    def write(self, data: Any) -> None:
        assert not self.eof_written and not self.closed, "write after close"
        self.written += data

    def write_eof(self) -> None:
        self.eof_written = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.protocol is not None:
                asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data
