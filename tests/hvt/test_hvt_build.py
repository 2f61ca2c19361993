"""The hvt image builder: what goes in, what stays out, and the same bytes every time.

Two kinds of test. Most run the real command (``python -m
platforms.hvt.build``) inside a tiny fake project in a temporary directory,
with a copy of the builder: every rule is visible in a few lines of source,
a source change is an edit, and nothing depends on the state of the guest
side. The rest build the real Suresh and Echo, and drive the host-side
``--platform hvt`` path of the services; those need ``platforms.hvt`` (the
guest platform, which the builder's package imports first) to import, and
report an expected failure, saying why, while it does not.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HVT = ROOT / "platforms" / "hvt"

FAKE_PROJECT = {
    "netstack/__init__.py": "",
    "netstack/core.py": """\
        import json
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            import decimal  # never runs: not preloaded

        VALUE = 1
        """,
    "netstack/devices/__init__.py": "",
    "netstack/devices/pcap.py": "import dpkt\n",
    "services/__init__.py": "",
    "services/app.py": """\
        from __future__ import annotations

        import importlib

        from netstack import core
        from . import helper

        try:
            import surely_not_installed_optional
        except ImportError:
            surely_not_installed_optional = None

        DEVICES = [{"name": "service", "type": "NET_BASIC"}, {"name": "storage", "type": "BLOCK_BASIC"}]


        def main(argv=None):
            if argv:
                from netstack.devices.pcap import PcapNetif  # an optional feature: left out
            return importlib.import_module("platforms.hvt")
        """,
    "services/helper.py": "import heapq\n",
    "platforms/__init__.py": "",
    "platforms/hvt/__init__.py": "import selectors\n\nfrom platforms.hvt import guest\n",
    "platforms/hvt/guest.py": "import sys\n\n\ndef main(application, preload=()):\n    pass\n",
    "platforms/unix/__init__.py": "import uvloop\n",
    "platforms/host/__init__.py": "",
    "platforms/host/tap.py": "import pyroute2\n",
}
FAKE_MODULES = [
    "netstack", "netstack.core", "platforms", "platforms.hvt", "platforms.hvt.guest",
    "services", "services.app", "services.helper",
]
FAKE_PRELOAD = ["__future__", "heapq", "importlib", "json", "selectors", "sys", "typing"]


def write_project(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    """A fake project with a copy of the real builder in it."""
    root = tmp_path / "project"
    write_project(root, FAKE_PROJECT)
    for name in ("build.py", "graph.py"):
        shutil.copy(HVT / name, root / "platforms" / "hvt" / name)
    return root


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "NETSTACK_HVT_CHANNEL")}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=60)


def build(cwd: Path, application: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run(cwd, "-m", "platforms.hvt.build", application, *args)


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    return result.stderr


# -- the rules, on a fake project --------------------------------------------------------


def test_same_source_same_bytes(fake: Path, tmp_path: Path) -> None:
    assert build(fake, "services.app", "-o", str(tmp_path / "one.hvt")).returncode == 0
    copy = tmp_path / "copy" / "of" / "the" / "project"
    shutil.copytree(fake, copy)  # another directory, newer mtimes
    os.chmod(copy / "services" / "helper.py", 0o600)  # a file's mode is not part of the image either
    assert build(copy, "services.app", "-o", str(tmp_path / "two.hvt")).returncode == 0
    assert (tmp_path / "one.hvt").read_bytes() == (tmp_path / "two.hvt").read_bytes()


def test_a_source_change_changes_the_image_and_only_its_entry(fake: Path, tmp_path: Path) -> None:
    assert build(fake, "services.app", "-o", str(tmp_path / "before.hvt")).returncode == 0
    core = fake / "netstack" / "core.py"
    core.write_text(core.read_text().replace("VALUE = 1", "VALUE = 2"))
    assert build(fake, "services.app", "-o", str(tmp_path / "after.hvt")).returncode == 0
    before, after = (zipfile.ZipFile(tmp_path / name) for name in ("before.hvt", "after.hvt"))
    assert (tmp_path / "before.hvt").read_bytes() != (tmp_path / "after.hvt").read_bytes()
    changed = [name for name in before.namelist() if before.read(name) != after.read(name)]
    assert changed == ["netstack/core.py", "netstack/core.pyc"]  # the source and its bytecode
    assert before.namelist() == after.namelist()


def test_zip_entries_are_sorted_fixed_and_deflated(fake: Path, tmp_path: Path) -> None:
    assert build(fake, "services.app", "-o", str(tmp_path / "app.hvt")).returncode == 0
    archive = zipfile.ZipFile(tmp_path / "app.hvt")
    names = archive.namelist()
    assert names == sorted(names)
    sources = [
        f"{module.replace('.', '/')}{'/__init__.py' if module in ('netstack', 'platforms', 'platforms.hvt', 'services') else '.py'}"
        for module in FAKE_MODULES
    ]
    assert names == sorted(["__main__.py", "manifest.json", *sources, *(source + "c" for source in sources)])
    for info in archive.infolist():
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert info.external_attr >> 16 == stat.S_IFREG | 0o644
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert not info.filename.startswith("/") and ".." not in info.filename
    for name in ("manifest.json", "__main__.py"):
        assert str(fake.parent).encode() not in archive.read(name)


def test_manifest_and_main(fake: Path, tmp_path: Path) -> None:
    assert build(fake, "services.app", "-o", str(tmp_path / "app.hvt")).returncode == 0
    archive = zipfile.ZipFile(tmp_path / "app.hvt")
    raw = archive.read("manifest.json")
    manifest = json.loads(raw)
    assert manifest == {
        "type": "netstack.manifest",
        "version": 1,
        "application": "services.app",
        "devices": [{"name": "service", "type": "NET_BASIC"}, {"name": "storage", "type": "BLOCK_BASIC"}],
        "preload": FAKE_PRELOAD,
        "modules": FAKE_MODULES,
    }
    assert raw == (json.dumps(manifest, sort_keys=True, separators=(",", ":")) + "\n").encode()
    assert archive.read("__main__.py").decode() == (
        "import os, sys\n"
        "sys.modules.setdefault('ssl', None)\n"
        "sys.path.extend(p for p in os.environ.get('NETSTACK_HVT_SITE', '').split(os.pathsep) if p)\n"
        "from platforms.hvt.guest import main\n"
        f'main("services.app", preload={json.dumps(FAKE_PRELOAD)})\n'
    )


def test_list_prints_the_packed_modules_and_writes_nothing(fake: Path) -> None:
    result = build(fake, "services.app", "--list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == FAKE_MODULES
    assert not (fake / "dist").exists()


def test_default_output_is_dist_name_hvt(fake: Path) -> None:
    result = build(fake, "services.app")
    assert result.returncode == 0, result.stderr
    assert (fake / "dist" / "app.hvt").is_file()
    assert result.stdout.startswith("dist/app.hvt: ")


def test_host_only_and_guest_unavailable_modules_stay_out(fake: Path) -> None:
    listed = build(fake, "services.app", "--list").stdout.splitlines()
    for absent in ("platforms.unix", "platforms.host", "platforms.host.tap", "netstack.devices.pcap",
                   "netstack.devices", "platforms.hvt.build", "platforms.hvt.graph"):
        assert absent not in listed
    assert build(fake, "services.app", "-o", "app.hvt").returncode == 0
    preload = json.loads(zipfile.ZipFile(fake / "app.hvt").read("manifest.json"))["preload"]
    for absent in ("uvloop", "pyroute2", "dpkt", "decimal", "surely_not_installed_optional"):
        assert absent not in preload


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("import platforms.unix\nDEVICES = []\n", "platforms.unix"),
        ("from platforms.host.tap import TapNetif\nDEVICES = []\n", "platforms.host.tap"),
        ("DEVICES = []\ndef main():\n    import platforms.unix\n", "platforms.unix"),
        ("from netstack.devices.pcap import PcapNetif\nDEVICES = []\n", "netstack.devices.pcap"),
        ("import surely_not_installed_module\nDEVICES = []\n", "surely_not_installed_module"),
        ("import netstack.missing\nDEVICES = []\n", "netstack.missing"),
        ("DEVICES = [\n", "services/bad.py:1"),
    ],
    ids=["unix", "host", "unix-in-a-function", "pcap-at-load", "not-installed", "missing-project-module", "syntax"],
)
def test_what_cannot_go_into_a_guest_fails_the_build(fake: Path, source: str, says: str) -> None:
    (fake / "services" / "bad.py").write_text(source)
    assert says in one_line_error(build(fake, "services.bad", "--list"))
    assert not (fake / "dist").exists()


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("X = 1\n", "declares no DEVICES"),
        ("DEVICES = make()\n", "literal"),
        ("DEVICES = {'name': 'service'}\n", "must be a list"),
        ("DEVICES = [{'name': 'service'}]\n", "exactly the keys"),
        ("DEVICES = [{'name': 'service', 'type': 'NET_FANCY'}]\n", "NET_FANCY"),
        ("DEVICES = [{'name': 'a=b', 'type': 'NET_BASIC'}]\n", "a=b"),
        ("DEVICES = [{'name': 'x', 'type': 'NET_BASIC'}, {'name': 'x', 'type': 'BLOCK_BASIC'}]\n", "twice"),
    ],
    ids=["missing", "not-literal", "not-a-list", "missing-key", "bad-type", "bad-name", "duplicate"],
)
def test_bad_devices_fail_with_one_line(fake: Path, source: str, says: str) -> None:
    (fake / "services" / "bad.py").write_text(source)
    assert says in one_line_error(build(fake, "services.bad"))


def test_annotated_devices_and_empty_devices(fake: Path) -> None:
    (fake / "services" / "quiet.py").write_text("DEVICES: list[dict[str, str]] = []\n")
    assert build(fake, "services.quiet", "-o", "quiet.hvt").returncode == 0
    assert json.loads(zipfile.ZipFile(fake / "quiet.hvt").read("manifest.json"))["devices"] == []


@pytest.mark.parametrize("application", ["services.nope", "json", "services..app", "platforms.unix"])
def test_an_application_that_is_not_one_exits_1(fake: Path, application: str) -> None:
    one_line_error(build(fake, application))


@pytest.mark.parametrize("args", [[], ["services.app", "--bogus"], ["services.app", "-o"], ["a", "b"]])
def test_bad_arguments_exit_64_with_usage(fake: Path, args: list[str]) -> None:
    result = run(fake, "-m", "platforms.hvt.build", *args)
    assert result.returncode == 64
    assert result.stderr.startswith("usage: python -m platforms.hvt.build")


# -- the real applications ---------------------------------------------------------------


def require_hvt_package() -> None:
    """Expected failure while the guest platform (imported before the builder) does not import."""
    result = run(ROOT, "-c", "import platforms.hvt")
    if result.returncode != 0:
        last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no output"
        pytest.xfail(f"platforms.hvt does not import yet (the guest side is in progress): {last}")


@pytest.fixture(scope="module")
def suresh_image(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    require_hvt_package()
    output = tmp_path_factory.mktemp("suresh") / "suresh.hvt"
    result = build(ROOT, "services.suresh", "-o", str(output))
    assert result.returncode == 0, result.stderr
    return zipfile.ZipFile(io.BytesIO(output.read_bytes()))


def test_suresh_manifest(suresh_image: zipfile.ZipFile) -> None:
    manifest = json.loads(suresh_image.read("manifest.json"))
    assert manifest["type"] == "netstack.manifest"
    assert manifest["version"] == 1
    assert manifest["application"] == "services.suresh"
    assert manifest["devices"] == [{"name": "service", "type": "NET_BASIC"}]
    assert manifest["preload"] == sorted(manifest["preload"])
    assert manifest["modules"] == sorted(manifest["modules"])
    assert "httptools" in manifest["preload"]
    for host_only in ("uvloop", "pyroute2", "dpkt"):
        assert not any(name == host_only or name.startswith(host_only + ".") for name in manifest["preload"])
    assert suresh_image.read("__main__.py").decode() == (
        "import os, sys\n"
        "sys.modules.setdefault('ssl', None)\n"
        "sys.path.extend(p for p in os.environ.get('NETSTACK_HVT_SITE', '').split(os.pathsep) if p)\n"
        "from platforms.hvt.guest import main\n"
        f'main("services.suresh", preload={json.dumps(manifest["preload"])})\n'
    )
    packed = {name for name in suresh_image.namelist() if name.endswith(".py") and name != "__main__.py"}
    assert packed == {
        module.replace(".", "/") + ("/__init__.py" if (ROOT / module.replace(".", "/")).is_dir() else ".py")
        for module in manifest["modules"]
    }


def test_suresh_list(suresh_image: zipfile.ZipFile) -> None:
    result = build(ROOT, "services.suresh", "--list")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.splitlines()
    assert listed == json.loads(suresh_image.read("manifest.json"))["modules"]
    for present in ("services.suresh", "services.boot", "netstack.stack", "netstack.http.server",
                    "platforms.hvt", "platforms.hvt.guest"):
        assert present in listed
    for absent in ("platforms.unix", "platforms.host", "platforms.hvt.build", "platforms.hvt.graph",
                   "platforms.hvt.tender", "netstack.devices.pcap", "netstack.socket_stack"):
        assert not any(module == absent or module.startswith(absent + ".") for module in listed)


def test_suresh_builds_the_same_bytes_twice(suresh_image: zipfile.ZipFile, tmp_path: Path) -> None:
    digests = set()
    for name in ("one.hvt", "two.hvt"):
        assert build(ROOT, "services.suresh", "-o", str(tmp_path / name)).returncode == 0
        digests.add(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert len(digests) == 1


def test_echo_declares_its_device(tmp_path: Path) -> None:
    require_hvt_package()
    assert build(ROOT, "services.echo", "-o", str(tmp_path / "echo.hvt")).returncode == 0
    manifest = json.loads(zipfile.ZipFile(tmp_path / "echo.hvt").read("manifest.json"))
    assert manifest["devices"] == [{"name": "service", "type": "NET_BASIC"}]
    assert manifest["application"] == "services.echo"


# -- --platform hvt on the host: build, then become the tender -----------------------------


class Execed(Exception):
    pass


@pytest.fixture
def on_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[list[str]]:
    """Run a service's main in-process, in ``tmp_path``, with ``os.execv`` recorded instead of done."""
    require_hvt_package()
    execed: list[list[str]] = []

    def execv(path: str, command: list[str]) -> None:
        assert command[0] == path
        execed.append(list(command))
        raise Execed

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.delenv("NETSTACK_HVT_CHANNEL", raising=False)
    monkeypatch.chdir(tmp_path)
    return execed


