"""Real images under the real tender: the sandbox kills, the block device round-trips.

Each test builds an image of a tiny application with the real builder (in a
scratch project holding copies of this repository's ``netstack`` and
``platforms``)
and runs it under ``python -m platforms.hvt.tender``. Nothing here touches a
network, so no namespace is needed.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from platforms.host.netns import REPOSITORY

pytestmark = pytest.mark.skipif(
    ctypes.util.find_library("seccomp") is None, reason="libseccomp is not installed (apt-get install -y libseccomp2)"
)

TRESPASS = '''\
"""A guest that tries one thing its sandbox forbids."""

import asyncio
import importlib
import os
import socket

DEVICES = []


async def attempt(kind):
    await asyncio.sleep(0)
    print(f"attempting {kind}", flush=True)
    if kind == "open":
        open("/etc/hostname").read()
    elif kind == "socket":
        socket.socket()
    elif kind == "execve":
        os.execv("/bin/true", ["true"])
    elif kind == "fork":
        os.fork()
    print("still here", flush=True)


def main(argv):
    importlib.import_module("platforms.hvt").run(attempt(argv[-1]))
    return 0
'''

BLOCKCHECK = '''\
"""A guest that writes and reads back its block device."""

import importlib

DEVICES = [{"name": "disk", "type": "BLOCK_BASIC"}]


async def check(platform):
    disk = platform.block("disk")
    payload = bytes(range(256)) * (2 * disk.sector_size // 256)
    await disk.write(3, payload)
    back = await disk.read(3, 2)
    print("round trip", "ok" if back == payload else "MISMATCH", disk.size, disk.sector_size, flush=True)
    try:
        await disk.write(0, b"short")
    except ValueError:
        print("partial sector refused", flush=True)
    return 0 if back == payload else 1


def main(argv):
    platform = importlib.import_module("platforms.hvt")
    return platform.run(check(platform))
'''


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("project")
    for package in ("netstack", "platforms"):  # copies: the builder finds its project beside itself
        shutil.copytree(REPOSITORY / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "services").mkdir()
    (root / "services" / "__init__.py").write_text("")
    (root / "services" / "trespass.py").write_text(TRESPASS)
    (root / "services" / "blockcheck.py").write_text(BLOCKCHECK)
    built = {}
    for app in ("trespass", "blockcheck"):
        image = root / f"{app}.hvt"
        result = subprocess.run(
            [sys.executable, "-m", "platforms.hvt.build", f"services.{app}", "-o", str(image)],
            cwd=root, capture_output=True, text=True, timeout=120, env=_environment(),
        )
        assert result.returncode == 0, result.stderr
        built[app] = image
    return built


def _environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "NETSTACK_HVT_CHANNEL")}


def tender(*args: str) -> subprocess.CompletedProcess[str]:
    environment = _environment()
    environment["PYTHONPATH"] = str(REPOSITORY)
    return subprocess.run([sys.executable, "-m", "platforms.hvt.tender", *args], capture_output=True, text=True,
                          timeout=60, env=environment)


@pytest.mark.parametrize("kind", ["open", "socket", "execve", "fork"])
def test_a_forbidden_call_kills_the_guest_and_the_tender_names_it(images: dict[str, Path], kind: str) -> None:
    result = tender("--", str(images["trespass"]), kind)
    assert f"attempting {kind}" in result.stdout
    assert "still here" not in result.stdout
    assert result.returncode == 255
    assert result.stderr.splitlines()[-1] == f"guest killed by the sandbox: {kind} refused"


def test_an_allowed_run_halts_zero(images: dict[str, Path]) -> None:
    result = tender("--", str(images["trespass"]), "nothing")
    assert "still here" in result.stdout
    assert (result.returncode, result.stderr) == (0, "")


def test_the_block_device_round_trips_data(images: dict[str, Path], tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(512 * 16))
    result = tender(f"--block:disk={disk}", "--", str(images["blockcheck"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"round trip ok {512 * 16} 512" in result.stdout
    assert "partial sector refused" in result.stdout
    written = disk.read_bytes()
    assert written[3 * 512 : 5 * 512] == bytes(range(256)) * 4
    assert written[: 3 * 512] == bytes(3 * 512) and written[5 * 512 :] == bytes(11 * 512)


def test_a_block_image_needs_its_block_device(images: dict[str, Path]) -> None:
    result = tender("--", str(images["blockcheck"]))
    assert result.returncode == 1
    assert "disk" in result.stderr and len(result.stderr.splitlines()) == 1


def test_too_little_memory_ends_the_guest_with_a_message(images: dict[str, Path]) -> None:
    result = tender("--mem=16", "--", str(images["trespass"]), "nothing")
    assert result.returncode != 0
    line = result.stderr.splitlines()[-1]
    assert "--mem" in line, result.stderr
