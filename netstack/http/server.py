"""``Http``: an HTTP/1.1 server over any ``Stack``, in the shape of cohttp's ``Server``.

Theory of operation
-------------------
cohttp-mirage separates *what* a server answers from *where* it listens::

    let callback _conn req body = Server.respond_string ~status:`OK ~body:"hi" ()
    S.create (S.TCP port) (S.make ~callback ())

Here the same, with the stack and clock as constructor arguments (the
functor application, STYLE 6)::

    http = Http(stack, clock)
    server = http.make(callback, routes={"/": {"GET"}})
    listening = await http.listen(8080, server)

``make`` pairs the callback with its *routes*: a mapping from an exact path
to the methods it accepts. A request for a declared path with another
method is answered ``405 Method Not Allowed`` with an ``Allow`` header
(RFC 9110 15.5.6) without calling the callback; a path that is not declared
goes to the callback, which decides (typically a 404). ``GET`` implies
``HEAD`` (RFC 9110 9.3.2: HEAD is GET without the content). Routes are
data, not a router: the callback stays one function, as in cohttp, and the
server can precompute each path's 405 answer.

``listen`` builds one ``HttpConnection`` protocol per accepted transport
through the stack's ``create_server`` -- asyncio's own signature, so the
direct stack and the socket stack serve alike -- and returns a
``ListeningServer`` to close and wait on.

Counters for ``/metrics``: ``requests``, a ``Counter`` keyed by
``(path, status)`` (bounded: see ``Limits.max_tracked_paths``; requests
refused before their path was known count as ``"<invalid>"``);
``connections_open`` and ``connections_total``; and ``stats``, a
``Counter`` of events: ``connections.accepted``, ``refused.<status>``
(400, 405, 413, 414, 417, 431), ``refused.over_capacity``,
``evicted.idle``, ``timeout.<kind>`` (``header``, ``body``, ``idle``,
``silent`` -- a connection that never sent a byte --, ``write``,
``linger``) and ``handler_errors``. ``counters()`` flattens them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import Any

from netstack.http.connection import HttpConnection
from netstack.http.limits import Limits, Timeouts
from netstack.http.message import DateCache, Request, Response, error_response

Callback = Callable[[Request], "Awaitable[Response] | Response"]
"""``async def callback(request) -> Response`` (a plain function returning a ``Response`` also works)."""

OTHER_PATHS = "<other>"


class Server:
    """What ``make`` returns: a callback and the methods each declared path allows.

    ``routes`` maps a path (exact, without query) to the allowed methods, or
    is ``None`` for "every path and method goes to the callback".
    ``refusals`` holds each declared path's prebuilt 405 response.
    """

    __slots__ = ("callback", "routes", "refusals")

    def __init__(self, callback: Callback, routes: Mapping[str, Collection[str]] | None = None) -> None:
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        self.callback = callback
        self.routes: dict[str, frozenset[str]] | None = None
        self.refusals: dict[str, Response] = {}
        if routes is not None:
            self.routes = {}
            for path, methods in routes.items():
                if isinstance(methods, str):
                    raise TypeError(f"routes[{path!r}] must be a collection of methods, not the string {methods!r}")
                allowed = {method.upper() for method in methods}
                if not allowed:
                    raise ValueError(f"routes[{path!r}] allows no method")
                if "GET" in allowed:
                    allowed.add("HEAD")
                self.routes[path] = frozenset(allowed)
                self.refusals[path] = error_response(405, headers={"Allow": ", ".join(sorted(allowed))})

    def allowed(self, path: str) -> frozenset[str] | None:
        """The methods ``path`` accepts, or ``None`` when it is not a declared route."""
        return None if self.routes is None else self.routes.get(path)


class ListeningServer:
    """One port being served. ``close()`` stops accepting and closes connections once their answers are out."""

    def __init__(self, http: Http, port: int) -> None:
        self._http = http
        self.port = port
        self.tcp_server: Any = None
        self._connections: set[HttpConnection] = set()
        self._closed = False
        self._drained: asyncio.Future[None] | None = None
        self._closed_event = asyncio.Event()

    @property
    def connections(self) -> int:
        """Connections of this listener still open (lingering ones included)."""
        return len(self._connections)

    def is_serving(self) -> bool:
        return not self._closed

    def close(self) -> None:
        """Stop accepting; close idle connections now and busy ones after their pending responses."""
        if self._closed:
            return
        self._closed = True
        self._closed_event.set()
        if self.tcp_server is not None:
            self.tcp_server.close()
        for connection in list(self._connections):
            connection.shutdown()

    def abort(self) -> None:
        """Close, and abort (reset) every connection still open."""
        self.close()
        for connection in list(self._connections):
            if connection._transport is not None:
                connection._transport.abort()
            else:
                connection.shutdown()

    async def wait_closed(self) -> None:
        """Wait for ``close()`` and then for every connection to end."""
        await self._closed_event.wait()
        if self._connections:
            if self._drained is None or self._drained.done():
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)

    async def serve_forever(self) -> None:
        """Serve until cancelled (then close and wait) or until ``close()``."""
        try:
            await self.wait_closed()
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise

    def _forget(self, connection: HttpConnection) -> None:
        self._connections.discard(connection)
        if not self._connections and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def __aenter__(self) -> ListeningServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving"
        return f"<ListeningServer port={self.port} {state} connections={self.connections}>"


class Http:
    """An HTTP/1.1 server over ``stack``, timed by ``clock``.

    Life cycle::

        Http(stack, clock) -> make(callback)* -> listen(port, server)* -> ListeningServer.close()
    """

    def __init__(
        self,
        stack: Any,
        clock: Any,
        *,
        limits: Limits | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.stack = stack
        self.clock = clock
        self.limits = limits if limits is not None else Limits()
        self.timeouts = Timeouts.from_limits(self.limits)
        self.log = logger if logger is not None else logging.getLogger("http")
        self.date = DateCache(clock.wall_ns)
        self.requests: Counter[tuple[str, int]] = Counter()
        self.stats: Counter[str] = Counter()
        self.internal_error = error_response(500)
        self.request_timeout = error_response(408)
        self.unavailable = error_response(503, headers={"Retry-After": "1"})
        self._connections: set[HttpConnection] = set()  # open, for counting
        self._active: set[HttpConnection] = set()  # not yet closing: what max_connections bounds
        self._idle: dict[HttpConnection, None] = {}  # evictable, longest idle first
        self._tracked: set[str] = set()  # paths counted by name
        self._declared: set[str] = set()  # route paths, always counted by name

    # -- the cohttp shape ------------------------------------------------------

    def make(self, callback: Callback, *, routes: Mapping[str, Collection[str]] | None = None) -> Server:
        """Pair ``callback`` with the methods each declared path allows (see the module docstring)."""
        server = Server(callback, routes)
        if server.routes:
            self._declared.update(server.routes)
        return server

    async def listen(self, port: int, server: Server, *, host: str | None = None) -> ListeningServer:
        """Serve ``server`` on TCP ``port`` (0: any free port); returns once accepting."""
        if not isinstance(server, Server):
            raise TypeError(f"listen needs a Server from make(), got {server!r}")
        listening = ListeningServer(self, port)

        def factory() -> HttpConnection:
            connection = HttpConnection(self, server, listening)
            listening._connections.add(connection)
            return connection

        tcp_server = await self.stack.create_server(factory, host, port)
        listening.tcp_server = tcp_server
        listening.port = _bound_port(tcp_server, port)
        return listening

    # -- counters --------------------------------------------------------------

    @property
    def connections_open(self) -> int:
        return len(self._connections)

    @property
    def connections_total(self) -> int:
        return self.stats["connections.accepted"]

    def count(self, path: str, status: int) -> None:
        """Count one answered request under its path (bounded; see ``Limits.max_tracked_paths``)."""
        tracked = self._tracked
        if path not in tracked and path not in self._declared:
            if len(tracked) < self.limits.max_tracked_paths:
                tracked.add(path)
            else:
                path = OTHER_PATHS
        self.requests[(path, status)] += 1

    def counters(self) -> dict[str, int]:
        """Flat counters for a metrics page: ``stats`` plus the connection gauges."""
        merged = dict(self.stats)
        merged["connections.open"] = self.connections_open
        merged["connections.total"] = self.connections_total
        return merged

    # -- connection bookkeeping (called by HttpConnection) ---------------------

    def _admit(self, connection: HttpConnection) -> bool:
        self._connections.add(connection)
        self.stats["connections.accepted"] += 1
        if len(self._active) >= self.limits.max_connections:
            if not self._idle:
                self.stats["refused.over_capacity"] += 1
                self.log.debug("over capacity (%d connections): refusing %s", len(self._active), connection._peer)
                return False
            next(iter(self._idle)).evict()
        self._active.add(connection)
        return True

    def _forget(self, connection: HttpConnection) -> None:
        self._connections.discard(connection)
        self._active.discard(connection)
        connection._listener._forget(connection)


def _bound_port(tcp_server: Any, requested: int) -> int:
    port = getattr(tcp_server, "port", None)
    if isinstance(port, int):
        return port
    for sock in getattr(tcp_server, "sockets", ()) or ():
        return sock.getsockname()[1]
    return requested
