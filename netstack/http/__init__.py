"""HTTP/1.1 server over any ``Stack``, in the shape of cohttp's ``Server``.

An application is written against the ``Http`` contract in
``netstack.protocols`` (re-exported here as ``HttpProtocol``) and never sees the connection
machinery::

    from netstack.http import Http, respond_string

    async def callback(request):
        if request.path == "/":
            return respond_string(body="Next train to Chennai Central: 14:20.\\n")
        return respond_string(status=404, body="not found\\n")

    http = Http(stack, clock)
    listening = await http.listen(8080, http.make(callback, routes={"/": {"GET"}}))
    await listening.serve_forever()

Modules
-------
``server``      ``Http`` (make, listen, counters), ``Server``, ``ListeningServer``
``connection``  ``HttpConnection``: one connection's parser, pipeline and timers
``message``     ``Request``, ``Headers``, ``Response``, ``respond_string``,
                ``respond_json``
``limits``      ``Limits``: every bound and timeout, with its status and default

What a client gets (RFC 9110 / 9112)
------------------------------------
* Persistent connections: HTTP/1.1 by default, HTTP/1.0 only with
  ``Connection: keep-alive``; ``Connection: close`` is honoured both ways.
* Pipelining: responses strictly in request order; handlers of pipelined
  requests run one after another.
* ``HEAD``: the ``GET`` head, same ``Content-Length``, no body.
* Request bodies by ``Content-Length`` or chunked (extensions ignored,
  trailers in ``request.trailers``), read whole before the callback runs.
* ``Expect: 100-continue``: ``100 Continue`` before the body is read, or
  ``413`` (too large) / ``417`` (another expectation) instead.
* Every response has ``Date`` (cached per second of ``clock.wall_ns``),
  ``Server: netstack`` and ``Content-Length`` (not on ``204``, RFC 9110 8.6).
* Refusals, each closing the connection after it: 400 malformed, 405 with
  ``Allow``, 408 timed out mid-request, 413, 414, 417, 431; 503 when
  over ``max_connections``; 500 (generic body, one log line on the
  ``http`` logger) when the callback raises -- the connection stays usable.
"""

from __future__ import annotations

from netstack.http.limits import Limits
from netstack.http.message import Headers, Request, Response, respond_json, respond_string
from netstack.http.server import Http, ListeningServer, Server
from netstack.protocols import Http as HttpProtocol  # the contract, kept with the others

__all__ = [
    "Headers",
    "Http",
    "HttpProtocol",
    "Limits",
    "ListeningServer",
    "Request",
    "Response",
    "Server",
    "respond_json",
    "respond_string",
]
