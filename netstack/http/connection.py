"""One HTTP/1.1 connection: httptools parsing, an ordered pipeline, timers on the Clock.

Theory of operation
-------------------
``HttpConnection`` is an ``asyncio.Protocol`` (not streams: no reader task,
no per-read future), so it runs over any ``Stack``'s transports. Bytes go
straight into one ``httptools.HttpRequestParser`` per connection, whose
callbacks build the request in place. The parser's callback order is, per
message::

    on_message_begin -> on_url+ -> on_header* -> on_headers_complete
        -> [on_body*] -> [on_header* (chunked trailers)] -> on_message_complete

(``on_url`` comes in pieces when the request line arrives in pieces;
httptools joins a header's pieces itself, so the raw bytes of a head still
arriving are counted too: an endless header is refused before it ends.)
Everything that can be
refused from the head alone -- a long target (414), too many header bytes
or fields (431), a ``Content-Length`` over the limit (413), an ``Expect``
other than ``100-continue`` (417), a method the route does not allow (405)
-- is refused in these callbacks by raising ``_Rejected``, which stops the
parser; a body that grows too large (413) is refused in ``on_body``.
Malformed bytes are httptools' ``HttpParserError`` (400).

The pipeline. Complete requests join ``_queue``; ``_pump`` answers them
strictly in order, one at a time: a callback that returns a ``Response``
is answered at once, an ``async`` callback runs as a task and ``_pump``
resumes from its done-callback. A refusal joins the queue like a request,
so that it, too, is answered after the requests before it; then the
connection closes. Each response is one ``transport.write``. More than
``max_pipelined`` waiting requests pause reading until half have drained.

``Expect: 100-continue`` (RFC 9110 10.1.1): the interim ``100 Continue``
is written when the head is accepted, or -- if earlier responses are still
owed -- when the pipeline drains, because an interim response must not
overtake them. It is skipped once body bytes have arrived anyway.

Closing. ``_closing`` means "read no further requests": the client asked
for it (``Connection: close``, HTTP/1.0 without keep-alive, end of file,
an upgrade we do not perform) or the server did (an error, shutdown). Once
the queue drains, ``_finish`` sends FIN and lingers, discarding input,
until the client's FIN or ``linger_timeout``: closing at once would answer
unread bytes with a reset that can destroy the response before it is read.

Timers. One deadline per connection, computed from its state by
``_deadline`` -- the head's start plus ``header_timeout``, the last body
byte plus ``body_timeout``, the idle start plus ``keepalive_timeout`` (or
``header_timeout`` before the first request), the moment writing paused
plus ``write_timeout``, the end of lingering -- or none while the server
is busy answering. One ``Clock.call_at`` handle is kept, armed at or before
that deadline, and is *lazy*: when the deadline moves later (the common
case, every request) nothing is re-armed; the timer fires early, recomputes
and re-arms. So the keep-alive fast path touches no timer at all.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

import httptools

from netstack.http.message import Headers, Request, Response, error_response

if TYPE_CHECKING:
    from netstack.http.server import Http, ListeningServer, Server

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_KEEP_ALIVE_TAIL = b"Connection: keep-alive\r\n\r\n"
_CLOSE_TAIL = b"Connection: close\r\n\r\n"
_END_TAIL = b"\r\n"

_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE")}
_FRAMING_LENGTHS = frozenset({len(b"content-length"), len(b"transfer-encoding"), len(b"expect")})
_INVALID = "<invalid>"


class _Rejected(Exception):
    """Raised from a parser callback to stop parsing; the response is on the connection."""


class _Refusal(NamedTuple):
    """A queued error answer, in the pipeline's order, after which the connection closes."""

    response: Response
    path: str
    method: str


