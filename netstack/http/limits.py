"""What the HTTP server refuses, and how long it waits: one dataclass, every default explained.

Why these limits exist
----------------------
An HTTP server on the open network meets clients that are slow, broken or
hostile. Every resource a client can make the server hold -- bytes of a
request head, bytes of a body, requests queued behind a slow one, a
connection kept open while nothing happens -- has a bound here, and every
bound that is hit has an answer the client can understand:

=====================  ======  ============================================
exceeded               status  RFC
=====================  ======  ============================================
``max_request_line``   414     RFC 9110 15.5.15 URI Too Long
``max_header_bytes``,  431     RFC 6585 5 Request Header Fields Too Large
``max_header_count``
``max_body_bytes``     413     RFC 9110 15.5.14 Content Too Large
``header_timeout``,    408     RFC 9110 15.5.9 Request Timeout (only once a
``body_timeout``               request has begun; a silent connection is
                               simply closed)
``max_connections``    503     RFC 9110 15.6.4 Service Unavailable, after
                               first evicting the longest-idle connection
=====================  ======  ============================================

After any error response the connection is closed (gracefully: see
``linger_timeout``), because the server no longer knows where the next
request would begin.

Times are in seconds (floats) for people; the connection converts them to
nanoseconds of the injected ``Clock`` once, at construction.
"""

from __future__ import annotations

import dataclasses

NS_PER_SECOND = 1_000_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Bounds and timeouts for one ``Http`` server. All fields are keyword-settable.

    Sizes
    -----
    ``max_request_line`` (8 KiB): longest request-target (the URL as sent),
    in bytes. nginx's default buffer for the request line is 8 KiB
    (``large_client_header_buffers 4 8k``); RFC 9112 3 recommends supporting
    at least 8000 octets. Longer -> 414.

    ``max_header_bytes`` (32 KiB): the sum of the lengths of every header
    field name and value of one request (and its chunked trailers). nginx
    accepts four 8 KiB buffers, so 32 KiB is what a client that works there
    can need (large cookies). Larger -> 431.

    ``max_header_count`` (100): header fields per request, as Python's
    ``http.client`` and h11 bound them. More -> 431.

    ``max_body_bytes`` (1 MiB): request body after chunked decoding, read
    completely into memory before the callback runs. nginx's
    ``client_max_body_size`` default. A larger ``Content-Length`` is refused
    before a byte of the body is read (so ``Expect: 100-continue`` clients
    never send it); a chunked body is refused as soon as it grows past the
    bound. -> 413.

    ``max_pipelined`` (32): complete requests a connection may queue behind
    the one being answered. Beyond it the server stops reading that
    connection (TCP flow control pushes back on the client) until the queue
    drains; nothing is refused.

    Timeouts
    --------
    ``header_timeout`` (10 s): the whole request head (request line and
    headers) must arrive within this time of its first byte -- of the
    connection's opening, for the first request. This is the slowloris
    defence: trickling one header byte every few seconds does not extend
    it. Apache's ``mod_reqtimeout`` uses 20-40 s; 10 s is generous for any
    client on a working network and keeps a slowloris connection short.

    ``body_timeout`` (10 s): while a body is being received, the longest
    time with no new byte. Measured as progress, not total, so a large
    upload on a slow link is fine while a stalled one is not.

    ``keepalive_timeout`` (5 s): an idle persistent connection (its last
    response written, nothing new received) is closed after this long.
    uvicorn and Node use 5 s too; clients reconnect cheaply, while idle
    connections count against ``max_connections``.

    ``write_timeout`` (30 s): the longest a connection may stay with writing
    paused (a client that sends requests but does not read the responses);
    then it is aborted.

    ``linger_timeout`` (2 s): after the server decides to close (an error
    response, ``Connection: close``, a refused connection) it sends its FIN
    and keeps reading -- and discarding -- what the client still sends, for
    at most this long, so that the client reads the response instead of a
    reset (the "lingering close" of Apache and nginx, RFC 9112 9.6).

    No timeout applies while the server itself is busy with a connection's
    requests (a handler running, responses queued): a slow handler is never
    mistaken for a slow client.

    Connections
    -----------
    ``max_connections`` (1024): open connections per ``Http``. When a new
    connection would exceed it, the longest-idle connection (an idle
    keep-alive one, or an accepted one that has sent nothing yet) is closed
    to make room, as nginx reuses keep-alive connections under pressure. If
    none is idle, the new connection gets a ``503 Service Unavailable`` with
    ``Retry-After`` and is closed, so the server keeps answering rather than
    hanging. 1024 connections of this server use a few MiB.

    ``max_tracked_paths`` (64): distinct request paths counted by name in
    ``Http.requests``; further paths count as ``"<other>"``, so a scanner
    cannot grow the metrics without bound. Paths declared as routes are
    always counted by name.
    """

    max_request_line: int = 8 * 1024
    max_header_bytes: int = 32 * 1024
    max_header_count: int = 100
    max_body_bytes: int = 1024 * 1024
    max_pipelined: int = 32
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    write_timeout: float = 30.0
    linger_timeout: float = 2.0
    max_connections: int = 1024
    max_tracked_paths: int = 64

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Limits.{field.name} must be a positive number, got {value!r}")

    def ns(self, seconds: float) -> int:
        """A time in seconds as ``Clock`` nanoseconds."""
        return int(seconds * NS_PER_SECOND)


@dataclasses.dataclass(frozen=True, slots=True)
class Timeouts:
    """``Limits``' times as clock nanoseconds, computed once."""

    header: int
    body: int
    keepalive: int
    write: int
    linger: int

    @classmethod
    def from_limits(cls, limits: Limits) -> Timeouts:
        return cls(
            limits.ns(limits.header_timeout), limits.ns(limits.body_timeout), limits.ns(limits.keepalive_timeout),
            limits.ns(limits.write_timeout), limits.ns(limits.linger_timeout),
        )
