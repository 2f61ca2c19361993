"""A ``selectors`` selector whose wait is the ``POLL`` hypercall.

asyncio's own ``SelectorEventLoop`` drives the guest, exactly as it drives a
process on Linux; only the selector differs. Where epoll waits for file
descriptors, ``HvtSelector.select(timeout)`` asks the tender to wait for net
devices (``POLL`` with a deadline) and reports the devices that have frames
as readable.

What gets registered:

- *Device handles*: a net device is registered through a ``DeviceHandle``,
  a file object whose ``fileno()`` is ``PSEUDO_FD_BASE + handle``, a number
  no kernel descriptor reaches. Only ``EVENT_READ`` means anything for them
  (``NET_WRITE`` never blocks).
- *Real descriptors*: the loop's self-pipe (a socket pair asyncio makes
  before the sandbox is installed). The tender cannot see them, so
  ``select`` checks them itself with a zero-timeout ``select(2)``, which the
  sandbox allows; when one is ready, ``POLL`` is asked not to wait. A write
  to them from another thread while the guest waits in ``POLL`` is noticed
  only when ``POLL`` returns: the guest is single-threaded by design, and
  no part of it writes the self-pipe (no signal handlers, no executors).

Round trips to the tender are the guest's dearest operation, so
``select`` saves two kinds. Output first: a net device that has frames
queued asks (``flush_before_wait``) to be flushed at the top of the next
``select``, so that what a loop iteration wrote goes out in one
``NET_WRITE`` just before the guest waits, not in an iteration of its own.
And a non-blocking select (asyncio's ``timeout=0``, "I have work, anything
new?") skips ``POLL`` when the last one was under ``NONBLOCKING_POLL_GAP_NS``
ago: input is then at most that much later, and a busy loop still polls
between its callbacks.

``select(timeout)`` maps asyncio's timeout onto the deadline ``POLL``
takes: ``None`` (nothing scheduled) becomes one day ahead, the ceiling
asyncio itself puts on any wait (``MAXIMUM_SELECT_TIMEOUT``), so a tender
never meets a deadline it cannot represent; the loop simply asks again.
A timeout of zero or less polls without waiting.
"""

from __future__ import annotations

import select
import selectors
import time
from collections.abc import Iterator, Mapping
from typing import Any

from platforms.hvt.hypercalls import Hypercalls

PSEUDO_FD_BASE = 1_000_000
"""``fileno()`` of device handle ``h`` is ``PSEUDO_FD_BASE + h``."""

LONGEST_WAIT_NS = 24 * 3600 * 10**9
"""What ``select(None)`` waits at most: asyncio's ``MAXIMUM_SELECT_TIMEOUT``."""

_MAX_HANDLES = 64  # the POLL ready set is a u64 bitmask

NONBLOCKING_POLL_GAP_NS = 100_000
"""A zero-timeout ``select`` within this long of the last ``POLL`` does not poll again."""


class DeviceHandle:
    """A net device as the selector sees it: a file object with a pseudo fd."""

    __slots__ = ("handle",)

    def __init__(self, handle: int) -> None:
        if not 0 <= handle < _MAX_HANDLES:
            raise ValueError(f"device handle {handle} is outside 0-{_MAX_HANDLES - 1}")
        self.handle = handle

    def fileno(self) -> int:
        return PSEUDO_FD_BASE + self.handle

    def __repr__(self) -> str:
        return f"<DeviceHandle {self.handle}>"


