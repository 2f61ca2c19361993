"""Suresh end to end: the real command in a namespace, curl and raw sockets as clients.

The same checks run against ``--net direct`` (our stack on a tap),
``--net socket`` (the kernel's sockets on the namespace's loopback) and
``--platform hvt`` (our stack in a sandboxed guest under the tender, built
into an image and started by the same command).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from platforms.host.netns import REPOSITORY, Namespace

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

READY = "suresh listening on TCP port 8080"
TAP = ["--interface", "tap0", "--ipv4=10.0.0.2/24", "--ipv4-gateway=10.0.0.1"]
NETS = {
    "direct": (["--platform", "unix", "--net", "direct", *TAP], "10.0.0.2"),
    "socket": (["--platform", "unix", "--net", "socket"], "127.0.0.1"),
    "hvt": (["--platform", "hvt", *TAP], "10.0.0.2"),
}


def seccomp_missing() -> bool:
    import ctypes.util

    return ctypes.util.find_library("seccomp") is None


@pytest.fixture(params=sorted(NETS))
def suresh(request, netns: Namespace, tmp_path):
    if request.param == "hvt" and seccomp_missing():
        pytest.skip("libseccomp is not installed (apt-get install -y libseccomp2)")
    arguments, host = NETS[request.param]
    # The hvt launcher writes its image to dist/ under the working directory.
    process = netns.start_service(["-m", "services.suresh", *arguments], ready=READY, timeout=30, cwd=str(tmp_path))
    return netns, host, process


def curl(netns: Namespace, *args: str) -> subprocess.CompletedProcess[str]:
    return netns.run(["curl", "-s", "--max-time", "5", *args], check=False, capture_output=True, text=True, timeout=30)


def test_every_route(suresh) -> None:
    netns, host, _ = suresh
    base = f"http://{host}:8080"
    home = curl(netns, "-i", f"{base}/")
    assert home.stdout.startswith("HTTP/1.1 200 OK")
    assert re.search(r"(?im)^content-type: text/plain", home.stdout)
    assert home.stdout.endswith("\n\nNext train to Chennai Central: 14:20.")
    api = curl(netns, "-i", f"{base}/api/next")
    assert re.search(r"(?im)^content-type: application/json", api.stdout)
    assert api.stdout.endswith('{"destination":"Chennai Central","time":"14:20"}')
    nope = curl(netns, "-i", f"{base}/nope")
    assert nope.stdout.startswith("HTTP/1.1 404") and nope.stdout.endswith("not found")
    health = curl(netns, f"{base}/health")
    assert '"status": "ok"' in health.stdout and "uptime_seconds" in health.stdout
    metrics = curl(netns, f"{base}/metrics").stdout
    assert 'suresh_requests_total{path="/",status="200"} 1' in metrics
    assert "# TYPE netstack_tcp_connections_total counter" in metrics
    head = curl(netns, "-I", f"{base}/")
    assert head.stdout.startswith("HTTP/1.1 200 OK") and re.search(r"(?im)^content-length: 37\r?$", head.stdout)
    post = curl(netns, "-i", "-X", "POST", f"{base}/")
    assert post.stdout.startswith("HTTP/1.1 405") and re.search(r"(?im)^allow: GET, HEAD", post.stdout)


RAW_CLIENT = textwrap.dedent(
    """
    import socket, sys
    host = sys.argv[1]
    s = socket.create_connection((host, 8080), timeout=5)
    f = s.makefile("rb")

    def response():
        status = f.readline()
        length = 0
        while (line := f.readline()) not in (b"\\r\\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, f.read(length)

    # 1,000 keep-alive requests on one connection.
    for i in range(1000):
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
        status, body = response()
        assert status.startswith(b"HTTP/1.1 200") and body == b"Next train to Chennai Central: 14:20.", (i, status)
    # Pipelined: three requests in one write, answered in order.
    s.sendall(b"GET /api/next HTTP/1.1\\r\\nHost: x\\r\\n\\r\\nGET /nope HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"
              b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    assert [response()[0].split()[1] for _ in range(3)] == [b"200", b"404", b"200"]
    s.close()

    def one(request):
        s = socket.create_connection((host, 8080), timeout=5)
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        return data.split(b" ", 2)[1]

    assert one(b"GARBAGE\\r\\n\\r\\n") == b"400"
    assert one(b"GET /" + b"a" * 9000 + b" HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n") == b"414"
    assert one(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n" + b"X-Big: " + b"b" * 40000 + b"\\r\\n\\r\\n") == b"431"
    assert one(b"POST /upload HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 5000000\\r\\n\\r\\n") == b"413"
    print("ok")
    """
)


def test_keep_alive_pipelining_and_bad_requests(suresh) -> None:
    netns, host, _ = suresh
    result = netns.run([sys.executable, "-c", RAW_CLIENT, host], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr


def test_sigterm_exits_zero(suresh) -> None:
    netns, host, process = suresh
    assert curl(netns, f"http://{host}:8080/").stdout.startswith("Next train")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    assert "tap0" not in netns.run(["ip", "link", "show"], capture_output=True, text=True).stdout


@pytest.mark.parametrize("argument", ["--port=0", "--port=http", "--time=7pm", "--net=carrier-pigeon", "--ipv4=10.0.0.2"])
def test_bad_arguments_exit_64(argument: str) -> None:
    result = subprocess.run([sys.executable, "-m", "services.suresh", argument], capture_output=True, text=True,
                            timeout=30, cwd=str(REPOSITORY))
    assert result.returncode == 64
    assert result.stderr.startswith("usage: python -m services.suresh")


def test_missing_privileges_name_the_fix(netns: Namespace) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    result = netns.run([setpriv, "--bounding-set=-net_admin", sys.executable, "-m", "services.suresh"], check=False,
                       capture_output=True, text=True, timeout=30, cwd=str(REPOSITORY))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "root" in lines[0] and "--net socket" in lines[0], result.stderr
