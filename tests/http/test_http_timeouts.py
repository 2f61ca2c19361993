"""Timeouts at virtual time: slowloris, idle keep-alive, stalled bodies, unread responses, lingering.

Every deadline is measured on the ManualClock that times the stacks; the
VirtualTime driver jumps to it as soon as nothing else can happen, so each
test asserts the exact virtual second a connection was closed at, and none
sleeps.
"""

from __future__ import annotations

import asyncio

import pytest

from netstack.http import Limits, Request, Response, respond_string
from netstack.http.testing import http_pair

pytestmark = pytest.mark.asyncio

GET = b"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n"
LIMITS = Limits(header_timeout=10, keepalive_timeout=5, body_timeout=10, write_timeout=30, linger_timeout=2)


async def ok(request: Request) -> Response:
    return respond_string(body=f"{len(request.body)}")


def about(elapsed: float, expected: float) -> bool:
    """Equal up to the TCP stack's own delays (a delayed ACK is 40 ms)."""
    return expected <= elapsed < expected + 0.1


async def test_slowloris_head_is_cut_off_at_header_timeout() -> None:
    async with http_pair(ok, limits=LIMITS) as pair:
        client = await pair.connect()
        start = pair.now()
        client.send(b"GET / HTTP/1.1\r\n")

        async def trickle() -> None:
            # One header every 2 s: each byte is progress, but the head never ends.
            for i in range(100):
                await pair.sleep(2)
                if client.writer.is_closing() or client.reader.at_eof():
                    return
                client.send(b"X-%d: v\r\n" % i)

        trickler = asyncio.ensure_future(trickle())
        response = await client.response()
        assert response.status == 408 and response.header("connection") == "close"
        assert about(pair.now() - start, 10)
        assert await client.closed()
        trickler.cancel()
        assert pair.http.stats["timeout.header"] == 1


async def test_a_silent_new_connection_is_closed_at_header_timeout() -> None:
    async with http_pair(ok, limits=LIMITS) as pair:
        client = await pair.connect()
        start = pair.now()
        assert await client.read_to_eof() == b""  # no request began: no 408, just the close
        assert about(pair.now() - start, 10)
        assert pair.http.stats["timeout.silent"] == 1


async def test_the_first_head_must_be_complete_within_header_timeout_of_connecting() -> None:
    async with http_pair(ok, limits=LIMITS) as pair:
        client = await pair.connect()
        start = pair.now()
        await pair.sleep(6)
        client.send(b"GET / HTTP/1.1\r\n")
        response = await client.response()
        assert response.status == 408 and about(pair.now() - start, 10)


async def test_the_header_timeout_counts_from_the_first_byte_of_each_later_request() -> None:
    async with http_pair(ok, limits=LIMITS) as pair:
        client = await pair.connect()
        await client.request(GET)
        await pair.sleep(4)  # idle, within keepalive_timeout
        start = pair.now()
        client.send(b"GET / HTTP/1.1\r\n")
        response = await client.response()
        assert response.status == 408 and about(pair.now() - start, 10)


async def test_idle_keep_alive_connection_is_closed_after_keepalive_timeout() -> None:
    async with http_pair(ok, limits=LIMITS) as pair:
        client = await pair.connect()
        await client.request(GET)
        start = pair.now()
        assert await client.read_to_eof() == b""
        assert about(pair.now() - start, 5)
        assert pair.http.stats["timeout.idle"] == 1
        await pair.driver.quiesce()
        client.close()
        await pair.sleep(1)
        assert pair.http.connections_open == 0


async def test_a_connection_in_use_outlives_the_keepalive_timeout() -> None:
    async with http_pair(ok, limits=LIMITS) as pair:
        client = await pair.connect()
        start = pair.now()
        for _ in range(10):
            assert (await client.request(GET)).status == 200
            await pair.sleep(4)  # less than keepalive_timeout between requests
        assert pair.now() - start >= 40
        assert (await client.request(GET)).status == 200
        assert pair.http.connections_total == 1 and pair.http.stats["timeout.idle"] == 0


async def test_a_busy_connection_is_not_closed_however_long_the_handler_takes() -> None:
    holder: dict[str, object] = {}

    async def slow(request: Request) -> Response:
        await holder["pair"].sleep(120)  # longer than every timeout
        return respond_string(body="slow")

    async with http_pair(slow, limits=LIMITS) as pair:
        holder["pair"] = pair
        client = await pair.connect()
        start = pair.now()
        # Pipelined behind it, a second request waits just as long: the
        # server is the slow one, so no timeout applies.
        client.send(GET + GET)
        assert (await client.response()).body == b"slow"
        assert about(pair.now() - start, 120)
        assert (await client.response()).body == b"slow"
        assert about(pair.now() - start, 240)
        assert not client.reader.at_eof()
        assert (await client.request(GET)).status == 200


async def test_a_stalled_body_is_cut_off_but_a_slow_one_is_not() -> None:
    async with http_pair(ok, limits=LIMITS) as pair:
        client = await pair.connect()
        client.send(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n")
        for _ in range(10):  # one byte every 8 s: slow, but always progressing
            await pair.sleep(8)
            client.send(b"x")
        response = await client.response()
        assert response.status == 200 and response.body == b"10"

        client.send(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nhalf ")
        await pair.driver.quiesce()
        start = pair.now()
        response = await client.response()
        assert response.status == 408 and about(pair.now() - start, 10)
        assert pair.http.stats["timeout.body"] == 1


@pytest.mark.parametrize("requests", [GET * 3, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"], ids=["keep-alive", "closing"])
async def test_a_client_that_never_reads_is_aborted_after_write_timeout(requests: bytes) -> None:
    big = respond_string(body="z" * (4 * 1024 * 1024))

    async with http_pair(lambda request: big, limits=LIMITS) as pair:
        client = await pair.connect()
        client.writer.transport.pause_reading()  # and never reads again
        client.send(requests)
        await pair.driver.quiesce()
        start = pair.now()
        while pair.http.connections_open:
            await pair.sleep(1)
        assert 30 <= pair.now() - start < 32
        assert pair.http.stats["timeout.write"] == 1


async def test_after_an_error_the_server_lingers_then_closes() -> None:
    async with http_pair(ok, limits=LIMITS) as pair:
        client = await pair.connect()
        client.send(b"BAD\r\n\r\n")
        assert (await client.response()).status == 400
        assert await client.closed()
        # The client keeps its side open (and even keeps sending): the
        # server discards what comes and gives up after linger_timeout.
        start = pair.now()
        client.send(b"more bytes nobody reads")
        while pair.http.connections_open:
            await pair.sleep(0.5)
        assert about(pair.now() - start, 2) or 2 <= pair.now() - start <= 2.5
        assert pair.http.stats["timeout.linger"] == 1


async def test_a_client_that_closes_promptly_ends_the_linger_early() -> None:
    async with http_pair(ok, limits=LIMITS) as pair:
        client = await pair.connect()
        response = await client.request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert response.status == 200
        assert await client.closed()
        start = pair.now()
        client.close()
        while pair.http.connections_open:
            await pair.sleep(0.01)
        assert pair.now() - start < 0.5
        assert pair.http.stats["timeout.linger"] == 0
