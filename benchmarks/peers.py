"""The peers: servers people would pick, serving the same bytes as our services.

Run inside a benchmark's server namespace as
``python -m benchmarks.peers KIND --host 10.0.1.2 [--port N]``; each prints
``peer ready`` once its sockets are bound, which is what the benchmark
waits for. Kinds:

``echo``      the raw uvloop counterpart of ``services.echo``: UDP and TCP
              echo on port 7 (RFC 862; ``TCP_NODELAY`` on accepted
              connections), TCP discard on 9 (RFC 863) and TCP source
              on 19 (a chargen-like stream, RFC 864's role without its
              pattern). The floor for what an asyncio program on the
              kernel's stack can do.
``raw-http``  an ``asyncio.Protocol`` on uvloop answering ``GET /`` with a
              fixed response, keep-alive, no parser library: the floor for
              HTTP on asyncio and the reference of every HTTP ratio.
``aiohttp``   aiohttp's own server (on uvloop, access log off).
``uvicorn``   uvicorn with httptools on uvloop and a bare ASGI callable.

nginx (Debian ``nginx-light``) is the native reference; ``nginx_config``
writes its configuration. Every HTTP peer answers ``GET /`` with 200
text/plain ``Next train to Chennai Central: 14:20.`` and anything else with
404 ``not found``, as Suresh does. Headers differ by server (aiohttp and
uvicorn add ``Date``/``Server``); that is part of what each server costs.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path

BODY = b"Next train to Chennai Central: 14:20."
NOT_FOUND_BODY = b"not found"
CONTENT_TYPE = "text/plain"
READY = "peer ready"
HTTP_PORT = 8080
ECHO_PORTS = {"echo": 7, "tcp_discard": 9, "tcp_source": 19}
SOURCE_BLOCK = bytes(range(32, 127)) * 690  # ~64 KiB of printable bytes per write


def http_response(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode("ascii") + body)


RAW_OK = http_response("200 OK", BODY)
RAW_NOT_FOUND = http_response("404 Not Found", NOT_FOUND_BODY)


# -- echo: UDP and TCP echo, TCP discard, TCP source ------------------------------------


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """``TCP_NODELAY`` on an accepted connection's socket (uvloop sets it already; say so explicitly).

    A small echo must leave at once, not wait for the ACK of earlier data
    (Nagle): the round-trip benchmark measures the stack, not that wait.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class TcpEcho(asyncio.Protocol):
    """Echoes TCP data (``TCP_NODELAY``), reading no faster than the peer takes the echo back."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class TcpDiscard(asyncio.Protocol):
    """Reads and drops everything; closes after the peer's FIN, which tells it all arrived."""

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # close our side too


class TcpSource(asyncio.Protocol):
    """Writes as fast as the transport's flow control lets it, until the peer goes away."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.paused = False
        self._fill()

    def _fill(self) -> None:
        while not self.paused and not self.transport.is_closing():
            self.transport.write(SOURCE_BLOCK)  # calls pause_writing past the high-water mark

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._fill()

    def connection_lost(self, exc: Exception | None) -> None:
        self.paused = True


async def serve_echo(host: str) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(UdpEcho, local_addr=(host, ECHO_PORTS["echo"]))
    await loop.create_server(TcpEcho, host, ECHO_PORTS["echo"])
    await loop.create_server(TcpDiscard, host, ECHO_PORTS["tcp_discard"])
    await loop.create_server(TcpSource, host, ECHO_PORTS["tcp_source"])
    await _ready_forever()


# -- raw HTTP ---------------------------------------------------------------------------


class RawHttp(asyncio.Protocol):
    """Just enough HTTP/1.1 for ``GET`` without a body: split at the blank line, answer.

    Pipelined requests are answered in order; ``Connection: close`` closes
    after the answer. A request head over 64 KiB closes the connection.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
            target = head.split(b"\r\n", 1)[0].split(b" ")
            self.transport.write(RAW_OK if len(target) > 1 and target[1] == b"/" else RAW_NOT_FOUND)
            if b"connection: close" in head.lower():
                self.transport.close()
                return
        if len(self.buffer) > 65536:
            self.transport.close()


async def serve_raw_http(host: str, port: int) -> None:
    await asyncio.get_running_loop().create_server(RawHttp, host, port)
    await _ready_forever()


# -- aiohttp and uvicorn ----------------------------------------------------------------


async def serve_aiohttp(host: str, port: int) -> None:
    from aiohttp import web

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type=CONTENT_TYPE)

    async def not_found(request: web.Request) -> web.Response:
        return web.Response(body=NOT_FOUND_BODY, status=404, content_type=CONTENT_TYPE)

    application = web.Application()
    application.router.add_get("/", index)
    application.router.add_route("*", "/{tail:.*}", not_found)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    await _ready_forever()


_ASGI_OK = [(b"content-type", CONTENT_TYPE.encode()), (b"content-length", str(len(BODY)).encode())]
_ASGI_NOT_FOUND = [(b"content-type", CONTENT_TYPE.encode()), (b"content-length", str(len(NOT_FOUND_BODY)).encode())]


async def asgi_application(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
    """A bare ASGI callable: no framework, so uvicorn's own cost is what is measured."""
    if scope["type"] != "http":
        return
    found = scope["path"] == "/"
    await send({"type": "http.response.start", "status": 200 if found else 404,
                "headers": _ASGI_OK if found else _ASGI_NOT_FOUND})
    await send({"type": "http.response.body", "body": BODY if found else NOT_FOUND_BODY})


def serve_uvicorn(host: str, port: int) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
            await super().startup(sockets)
            print(READY, flush=True)

    config = uvicorn.Config(asgi_application, host=host, port=port, loop="uvloop", http="httptools",
                            lifespan="off", access_log=False, log_level="warning")
    Server(config).run()


# -- nginx ------------------------------------------------------------------------------


def nginx_config(directory: Path, host: str, port: int) -> Path:
    """Write an nginx configuration serving the same bytes; returns its path.

    One worker (the Python peers are single-threaded too), no access log, and
    ``keepalive_requests`` raised so that the keep-alive run's thousands of
    requests stay on one connection (nginx closes after 1000 by default).
    """
    body = BODY.decode()
    text = f"""\
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    server {{
        listen {host}:{port};
        default_type {CONTENT_TYPE};
        location = / {{ return 200 "{body}"; }}
        location / {{ return 404 "not found"; }}
    }}
}}
"""
    path = directory / "nginx.conf"
    path.write_text(text)
    return path


# -- command line -----------------------------------------------------------------------


async def _ready_forever() -> None:
    print(READY, flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["echo", "raw-http", "aiohttp", "uvicorn"])
    parser.add_argument("--host", required=True, help="address to bind (the server namespace's)")
    parser.add_argument("--port", type=int, default=HTTP_PORT, help="HTTP port (default 8080)")
    arguments = parser.parse_args(argv)
    if arguments.kind == "uvicorn":
        serve_uvicorn(arguments.host, arguments.port)
        return 0
    import uvloop

    body = {
        "echo": lambda: serve_echo(arguments.host),
        "raw-http": lambda: serve_raw_http(arguments.host, arguments.port),
        "aiohttp": lambda: serve_aiohttp(arguments.host, arguments.port),
    }[arguments.kind]
    try:
        uvloop.run(body())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
