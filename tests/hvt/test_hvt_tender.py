"""The hvt tender (platforms/hvt/tender.py) against fake guests.

A fake guest is a tiny image built here with ``zipfile``: a manifest and a
``__main__.py`` written directly against ``platforms/hvt/abi.py`` (loaded by
path, since the tender runs a guest with ``python -I`` and adds nothing to
its ``sys.path``). It reports what it saw on the console (``PUTS``) and ends
with ``HALT``; an assertion that fails inside it halts with status 1 and the
failed check as the reason, which the tender prints on stderr. The tender
runs as a subprocess (``python -m platforms.hvt.tender``), so exit statuses
and output are the real ones; the pure pieces (argument parsing, manifest
checks, how an end is described) are tested in process.

Tests that open a tap run the tender inside a namespace of their own
(``netns`` fixture), where the tap lives and dies.
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from platforms.host.netns import REPOSITORY, Namespace
from platforms.hvt import abi
from platforms.hvt.tender import (
    EXIT_USAGE,
    Manifest,
    ManifestDevice,
    Options,
    Tender,
    TenderError,
    UsageError,
    check_attachments,
    describe_end,
    frames_to_end,
    number_handles,
    parse_args,
    read_manifest,
)

SERVICE = {"name": "service", "type": "NET_BASIC"}
DISK = {"name": "disk", "type": "BLOCK_BASIC"}

GUEST_PRELUDE = f"""
import importlib.util, os, signal, socket, sys, time
_spec = importlib.util.spec_from_file_location("hvt_abi", {str(REPOSITORY / "platforms" / "hvt" / "abi.py")!r})
abi = importlib.util.module_from_spec(_spec)
sys.modules["hvt_abi"] = abi
_spec.loader.exec_module(abi)
Call, Result = abi.Call, abi.Result

channel = socket.socket(fileno=int(os.environ["NETSTACK_HVT_CHANNEL"]))

def receive():
    return channel.recv(abi.HEADER_LEN + abi.MAX_MESSAGE)

_call, _, _, _payload = abi.parse(receive())
assert _call == Call.BOOT, _call
boot = abi.BootInfo.decode(_payload)

def raw(message):
    channel.send(message)
    call, result, count, payload = abi.parse(receive())
    return call, Result(result), count, bytes(payload)

def hypercall(call, payload=b"", handle=0):
    answered, result, count, payload = raw(abi.request(call, payload, handle))
    check(answered == call, f"answer to {{call!r}} is for call {{answered}}")
    return result, count, payload

def puts(text):
    hypercall(Call.PUTS, text.encode() + b"\\n")

def halt(status, reason=""):
    channel.send(abi.request(Call.HALT, abi.u32(status) + reason.encode()))
    os._exit(0)

def check(condition, what):
    if not condition:
        halt(1, "check failed: " + what)

try:
"""

GUEST_EPILOGUE = """
except SystemExit:
    raise
except BaseException as error:
    halt(1, f"fake guest raised {error!r}")