@pytest.mark.parametrize("service", ["suresh", "echo"])
def test_platform_hvt_on_the_host_builds_and_execs_the_tender(on_host: list[list[str]], tmp_path: Path, service: str) -> None:
    import importlib

    main = importlib.import_module(f"services.{service}").main
    with pytest.raises(Execed):
        main(["--platform", "hvt", "--interface=tap7", "--ipv4=10.0.0.9/24", "--logs=*:debug"])
    assert on_host == [[
        sys.executable, "-m", "platforms.hvt.tender", "--net:service=tap7", "--",
        f"dist/{service}.hvt", "--ipv4=10.0.0.9/24", "--logs=*:debug",
    ]]
    manifest = json.loads(zipfile.ZipFile(tmp_path / "dist" / f"{service}.hvt").read("manifest.json"))
    assert manifest["application"] == f"services.{service}"


def test_platform_hvt_default_interface_and_abbreviations(on_host: list[list[str]]) -> None:
    from services import suresh

    with pytest.raises(Execed):
        suresh.main(["--plat", "hvt", "--port", "8081", "--destination", "Madurai"])
    assert on_host[0][3:] == ["--net:service=tap0", "--", "dist/suresh.hvt", "--port", "8081", "--destination", "Madurai"]


def test_platform_hvt_refuses_pcap(on_host: list[list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    from services import suresh

    assert suresh.main(["--platform", "hvt", "--pcap", "out.pcap"]) == 64
    assert on_host == []
    assert "--pcap is not available with --platform hvt" in capsys.readouterr().err


def test_bad_boot_arguments_fail_before_building(on_host: list[list[str]], tmp_path: Path) -> None:
    from services import suresh

    with pytest.raises(SystemExit) as exited:
        suresh.main(["--platform", "hvt", "--ipv4=10.0.0.2"])
    assert exited.value.code == 64
    assert on_host == [] and not (tmp_path / "dist").exists()


def test_in_a_guest_platform_hvt_is_the_platform(on_host: list[list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    from services import boot, suresh

    loaded: list[str] = []

    def load_platform(name: str) -> None:
        loaded.append(name)
        raise Execed

    monkeypatch.setenv("NETSTACK_HVT_CHANNEL", "3")
    monkeypatch.setattr(boot, "load_platform", load_platform)
    monkeypatch.setattr(boot, "configure_logging", lambda levels: None)
    with pytest.raises(Execed):
        suresh.main(["--platform", "hvt"])
    assert loaded == ["hvt"] and on_host == []


def test_services_recognise_a_guest_by_the_tenders_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    require_hvt_package()
    from platforms.hvt.guest import CHANNEL_ENVIRONMENT

    import argparse

    from services import boot

    # Inside a guest (the tender's variable set) the service runs where it is ...
    monkeypatch.setenv(CHANNEL_ENVIRONMENT, "3")
    assert boot.run_image_if_hvt_host(argparse.Namespace(platform="hvt"), "services.suresh", []) is None
    monkeypatch.delenv(CHANNEL_ENVIRONMENT)
    # ... and so it does on any other platform; both services ask before they boot.
    assert boot.run_image_if_hvt_host(argparse.Namespace(platform="unix"), "services.suresh", []) is None
    source = (ROOT / "services" / "boot.py").read_text()
    assert f'"{CHANNEL_ENVIRONMENT}" in os.environ' in source
    for service in ("suresh", "echo"):
        source = (ROOT / "services" / f"{service}.py").read_text()
        assert f'boot.run_image_if_hvt_host(args, "services.{service}", argv)' in source


def test_modules_carry_bytecode_compiled_as_the_guest_runs(fake: Path, tmp_path: Path) -> None:
    import importlib.util
    import marshal

    assert build(fake, "services.app", "-o", str(tmp_path / "app.hvt")).returncode == 0
    archive = zipfile.ZipFile(tmp_path / "app.hvt")
    source = archive.read("netstack/core.py")
    pyc = archive.read("netstack/core.pyc")
    assert pyc[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(pyc[4:8], "little") == 1  # hash-based, unchecked: no timestamp (PEP 552)
    assert pyc[8:16] == importlib.util.source_hash(source)
    namespace: dict[str, object] = {}
    exec(marshal.loads(pyc[16:]), namespace)
    assert namespace["VALUE"] == 1
