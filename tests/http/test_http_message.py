"""Requests, responses, headers, routes and limits as values: no network."""

from __future__ import annotations

import pytest

from netstack.clock import ManualClock
from netstack.http import Headers, Http, HttpProtocol, Limits, Request, Response, Server, respond_json, respond_string
from netstack.http.message import DateCache, split_target


def test_respond_string_renders_the_head_once() -> None:
    response = respond_string(body="Next train to Chennai Central: 14:20.")
    assert response.status == 200 and response.body == b"Next train to Chennai Central: 14:20."
    assert response.head == (
        b"HTTP/1.1 200 OK\r\nServer: netstack\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 37\r\n"
    )
    assert response.header("content-type") == "text/plain; charset=utf-8"


def test_respond_string_status_content_type_and_headers() -> None:
    response = respond_string(status=404, body="not found", content_type="text/html", headers=[("X-A", "1"), ("X-A", "2")])
    assert response.head.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"Content-Type: text/html\r\nX-A: 1\r\nX-A: 2\r\n" in response.head
    assert respond_string(status=418).head.startswith(b"HTTP/1.1 418 I'm a Teapot\r\n")
    assert respond_string(status=599).head.startswith(b"HTTP/1.1 599 Unknown\r\n")


def test_respond_json_is_compact() -> None:
    response = respond_json({"destination": "Chennai Central", "time": "14:20"})
    assert response.body == b'{"destination":"Chennai Central","time":"14:20"}'
    assert response.header("Content-Type") == "application/json"


def test_the_application_may_replace_server_and_ask_to_close() -> None:
    response = Response(200, "x", headers={"Server": "suresh", "Connection": "close"})
    assert b"Server: suresh\r\n" in response.head and b"netstack" not in response.head
    assert response.close and b"Connection" not in response.head


def test_no_content_and_not_modified_framing() -> None:
    assert b"Content-Length" not in Response(204, "ignored").head and Response(204, "x").body == b""
    assert b"Content-Length" not in Response(304).head
    assert b"Content-Length: 5\r\n" in Response(304, "hello").head and Response(304, "hello").body == b""


@pytest.mark.parametrize("status", [99, 100, 101, 199, 600, "200", True])
def test_statuses_outside_200_to_599_are_refused(status) -> None:
    with pytest.raises(ValueError):
        Response(status)


@pytest.mark.parametrize("headers", [
    {"X-Injected": "a\r\nSet-Cookie: evil=1"},
    {"X": "a\nb"},
    {"X": "nul\0"},
    {"Bad Name": "v"},
    {"": "v"},
    {"X": "snowman \u2603"},
    {"Content-Length": "5"},
    {"transfer-encoding": "chunked"},
    {"Date": "yesterday"},
])
def test_headers_that_would_split_or_misframe_a_response_are_refused(headers) -> None:
    with pytest.raises(ValueError):
        Response(200, "body", headers=headers)


def test_responses_are_immutable() -> None:
    response = respond_string(body="x")
    with pytest.raises(AttributeError):
        response.status = 500  # type: ignore[misc]
    with pytest.raises(AttributeError):
        response.body = b"y"  # type: ignore[misc]


def test_headers_are_a_case_insensitive_multidict() -> None:
    headers = Headers([("Host", "a"), ("X-Dup", "1"), ("x-dup", "2")])
    assert headers["HOST"] == "a" and headers.get("x-DUP") == "1" and headers.get_all("X-Dup") == ["1", "2"]
    assert "host" in headers and "Missing" not in headers and 3 not in headers
    assert headers.get("missing", "d") == "d"
    with pytest.raises(KeyError):
        headers["missing"]
    assert list(headers) == ["host", "x-dup", "x-dup"] and len(headers) == 3
    assert headers.items() == [("host", "a"), ("x-dup", "1"), ("x-dup", "2")]
    assert headers == Headers([("HOST", "a"), ("X-DUP", "1"), ("X-DUP", "2")])


@pytest.mark.parametrize("target, path, query", [
    ("/", "/", ""),
    ("/api/next?x=1&y=2", "/api/next", "x=1&y=2"),
    ("/a?b?c", "/a", "b?c"),
    ("*", "*", ""),
    ("http://example.com/p?q=1", "/p", "q=1"),
    ("http://example.com", "/", ""),
    ("http://example.com?q", "/", "q"),
    ("example.com:443", "example.com:443", ""),  # authority-form (CONNECT)
])
def test_split_target(target: str, path: str, query: str) -> None:
    assert split_target(target) == (path, query)
    request = Request("GET", target)
    assert (request.path, request.query) == (path, query)


def test_request_helpers() -> None:
    request = Request("POST", "/p", body=b'{"a": [1, 2]}', peer=("10.0.0.2", 5000))
    assert request.json() == {"a": [1, 2]} and request.text() == '{"a": [1, 2]}'
    assert "POST /p" in repr(request) and request.trailers.items() == []


def test_date_is_formatted_once_per_second_of_wall_time() -> None:
    clock = ManualClock(wall_start_ns=784_111_777 * 10**9)  # RFC 9110's example date
    date = DateCache(clock.wall_ns)
    line = date.line()
    assert line == b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
    clock.advance(999_999_999)
    assert date.line() is line
    clock.advance(1)
    assert date.line() == b"Date: Sun, 06 Nov 1994 08:49:38 GMT\r\n"


def test_limits_defaults_and_validation() -> None:
    limits = Limits()
    assert (limits.max_request_line, limits.max_header_bytes, limits.max_header_count) == (8192, 32768, 100)
    assert (limits.max_body_bytes, limits.header_timeout, limits.keepalive_timeout) == (1 << 20, 10.0, 5.0)
    assert limits.max_connections == 1024 and limits.ns(1.5) == 1_500_000_000
    for bad in ({"max_body_bytes": 0}, {"header_timeout": -1}, {"max_connections": True}, {"keepalive_timeout": "5"}):
        with pytest.raises(ValueError):
            Limits(**bad)


def test_routes_are_data_with_precomputed_refusals() -> None:
    server = Server(lambda request: respond_string(), {"/": ["get"], "/upload": {"POST", "PUT"}})
    assert server.allowed("/") == {"GET", "HEAD"}
    assert server.allowed("/upload") == {"POST", "PUT"}
    assert server.allowed("/other") is None
    assert server.refusals["/upload"].status == 405 and server.refusals["/upload"].header("Allow") == "POST, PUT"
    assert Server(lambda request: None).allowed("/") is None
    with pytest.raises(TypeError):
        Server(lambda request: None, {"/": "GET"})
    with pytest.raises(ValueError):
        Server(lambda request: None, {"/": []})
    with pytest.raises(TypeError):
        Server("not callable")  # type: ignore[arg-type]


def test_http_satisfies_its_contract() -> None:
    assert isinstance(Http(None, ManualClock()), HttpProtocol)
