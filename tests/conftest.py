"""Fixtures shared by every test directory; the machinery lives in
``platforms/host/netns.py`` (shared with ``benchmarks/``).

``netns``      a fresh ``netns.Namespace`` (loopback up), always deleted.
``tap_netns``  a ``netns.TapNamespace``: a ``TapNetif`` opened on a tap
               created inside a fresh namespace, host side 10.0.0.1/24,
               stack address 10.0.0.2. Closed, then the namespace deleted.

Both skip, with one line saying why, when not root, without /dev/net/tun or
without ``ip``. Tests using them are marked ``netns`` automatically.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from platforms.host.netns import Namespace, TapNamespace, open_tap_namespace, unavailable_reason

NETNS_FIXTURES = {"netns", "tap_netns"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "netns: end-to-end test that needs root, /dev/net/tun and ip netns")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if NETNS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.netns)


@pytest.fixture
def netns() -> Iterator[Namespace]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    namespace = Namespace()
    try:
        yield namespace
    finally:
        namespace.delete()


@pytest.fixture
def tap_netns(netns: Namespace) -> Iterator[TapNamespace]:
    with open_tap_namespace(netns) as tap:
        yield tap
