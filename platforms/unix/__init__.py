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

import atexit
from collections.abc import Awaitable
from typing import TypeVar

import uvloop

from netstack import runner
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
    signal handlers nowhere else). The sequence is ``netstack.runner``'s.
    """
    return runner.run(uvloop.new_event_loop(), main, close_devices=close_netifs)


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


atexit.register(close_netifs)