class HvtSelector(selectors.BaseSelector):
    """``selectors.BaseSelector`` over ``POLL``; see the module docstring."""

    def __init__(self, hypercalls: Hypercalls) -> None:
        self._hypercalls = hypercalls
        self._to_flush: dict[Any, None] = {}  # objects with flush(), in the order they asked
        self._last_poll = 0
        self._keys: dict[int, selectors.SelectorKey] = {}
        self._devices: dict[int, selectors.SelectorKey] = {}  # handle -> key, read interest only
        self._real_readers: set[int] = set()
        self._real_writers: set[int] = set()
        self._map = _KeyMapping(self._keys)
        self._closed = False

    # -- registration ------------------------------------------------------------

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~(selectors.EVENT_READ | selectors.EVENT_WRITE):
            raise ValueError(f"invalid events: {events!r}")
        fd = _fileno(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (fd {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        if fd >= PSEUDO_FD_BASE and not isinstance(fileobj, DeviceHandle):
            raise ValueError(f"fd {fd} is in the range reserved for device handles")
        self._keys[fd] = key
        self._index(key)
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = _fileno_for_lookup(fileobj, self._keys)
        try:
            key = self._keys.pop(fd)
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        self._unindex(key)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = _fileno_for_lookup(fileobj, self._keys)
        try:
            old = self._keys[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        if events == old.events:
            key = old._replace(data=data)
            self._keys[fd] = key
            if isinstance(old.fileobj, DeviceHandle) and old.fileobj.handle in self._devices:
                self._devices[old.fileobj.handle] = key
            return key
        self.unregister(fileobj)
        return self.register(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._map

    def close(self) -> None:
        self._keys.clear()
        self._devices.clear()
        self._real_readers.clear()
        self._real_writers.clear()
        self._closed = True

    # -- waiting -----------------------------------------------------------------

    def flush_before_wait(self, device: Any) -> None:
        """Call ``device.flush()`` at the top of the next ``select``."""
        self._to_flush[device] = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self._to_flush:
            devices = list(self._to_flush)
            self._to_flush.clear()
            for device in devices:
                device.flush()
        ready: list[tuple[selectors.SelectorKey, int]] = []
        if self._real_readers or self._real_writers:
            readable, writable, _ = select.select(self._real_readers, self._real_writers, (), 0)
            events: dict[int, int] = {}
            for fd in readable:
                events[fd] = selectors.EVENT_READ
            for fd in writable:
                events[fd] = events.get(fd, 0) | selectors.EVENT_WRITE
            for fd, mask in events.items():
                key = self._keys[fd]
                ready.append((key, mask & key.events))
        now = time.monotonic_ns()
        if ready or (timeout is not None and timeout <= 0):
            if now - self._last_poll < NONBLOCKING_POLL_GAP_NS:
                return ready
            deadline = now
        elif timeout is None:
            deadline = now + LONGEST_WAIT_NS
        else:
            deadline = now + min(int(timeout * 1e9), LONGEST_WAIT_NS)
        mask = self._hypercalls.poll(deadline)
        self._last_poll = time.monotonic_ns()
        if mask:
            devices = self._devices
            handle = 0
            while mask:
                if mask & 1:
                    key = devices.get(handle)
                    if key is not None:
                        ready.append((key, selectors.EVENT_READ))
                mask >>= 1
                handle += 1
        return ready

    # -- bookkeeping ---------------------------------------------------------------

    def _index(self, key: selectors.SelectorKey) -> None:
        if isinstance(key.fileobj, DeviceHandle):
            if key.events & selectors.EVENT_READ:
                self._devices[key.fileobj.handle] = key
            return
        if key.events & selectors.EVENT_READ:
            self._real_readers.add(key.fd)
        if key.events & selectors.EVENT_WRITE:
            self._real_writers.add(key.fd)

    def _unindex(self, key: selectors.SelectorKey) -> None:
        if isinstance(key.fileobj, DeviceHandle):
            self._devices.pop(key.fileobj.handle, None)
            return
        self._real_readers.discard(key.fd)
        self._real_writers.discard(key.fd)


class _KeyMapping(Mapping[Any, selectors.SelectorKey]):
    """``get_map()``: file objects (or fds) to keys, as ``selectors`` promises."""

    def __init__(self, keys: dict[int, selectors.SelectorKey]) -> None:
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        fd = _fileno_for_lookup(fileobj, self._keys)
        try:
            return self._keys[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def __iter__(self) -> Iterator[int]:
        return iter(self._keys)


def _fileno(fileobj: Any) -> int:
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"invalid file descriptor: {fd}")
    return fd


def _fileno_for_lookup(fileobj: Any, keys: dict[int, selectors.SelectorKey]) -> int:
    # As selectors does: a file object already closed (fileno() fails) is
    # still found by identity.
    try:
        return _fileno(fileobj)
    except ValueError:
        for key in keys.values():
            if key.fileobj is fileobj:
                return key.fd
        raise
