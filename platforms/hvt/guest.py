"""Booting a guest: from the tender's channel to the application's ``main``.

An hvt image's ``__main__`` is two lines::

    from platforms.hvt.guest import main
    main("services.suresh", preload=[...every module the application reaches...])

and the tender runs it as ``python -I IMAGE`` with one inherited descriptor,
the channel, whose number is in ``NETSTACK_HVT_CHANNEL``. ``main`` is the
guest's whole life, in the order Solo5's ``_start`` -> ``solo5_app_main``
follows::

    channel from the environment
    -> BOOT received and decoded        (AbiError, other ABI version: HALT 255, reason)
    -> WALLTIME                         (the wall clock's origin)
    -> stdout/stderr/logging -> PUTS    (line-buffered console)
    -> preload: import every module the image lists, warm what would open
       files later (time zone, codecs)
    -> application.main(arguments)      (its platform.run() installs the sandbox)
    -> HALT with main's return code     (None -> 0; SystemExit's code)

Failures end in ``HALT``, never in a hang:

- an uncaught exception: its traceback goes to the console, then HALT 255;
- ``MemoryError`` anywhere (also one reported to the event loop): HALT 255
  with ``out of memory (--mem too small?)``. A reserve allocated at start is
  released first, so that reporting has memory to work with;
- a tender that breaks the ABI, or closes the channel, mid-call:
  ``Hypercalls.on_failure`` halts at once with the reason (asyncio would
  otherwise swallow the error inside a loop callback and the guest would
  go on with a desynchronised channel).

The application sees its boot arguments as MirageOS hands a unikernel its
boot parameters: ``sys.argv`` is ``[application, "--platform", "hvt",
*cmdline]`` and ``main`` gets ``sys.argv[1:]``, so an ``argparse`` parser
(``parse_args(argv)`` takes the arguments without the program name) reads
them unchanged.

The guest runs in UTC (``TZ=UTC`` unless the tender set ``TZ``): the C
library would otherwise stat or open ``/etc/localtime`` on every
``localtime()``, which the sandbox forbids. Tracebacks after the sandbox
is installed carry no source lines: ``linecache`` would have to open the
source files (``sandbox.install`` disables it).
"""

from __future__ import annotations

import codecs
import dataclasses
import importlib
import io
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from typing import NoReturn

from netstack.protocols import PlatformError
from platforms.hvt.abi import AbiError, BootInfo
from platforms.hvt.hypercalls import Hypercalls

CHANNEL_ENVIRONMENT = "NETSTACK_HVT_CHANNEL"
OUT_OF_MEMORY = "out of memory (--mem too small?)"
ABORT_STATUS = 255
PUTS_CHUNK = 64 * 1024
"""Longest console text sent in one ``PUTS``."""
MEMORY_RESERVE = 256 * 1024
"""Bytes held from start and released to report running out of memory."""

_reserve: bytearray | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Guest:
    """A booted guest: its channel, its boot info and its wall clock's origin."""

    hypercalls: Hypercalls
    info: BootInfo
    wall_offset_ns: int
    """``WALLTIME`` at boot minus ``time.monotonic_ns()`` at that moment."""


_current: Guest | None = None


def current() -> Guest:
    """The booted guest; ``PlatformError`` outside one."""
    if _current is None:
        raise PlatformError(
            "platforms.hvt works only inside an hvt guest: build an image with python -m platforms.hvt.build "
            "and start it with python -m platforms.hvt.tender -- IMAGE"
        )
    return _current


def boot(hypercalls: Hypercalls) -> Guest:
    """Receive ``BOOT``, read the wall clock, and make this the current guest.

    Raises ``AbiError`` for a malformed boot message or another ABI version.
    """
    global _current
    info = hypercalls.receive_boot()
    wall = hypercalls.walltime()
    _current = Guest(hypercalls, info, wall - time.monotonic_ns())
    return _current


# -- the console --------------------------------------------------------------------