"""


def make_image(
    directory: Path, body: str, devices: list[dict[str, str]] | None = None, name: str = "guest.hvt"
) -> Path:
    """A fake guest image: ``body`` runs after boot, indented into the prelude's ``try``."""
    image = directory / name
    manifest = {
        "type": "netstack.manifest",
        "version": 1,
        "application": "fake",
        "devices": devices or [],
        "preload": [],
    }
    with zipfile.ZipFile(image, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        archive.writestr("__main__.py", GUEST_PRELUDE + textwrap.indent(textwrap.dedent(body), "    ") + GUEST_EPILOGUE)
    return image


def tender_command(*arguments: str | Path) -> list[str]:
    return [sys.executable, "-m", "platforms.hvt.tender", *map(str, arguments)]


def run_tender(*arguments: str | Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tender_command(*arguments),
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def sector_file(directory: Path, sectors: int = 16, size: int = 512) -> Path:
    path = directory / "disk.img"
    path.write_bytes(bytes(sectors * size))
    return path


# -- the command line ----------------------------------------------------------------


def test_parse_args_reads_every_option() -> None:
    options = parse_args(
        [
            "--mem=64",
            "--net:service=tap7",
            "--net-mac:service=02:00:00:00:00:09",
            "--block:disk=/tmp/d",
            "--block-sector-size:disk=4096",
            "--",
            "image.hvt",
            "--ipv4=10.0.0.2/24",
            "--",
            "x",
        ]
    )
    assert options == Options(
        image="image.hvt",
        args=("--ipv4=10.0.0.2/24", "--", "x"),
        mem_mb=64,
        net={"service": "tap7"},
        net_mac={"service": "02:00:00:00:00:09"},
        block={"disk": "/tmp/d"},
        block_sector_size={"disk": 4096},
    )
    assert parse_args(["image.hvt", "--not-mine"]) == Options(image="image.hvt", args=("--not-mine",))
    assert parse_args(["--help"]) is None


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--"],
        ["--mem=0", "--", "i"],
        ["--mem=-3", "--", "i"],
        ["--mem=lots", "--", "i"],
        ["--frobnicate", "--", "i"],
        ["--net:service", "--", "i"],
        ["--net:service=", "--", "i"],
        ["--net:service=a/b", "--", "i"],
        ["--net:service=abcdefghijklmnop", "--", "i"],
        ["--net:service=tap0", "--net:service=tap1", "--", "i"],
        ["--net-mac:service=02:00:00:00:00", "--", "i"],
        ["--net-mac:service=03:00:00:00:00:01", "--", "i"],
        ["--block-sector-size:disk=1000", "--", "i"],
        ["--block-sector-size:disk=256", "--", "i"],
    ],
)
def test_parse_args_refuses(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv)


@pytest.mark.parametrize("argv", [[], ["--mem=zero", "--", "x.hvt"], ["--nett:service=tap0", "--", "x.hvt"]])
def test_bad_arguments_exit_64_with_the_usage_line(argv: list[str]) -> None:
    result = run_tender(*argv)
    assert result.returncode == EXIT_USAGE == 64
    assert result.stderr.splitlines()[-1].startswith("usage: python -m platforms.hvt.tender")
    assert result.stdout == ""


# -- the image and its devices -------------------------------------------------------------


def _zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"__main__.py": ""}, "no manifest.json"),
        ({"manifest.json": json.dumps({"type": "netstack.manifest", "version": 1})}, "no __main__.py"),
        ({"manifest.json": "{", "__main__.py": ""}, "not valid JSON"),
        ({"manifest.json": json.dumps({"type": "other", "version": 1}), "__main__.py": ""}, "manifest type is 'other'"),
        (
            {"manifest.json": json.dumps({"type": "netstack.manifest", "version": 2}), "__main__.py": ""},
            "manifest version 2",
        ),
        ({"manifest.json": json.dumps([1]), "__main__.py": ""}, "manifest type is 'list'"),
        (
            {
                "manifest.json": json.dumps(
                    {"type": "netstack.manifest", "version": 1, "devices": [{"name": "x", "type": "GPU"}]}
                ),
                "__main__.py": "",
            },
            "device #0",
        ),
        (
            {
                "manifest.json": json.dumps({"type": "netstack.manifest", "version": 1, "devices": [SERVICE, SERVICE]}),
                "__main__.py": "",
            },
            "twice",
        ),
    ],
)
def test_read_manifest_refuses(tmp_path: Path, files: dict[str, str], error: str) -> None:
    with pytest.raises(TenderError, match=error):
        read_manifest(str(_zip(tmp_path / "image.hvt", files)))


def test_read_manifest_reads_the_devices_in_order(tmp_path: Path) -> None:
    image = make_image(tmp_path, "halt(0)", [SERVICE, DISK, {"name": "admin", "type": "NET_BASIC"}])
    manifest = read_manifest(str(image))
    assert manifest.application == "fake"
    assert manifest.named(abi.DeviceType.NET_BASIC) == ["service", "admin"]
    assert manifest.named(abi.DeviceType.BLOCK_BASIC) == ["disk"]


def test_handles_are_numbered_per_kind_in_manifest_order(tmp_path: Path) -> None:
    image = make_image(tmp_path, "halt(0)", [SERVICE, DISK, {"name": "admin", "type": "NET_BASIC"}])
    assert number_handles(read_manifest(str(image))) == {"service": 0, "disk": 0, "admin": 1}


def test_a_non_image_file_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    result = run_tender("--", text)
    assert result.returncode == 1
    assert result.stderr == f"tender: {text}: not a netstack image (not a zip file)\n"
    missing = run_tender("--", tmp_path / "absent.hvt")
    assert missing.returncode == 1
    assert "no such file" in missing.stderr


