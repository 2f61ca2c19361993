"""HTTP/1.1 semantics over two direct stacks on an in-memory link, at virtual time.

Keep-alive, pipelining, Connection: close both ways, HTTP/1.0, HEAD, bodies by
Content-Length and chunked, Expect: 100-continue, Date/Content-Length/Server
on every response, routes and counters, shutdown.
"""

from __future__ import annotations

import asyncio
import email.utils
import json

import pytest

from netstack.http import Request, Response, respond_json, respond_string
from netstack.http.testing import RawClient, http_pair

pytestmark = pytest.mark.asyncio

GET = b"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n"


async def echo(request: Request) -> Response:
    """Describes the request it got, so tests can see what the server parsed."""
    return respond_json({
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "version": request.version,
        "body": request.body.decode("latin-1"),
        "headers": request.headers.items(),
        "trailers": request.trailers.items(),
        "keep_alive": request.keep_alive,
        "peer": request.peer[0],
    })


async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async with http_pair(echo) as pair:
        client = await pair.connect()
        for i in range(20):
            response = await client.request(b"GET /n?i=%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
            assert response.status == 200
            described = json.loads(response.body)
            assert described["query"] == f"i={i}" and described["path"] == "/n"
            assert described["peer"] == "10.0.0.2"
            assert response.header("connection") is None  # HTTP/1.1: persistent by default
        assert pair.http.connections_total == 1
        assert pair.http.requests[("/n", 200)] == 20
        assert pair.listening.connections == 1


async def test_every_response_has_date_content_length_and_server() -> None:
    async with http_pair(echo) as pair:
        client = await pair.connect()
        response = await client.request(GET)
        assert response.header("server") == "netstack"
        assert int(response.header("content-length")) == len(response.body)
        date = email.utils.parsedate_to_datetime(response.header("date"))
        assert date.timestamp() == pair.clock.wall_ns() // 10**9
        # The cached Date follows the clock's wall time.
        await pair.sleep(3)
        later = await client.request(GET)
        assert email.utils.parsedate_to_datetime(later.header("date")).timestamp() == date.timestamp() + 3


async def test_three_pipelined_requests_in_one_write_are_answered_in_order() -> None:
    order: list[str] = []

    async def slow_first(request: Request) -> Response:
        order.append(request.path)
        if request.path == "/1":
            for _ in range(5):
                await asyncio.sleep(0)  # suspend: the later requests must still wait their turn
        return respond_string(body=request.path)

    async with http_pair(slow_first) as pair:
        client = await pair.connect()
        client.send(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n")
        bodies = [(await client.response()).body for _ in range(3)]
        assert bodies == [b"/1", b"/2", b"/3"]
        assert order == ["/1", "/2", "/3"]  # handlers ran one after another


async def test_pipelined_sync_and_async_callbacks_interleave_in_order() -> None:
    def sync_or_async(request: Request):
        response = respond_string(body=request.path)
        if request.path.endswith("a"):
            async def later() -> Response:
                await asyncio.sleep(0)
                return response
            return later()
        return response

    async with http_pair(sync_or_async) as pair:
        client = await pair.connect()
        paths = ["/1a", "/2", "/3a", "/4", "/5"]
        client.send(b"".join(b"GET %s HTTP/1.1\r\n\r\n" % p.encode() for p in paths))
        assert [(await client.response()).body.decode() for _ in paths] == paths


async def test_client_connection_close_is_honoured() -> None:
    async with http_pair(echo) as pair:
        client = await pair.connect()
        response = await client.request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert response.status == 200 and response.header("connection") == "close"
        assert await client.closed()
        # A request pipelined after "Connection: close" is never answered.
        client = await pair.connect()
        client.send(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
        assert (await client.response()).status == 200
        assert await client.closed()
        assert pair.http.requests[("/b", 200)] == 0
        assert pair.http.stats["refused.400"] == 0  # what follows "close" is ignored, not an error


async def test_response_connection_close_is_honoured() -> None:
    async def closing(request: Request) -> Response:
        return respond_string(body="bye", headers={"Connection": "close"})

    async with http_pair(closing) as pair:
        client = await pair.connect()
        response = await client.request(GET)
        assert response.header_all("connection") == ["close"]
        assert await client.closed()


async def test_http_1_0_closes_unless_keep_alive_is_asked_for() -> None:
    async with http_pair(echo) as pair:
        client = await pair.connect()
        response = await client.request(b"GET / HTTP/1.0\r\n\r\n")
        assert response.status == 200 and response.header("connection") == "close"
        assert response.raw.startswith(b"HTTP/1.1 200 OK\r\n")  # RFC 9110 2.5: our own version
        assert await client.closed()

        client = await pair.connect()
        for _ in range(3):
            response = await client.request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            assert response.header("connection") == "keep-alive"
        client.send(b"GET / HTTP/1.0\r\n\r\n")
        assert (await client.response()).header("connection") == "close"
        assert await client.closed()


async def test_head_has_the_get_content_length_and_no_body() -> None:
    async def fixed(request: Request) -> Response:
        return respond_string(body="x" * 1234)

    async with http_pair(fixed, routes={"/": {"GET"}}) as pair:
        client = await pair.connect()
        head = await client.request(b"HEAD / HTTP/1.1\r\n\r\n", head_only=True)
        assert head.status == 200 and head.header("content-length") == "1234" and head.body == b""
        # Nothing but the head was sent: the next response starts right after it.
        get = await client.request(GET)
        assert get.body == b"x" * 1234
        assert get.raw.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_204_and_304_have_no_body() -> None:
    async def empty(request: Request) -> Response:
        if request.path == "/204":
            return Response(204)
        return Response(304, headers={"ETag": '"v1"'})

    async with http_pair(empty) as pair:
        client = await pair.connect()
        no_content = await client.request(b"GET /204 HTTP/1.1\r\n\r\n")
        assert no_content.status == 204 and no_content.header("content-length") is None
        not_modified = await client.request(b"GET /304 HTTP/1.1\r\n\r\n")
        assert not_modified.status == 304 and not_modified.header("etag") == '"v1"'
        assert (await client.request(GET)).status == 304  # framing intact


async def test_content_length_body() -> None:
    async with http_pair(echo) as pair:
        client = await pair.connect()
        response = await client.request(b"POST /p HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world")
        described = response.body.decode()
        assert '"method":"POST"' in described and '"body":"hello world"' in described


async def test_chunked_body_with_extensions_and_trailers() -> None:
    async with http_pair(echo) as pair:
        client = await pair.connect()
        request = (
            b"POST /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
            b"5;name=value\r\nhello\r\n"
            b"1;flag\r\n \r\n"
            b"5\r\nworld\r\n"
            b"0\r\nX-Checksum: abc123\r\nX-Other: 1\r\n\r\n"
        )
        response = await client.request(request)
        described = json.loads(response.body)
        assert described["body"] == "hello world"
        assert described["trailers"] == [["x-checksum", "abc123"], ["x-other", "1"]]
        assert ["transfer-encoding", "chunked"] in described["headers"]
        # The connection goes on after a chunked body.
        assert (await client.request(GET)).status == 200


async def test_expect_100_continue_before_the_body() -> None:
    async with http_pair(echo) as pair:
        client = await pair.connect()
        client.send(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        interim = await client.response(interim=True)
        assert interim.status == 100 and interim.raw == b"HTTP/1.1 100 Continue\r\n\r\n"
        response = await client.request(b"body")
        assert response.status == 200 and '"body":"body"' in response.body.decode()
        # A chunked body gets its 100 too.
        client.send(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-Continue\r\n\r\n")
        assert (await client.response(interim=True)).status == 100
        assert (await client.request(b"2\r\nok\r\n0\r\n\r\n")).status == 200


async def test_expect_100_continue_waits_for_earlier_responses() -> None:
    gate = asyncio.Event()

    async def gated(request: Request) -> Response:
        if request.path == "/slow":
            await gate.wait()
        return respond_string(body=request.path)

    async with http_pair(gated) as pair:
        client = await pair.connect()
        client.send(b"GET /slow HTTP/1.1\r\n\r\nPOST /upload HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        await pair.driver.quiesce()
        assert client.reader._buffer == b""  # no interim response may overtake /slow's answer
        gate.set()
        first = await client.response()
        assert first.body == b"/slow"
        assert (await client.response(interim=True)).status == 100
        assert (await client.request(b"ab")).body == b"/upload"


async def test_http_1_0_expect_is_ignored() -> None:
    async with http_pair(echo) as pair:
        client = await pair.connect()
        response = await client.request(b"POST / HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi")
        assert response.status == 200  # no 100, no 417: RFC 9110 10.1.1


async def test_routes_answer_405_with_allow_and_leave_other_paths_to_the_callback() -> None:
    calls: list[str] = []

    async def app(request: Request) -> Response:
        calls.append(request.method + " " + request.path)
        if request.path in ("/", "/api/next"):
            return respond_string(body="ok")
        return respond_string(status=404, body="not found")

    async with http_pair(app, routes={"/": {"GET"}, "/api/next": ["GET", "POST"]}) as pair:
        client = await pair.connect()
        assert (await client.request(b"HEAD / HTTP/1.1\r\n\r\n", head_only=True)).status == 200  # GET implies HEAD
        assert (await client.request(b"POST /api/next HTTP/1.1\r\nContent-Length: 0\r\n\r\n")).status == 200
        assert (await client.request(b"DELETE /nope HTTP/1.1\r\n\r\n")).status == 404  # not a route
        refused = await client.request(b"DELETE / HTTP/1.1\r\n\r\n")
        assert refused.status == 405 and refused.header("allow") == "GET, HEAD"
        assert refused.header("connection") == "close"
        assert await client.closed()
        client = await pair.connect()
        refused = await client.request(b"PUT /api/next?q=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        assert refused.header("allow") == "GET, HEAD, POST"
        assert calls == ["HEAD /", "POST /api/next", "DELETE /nope"]
        assert pair.http.requests[("/", 405)] == 1 and pair.http.requests[("/api/next", 405)] == 1


async def test_counters_track_paths_by_status_with_a_bound() -> None:
    from netstack.http import Limits

    async def app(request: Request) -> Response:
        return respond_string(status=200 if request.path == "/" else 404, body="")

    async with http_pair(app, routes={"/": {"GET"}}, limits=Limits(max_tracked_paths=3)) as pair:
        client = await pair.connect()
        for path in [b"/", b"/a", b"/b", b"/c", b"/d", b"/", b"/a"]:
            await client.request(b"GET " + path + b" HTTP/1.1\r\n\r\n")
        requests = pair.http.requests
        assert requests[("/", 200)] == 2 and requests[("/a", 404)] == 2
        assert requests[("/b", 404)] == 1 and requests[("/c", 404)] == 1
        assert requests[("<other>", 404)] == 1  # /d: past the bound
        counters = pair.http.counters()
        assert counters["connections.open"] == 1 and counters["connections.total"] == 1


async def test_close_finishes_busy_connections_and_closes_idle_ones() -> None:
    gate = asyncio.Event()

    async def gated(request: Request) -> Response:
        if request.path == "/slow":
            await gate.wait()
        return respond_string(body="done")

    async with http_pair(gated) as pair:
        idle = await pair.connect()
        await idle.request(GET)
        busy = await pair.connect()
        busy.send(b"GET /slow HTTP/1.1\r\n\r\n")
        await pair.driver.quiesce()
        pair.listening.close()
        assert await idle.closed()
        idle.close()
        await pair.driver.quiesce()
        assert pair.listening.connections == 1
        gate.set()
        response = await busy.response()
        assert response.body == b"done" and response.header("connection") == "close"
        assert await busy.closed()
        await asyncio.wait_for(pair.listening.wait_closed(), 5)
        assert pair.listening.connections == 0 and pair.http.connections_open == 0
        with pytest.raises(ConnectionRefusedError):
            await pair.connect()


async def test_a_client_that_half_closes_still_gets_its_answers() -> None:
    async with http_pair(echo) as pair:
        client = await pair.connect()
        client.send(GET + GET)
        client.writer.write_eof()
        assert [(await client.response()).status for _ in range(2)] == [200, 200]
        assert await client.closed()


async def test_upgrade_is_answered_as_plain_http_and_the_connection_closes() -> None:
    async with http_pair(echo) as pair:
        client = await pair.connect()
        response = await client.request(
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello"
        )
        assert response.status == 200 and response.header("connection") == "close"
        assert await client.closed()


async def test_byte_by_byte_over_the_stack_matches_all_at_once() -> None:
    requests = (
        b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nX-Long: " + b"v" * 50 + b"\r\n\r\n"
        b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n"
        b"HEAD / HTTP/1.1\r\n\r\n"
        b"GET /last HTTP/1.1\r\nConnection: close\r\n\r\n"
    )

    async def collect(client: RawClient) -> bytes:
        return await client.read_to_eof()

    async with http_pair(echo) as pair:
        whole = await pair.connect()
        whole.send(requests)
        at_once = await collect(whole)

        trickle = await pair.connect()
        trickle.writer.transport.get_extra_info("socket").setsockopt(6, 1, 1)  # TCP_NODELAY
        reader = asyncio.ensure_future(collect(trickle))
        for i in range(len(requests)):
            trickle.send(requests[i:i + 1])
            await pair.driver.quiesce()  # each byte lands, alone, before the next
        byte_by_byte = await reader
    assert at_once.count(b"HTTP/1.1 200 OK") == 5
    assert byte_by_byte.replace(b"10.0.0.2", b"") == at_once.replace(b"10.0.0.2", b"")


async def test_sync_callbacks_and_prebuilt_responses_are_served() -> None:
    prebuilt = respond_string(body="Next train to Chennai Central: 14:20.")

    async with http_pair(lambda request: prebuilt) as pair:
        client = await pair.connect()
        for _ in range(3):
            response = await client.request(GET)
            assert response.body == b"Next train to Chennai Central: 14:20."
            assert response.header("content-type") == "text/plain; charset=utf-8"


async def test_serves_over_kernel_sockets_too() -> None:
    """Any object with asyncio's create_server serves: here the event loop itself, on loopback."""
    from netstack.clock import LoopClock
    from netstack.http import Http

    loop = asyncio.get_running_loop()
    http = Http(loop, LoopClock())
    listening = await http.listen(0, http.make(echo), host="127.0.0.1")
    try:
        assert listening.port != 0
        reader, writer = await asyncio.open_connection("127.0.0.1", listening.port)
        client = RawClient(reader, writer)
        client.send(GET + b"POST /p HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
        first, second = await client.response(), await client.response()
        assert first.status == second.status == 200 and '"body":"hi"' in second.body.decode()
        assert '"peer":"127.0.0.1"' in first.body.decode()
        client.close()
    finally:
        listening.close()
        await asyncio.wait_for(listening.wait_closed(), 5)