class Console(io.TextIOBase):
    """A line-buffered text stream whose lines go out as ``PUTS``.

    ``sys.stdout`` and ``sys.stderr`` of a guest. Complete lines are sent as
    soon as they are written; a partial line waits for its newline, a
    ``flush()``, or ``PUTS_CHUNK`` characters.
    """

    def __init__(self, hypercalls: Hypercalls, name: str) -> None:
        super().__init__()
        self._hypercalls = hypercalls
        self._name = name
        self._pending: list[str] = []
        self._pending_len = 0

    @property
    def name(self) -> str:  # type: ignore[override]
        return self._name

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "backslashreplace"

    @property
    def line_buffering(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not text:
            return 0
        self._pending.append(text)
        self._pending_len += len(text)
        if "\n" in text or self._pending_len >= PUTS_CHUNK:
            joined = "".join(self._pending)
            cut = joined.rfind("\n") + 1 if self._pending_len < PUTS_CHUNK else len(joined)
            self._pending = [joined[cut:]] if cut < len(joined) else []
            self._pending_len = len(joined) - cut
            self._send(joined[:cut])
        return len(text)

    def flush(self) -> None:
        if self._pending:
            joined = "".join(self._pending)
            self._pending = []
            self._pending_len = 0
            self._send(joined)

    def _send(self, text: str) -> None:
        data = text.encode("utf-8", "backslashreplace")
        for start in range(0, len(data), PUTS_CHUNK):
            self._hypercalls.puts(data[start : start + PUTS_CHUNK])


# -- halting ---------------------------------------------------------------------------


def halt(status: int, reason: str = "") -> NoReturn:
    """Flush the console, send ``HALT``, and end the process with ``status``."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, Console):
            try:
                stream.flush()
            except Exception:  # halting goes on whatever the console does
                pass
    guest = _current
    if guest is not None:
        guest.hypercalls.halt(status, reason.encode("utf-8", "backslashreplace"))
    os._exit(status if 0 <= status <= 255 else ABORT_STATUS)


def out_of_memory() -> NoReturn:
    """Halt 255 saying the guest ran out of memory (``--mem`` too small)."""
    global _reserve
    _reserve = None
    halt(ABORT_STATUS, OUT_OF_MEMORY)


def _halt_without_guest(hypercalls: Hypercalls, reason: str) -> NoReturn:
    hypercalls.halt(ABORT_STATUS, reason.encode("utf-8", "backslashreplace"))
    os._exit(ABORT_STATUS)


# -- main ------------------------------------------------------------------------------


def main(application: str, preload: Sequence[str] = ()) -> NoReturn:
    """Boot, run ``application``'s ``main`` and halt; never returns."""
    global _reserve
    _reserve = bytearray(MEMORY_RESERVE)
    try:
        hypercalls = Hypercalls.from_fd(_channel_fd())
    except (ValueError, OSError) as error:
        # No channel: nobody to halt to. Say so where a human may see it.
        if sys.stderr is not None:
            print(f"hvt guest: {error}; start images with python -m platforms.hvt.tender", file=sys.stderr)
        os._exit(ABORT_STATUS)
    hypercalls.on_failure = lambda reason: _abort_broken_tender(hypercalls, reason)
    _import_ahead(preload, application)
    try:
        boot(hypercalls)
    except AbiError as error:
        _halt_without_guest(hypercalls, f"bad boot message: {error}")
    except MemoryError:
        _reserve = None
        _halt_without_guest(hypercalls, OUT_OF_MEMORY)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the tender's to handle
    try:
        status = _run_application(hypercalls, application, preload)
    except MemoryError:
        out_of_memory()
    except BaseException as error:
        try:
            traceback.print_exc()
        except MemoryError:
            out_of_memory()
        except Exception:  # a console that cannot print: the reason still goes out
            pass
        halt(ABORT_STATUS, f"{application} raised an uncaught {type(error).__name__}")
    halt(status)


def _channel_fd() -> int:
    text = os.environ.get(CHANNEL_ENVIRONMENT)
    if text is None:
        raise ValueError(f"{CHANNEL_ENVIRONMENT} is not set")
    try:
        fd = int(text)
    except ValueError:
        raise ValueError(f"{CHANNEL_ENVIRONMENT}={text!r} is not a descriptor number") from None
    if fd < 0:
        raise ValueError(f"{CHANNEL_ENVIRONMENT}={text!r} is not a descriptor number")
    return fd


def _abort_broken_tender(hypercalls: Hypercalls, reason: str) -> NoReturn:
    hypercalls.halt(ABORT_STATUS, f"hvt guest: the tender broke the ABI: {reason}".encode("utf-8", "backslashreplace"))
    os._exit(ABORT_STATUS)


def _run_application(hypercalls: Hypercalls, application: str, preload: Sequence[str]) -> int:
    sys.stdout = Console(hypercalls, "<console stdout>")
    sys.stderr = Console(hypercalls, "<console stderr>")
    # Handlers made before this point hold the old streams; send them here.
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
    _preload(preload)
    module = importlib.import_module(application)
    sys.argv = [application, "--platform", "hvt", *current().info.cmdline]
    try:
        status = module.main(sys.argv[1:])
    except SystemExit as exit_:
        code = exit_.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    return 0 if status is None else int(status)


def _import_ahead(modules: Sequence[str], application: str) -> None:
    """Import what we will need while the tender is still opening our devices.

    The tender starts the guest first and sends BOOT once its taps are up,
    so this time is otherwise spent waiting. Failures are ignored here: the
    imports run again after boot (``_preload``, the application's import),
    where a failure is reported on the console as it should be.
    """
    for name in (*modules, application):
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - reported after boot, see above
            pass


def _preload(modules: Sequence[str]) -> None:
    """Import now what the sandbox would not let us import later."""
    for name in modules:
        try:
            importlib.import_module(name)
        except MemoryError:
            raise
        except Exception as error:
            # The image lists what the builder saw reachable; a module that
            # does not import is the application's concern if it ever uses it.
            print(f"hvt guest: preloading {name} failed: {type(error).__name__}: {error}", file=sys.stderr)
    # The C library reads the time zone on the first localtime() (and, with
    # TZ unset, stats /etc/localtime on every later one).
    os.environ.setdefault("TZ", "UTC")
    time.tzset()
    time.localtime()
    time.strftime("%c")
    # Codec lookups import encodings.* on first use; warm the usual ones.
    for encoding in ("ascii", "latin-1", "utf-8", "utf-16"):
        try:
            codecs.lookup(encoding)
        except LookupError:
            pass
    # OpenSSL reads its configuration file on first use.
    if "hashlib" in sys.modules:
        sys.modules["hashlib"].sha256(b"").digest()
    ssl = sys.modules.get("ssl")  # None when the image's __main__ left TLS out
    if ssl is not None:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