class HttpConnection(asyncio.Protocol):
    """The server side of one connection. Built by ``Http`` for each accepted transport."""

    __slots__ = (
        "_http", "_listener", "_callback", "_routes", "_refusals", "_limits", "_max_header_bytes",
        "_max_header_count", "_timeouts", "_max_head_raw", "_clock", "_date", "_parser", "_transport", "_peer",
        "_now", "_url", "_fields", "_trailers", "_request", "_body", "_body_size", "_head_size", "_head_raw",
        "_in_head", "_in_body", "_content_length", "_chunked", "_expect", "_continue_pending", "_rejection",
        "_begun", "_head_started_at", "_last_receive", "_queue", "_task", "_answering", "_served", "_closing",
        "_finished", "_eof", "_lost", "_paused_reading", "_paused_writing", "_paused_at", "_idle", "_idle_since",
        "_connected_at", "_linger_until", "_timer", "_timer_at",
    )

    def __init__(self, http: Http, server: Server, listener: ListeningServer) -> None:
        self._http = http
        self._listener = listener
        self._callback = server.callback
        self._routes = server.routes
        self._refusals = server.refusals
        self._limits = limits = http.limits
        self._max_header_bytes = limits.max_header_bytes
        self._max_header_count = limits.max_header_count
        self._timeouts = http.timeouts
        self._max_head_raw = limits.max_request_line + limits.max_header_bytes + 4 * limits.max_header_count + 1024
        self._clock = http.clock
        self._date = http.date
        self._parser = httptools.HttpRequestParser(self)
        self._transport: Any = None
        self._peer: Any = None
        self._now = 0
        # The request being parsed.
        self._url = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._request: Request | None = None
        self._body: Any = None
        self._body_size = 0
        self._head_size = 0
        self._head_raw = 0
        self._in_head = False
        self._in_body = False
        self._content_length = -1
        self._chunked = False
        self._expect: str | None = None
        self._continue_pending = False
        self._rejection: _Refusal | None = None
        self._begun = 0
        self._head_started_at = 0
        self._last_receive = 0
        # The pipeline.
        self._queue: deque[Request | _Refusal] = deque()
        self._task: asyncio.Future[Any] | None = None
        self._answering: Request | None = None
        self._served = 0
        self._closing = False
        self._finished = False
        self._eof = False
        self._lost = False
        self._paused_reading = False
        self._paused_writing = False
        self._paused_at = 0
        self._idle = False
        self._idle_since = 0
        self._connected_at = 0
        self._linger_until = 0
        self._timer: Any = None
        self._timer_at = 0

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._peer = transport.get_extra_info("peername")
        if self._closing:  # the server was closed between accepting and now
            self._retire()
            transport.close()
            return
        now = self._clock.monotonic_ns()
        self._connected_at = self._idle_since = self._last_receive = self._now = now
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Responses are written whole; Nagle would only hold back the
            # next one behind the client's delayed ACK.
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
        if not self._http._admit(self):
            self._closing = True
            self._write(self._http.unavailable, False, _CLOSE_TAIL)
            self._finish()
            return
        self._become_idle(now)
        self._schedule()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # lingering, or reading no more requests: discard
        self._now = self._last_receive = self._clock.monotonic_ns()
        if self._idle:
            self._idle = False
            self._http._idle.pop(self, None)
        in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            rejection = self._rejection
            if rejection is None:  # our bug, not the client's
                self._http.log.exception("http parser callback failed")
                rejection = _Refusal(error_response(500), _INVALID, "")
            self._refuse(rejection)
        except httptools.HttpParserUpgrade:
            # The request asking to switch protocols is queued and answered
            # as plain HTTP (RFC 9110 7.8 lets a server ignore Upgrade);
            # what follows it is not HTTP/1.1, so read no further.
            self._closing = True
        except httptools.HttpParserError:
            if not self._closing:  # bytes after "Connection: close" are not an error
                self._refuse(_Refusal(error_response(400), _INVALID, ""))
        else:
            if in_head and self._in_head:
                # All of ``data`` was head bytes that httptools buffers
                # internally (it joins names and values before calling us).
                self._head_raw += len(data)
                if self._head_raw > self._max_head_raw:
                    self._refuse(_Refusal(error_response(431), _INVALID, ""))
        self._pump()

    def eof_received(self) -> bool:
        self._eof = True
        if self._finished:
            return False
        # Answer what is complete; a partial request can never complete.
        self._closing = True
        self._pump()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        self._retire()
        self._queue.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._http._forget(self)

    def pause_writing(self) -> None:
        self._paused_writing = True
        self._paused_at = self._clock.monotonic_ns()
        self._schedule()

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._pump()
        self._schedule()  # a lingering connection's deadline is due again

    # -- httptools callbacks ---------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._fields = []
        self._head_size = 0
        self._head_raw = 0
        self._content_length = -1
        self._chunked = False
        self._expect = None
        self._head_started_at = self._now if self._begun else self._connected_at
        self._begun += 1

    def on_url(self, piece: bytes) -> None:
        url = self._url + piece
        if len(url) > self._limits.max_request_line:
            self._reject(error_response(414))
        self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._head_size + len(name) + len(value)
        self._head_size = size
        if size > self._max_header_bytes:
            self._reject(error_response(431))
        if self._in_head:
            fields = self._fields
            if len(fields) >= self._max_header_count:
                self._reject(error_response(431))
            fields.append((name, value))
            if len(name) in _FRAMING_LENGTHS:  # cheap first test, then the names themselves
                self._framing(name.lower(), value)
        else:
            trailers = self._trailers
            if trailers is None:
                trailers = self._trailers = []
            if len(trailers) + len(self._fields) >= self._max_header_count:
                self._reject(error_response(431))
            trailers.append((name, value))

    def _framing(self, name: bytes, value: bytes) -> None:
        """Note what the server itself must know of the head: body size and expectations."""
        if name == b"content-length":
            # llhttp has validated it (digits, no conflicting repeat).
            self._content_length = int(value) if value.isdigit() else -1
        elif name == b"transfer-encoding":
            self._chunked = True
        elif name == b"expect":
            text = value.decode("latin-1").strip().lower()
            self._expect = text if self._expect is None else self._expect + "," + text

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        parser = self._parser
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("latin-1")
        request = Request(
            method, self._url.decode("latin-1"), parser.get_http_version(), Headers._from_wire(self._fields),
            b"", self._peer, parser.should_keep_alive(),
        )
        self._request = request
        routes = self._routes
        if routes is not None:
            allowed = routes.get(request.path)
            if allowed is not None and method not in allowed:
                self._reject(self._refusals[request.path])
        if self._content_length > self._limits.max_body_bytes:
            self._reject(error_response(413))
        expect = self._expect
        if expect is not None and request.version != "1.0":  # RFC 9110 10.1.1: 1.0 ignores it
            if expect != "100-continue":
                self._reject(error_response(417))
            if self._content_length > 0 or self._chunked:
                if self._queue or self._task is not None:
                    self._continue_pending = True
                else:
                    self._transport.write(CONTINUE)

    def on_body(self, chunk: bytes) -> None:
        size = self._body_size + len(chunk)
        if size > self._limits.max_body_bytes:
            self._reject(error_response(413))
        self._body_size = size
        self._continue_pending = False  # the client did not wait for it
        body = self._body
        if body is None:
            self._body = chunk
        elif type(body) is list:
            body.append(chunk)
        else:
            self._body = [body, chunk]

    def on_message_complete(self) -> None:
        request = self._request
        assert request is not None
        body = self._body
        if body is not None:
            request.body = body if type(body) is bytes else b"".join(body)
            self._body = None
            self._body_size = 0
        if self._trailers is not None:
            request.trailers = Headers._from_wire(self._trailers)
            self._trailers = None
        self._request = None
        self._in_body = False
        self._continue_pending = False
        if not request.keep_alive:
            self._closing = True
        queue = self._queue
        queue.append(request)
        if len(queue) > self._limits.max_pipelined and not self._paused_reading:
            self._paused_reading = True
            self._transport.pause_reading()

    def _reject(self, response: Response) -> None:
        request = self._request
        path, method = (request.path, request.method) if request is not None else (_INVALID, "")
        self._rejection = _Refusal(response, path, method)
        raise _Rejected

    def _refuse(self, refusal: _Refusal) -> None:
        """Queue an error answer behind the requests already queued; read no more."""
        self._rejection = None
        self._request = None
        self._body = None
        self._in_head = self._in_body = False
        self._continue_pending = False
        self._closing = True
        self._http.stats[f"refused.{refusal.response.status}"] += 1
        self._queue.append(refusal)

    # -- the pipeline ----------------------------------------------------------

    def _pump(self) -> None:
        """Answer queued requests in order, as long as each answer is ready now."""
        queue = self._queue
        while queue and self._task is None:
            if self._paused_writing or self._lost:
                return
            item = queue.popleft()
            if type(item) is _Refusal:
                queue.clear()
                self._write(item.response, item.method == "HEAD", _CLOSE_TAIL)
                self._http.count(item.path, item.response.status)
                break
            response = self._answer(item)
            if response is None:
                break  # an async callback is running; its done-callback resumes us
            self._send(item, response)
        if self._paused_reading and len(queue) <= self._limits.max_pipelined // 2:
            self._paused_reading = False
            self._transport.resume_reading()
        if self._task is None and not queue:
            self._drained()

    def _answer(self, request: Request) -> Response | None:
        try:
            result = self._callback(request)
        except Exception as exc:
            return self._failed(request, exc)
        if isinstance(result, Response):
            return result
        try:
            task = asyncio.ensure_future(result)
        except TypeError:
            return self._failed(request, TypeError(f"callback returned {type(result).__name__}, not a Response"))
        if task.done():  # an eager task factory finished it already
            return self._outcome(request, task)
        self._task = task
        self._answering = request
        task.add_done_callback(self._handler_done)
        return None

    def _handler_done(self, task: asyncio.Future[Any]) -> None:
        request = self._answering
        assert request is not None
        self._task = None
        self._answering = None
        response = self._outcome(request, task)
        if not self._lost:
            self._send(request, response)
            self._pump()

    def _outcome(self, request: Request, task: asyncio.Future[Any]) -> Response:
        if task.cancelled():
            # Not the application's bug: something (shutdown, a test) cancelled it.
            self._http.log.debug("%s %s: handler cancelled", request.method, request.target)
            return self._http.internal_error
        error = task.exception()
        if error is not None:
            return self._failed(request, error)
        result = task.result()
        if not isinstance(result, Response):
            return self._failed(request, TypeError(f"callback returned {type(result).__name__}, not a Response"))
        return result

    def _failed(self, request: Request, error: BaseException) -> Response:
        http = self._http
        http.stats["handler_errors"] += 1
        log = http.log
        log.error(
            "%s %s from %s: handler raised %s: %s", request.method, request.target, self._peer,
            type(error).__name__, error, exc_info=error if log.isEnabledFor(logging.DEBUG) else None,
        )
        return http.internal_error

    def _send(self, request: Request, response: Response) -> None:
        close = not request.keep_alive or response._close or (self._closing and not self._queue)
        if close:
            tail = _CLOSE_TAIL
            self._closing = True
            self._queue.clear()
        elif request.version == "1.0":
            tail = _KEEP_ALIVE_TAIL
        else:
            tail = _END_TAIL
        self._write(response, request.method == "HEAD", tail)
        self._served += 1
        self._http.count(request.path, response._status)

    def _write(self, response: Response, head_only: bool, tail: bytes) -> None:
        date = self._date.line()
        if head_only or not response._body:
            self._transport.write(response._head + date + tail)
        else:
            self._transport.write(b"".join((response._head, date, tail, response._body)))

    def _drained(self) -> None:
        """Nothing is owed: close if asked to, else wait for the next request."""
        if self._finished:
            return
        if self._closing:
            self._finish()
            return
        if self._continue_pending:
            self._continue_pending = False
            self._transport.write(CONTINUE)
        if not self._in_head and not self._in_body:
            self._become_idle(self._clock.monotonic_ns())
        self._schedule()

    def _become_idle(self, now: int) -> None:
        self._idle_since = now
        self._idle = True
        self._http._idle[self] = None

    def _retire(self) -> None:
        """No more requests and no more answers: out of the idle set and the connection cap."""
        self._finished = self._closing = True
        if self._idle:
            self._idle = False
            self._http._idle.pop(self, None)
        self._http._active.discard(self)

    def _finish(self) -> None:
        """Half-close after the last response and linger, discarding input, until the client's FIN."""
        if self._finished:
            return
        self._retire()
        transport = self._transport
        if self._eof or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._linger_until = self._clock.monotonic_ns() + self._timeouts.linger
        self._schedule()

    def shutdown(self) -> None:
        """Close when the responses owed are written (at once when idle): the server is closing."""
        if self._finished:
            return
        self._closing = True
        if self._transport is None:
            return  # accepted, not yet made: connection_made closes it
        if self._task is None and not self._queue:
            if self._idle or self._eof:
                self._retire()
                self._transport.close()
            else:
                self._finish()

    def evict(self) -> None:
        """Close an idle connection to make room for a new one."""
        self._http.stats["evicted.idle"] += 1
        self.shutdown()

    # -- timers ----------------------------------------------------------------

    def _deadline(self) -> int | None:
        timeouts = self._timeouts
        if self._lost:
            return None
        if self._paused_writing:
            # Before lingering: a client that reads nothing must not hold a
            # closing connection (and its unsent data) either.
            return self._paused_at + timeouts.write
        if self._finished:
            return self._linger_until
        if self._task is not None or self._queue:
            return None
        if self._in_head:
            return self._head_started_at + timeouts.header
        if self._in_body:
            return self._last_receive + timeouts.body
        return self._idle_since + (timeouts.keepalive if self._begun else timeouts.header)

    def _schedule(self) -> None:
        deadline = self._deadline()
        if deadline is None:
            return
        timer = self._timer
        if timer is not None:
            if self._timer_at <= deadline:
                return  # it fires early, finds the later deadline, and re-arms
            timer.cancel()
        self._timer_at = deadline
        self._timer = self._clock.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline()
        if deadline is None:
            return  # busy; re-armed when the pipeline drains
        if self._clock.monotonic_ns() < deadline:
            self._timer_at = deadline
            self._timer = self._clock.call_at(deadline, self._on_timer)
            return
        self._expire()

    def _expire(self) -> None:
        stats = self._http.stats
        transport = self._transport
        if self._paused_writing:
            stats["timeout.write"] += 1
            self._retire()
            transport.abort()
        elif self._finished:
            stats["timeout.linger"] += 1
            transport.close()
        elif self._in_head or self._in_body:
            # RFC 9110 15.5.9: say why before closing a request that began.
            stats["timeout.header" if self._in_head else "timeout.body"] += 1
            self._in_head = self._in_body = False
            self._closing = True
            self._write(self._http.request_timeout, False, _CLOSE_TAIL)
            self._http.count(_INVALID, 408)
            self._finish()
        else:
            stats["timeout.idle" if self._begun else "timeout.silent"] += 1
            self.shutdown()
