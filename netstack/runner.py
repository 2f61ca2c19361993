"""Running an application's main coroutine on a platform's loop.

Every platform's ``run(main)`` does the same few things around its own loop
(uvloop for unix, a selector loop over hypercalls for hvt), as
``asyncio.run`` does around asyncio's: run ``main`` to completion; let
SIGINT/SIGTERM cancel it, in which case ``run`` returns ``None`` so that the
service exits 0; then cancel the tasks ``main`` left behind (they may still
hold a device, so they finish before the devices close), close the devices,
shut down async generators and the default executor, and close the loop.
This module is that sequence, once; a platform supplies the loop, the
signals it wants, what to do just before entering the loop (hvt installs its
sandbox there) and how to close its devices.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def run(
    loop: asyncio.AbstractEventLoop,
    main: Awaitable[T],
    *,
    close_devices: Callable[[], None],
    signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM),
    before: Callable[[], None] | None = None,
) -> T | None:
    """Run ``main`` on ``loop`` and clean up; ``None`` when a signal cancelled it.

    Exceptions from ``main`` propagate after the clean-up. Signal handlers
    are installed only from the main thread (Python allows them nowhere
    else) and removed again before the loop closes.
    """
    asyncio.set_event_loop(loop)
    signalled: list[int] = []
    installed: list[int] = []
    try:
        task = asyncio.ensure_future(main, loop=loop)

        def on_signal(signum: int) -> None:
            signalled.append(signum)
            task.cancel()

        if threading.current_thread() is threading.main_thread():
            for signum in signals:
                loop.add_signal_handler(signum, on_signal, signum)
                installed.append(signum)
        if before is not None:
            before()
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if signalled:
                return None
            raise
    finally:
        try:
            cancel_leftover_tasks(loop)
            close_devices()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            asyncio.set_event_loop(None)
            loop.close()


def cancel_leftover_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel and await what ``main`` left running, reporting their failures (as ``asyncio.run`` does)."""
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