MANIFEST = Manifest(
    "fake", (ManifestDevice("service", abi.DeviceType.NET_BASIC), ManifestDevice("disk", abi.DeviceType.BLOCK_BASIC))
)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (Options("i", block={"disk": "d"}), r"declares net device 'service'; attach it with --net:service=IFACE"),
        (Options("i", net={"service": "t"}), r"declares block device 'disk'; attach it with --block:disk=PATH"),
        (
            Options("i", net={"service": "t", "admin": "t2"}, block={"disk": "d"}),
            r"--net:admin: the image declares no device 'admin'",
        ),
        (
            Options("i", net={"service": "t", "disk": "t2"}),
            r"--net:disk: disk is a BLOCK_BASIC device; attach it with --block:disk=PATH",
        ),
        (
            Options("i", net={"service": "t"}, block={"disk": "d"}, net_mac={"other": "02:00:00:00:00:01"}),
            "no device 'other'",
        ),
        (
            Options("i", block={"disk": "d"}, net_mac={"service": "02:00:00:00:00:01"}),
            "--net-mac:service is given but --net:service is not",
        ),
    ],
)
def test_check_attachments_refuses(options: Options, error: str) -> None:
    with pytest.raises(TenderError, match=error):
        check_attachments(MANIFEST, options)
    check_attachments(MANIFEST, Options("i", net={"service": "t"}, block={"disk": "d"}))


def test_refuses_an_image_whose_service_device_is_not_attached(tmp_path: Path) -> None:
    image = make_image(tmp_path, "halt(0)", [SERVICE])
    result = run_tender("--", image)
    assert result.returncode == 1
    assert result.stderr == "tender: the image declares net device 'service'; attach it with --net:service=IFACE\n"
    assert result.stdout == ""  # no banner: the guest never started


def test_refuses_an_unknown_net_name(tmp_path: Path) -> None:
    image = make_image(tmp_path, "halt(0)", [SERVICE])
    result = run_tender("--net:service=tap0", "--net:servise=tap1", "--", image)
    assert result.returncode == 1
    assert "--net:servise: the image declares no device 'servise' (it declares: service (NET_BASIC))" in result.stderr


def test_refuses_a_block_file_that_does_not_exist(tmp_path: Path) -> None:
    image = make_image(tmp_path, "halt(0)", [DISK])
    result = run_tender(f"--block:disk={tmp_path / 'absent.img'}", "--", image)
    assert result.returncode == 1
    assert f"--block:disk={tmp_path / 'absent.img'}: no such file" in result.stderr


def test_refuses_a_block_file_of_part_of_a_sector(tmp_path: Path) -> None:
    image = make_image(tmp_path, "halt(0)", [DISK])
    ragged = tmp_path / "ragged.img"
    ragged.write_bytes(bytes(1000))
    result = run_tender(f"--block:disk={ragged}", "--", image)
    assert result.returncode == 1
    assert "1000 bytes, is not a whole number of 512-byte sectors" in result.stderr
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    assert "needs at least one sector" in run_tender(f"--block:disk={empty}", "--", image).stderr


# -- how a guest ends ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("returncode", "halt", "note", "expected"),
    [
        (0, (0, ""), None, (0, None)),
        (0, (7, ""), None, (7, "guest halted with status 7")),
        (0, (255, "out of memory"), None, (255, "guest halted with status 255: out of memory")),
        (0, (1000, ""), None, (255, "guest halted with status 1000")),
        (-signal.SIGKILL, (3, "done"), None, (3, "guest halted with status 3: done")),  # HALT wins
        (5, None, None, (5, "guest exited with status 5 without halting")),
        (-signal.SIGSYS, None, "open", (255, "guest killed by the sandbox: open refused")),
        (-signal.SIGSYS, None, None, (255, "guest killed by the sandbox: a forbidden system call")),
        (
            -signal.SIGKILL,
            None,
            None,
            (255, "guest killed by SIGKILL (out of memory, or killed from outside; --mem=64)"),
        ),
        (
            -signal.SIGSEGV,
            None,
            None,
            (255, "guest crashed with SIGSEGV (it may have run out of its 64 MiB; see --mem)"),
        ),
        (-signal.SIGTERM, None, None, (255, "guest killed by SIGTERM")),
    ],
)
def test_describe_end(
    returncode: int, halt: tuple[int, str] | None, note: str | None, expected: tuple[int, str | None]
) -> None:
    assert describe_end(returncode, halt, note, 64) == expected


