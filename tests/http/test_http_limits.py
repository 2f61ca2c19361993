"""Every refusal with its status, the connection cap, and handlers that fail.

414, 431 (bytes and count), 413 (Content-Length, chunked, with Expect), 417,
400 (malformed), 405 with Allow; each closes the connection after it. The
cap on connections evicts the longest-idle one, else answers 503. A handler
that raises gives a 500 and one log line, and the server goes on.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from netstack.http import Limits, Request, Response, respond_string
from netstack.http.testing import http_pair

pytestmark = pytest.mark.asyncio

GET = b"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n"


async def ok(request: Request) -> Response:
    return respond_string(body=f"{request.method} {request.path} {len(request.body)}")


async def refused(pair, data: bytes, status: int, *, then_more: bytes = b"") -> None:
    """Send ``data`` (after a good request, to check ordering); expect ``status``, then a clean close."""
    client = await pair.connect()
    client.send(GET + data)
    assert (await client.response()).status == 200
    if then_more:
        client.send(then_more)
    response = await client.response()
    assert response.status == status, response.raw
    assert response.header("connection") == "close"
    assert int(response.header("content-length")) == len(response.body) > 0
    assert await client.closed()
    client.close()
    return response


async def test_request_line_too_long_is_414() -> None:
    limits = Limits(max_request_line=100)
    async with http_pair(ok, limits=limits) as pair:
        client = await pair.connect()
        assert (await client.request(b"GET /" + b"a" * 99 + b" HTTP/1.1\r\n\r\n")).status == 200  # exactly 100
        await refused(pair, b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n\r\n", 414)
        # Refused while the target is still arriving: no need to wait for its end.
        await refused(pair, b"GET /" + b"a" * 200, 414)
        assert pair.http.stats["refused.414"] == 2


async def test_header_bytes_over_the_limit_are_431() -> None:
    limits = Limits(max_header_bytes=1000)
    async with http_pair(ok, limits=limits) as pair:
        client = await pair.connect()
        assert (await client.request(b"GET / HTTP/1.1\r\nX: " + b"v" * 999 + b"\r\n\r\n")).status == 200  # 1000
        await refused(pair, b"GET / HTTP/1.1\r\nX: " + b"v" * 1000 + b"\r\n\r\n", 431)
        many_small = b"".join(b"H%d: %s\r\n" % (i, b"v" * 40) for i in range(30))
        await refused(pair, b"GET / HTTP/1.1\r\n" + many_small + b"\r\n", 431)


async def test_one_endless_header_is_431_before_it_ends() -> None:
    # httptools joins a header's value before calling back; the raw byte
    # count of a head still arriving bounds what it may buffer meanwhile.
    limits = Limits(max_header_bytes=1000, max_request_line=100)
    async with http_pair(ok, limits=limits) as pair:
        client = await pair.connect()
        client.send(b"GET / HTTP/1.1\r\nX-Endless: ")
        for _ in range(20):
            client.send(b"v" * 200)
            await pair.driver.quiesce()
        response = await client.response()
        assert response.status == 431
        assert await client.closed()


async def test_too_many_header_fields_is_431() -> None:
    limits = Limits(max_header_count=10)
    async with http_pair(ok, limits=limits) as pair:
        client = await pair.connect()
        ten = b"".join(b"H%d: v\r\n" % i for i in range(10))
        assert (await client.request(b"GET / HTTP/1.1\r\n" + ten + b"\r\n")).status == 200
        await refused(pair, b"GET / HTTP/1.1\r\n" + ten + b"H10: v\r\n\r\n", 431)
        # Trailers count too.
        await refused(pair, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n" + ten[:-7]
                      + b"\r\n1\r\nx\r\n0\r\nT1: a\r\nT2: b\r\n\r\n", 431)


async def test_body_over_the_limit_is_413() -> None:
    limits = Limits(max_body_bytes=100)
    async with http_pair(ok, limits=limits) as pair:
        client = await pair.connect()
        response = await client.request(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + b"b" * 100)
        assert response.body == b"POST / 100"
        # Refused from the Content-Length alone: none of the body is read.
        await refused(pair, b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413)
        # A chunked body is refused as soon as it grows past the bound.
        await refused(pair, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + b"c" * 64 + b"\r\n",
                      413, then_more=b"40\r\n" + b"c" * 64 + b"\r\n")


async def test_expect_with_a_body_too_large_is_413_without_100_continue() -> None:
    async with http_pair(ok, limits=Limits(max_body_bytes=100)) as pair:
        client = await pair.connect()
        client.send(b"POST / HTTP/1.1\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        response = await client.response(interim=True)
        assert response.status == 413  # and no 100 Continue before it
        assert await client.closed()


async def test_unknown_expectation_is_417() -> None:
    async with http_pair(ok) as pair:
        await refused(pair, b"POST / HTTP/1.1\r\nContent-Length: 1\r\nExpect: tea\r\n\r\nx", 417)


@pytest.mark.parametrize("malformed", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost a\r\n\r\n",  # no colon
    b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",  # obsolete line folding
    b"GET /\x01 HTTP/1.1\r\n\r\n",  # control character in the target
    b"GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",  # smuggling
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
    b"GET / HTTP/9.9\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
], ids=["garbage", "no-colon", "folding", "control-char", "cl-and-te", "two-lengths", "bad-chunk", "version", "tls"])
async def test_malformed_requests_are_400(malformed: bytes) -> None:
    async with http_pair(ok) as pair:
        await refused(pair, malformed, 400)
        assert pair.http.stats["refused.400"] == 1
        assert pair.http.requests[("<invalid>", 400)] == 1


async def test_a_refusal_waits_for_the_responses_before_it() -> None:
    gate = asyncio.Event()

    async def gated(request: Request) -> Response:
        await gate.wait()
        return respond_string(body="first")

    async with http_pair(gated) as pair:
        client = await pair.connect()
        client.send(GET + b"NOT HTTP\r\n\r\n")
        await pair.driver.quiesce()
        assert client.reader._buffer == b""
        gate.set()
        assert (await client.response()).body == b"first"
        assert (await client.response()).status == 400
        assert await client.closed()


async def test_handler_that_raises_gives_500_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("the signal box is on fire")
        if request.path == "/sync-boom":
            raise KeyError("x")
        if request.path == "/not-a-response":
            return "just a string"  # type: ignore[return-value]
        return respond_string(body="fine")

    def dispatch(request: Request):
        if request.path == "/sync-boom":
            raise KeyError("points")
        return broken(request)

    caplog.set_level(logging.ERROR, logger="http")
    async with http_pair(dispatch) as pair:
        client = await pair.connect()
        for path in (b"/boom", b"/sync-boom", b"/not-a-response"):
            caplog.clear()
            response = await client.request(b"GET " + path + b" HTTP/1.1\r\n\r\n")
            assert response.status == 500 and response.body == b"internal server error\n"
            assert b"fire" not in response.raw  # nothing of the error leaks to the client
            records = [r for r in caplog.records if r.name == "http"]
            assert len(records) == 1 and records[0].levelno == logging.ERROR
            assert path.decode() in records[0].getMessage()
            assert "\n" not in records[0].getMessage()
        # The same connection, and the server, go on.
        assert (await client.request(GET)).body == b"fine"
        other = await pair.connect()
        assert (await other.request(GET)).body == b"fine"
        assert pair.http.stats["handler_errors"] == 3
        assert pair.http.requests[("/boom", 500)] == 1


async def test_over_max_connections_the_idle_one_is_evicted() -> None:
    async with http_pair(ok, limits=Limits(max_connections=2)) as pair:
        first = await pair.connect()
        await first.request(GET)
        await pair.sleep(1)
        second = await pair.connect()
        await second.request(GET)
        third = await pair.connect()  # the cap is full: the longest idle makes room
        assert (await third.request(GET)).status == 200
        assert await first.closed()
        assert (await second.request(GET)).status == 200
        assert pair.http.stats["evicted.idle"] == 1


async def test_over_max_connections_with_none_idle_gets_503_and_the_server_keeps_answering() -> None:
    async with http_pair(ok, limits=Limits(max_connections=2, header_timeout=10)) as pair:
        slow = [await pair.connect() for _ in range(2)]
        for client in slow:
            client.send(b"GET / HTTP/1.1\r\nX-Slow: ")  # heads in progress: not idle, not evictable
        await pair.driver.quiesce()
        for _ in range(3):
            extra = await pair.connect()
            response = await extra.response()
            assert response.status == 503 and response.header("retry-after") == "1"
            assert response.header("connection") == "close"
            assert await extra.closed()
            extra.close()
        assert pair.http.stats["refused.over_capacity"] == 3
        # The slow heads time out; then there is room again.
        for client in slow:
            assert (await client.response()).status == 408
        fresh = await pair.connect()
        assert (await fresh.request(GET)).status == 200
        assert pair.http.connections_total == 6
