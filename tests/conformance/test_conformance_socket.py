"""The shared conformance suite (``netstack.conformance``) over the socket stack.

The kernel's TCP/IP on loopback through ``SocketStack``: the reference the
direct stack is held to (the same checks run over two direct stacks in
``test_conformance_direct.py``). One ``SocketStack`` plays both ends, at
127.0.0.1; real time throughout, ``quiesce`` is a 50 ms sleep.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from netstack.conformance import CHECKS, StackPair, check_id, run_check
from netstack.socket_stack import SocketStack

KNOWN_BUGS: dict[str, str] = {
    # check name: reason -- a bug in a module this suite does not own. Each is a strict xfail,
    # so that fixing the bug fails the test until its entry is removed.
}


@contextlib.asynccontextmanager
async def socket_pair() -> AsyncIterator[StackPair]:
    stack = SocketStack("127.0.0.1")
    try:
        yield StackPair(stack, stack, "127.0.0.1", "127.0.0.1")
    finally:
        stack.close()


def checks() -> list:
    params = []
    for check in CHECKS:
        reason = KNOWN_BUGS.get(check_id(check))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(check, marks=marks, id=check_id(check)))
    return params


@pytest.mark.asyncio
@pytest.mark.parametrize("check", checks())
async def test_socket_stack(check) -> None:
    await run_check(check, socket_pair)
