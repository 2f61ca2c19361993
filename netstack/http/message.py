"""HTTP messages as the application sees them: ``Request``, ``Headers``, ``Response``.

Theory of operation
-------------------
A ``Request`` is built by the connection once per request and handed to the
callback complete: its body has been read (and de-chunked) before the
callback runs. Header names are lowercased (as h11 does) and values
decoded as ISO-8859-1, which maps every byte to one character and so loses
nothing (RFC 9110 5.5: field values are octets); both happen on first
access, so a callback that reads no header pays for none.

A ``Response`` is immutable and renders its own head -- status line,
``Server``, ``Content-Type``, ``Content-Length`` and the application's
headers -- once, when it is constructed. What varies per request (``Date``,
``Connection``, and whether the body goes out at all for ``HEAD``) is added
by the connection as it writes::

    response.head + date_line + connection_line + b"\\r\\n" + body

so an application that answers a hot path with one prebuilt ``Response``
pays nothing per request for formatting. Headers the server owns
(``Content-Length``, ``Transfer-Encoding``, ``Date``) cannot be set by the
application; ``Connection: close`` can, and closes the connection after
that response.

RFC 9110 8.6 and 6.4.1 fix the framing: a ``204`` or ``304`` response has no
body and a ``204`` no ``Content-Length``; a ``304`` declares the length its
``200`` would have had only when the application supplied that body.
Everything else carries ``Content-Length`` -- on ``HEAD`` too, with the
length the ``GET`` body would have.

Errors: building a ``Response`` with a status outside 200-599, a header name
or value holding CR, LF or NUL (response splitting), or a server-owned
header raises ``ValueError``: the application's bug, found where it is made.
"""

from __future__ import annotations

import time

import http
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

SERVER_NAME = "netstack"

_SERVER_OWNED = frozenset({"content-length", "transfer-encoding", "date"})
_FORBIDDEN_IN_FIELDS = ("\r", "\n", "\0")
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

HeaderInput = Mapping[str, str] | Iterable[tuple[str, str]] | None


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(seconds: int) -> str:
    """RFC 9110 5.6.7 IMF-fixdate, e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``.

    Written out rather than taken from ``email.utils``, whose import pulls in
    datetime, random and urllib (memory an hvt guest does not have to spare);
    names are fixed English, whatever the locale.
    """
    t = time.gmtime(seconds)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


class Headers:
    """Request header fields: a case-insensitive multi-dict, in arrival order.

    Names are stored lowercased; ``get`` and ``in`` accept any case.
    Iteration yields names (repeated names repeat); ``items()`` the pairs.

    Fields from the parser stay raw bytes until first read: many
    callbacks never look at a header, and they then pay nothing for it.
    """

    __slots__ = ("_raw", "_decoded")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._raw: list[tuple[bytes, bytes]] | None = None
        self._decoded: list[tuple[str, str]] | None = [(name.lower(), value) for name, value in items]

    @classmethod
    def _from_wire(cls, raw: list[tuple[bytes, bytes]]) -> Headers:
        """Wrap the parser's ``(name, value)`` byte pairs, decoded on first use."""
        headers = cls.__new__(cls)
        headers._raw = raw
        headers._decoded = None
        return headers

    def _pairs(self) -> list[tuple[str, str]]:
        pairs = self._decoded
        if pairs is None:
            pairs = self._decoded = [(field_name(name), value.decode("latin-1")) for name, value in self._raw or ()]
            self._raw = None
        return pairs

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        name = name.lower()
        for key, value in self._pairs():
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self._pairs() if key == name]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._pairs())

    def __len__(self) -> int:
        return len(self._raw) if self._raw is not None else len(self._pairs())

    def items(self) -> list[tuple[str, str]]:
        return list(self._pairs())

    def keys(self) -> list[str]:
        return [key for key, _ in self._pairs()]

    def values(self) -> list[str]:
        return [value for _, value in self._pairs()]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._pairs() == other._pairs()
        return NotImplemented

    def __repr__(self) -> str:
        return f"Headers({self._pairs()!r})"


_NAMES: dict[bytes, str] = {}
_NAMES_MAX = 512


def field_name(raw: bytes) -> str:
    """A header name off the wire, lowercased, through a small cache of the names seen."""
    name = _NAMES.get(raw)
    if name is None:
        name = raw.decode("latin-1").lower()
        if len(_NAMES) < _NAMES_MAX:  # bounded: a client inventing names cannot grow it
            _NAMES[raw] = name
    return name


class Request:
    """One complete request, body included.

    ``method``: ``"GET"``, ``"POST"``... ``target``: the request-target as
    sent (``"/api/next?x=1"``). ``path`` / ``query``: the target split at the
    first ``?`` (an absolute-form target ``http://host/p`` gives path ``/p``),
    not percent-decoded. ``version``: ``"1.1"`` or ``"1.0"``. ``headers``:
    ``Headers``. ``body``: ``bytes``, ``b""`` when there was none.
    ``trailers``: the chunked trailer fields (a ``Headers``, usually empty).
    ``peer``: the client's ``(host, port)``. ``keep_alive``: whether the
    client will accept another request on this connection.
    """

    __slots__ = ("method", "target", "path", "query", "version", "headers", "body", "trailers", "peer", "keep_alive")

    def __init__(
        self,
        method: str,
        target: str,
        version: str = "1.1",
        headers: Headers | None = None,
        body: bytes = b"",
        peer: Any = None,
        keep_alive: bool = True,
        trailers: Headers | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.path, self.query = split_target(target)
        self.version = version
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.trailers = trailers if trailers is not None else _NO_TRAILERS
        self.peer = peer
        self.keep_alive = keep_alive

    def text(self, encoding: str = "utf-8") -> str:
        """The body decoded (errors replaced: it came off the network)."""
        return self.body.decode(encoding, "replace")

    def json(self) -> Any:
        """The body parsed as JSON; ``ValueError`` when it is not."""
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} HTTP/{self.version} body={len(self.body)}B from {self.peer}>"


