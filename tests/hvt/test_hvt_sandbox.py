"""The guest's sandbox: forbidden calls kill the guest, named first; allowed work goes on.

Every test boots a real guest (``guest.main``) in a subprocess against the
fake tender of ``test_hvt_guest.py``; the application calls
``platform.run``, which installs the sandbox, and then tries one thing. A
sandbox is never installed in the pytest process: seccomp cannot be undone.

A refused call must end the process by SIGSYS (seccomp's
``KILL_PROCESS``), after the audit hook has sent its note
(``"\\0sandbox-refused:<name>"``) on the channel, so that the tender can
say which call it was.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the fake tender lives with the guest tests
from test_hvt_guest import HAVE_SECCOMP, MAC, FakeTender, run_guest  # noqa: E402

from platforms.hvt.abi import BootInfo, NetDevice  # noqa: E402

pytestmark = pytest.mark.skipif(not HAVE_SECCOMP, reason="libseccomp is not installed (apt-get install libseccomp2)")

ATTEMPT_APP = """
import asyncio, os, socket
import platforms.hvt as platform

def main(argv):
    action = argv[-1]
    platform.netif("service")
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # made before the sandbox

    async def attempt():
        print("sandboxed; attempting", action)
        if action == "open":
            open("/etc/hostname", "rb").read()
        elif action == "socket":
            socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        elif action == "connect":
            held.connect(("127.0.0.1", 9))
        elif action == "execve":
            os.execv("/bin/true", ["true"])
        elif action == "fork":
            os.fork()
        elif action == "import":
            import wave  # never imported before: the importer must look at files
        print("survived", action)

    platform.run(attempt())
    return 0
"""


def attempt(action: str, tmp_path: Path) -> FakeTender:
    tender = FakeTender(BootInfo((action,), (NetDevice("service", MAC, 1500),)))
    try:
        result = run_guest(tender, ATTEMPT_APP, tmp_path)
    finally:
        tender.stop()
    console = tender.console.decode()
    assert f"sandboxed; attempting {action}" in console, (console, result.stderr)
    assert "survived" not in console
    assert result.returncode == -signal.SIGSYS, (result.returncode, console, result.stderr)
    assert tender.halted is None
    return tender


def test_open_kills_the_guest_and_is_named(tmp_path: Path) -> None:
    assert attempt("open", tmp_path).notes == ["open"]


def test_socket_kills_the_guest_and_is_named(tmp_path: Path) -> None:
    assert attempt("socket", tmp_path).notes == ["socket"]


def test_connect_on_a_socket_made_before_the_sandbox_kills_the_guest(tmp_path: Path) -> None:
    assert attempt("connect", tmp_path).notes == ["connect"]


def test_execve_kills_the_guest_and_is_named(tmp_path: Path) -> None:
    assert attempt("execve", tmp_path).notes == ["execve"]


def test_fork_kills_the_guest_and_is_named(tmp_path: Path) -> None:
    assert attempt("fork", tmp_path).notes == ["fork"]


def test_an_import_that_needs_the_file_system_kills_the_guest(tmp_path: Path) -> None:
    # Whatever an image did not preload cannot be imported once sandboxed.
    assert attempt("import", tmp_path).notes[:1] == ["open"]


ALLOWED_WORK_APP = """
import asyncio, hashlib, logging, os, threading, time, traceback
import platforms.hvt as platform

def main(argv):
    netif = platform.netif("service")
    clock = platform.clock()

    async def work():
        results = {}
        results["sum"] = sum(i * i for i in range(100_000))
        big = bytearray(64 << 20)  # mmap'd memory, touched at both ends
        big[0] = big[-1] = 1
        small = [bytes(1000) for _ in range(20_000)]  # many pymalloc/malloc blocks
        results["memory"] = len(big) + len(small)
        del big, small
        start = time.monotonic()
        await asyncio.sleep(0.02)  # a POLL with a deadline
        results["slept"] = time.monotonic() - start >= 0.02
        time.sleep(0.001)
        results["year"] = time.strftime("%Y", time.localtime(clock.wall_ns() / 1e9))
        results["random"] = len(os.urandom(16))
        results["hash"] = hashlib.sha256(b"suresh").hexdigest()[:8]
        box = []
        worker = threading.Thread(target=lambda: box.append(sum(range(1000))))
        worker.start()
        worker.join()
        results["thread"] = box[0]
        os.kill(os.getpid(), 0)  # our own pid: allowed
        try:
            raise ValueError("caught")
        except ValueError:
            results["traceback"] = "ValueError: caught" in traceback.format_exc()
        logging.getLogger("work").warning("a log line from the sandbox")
        asyncio.get_running_loop().call_soon(lambda: 1 / 0)  # logged with its traceback
        await asyncio.sleep(0)
        import json  # already imported: no file system needed
        netif.write(bytes(60))
        await asyncio.sleep(0)
        print("results", json.dumps(results, sort_keys=True))
        return 7

    return platform.run(work())
"""


def test_a_sandboxed_guest_still_computes_allocates_keeps_time_and_uses_its_netif(tmp_path: Path) -> None:
    tender = FakeTender(BootInfo((), (NetDevice("service", MAC, 1500),)), walltime_ns=1_780_000_000 * 10**9)
    try:
        result = run_guest(tender, ALLOWED_WORK_APP, tmp_path, preload=["hashlib", "json"])
    finally:
        tender.stop()
    console = tender.console.decode()
    assert tender.halted == (7, ""), (console, result.stderr)
    assert tender.notes == []
    assert (
        'results {"hash": "6c324a8a", "memory": 67128864, "random": 16, "slept": true, '
        '"sum": 333328333350000, "thread": 499500, "traceback": true, "year": "2026"}'
    ) in console
    assert "a log line from the sandbox" in console
    assert "Exception in callback" in console and "ZeroDivisionError: division by zero" in console
    assert tender.written() == [bytes(60)]
