"""h11's ``tr()`` for the server: the same bytes fed whole, byte by byte and in random pieces give the same output.

These drive one ``HttpConnection`` directly through a ``FakeTransport``:
no stack, no TCP, so every split point is exactly what the test chose and
the ManualClock never moves.
"""

from __future__ import annotations

import asyncio
import json
import random
import re

import pytest

from netstack.clock import ManualClock
from netstack.http import Http, Limits, Request, Response, respond_json
from netstack.http.connection import HttpConnection
from netstack.http.server import ListeningServer
from netstack.http.testing import FakeTransport

pytestmark = pytest.mark.asyncio


async def describe(request: Request) -> Response:
    await asyncio.sleep(0)  # a real suspension, so answers interleave with parsing
    return respond_json([request.method, request.target, request.version, request.headers.items(),
                         request.body.decode("latin-1"), request.trailers.items(), request.keep_alive])


CASES = {
    "simple": b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "query-and-headers": b"GET /x/y?a=1&b=%20 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n",
    "absolute-form": b"GET http://example.com/p?q HTTP/1.1\r\n\r\n",
    "head": b"HEAD /h HTTP/1.1\r\n\r\n",
    "content-length": b"POST /p HTTP/1.1\r\nContent-Length: 13\r\n\r\nhello, world!",
    "chunked": (b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"4;a=b\r\nwiki\r\n5\r\npedia\r\nE;x\r\n in\r\n\r\nchunks.\r\n0\r\nT-1: x\r\nT-2: y\r\n\r\n"),
    "http-1.0-keep-alive": b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n",
    "pipelined": b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 1\r\n\r\nzGET /3 HTTP/1.1\r\n\r\n",
    "leading-crlf": b"\r\nGET / HTTP/1.1\r\n\r\n",
    "expect": b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    "close": b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n",
    "latin-1-value": b"GET / HTTP/1.1\r\nX-Bytes: caf\xe9\r\n\r\n",
    "malformed": b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nBad Header\r\n\r\n",
    "too-long-target": b"GET /1 HTTP/1.1\r\n\r\nGET /" + b"a" * 300 + b" HTTP/1.1\r\n\r\n",
    "too-many-headers": b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(11)) + b"\r\n",
    "too-large-body": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n100\r\n" + b"b" * 256 + b"\r\n0\r\n\r\n",
    "method-not-allowed": b"GET /r HTTP/1.1\r\n\r\nDELETE /r HTTP/1.1\r\n\r\n",
}
LIMITS = Limits(max_request_line=256, max_header_count=10, max_body_bytes=200)


async def feed(pieces: list[bytes]) -> bytes:
    clock = ManualClock()
    http = Http(None, clock, limits=LIMITS)
    connection = HttpConnection(http, http.make(describe, routes={"/r": {"GET"}}), ListeningServer(http, 80))
    transport = FakeTransport()
    transport.protocol = connection
    connection.connection_made(transport)
    for piece in pieces:
        connection.data_received(piece)
        await clock.settle()
    connection.eof_received()
    await clock.settle()
    assert transport.eof_written or transport.closed
    return transport.take()


def splits(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    pieces, at = [], 0
    while at < len(data):
        size = rng.randint(1, 9)
        pieces.append(data[at:at + size])
        at += size
    return pieces


@pytest.mark.parametrize("name", CASES)
async def test_whole_byte_by_byte_and_random_pieces_agree(name: str) -> None:
    data = CASES[name]
    whole = await feed([data])
    assert whole.startswith(b"HTTP/1.1 ")
    assert await feed([data[i:i + 1] for i in range(len(data))]) == whole
    for seed in range(3):
        assert await feed(splits(data, seed)) == whole


async def test_what_the_fed_requests_look_like() -> None:
    out = await feed([CASES["chunked"]])
    body = out.split(b"\r\n\r\n", 1)[1]
    method, target, version, headers, text, trailers, keep_alive = json.loads(body)
    assert (method, target, version, text) == ("POST", "/c", "1.1", "wikipedia in\r\n\r\nchunks.")
    assert trailers == [["t-1", "x"], ["t-2", "y"]] and keep_alive
    out = await feed([CASES["latin-1-value"]])
    assert ["x-bytes", "café"] in json.loads(out.split(b"\r\n\r\n", 1)[1])[3]
    statuses = {name: [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", await feed([data]))]
                for name, data in CASES.items()}
    assert statuses["pipelined"] == [200, 200, 200]
    assert statuses["expect"] == [100, 200]
    assert statuses["close"] == [200]
    assert statuses["malformed"] == [200, 400]
    assert statuses["too-long-target"] == [200, 414]
    assert statuses["too-many-headers"] == [431]
    assert statuses["too-large-body"] == [413]
    assert statuses["method-not-allowed"] == [200, 405]


async def test_pipelining_past_max_pipelined_pauses_reading_until_drained() -> None:
    clock = ManualClock()
    gate = asyncio.Event()

    async def gated(request: Request) -> Response:
        await gate.wait()
        return respond_json(request.path)

    http = Http(None, clock, limits=Limits(max_pipelined=4))
    connection = HttpConnection(http, http.make(gated), ListeningServer(http, 80))
    transport = FakeTransport()
    connection.connection_made(transport)
    connection.data_received(b"".join(b"GET /%d HTTP/1.1\r\n\r\n" % i for i in range(10)))
    await clock.settle()
    assert not transport.reading
    gate.set()
    await clock.settle()
    assert transport.reading
    out = transport.take()
    assert [int(part.split(b"\r\n\r\n")[1].strip(b'"/')) for part in out.split(b"HTTP/1.1 ")[1:]] == list(range(10))


async def test_a_connection_accepted_as_the_server_closes_is_closed_when_made() -> None:
    http = Http(None, ManualClock())
    listening = ListeningServer(http, 80)
    connection = HttpConnection(http, http.make(describe), listening)
    listening._connections.add(connection)
    listening.close()  # between the accept and connection_made
    transport = FakeTransport()
    transport.protocol = connection
    connection.connection_made(transport)
    assert transport.closed and transport.take() == b""
    await asyncio.wait_for(listening.wait_closed(), 1)