_NO_TRAILERS = Headers()


def split_target(target: str) -> tuple[str, str]:
    """``(path, query)`` of a request-target in origin, absolute or asterisk form."""
    if not target.startswith("/") and "://" in target:
        # absolute-form (RFC 9112 3.2.2): keep only what follows the authority.
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        query_at = rest.find("?")
        if slash < 0 or (0 <= query_at < slash):
            target = "/" + (rest[query_at:] if query_at >= 0 else "")
        else:
            target = rest[slash:]
    path, _, query = target.partition("?")
    return path, query


class Response:
    """A status, headers and a body, rendered once; share one freely between requests.

    ``body`` is ``bytes`` or ``str`` (encoded as UTF-8). ``headers`` is a
    mapping or a list of pairs; ``content_type`` is a shortcut for the
    ``Content-Type`` header (omitted when ``None``).
    """

    __slots__ = ("_status", "_headers", "_body", "_head", "_close")

    def __init__(
        self,
        status: int = 200,
        body: bytes | str = b"",
        *,
        content_type: str | None = None,
        headers: HeaderInput = None,
    ) -> None:
        if not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"a response status is 200-599, got {status!r}")
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes):
            body = bytes(body)
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
        if content_type is not None:
            pairs.insert(0, ("Content-Type", content_type))
        close = False
        server = True
        lines = [f"HTTP/1.1 {status} {reason(status)}\r\n"]
        rendered = []
        for name, value in pairs:
            _check_field(name, value)
            lowered = name.lower()
            if lowered in _SERVER_OWNED:
                raise ValueError(f"{name} is set by the server, not by a response")
            if lowered == "connection":
                # Only "close" means anything from an application; the
                # connection writes its own Connection line.
                close = close or "close" in value.lower()
                continue
            if lowered == "server":
                server = False
            rendered.append(f"{name}: {value}\r\n")
        if server:
            lines.append(f"Server: {SERVER_NAME}\r\n")
        lines += rendered
        if status == 204:
            body = b""  # RFC 9110 15.3.5: no content, and no Content-Length (8.6)
        elif status != 304 or body:
            lines.append(f"Content-Length: {len(body)}\r\n")
        self._status = status
        self._headers = tuple((name, value) for name, value in pairs if name.lower() != "connection")
        self._body = body if status != 304 else b""
        self._head = "".join(lines).encode("latin-1")
        self._close = close

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """The application's header fields, as given (without ``Connection``)."""
        return self._headers

    @property
    def body(self) -> bytes:
        return self._body

    @property
    def head(self) -> bytes:
        """The rendered head up to, not including, ``Date``, ``Connection`` and the blank line."""
        return self._head

    @property
    def close(self) -> bool:
        """Whether the application asked for the connection to close after this response."""
        return self._close

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self._headers:
            if key.lower() == name:
                return value
        return None

    def __repr__(self) -> str:
        return f"<Response {self._status} {len(self._body)}B>"


def _check_field(name: str, value: str) -> None:
    if not isinstance(name, str) or not isinstance(value, str):
        raise ValueError(f"header fields are strings, got {name!r}: {value!r}")
    if not name or not _TOKEN_CHARS.issuperset(name):
        raise ValueError(f"invalid header name {name!r}")
    if any(char in value for char in _FORBIDDEN_IN_FIELDS):
        raise ValueError(f"header {name} holds CR, LF or NUL")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"header {name} is not ISO-8859-1; percent- or RFC 8187-encode it") from None


def reason(status: int) -> str:
    """The reason phrase for ``status`` (``"Unknown"`` for unregistered codes)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def respond_string(
    status: int = 200,
    body: str | bytes = "",
    content_type: str = "text/plain; charset=utf-8",
    headers: HeaderInput = None,
) -> Response:
    """A response with a text body: cohttp's ``Server.respond_string``."""
    return Response(status, body, content_type=content_type, headers=headers)


def respond_json(
    value: Any,
    status: int = 200,
    headers: HeaderInput = None,
) -> Response:
    """A response whose body is ``value`` as compact JSON (``application/json``)."""
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return Response(status, body, content_type="application/json", headers=headers)


def error_response(status: int, headers: HeaderInput = None) -> Response:
    """The server's own answer for a refused request: the reason phrase as the body."""
    return Response(status, reason(status).lower() + "\n", content_type="text/plain; charset=utf-8", headers=headers)


class DateCache:
    """The ``Date:`` line, formatted at most once per second of the clock's wall time.

    RFC 9110 6.6.1: an origin server with a clock MUST send ``Date`` in
    every 2xx-5xx response; its resolution is one second, so one string
    serves every response of that second.
    """

    __slots__ = ("_wall_ns", "_second", "_line")

    def __init__(self, wall_ns: Any) -> None:
        self._wall_ns = wall_ns
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        second = self._wall_ns() // 1_000_000_000
        if second != self._second:
            self._second = second
            self._line = b"Date: " + http_date(second).encode("ascii") + b"\r\n"
        return self._line
