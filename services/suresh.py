"""Suresh the Stationmaster: a "next train" enquiry service.

``python -m services.suresh --platform unix``, then
``curl http://10.0.0.2:8080/`` answers ``Next train to Chennai Central: 14:20.``

The application is ``Suresh``, a class over an ``Http`` and a ``Clock``
(MirageOS's functor, in Python's spelling: the devices come in through the
constructor). ``main`` is the wiring: it picks the platform module by name,
builds netif -> stack -> http, hands them to ``Suresh`` and runs it on the
platform's loop. Nothing above ``main`` knows which platform or stack it
runs on.

Routes::

    GET /          200 text/plain        Next train to Chennai Central: 14:20.
    GET /api/next  200 application/json  {"destination":"Chennai Central","time":"14:20"}
    GET /health    200 application/json  {"status":"ok","uptime_seconds":...}
    GET /metrics   200 text/plain        Prometheus text format (version 0.0.4)
    anything else  404 text/plain        not found

``HEAD`` works wherever ``GET`` does; another method on a known path is 405
with ``Allow``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from netstack.http import Http, Request, Response, respond_string
from netstack.protocols import Clock, PlatformError
from services import boot

log = logging.getLogger("suresh")

DEFAULT_DESTINATION = "Chennai Central"
DEFAULT_TIME = "14:20"
DEFAULT_PORT = 8080
JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
ROUTES = {"/": {"GET"}, "/api/next": {"GET"}, "/health": {"GET"}, "/metrics": {"GET"}}

DEVICES = [{"name": "service", "type": "NET_BASIC"}]
"""What the application needs from a platform; an hvt image's manifest lists it."""