def test_frames_to_end() -> None:
    assert [bytes(f) for f in frames_to_end(memoryview(abi.encode_frames([b"ab", b"", b"cde"])))] == [
        b"ab",
        b"",
        b"cde",
    ]
    for bad in (b"", b"\x02\x00\x00", b"\x05\x00\x00\x00ab"):
        with pytest.raises(abi.AbiError):
            frames_to_end(memoryview(bad))


# -- fake guests ---------------------------------------------------------------------------


def test_the_guest_gets_its_boot_info_one_channel_and_a_bare_environment(tmp_path: Path) -> None:
    disk = sector_file(tmp_path, sectors=8, size=4096)
    image = make_image(
        tmp_path,
        """
        puts(f"cmdline {list(boot.cmdline)}")
        puts(f"memory {boot.memory_limit}")
        puts(f"devices {[(d.name, d.sector_size, d.capacity) for d in boot.devices]}")
        puts(f"environment {sorted(os.environ)}")
        # (listdir's own descriptor is gone by the time we look at the entries)
        fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}"))
        puts(f"descriptors {fds} channel {channel.fileno()}")
        puts(f"stdio {[os.readlink(f'/proc/self/fd/{fd}') for fd in (0, 1, 2)]}")
        puts(f"path {sys.path[0]} cwd {os.getcwd()}")
        halt(0)
        """,
        [DISK],
    )
    result = run_tender(
        "--mem=96",
        f"--block:disk={disk}",
        "--block-sector-size:disk=4096",
        "--",
        image,
        "--ipv4=10.0.0.2/24",
        "two words",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"netstack hvt tender: image {image} (fake), mem 96 MiB, devices: disk={disk} (8 x 4096)"
    assert "cmdline ['--ipv4=10.0.0.2/24', 'two words']" in lines
    assert f"memory {96 << 20}" in lines
    assert f"devices [('disk', 4096, {8 * 4096})]" in lines
    assert "environment ['LANG', 'NETSTACK_HVT_CHANNEL', 'NETSTACK_HVT_SITE', 'PATH']" in lines
    channel = int(next(line for line in lines if line.startswith("descriptors")).split()[-1])
    # stdin, stdout, stderr and the channel: nothing else inherited
    assert f"descriptors [0, 1, 2, {channel}] channel {channel}" in lines
    assert "stdio ['/dev/null', '/dev/null', '/dev/null']" in lines
    assert f"path {image} cwd /" in lines
    assert result.stderr == ""  # HALT(0) without a reason is silent


def test_malformed_messages_get_einval_and_the_tender_survives(tmp_path: Path) -> None:
    image = make_image(
        tmp_path,
        """
        def einval(message, what):
            call, result, count, payload = raw(message)
            check(result == Result.EINVAL and count == 0 and payload == b"", f"{what}: {result!r}")
            return call

        check(einval(b"", "an empty message") == 0, "empty: call 0")
        check(einval(b"\\x02\\x00", "a short header") == 2, "short: the call byte is echoed")
        einval(abi.request(Call.PUTS, b"text")[:-1], "a length mismatch")
        einval(b"\\x02\\x00\\x00\\x00\\xff\\xff\\xff\\xff", "a huge length")
        check(einval(abi.request(99), "an unknown call") == 99, "unknown call echoed")
        einval(abi.request(Call.BOOT), "BOOT from the guest")
        einval(abi.request(Call.NET_WRITE, b"\\x10\\x00\\x00\\x00ab"), "a truncated NET_WRITE batch")
        einval(abi.request(Call.NET_WRITE, b""), "an empty NET_WRITE batch")
        einval(abi.request(Call.WALLTIME, b"x"), "WALLTIME with a payload")
        einval(abi.request(Call.WALLTIME, flags=1), "reserved flags")
        einval(abi.request(Call.POLL, b"\\x00" * 7), "a short POLL deadline")
        einval(abi.request(Call.NET_READ, b"\\x01"), "a short NET_READ")
        einval(abi.request(Call.BLOCK_READ, b"\\x00" * 12, handle=0), "BLOCK_READ with no block device")
        einval(abi.request(Call.HALT, b"\\x07\\x00"), "a HALT without its status")
        einval(b"\\x02" + bytes(7 + abi.MAX_MESSAGE + 1), "a message over the limit")
        # still serving
        result, _, payload = hypercall(Call.WALLTIME)
        check(result == Result.OK and len(payload) == 8, "WALLTIME after the garbage")
        puts("survived")
        halt(7)
        """,
    )
    result = run_tender("--", image)
    assert result.returncode == 7, result.stderr
    assert "survived" in result.stdout.splitlines()
    assert "tender: 14 malformed hypercalls answered EINVAL" in result.stderr
    assert result.stderr.splitlines()[-1] == "guest halted with status 7"


def test_a_flood_of_garbage_is_answered_one_by_one(tmp_path: Path) -> None:
    image = make_image(
        tmp_path,
        """
        import threading
        count = 20000
        answers = []
        def reader():
            for _ in range(count):
                answers.append(abi.parse(receive())[1])
        thread = threading.Thread(target=reader)
        thread.start()
        for number in range(count):
            channel.send(bytes([200, 0, 0, 0, 1, 0, 0, 0]) + b"x" * (number % 3))
        thread.join()
        check(answers == [Result.EINVAL] * count, f"{len(answers)} answers")
        puts("flood answered")
        halt(7)
        """,
    )
    result = run_tender("--", image, timeout=60)
    assert result.returncode == 7, result.stderr
    assert "flood answered" in result.stdout
    assert "tender: 20000 malformed hypercalls" in result.stderr


def test_a_guest_that_never_reads_its_answers_does_not_hang_the_tender(tmp_path: Path) -> None:
    image = make_image(
        tmp_path,
        """
        channel.setblocking(False)
        sent = 0
        try:
            while sent < 100000:
                channel.send(b"junk")
                sent += 1
        except BlockingIOError:
            pass
        check(sent < 100000, "the tender kept reading although nobody read its answers")
        os._exit(3)
        """,
    )
    started = time.monotonic()
    result = run_tender("--", image, timeout=30)
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines()[-1] == "guest exited with status 3 without halting"
    assert time.monotonic() - started < 10


def test_walltime_puts_block_and_poll(tmp_path: Path) -> None:
    disk = sector_file(tmp_path, sectors=16)
    image = make_image(
        tmp_path,
        """
        result, _, payload = hypercall(Call.WALLTIME)
        wall = abi.read_u64(memoryview(payload))
        check(result == Result.OK and abs(wall - time.time_ns()) < 5_000_000_000, f"walltime {wall}")
        puts("walltime ok")

        # one console write with no newline, then the rest of the line
        hypercall(Call.PUTS, b"console: ")
        hypercall(Call.PUTS, "h\\u00e9llo\\n".encode())

        disk = boot.devices[0]
        check((disk.name, disk.sector_size, disk.capacity) == ("disk", 512, 16 * 512), repr(disk))
        data = bytes(range(256)) * 4  # two sectors
        result, _, _ = hypercall(Call.BLOCK_WRITE, abi.u64(512 * 3) + data, handle=0)
        check(result == Result.OK, f"write {result!r}")
        result, _, back = hypercall(Call.BLOCK_READ, abi.block_read_request(512 * 3, 1024), handle=0)
        check(result == Result.OK and back == data, f"read back {result!r}")
        result, _, last = hypercall(Call.BLOCK_READ, abi.block_read_request(512 * 15, 512), handle=0)
        check(result == Result.OK and last == bytes(512), "the last sector")
        for offset, length, what in [
            (0, 100, "a partial sector"),
            (100, 512, "an unaligned offset"),
            (512 * 15, 1024, "past the end"),
            (512 * 16, 512, "at the end"),
            (0, 0, "nothing"),
            (2**64 - 512, 512, "a huge offset"),
        ]:
            result, _, _ = hypercall(Call.BLOCK_READ, abi.block_read_request(offset, length), handle=0)
            check(result == Result.EINVAL, f"read {what}: {result!r}")
            result, _, _ = hypercall(Call.BLOCK_WRITE, abi.u64(offset) + bytes(length), handle=0)
            check(result == Result.EINVAL, f"write {what}: {result!r}")
        result, _, _ = hypercall(Call.BLOCK_READ, abi.block_read_request(0, 512), handle=1)
        check(result == Result.EINVAL, "a block handle that does not exist")
        puts("block ok")

        start = time.monotonic_ns()
        result, _, payload = hypercall(Call.POLL, abi.u64(start + 300_000_000))
        elapsed = time.monotonic_ns() - start
        check(result == Result.OK and abi.read_u64(memoryview(payload)) == 0, f"poll {result!r} {payload!r}")
        check(300_000_000 <= elapsed < 550_000_000, f"poll returned after {elapsed} ns")
        start = time.monotonic_ns()
        result, _, payload = hypercall(Call.POLL, abi.u64(start - 1))
        check(time.monotonic_ns() - start < 50_000_000, "a past deadline answers at once")
        puts("poll ok")
        halt(0)
        """,
        [DISK],
    )
    result = run_tender(f"--block:disk={disk}", "--", image)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["walltime ok", "console: héllo", "block ok", "poll ok"]
    written = disk.read_bytes()
    assert written[512 * 3 : 512 * 5] == bytes(range(256)) * 4
    assert written[: 512 * 3] == bytes(512 * 3) and written[512 * 5 :] == bytes(512 * 11)


def test_poll_sleeps_rather_than_spins(tmp_path: Path) -> None:
    image = make_image(
        tmp_path,
        """
        for _ in range(4):
            hypercall(Call.POLL, abi.u64(time.monotonic_ns() + 250_000_000))
        halt(0)
        """,
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = run_tender("--", image)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stderr
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # Two interpreters start (about 0.1-0.3 s of CPU); a second of spinning would show.
    assert wall >= 1.0
    assert cpu < 0.7, f"tender and guest used {cpu:.2f} s of CPU over {wall:.2f} s"


def test_a_guest_killed_by_the_sandbox_is_reported_with_the_refused_call(tmp_path: Path) -> None:
    image = make_image(
        tmp_path,
        """
        puts("about to open")
        channel.send(abi.request(Call.PUTS, b"\\x00sandbox-refused:open"))
        receive()
        os.kill(os.getpid(), signal.SIGSYS)
        """,
    )
    result = run_tender("--", image)
    assert result.returncode == 255
    assert result.stdout.splitlines()[1:] == ["about to open"]  # the note is not console text
    assert "sandbox-refused" not in result.stdout
    assert result.stderr.splitlines() == ["guest killed by the sandbox: open refused"]


def test_a_sandbox_kill_without_a_note(tmp_path: Path) -> None:
    image = make_image(tmp_path, "os.kill(os.getpid(), signal.SIGSYS)")
    result = run_tender("--", image)
    assert result.returncode == 255
    assert result.stderr.splitlines() == ["guest killed by the sandbox: a forbidden system call"]


def test_a_guest_that_exits_without_halt_or_is_killed(tmp_path: Path) -> None:
    exits = make_image(tmp_path, "puts('bye'); sys.stdout.flush(); os._exit(5)", name="exits.hvt")
    result = run_tender("--", exits)
    assert (result.returncode, result.stderr) == (5, "guest exited with status 5 without halting\n")
    killed = make_image(tmp_path, "os.kill(os.getpid(), signal.SIGKILL)", name="killed.hvt")
    result = run_tender("--", killed)
    assert result.returncode == 255
    assert result.stderr.startswith("guest killed by SIGKILL")
    crashed = make_image(tmp_path, "os.kill(os.getpid(), signal.SIGSEGV)", name="crashed.hvt")
    result = run_tender("--mem=64", "--", crashed)
    assert result.returncode == 255
    assert result.stderr == "guest crashed with SIGSEGV (it may have run out of its 64 MiB; see --mem)\n"


def test_too_little_memory_ends_the_guest_cleanly(tmp_path: Path) -> None:
    # As the real guest does: MemoryError -> HALT(255, "out of memory").
    image = make_image(
        tmp_path,
        """
        try:
            hog = bytearray(512 << 20)
        except MemoryError:
            halt(255, "out of memory (--mem too small?)")
        halt(0, "the allocation succeeded")
        """,
    )
    result = run_tender("--mem=48", "--", image)
    assert result.returncode == 255
    assert result.stderr.splitlines() == ["guest halted with status 255: out of memory (--mem too small?)"]
    # The same guest with room to spare.
    assert run_tender("--mem=1024", "--", image).stderr.splitlines() == [
        "guest halted with status 0: the allocation succeeded"
    ]


def test_a_guest_that_does_not_catch_memory_error(tmp_path: Path) -> None:
    manifest = json.dumps({"type": "netstack.manifest", "version": 1, "devices": []})
    # No prelude, no HALT: an uncaught MemoryError, so a traceback on /dev/null and exit status 1.
    image = _zip(tmp_path / "hog.hvt", {"manifest.json": manifest, "__main__.py": "hog = bytearray(512 << 20)\n"})
    result = run_tender("--mem=48", "--", image)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "guest exited with status 1 without halting before booting (could it start in 48 MiB? see --mem)"
    )


def test_sigterm_stops_the_guest_and_the_tender_exits_143(tmp_path: Path) -> None:
    image = make_image(
        tmp_path,
        """
        puts(f"guest pid {os.getpid()}")
        while True:
            hypercall(Call.POLL, abi.u64(time.monotonic_ns() + 10_000_000_000))
        """,
    )
    tender = subprocess.Popen(
        tender_command("--", image), cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert tender.stdout is not None
        tender.stdout.readline()  # the banner
        pid = int(tender.stdout.readline().split()[-1])
        tender.send_signal(signal.SIGTERM)
        _, stderr = tender.communicate(timeout=10)
    finally:
        if tender.poll() is None:
            tender.kill()
            tender.wait()
    assert tender.returncode == 143
    assert stderr == "tender: stopped by SIGTERM; the guest was terminated\n"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_tender_in_process_reports_to_the_given_streams(tmp_path: Path) -> None:
    image = make_image(tmp_path, "puts('in process'); halt(4, 'four')")
    console, log = io.BytesIO(), io.StringIO()
    tender = Tender(str(image), console=console, log=log)
    assert tender.run() == 4
    assert console.getvalue().endswith(b"in process\n")
    assert log.getvalue() == "guest halted with status 4: four\n"
    assert tender.halt == (4, "four")
    assert tender.stats["calls"] == 2
    with pytest.raises(TenderError, match="attach it with --net:service=IFACE"):
        Tender(str(make_image(tmp_path, "halt(0)", [SERVICE], name="net.hvt"))).run()


# -- taps, inside a namespace -------------------------------------------------------------------

ARP_GUEST = """
import socket as _socket

service, disk = boot.devices
check(disk.name == "disk" and disk.capacity == 4096, repr(disk))
mac = service.mac
check(service.mtu == 1500, f"mtu {service.mtu}")
check(mac == bytes.fromhex("020000000042"), f"mac {mac.hex()}")

result, _, _ = hypercall(Call.NET_READ, abi.u16(8))
check(result == Result.AGAIN, f"an idle tap: {result!r}")

request = (b"\\xff" * 6 + mac + b"\\x08\\x06" + b"\\x00\\x01\\x08\\x00\\x06\\x04\\x00\\x01"
           + mac + _socket.inet_aton("10.0.0.2") + b"\\x00" * 6 + _socket.inet_aton("10.0.0.1"))
result, _, _ = hypercall(Call.NET_WRITE, abi.encode_frames([request]), handle=0)
check(result == Result.OK, f"NET_WRITE {result!r}")
result, _, _ = hypercall(Call.NET_WRITE, abi.encode_frames([request, b"\\x00" * 1515]), handle=0)
check(result == Result.EINVAL, f"an oversize frame: {result!r}")
result, _, _ = hypercall(Call.NET_WRITE, abi.encode_frames([b"\\x00" * 13]), handle=0)
check(result == Result.EINVAL, f"a runt: {result!r}")
result, _, _ = hypercall(Call.NET_WRITE, abi.encode_frames([request]), handle=1)
check(result == Result.EINVAL, f"a net handle that does not exist: {result!r}")
result, _, _ = hypercall(Call.NET_READ, abi.u16(0), handle=0)
check(result == Result.EINVAL, f"NET_READ of no frames: {result!r}")
# handles are per kind: the disk, second in the manifest, is block handle 0
result, _, sector = hypercall(Call.BLOCK_READ, abi.block_read_request(0, 512), handle=0)
check(result == Result.OK and sector == b"\\xab" * 512, f"block handle 0: {result!r}")
result, _, _ = hypercall(Call.BLOCK_READ, abi.block_read_request(0, 512), handle=1)
check(result == Result.EINVAL, f"block handle 1: {result!r}")

deadline = time.monotonic_ns() + 3_000_000_000
reply = None
while reply is None and time.monotonic_ns() < deadline:
    result, _, payload = hypercall(Call.POLL, abi.u64(deadline))
    ready = abi.read_u64(memoryview(payload))
    if not ready:
        continue
    check(ready == 1, f"ready set {ready:#x}")
    result, count, payload = hypercall(Call.NET_READ, abi.u16(16), handle=0)
    if result == Result.AGAIN:
        continue
    check(result == Result.OK, f"NET_READ {result!r}")
    for frame in abi.decode_frames(memoryview(payload), count):
        frame = bytes(frame)
        is_arp_reply = frame[12:14] == b"\\x08\\x06" and frame[20:22] == b"\\x00\\x02"
        if is_arp_reply and frame[28:32] == _socket.inet_aton("10.0.0.1"):
            reply = frame
check(reply is not None, "no ARP reply from the kernel")
check(reply[:6] == mac and reply[32:38] == mac, "the reply is for us")
puts(f"arp reply from {reply[22:28].hex(':')}")
halt(0)
"""


def _tender_in(namespace: Namespace, *arguments: str | Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return namespace.run(tender_command(*arguments), check=False, timeout=timeout, cwd=REPOSITORY)


def test_arp_through_a_tap_the_host_configured(netns: Namespace, tmp_path: Path) -> None:
    netns.run(["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])  # no IPv6 chatter on the tap
    netns.run(["ip", "tuntap", "add", "dev", "hvt0", "mode", "tap"])
    netns.run(["ip", "address", "add", "10.0.0.1/24", "dev", "hvt0"])
    netns.run(["ip", "link", "set", "hvt0", "up"])
    host_mac = netns.run(["cat", "/sys/class/net/hvt0/address"]).stdout.strip()
    image = make_image(tmp_path, ARP_GUEST, [SERVICE, DISK])
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\xab" * 4096)
    result = _tender_in(
        netns, "--net:service=hvt0", "--net-mac:service=02:00:00:00:00:42", f"--block:disk={disk}", "--", image
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"arp reply from {host_mac}" in result.stdout.splitlines()
    assert "service=hvt0 (02:00:00:00:00:42, mtu 1500)" in result.stdout.splitlines()[0]
    # the tap existed before the tender, so it stays, unchanged
    assert "10.0.0.1/24" in netns.run(["ip", "address", "show", "hvt0"]).stdout


def test_a_tap_the_tender_creates_is_removed_afterwards(netns: Namespace, tmp_path: Path) -> None:
    image = make_image(
        tmp_path,
        """
        service = boot.devices[0]
        check(service.mtu == 1500, f"mtu {service.mtu}")
        check(service.mac[0] & 0x03 == 0x02, f"a random locally administered unicast MAC: {service.mac.hex()}")
        puts("created")
        halt(0)
        """,
        [SERVICE],
    )
    result = _tender_in(netns, "--net:service=hvtnew0", "--", image)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "created" in result.stdout
    assert netns.run(["ip", "link", "show", "hvtnew0"], check=False).returncode != 0


@pytest.mark.parametrize(
    ("guest_args", "expected"),
    [
        ([], "10.0.0.1/24"),
        (["--ipv4=10.0.0.2/24", "--ipv4-gateway=10.0.0.1"], "10.0.0.1/24"),
        (["--ipv4=10.0.1.2/24"], "10.0.1.1/24"),
        (["--ipv4", "192.168.5.9/16", "--ipv4-gateway", "192.168.0.254"], "192.168.0.254/16"),
        (["--ipv4=10.0.0.1/24"], "10.0.0.2/24"),  # the first address is the guest's own
        (["--ipv4=nonsense"], "10.0.0.1/24"),
    ],
)
def test_a_tap_the_tender_creates_gets_the_host_address_the_guest_implies(guest_args, expected) -> None:
    from platforms.hvt.tender_devices import host_side_address

    assert host_side_address(guest_args) == expected
