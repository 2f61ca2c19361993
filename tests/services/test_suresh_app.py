"""Suresh alone, over a mock Http: no stack, no network, no loop tricks."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from netstack.clock import ManualClock
from services.suresh import ROUTES, Suresh


@dataclasses.dataclass
class FakeRequest:
    path: str
    method: str = "GET"


@dataclasses.dataclass
class MockHttp:
    """A plain record of what the application asked of its Http."""

    made: list[tuple[Any, Any]] = dataclasses.field(default_factory=list)
    listened: list[int] = dataclasses.field(default_factory=list)
    requests: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)

    def make(self, callback: Any, *, routes: Any = None) -> Any:
        self.made.append((callback, routes))
        return "server"

    async def listen(self, port: int, server: Any, *, host: str | None = None) -> Any:
        self.listened.append(port)
        return MockListening()

    def counters(self) -> dict[str, int]:
        return {"connections.open": 2, "connections.total": 9}


class MockListening:
    def __init__(self) -> None:
        self.closed = False

    async def serve_forever(self) -> None:
        await asyncio.Event().wait()

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        return None


def answer(app: Suresh, path: str) -> tuple[int, str | None, bytes]:
    response = app.callback(FakeRequest(path))
    return response.status, response.header("Content-Type"), response.body


def test_home_gives_the_next_train() -> None:
    app = Suresh(MockHttp(), ManualClock())
    assert answer(app, "/") == (200, "text/plain; charset=utf-8", b"Next train to Chennai Central: 14:20.")


def test_api_next_gives_json() -> None:
    app = Suresh(MockHttp(), ManualClock())
    status, content_type, body = answer(app, "/api/next")
    assert (status, content_type) == (200, "application/json")
    assert body == b'{"destination":"Chennai Central","time":"14:20"}'


@pytest.mark.parametrize("path", ["/nope", "/api", "/api/next/", "//", "/index.html"])
def test_any_other_path_is_not_found(path: str) -> None:
    app = Suresh(MockHttp(), ManualClock())
    assert answer(app, path) == (404, "text/plain; charset=utf-8", b"not found")


def test_destination_and_time_come_from_the_constructor() -> None:
    app = Suresh(MockHttp(), ManualClock(), destination="Madurai", time="06:05")
    assert answer(app, "/")[2] == b"Next train to Madurai: 06:05."
    assert json.loads(answer(app, "/api/next")[2]) == {"destination": "Madurai", "time": "06:05"}


def test_health_reports_uptime_on_the_injected_clock(manual_clock: ManualClock) -> None:
    app = Suresh(MockHttp(), manual_clock)
    manual_clock.advance(90 * 10**9)
    status, content_type, body = answer(app, "/health")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == {"status": "ok", "uptime_seconds": 90.0}


def test_metrics_are_prometheus_text() -> None:
    http = MockHttp(requests={("/", 200): 3, ("/nope", 404): 1})
    counters = {"netif.rx_frames": 10, "netif.tx_frames": 8, "ipv4.bad_checksum": 2, "tcp.connections_opened": 4,
                "tcp.connections_open": 1, "tcp.retransmitted_segments": 5, "ipv4.tx": 99}
    app = Suresh(http, ManualClock(), counters=lambda: counters)
    status, content_type, body = answer(app, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'suresh_requests_total{path="/",status="200"} 3' in text
    assert 'suresh_requests_total{path="/nope",status="404"} 1' in text
    assert 'netstack_frames_total{direction="in"} 10' in text
    assert 'netstack_frames_total{direction="out"} 8' in text
    assert 'netstack_drops_total{reason="ipv4.bad_checksum"} 2' in text
    assert 'reason="ipv4.tx"' not in text  # traffic is not a drop
    assert "netstack_tcp_connections_open 1" in text
    assert "netstack_tcp_connections_total 4" in text
    assert "netstack_tcp_retransmissions_total 5" in text
    assert "suresh_http_connections_open 2" in text
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(families) == len(set(families))


def test_start_listens_with_the_routes_and_closes_on_cancel() -> None:
    http = MockHttp()
    app = Suresh(http, ManualClock(), port=8081)

    async def run() -> None:
        task = asyncio.ensure_future(app.start())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert http.listened == [8081]
        callback, routes = http.made[0]
        assert routes == ROUTES
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