class Suresh:
    """The stationmaster over any ``Http``.

    ``counters`` returns the stack's counters for ``/metrics`` (frames, drops
    by reason, TCP connections, retransmissions); it is optional, so the
    application runs over a mock ``Http`` with nothing else.
    """

    def __init__(
        self,
        http: Http,
        clock: Clock,
        *,
        destination: str = DEFAULT_DESTINATION,
        time: str = DEFAULT_TIME,
        port: int = DEFAULT_PORT,
        counters: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.http = http
        self.clock = clock
        self.port = port
        self._counters = counters
        self._started_ns = clock.monotonic_ns()
        # The answers never change: build them once.
        self._home = respond_string(body=f"Next train to {destination}: {time}.")
        self._next = respond_string(
            body=json.dumps({"destination": destination, "time": time}, separators=(",", ":")), content_type=JSON
        )
        self._not_found = respond_string(status=404, body="not found")

    def callback(self, request: Request) -> Response:
        """Every answer is ready at once, so the callback is a plain function:
        ``Http`` then answers within the same loop iteration, without a task
        per request (an ``async def`` works too, at that cost)."""
        path = request.path
        if path == "/":
            return self._home
        if path == "/api/next":
            return self._next
        if path == "/health":
            return self._health()
        if path == "/metrics":
            return respond_string(body=self.metrics(), content_type=PROMETHEUS)
        return self._not_found

    def _health(self) -> Response:
        uptime = (self.clock.monotonic_ns() - self._started_ns) / 1e9
        return respond_string(body=json.dumps({"status": "ok", "uptime_seconds": round(uptime, 3)}), content_type=JSON)

    def metrics(self) -> str:
        """Prometheus text exposition of requests and stack counters."""
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                label_text = ",".join(f'{key}="{_escape(str(val))}"' for key, val in labels.items())
                lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")

        requests = getattr(self.http, "requests", {})
        family(
            "suresh_requests_total", "counter", "HTTP requests answered, by path and status.",
            [({"path": path, "status": str(status)}, count) for (path, status), count in sorted(requests.items())],
        )
        family("suresh_uptime_seconds", "gauge", "Seconds since the service started.",
               [({}, (self.clock.monotonic_ns() - self._started_ns) / 1e9)])
        http_counters = self.http.counters() if hasattr(self.http, "counters") else {}
        family("suresh_http_connections_open", "gauge", "HTTP connections open now.",
               [({}, http_counters.get("connections.open", 0))])
        family("suresh_http_connections_total", "counter", "HTTP connections accepted since start.",
               [({}, http_counters.get("connections.total", 0))])
        stack = self._counters() if self._counters is not None else {}
        family("netstack_frames_total", "counter", "Ethernet frames through the network interface.",
               [({"direction": "in"}, stack.get("netif.rx_frames", 0)), ({"direction": "out"}, stack.get("netif.tx_frames", 0))])
        drops = [
            ({"reason": key}, value) for key, value in sorted(stack.items())
            if value and _is_drop(key)
        ]
        family("netstack_drops_total", "counter", "Frames or segments dropped, by layer and reason.", drops)
        family("netstack_tcp_connections_open", "gauge", "TCP connections open (not yet closed or in TIME-WAIT).",
               [({}, stack.get("tcp.connections_open", 0))])
        family("netstack_tcp_connections_total", "counter", "TCP connections opened since start.",
               [({}, stack.get("tcp.connections_opened", 0))])
        family("netstack_tcp_retransmissions_total", "counter", "TCP segments sent again.",
               [({}, stack.get("tcp.retransmitted_segments", 0))])
        return "\n".join(lines) + "\n"

    async def start(self) -> None:
        """Serve until cancelled."""
        listening = await self.http.listen(self.port, self.http.make(self.callback, routes=ROUTES))
        log.info("suresh listening on TCP port %d", self.port)
        try:
            await listening.serve_forever()
        finally:
            listening.close()
            await listening.wait_closed()


_NOT_DROPS = ("tx", "rx", "sent", "received", "opened", "closed", "reassembled", "segments", "frames", "bytes")


def _is_drop(key: str) -> bool:
    """Counters that count something lost or refused, as opposed to traffic."""
    if key.startswith("netif.") and key != "netif.tx_dropped":
        return False
    if key.startswith("tcp.connections") or key in ("tcp.retransmitted_segments", "tcp.rto_expired"):
        return False
    last = key.rsplit(".", 1)[-1]
    return not any(last == word or last.endswith("_" + word) or last.startswith(word + "_") for word in _NOT_DROPS)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# -- the wiring -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = boot.parser("python -m services.suresh", "Suresh the Stationmaster: next-train enquiries over HTTP.")
    parser.add_argument("--net", choices=("direct", "socket"), default="direct",
                        help="direct: our TCP/IP on a tap (default); socket: the host kernel's sockets")
    parser.add_argument("--port", type=boot.port_number, default=DEFAULT_PORT, help="TCP port (default: 8080)")
    parser.add_argument("--destination", default=DEFAULT_DESTINATION, help="where the next train goes")
    parser.add_argument("--time", default=DEFAULT_TIME, type=boot.clock_time, help="when it leaves, HH:MM")
    args = parser.parse_args(argv)
    boot.check(args, parser)
    status = boot.run_image_if_hvt_host(args, "services.suresh", argv)
    if status is not None:
        return status
    boot.configure_logging(args.logs)
    platform = boot.load_platform(args.platform)
    clock = platform.clock()
    netif: Any = None
    try:
        if args.net == "socket":
            from netstack.socket_stack import SocketStack

            stack: Any = SocketStack(str(args.ipv4.ip) if args.ipv4_given else "127.0.0.1")
        else:
            from netstack.stack import Stack

            netif = boot.open_netif(platform, args, clock)
            stack = Stack(netif, clock, ipv4=args.ipv4, gateway=args.ipv4_gateway)
    except PlatformError as error:
        print(f"suresh: {error} (or use --net socket)", file=sys.stderr)
        return 1
    http = Http(stack, clock)
    app = Suresh(http, clock, destination=args.destination, time=args.time, port=args.port, counters=_counters_of(stack, http))

    async def serve() -> None:
        stack.start()
        try:
            await app.start()
        finally:
            stack.close()

    try:
        platform.run(serve())
    except OSError as error:
        print(f"suresh: cannot serve on port {args.port}: {error.strerror or error}", file=sys.stderr)
        return 1
    finally:
        if netif is not None:
            netif.close()
    return 0


def _counters_of(stack: Any, http: Http) -> Callable[[], dict[str, int]]:
    def counters() -> dict[str, int]:
        merged = dict(stack.counters())
        tcp = getattr(stack, "tcp", None)
        if tcp is not None:
            merged["tcp.connections_open"] = tcp.open_connections()
        return merged

    return counters


if __name__ == "__main__":
    sys.exit(main())
