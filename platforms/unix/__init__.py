"""The unix platform: a tap device, the real clock, and uvloop.

This module *is* the platform (DESIGN.md: a platform is a module, the Python
form of a MirageOS target). A service's wiring picks it and calls three
functions, the ``netstack.protocols.Platform`` contract::

    import platforms.unix as platform

    netif = platform.netif("tap0", host_address="10.0.0.1/24")
    clock = platform.clock()
    platform.run(app.start())

``netif`` opens (and when missing creates, brings up and addresses) a tap
device; see ``platforms.host.tap``. ``clock`` is ``netstack.clock.LoopClock``,
which reads ``time.monotonic_ns`` like uvloop itself. ``run`` drives the main
coroutine on a fresh uvloop event loop.

Lifetime, as a grammar::

    netif()* -> run(main) -> [main returns | main raises | SIGINT/SIGTERM]
             -> leftover tasks cancelled -> every netif closed -> loop closed

SIGINT and SIGTERM cancel ``main``; when it has finished cleaning up, ``run``
returns ``None`` so that a service stopped by its supervisor exits 0. Every
netif opened through this module is closed before ``run`` returns or
re-raises, which removes the taps ``netif`` created; the same happens at
interpreter exit for netifs opened without ever calling ``run``.
"""

from __future__ import annotations

import asyncio
import atexit
import signal
import threading
from collections.abc import Awaitable
from typing import TypeVar

import uvloop

from netstack.clock import LoopClock

from platforms.host.tap import TapNetif

__all__ = ["TapNetif", "clock", "close_netifs", "netif", "run"]

T = TypeVar("T")

_open_netifs: list[TapNetif] = []


def netif(
    name: str = "tap0", *, host_address: str | None = "10.0.0.1/24", mac: bytes | str | None = None, offload: bool = True
) -> TapNetif:
    """Open the tap ``name``; ``run`` closes it (removing it if we created it).

    ``host_address`` goes to the kernel side of a tap this call creates (an
    existing tap is used exactly as it is). ``mac`` defaults to a random
    locally administered address. ``offload`` turns on TCP segmentation
    offload and checksum offload both ways (``IFF_VNET_HDR``). Raises
    ``PlatformError`` with one line that names the fix when the tap cannot be
    opened.
    """
    device = TapNetif(name, host_address=host_address, mac=mac, offload=offload)
    _open_netifs.append(device)
    return device


def clock() -> LoopClock:
    return LoopClock()


def run(main: Awaitable[T]) -> T | None:
    """Run ``main`` on a new uvloop loop and return its result.

    Returns ``None`` when SIGINT or SIGTERM cancelled ``main``. Exceptions
    from ``main`` propagate, after the netifs have been closed. Signals are
    handled only when ``run`` is called from the main thread (Python allows
    signal handlers nowhere else).
    """
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    signalled: list[int] = []
    installed: list[int] = []
    try:
        task = asyncio.ensure_future(main, loop=loop)

        def on_signal(signum: int) -> None:
            signalled.append(signum)
            task.cancel()

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, on_signal, signum)
                installed.append(signum)
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if signalled:
                return None
            raise
    finally:
        try:
            _cancel_leftover_tasks(loop)
            close_netifs()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            asyncio.set_event_loop(None)
            loop.close()


def close_netifs() -> None:
    """Close every netif opened through this module; taps we created vanish."""
    errors: list[OSError] = []
    while _open_netifs:
        try:
            _open_netifs.pop().close()
        except OSError as error:  # close the others all the same
            errors.append(error)
    if errors:
        raise errors[0]


def _cancel_leftover_tasks(loop: asyncio.AbstractEventLoop) -> None:
    # As asyncio.run does: tasks main left behind may still hold a netif, so
    # they finish before the netifs close.
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {"message": "unhandled exception in a task left running by main", "exception": task.exception(), "task": task}
            )


atexit.register(close_netifs)
