"""The mock's QMP side beyond the contract: hostile input, test hooks, fds, several monitors."""

from __future__ import annotations

import array
import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from panicd.mock import MockGuest
from tests.qemu_harness import connect, disconnect


class Raw:
    """A bare client socket: what a hostile or careless peer can do."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.setblocking(False)
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def line(self, timeout: float = 5) -> Any:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while b"\r\n" not in self.buffer:
                data = await loop.sock_recv(self.sock, 65536)
                if not data:
                    raise EOFError
                self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return json.loads(line)

    async def ask(self, data: bytes) -> Any:
        await self.send(data)
        return await self.line()

    async def negotiate(self) -> None:
        await self.line()
        assert await self.ask(b'{"execute": "qmp_capabilities"}') == {"return": {}}


@pytest.fixture
async def guest(short_tmp: Path) -> AsyncIterator[MockGuest]:
    g = MockGuest("srv", panic_action="pause")
    await g.start(short_tmp / "a.qmp")
    yield g
    await g.stop()


@pytest.fixture
def open_raw(short_tmp: Path) -> Iterator[Callable[[str], Raw]]:
    made: list[Raw] = []

    def make(socket_name: str) -> Raw:
        made.append(Raw(short_tmp / socket_name))
        return made[-1]

    yield make
    for r in made:
        r.sock.close()


OpenRaw = Callable[[str], Raw]


async def test_malformed_input_is_answered_and_the_session_goes_on(
    guest: MockGuest, open_raw: OpenRaw
) -> None:
    raw = open_raw("a.qmp")
    await raw.negotiate()
    # Unbalanced brackets would swallow the command; 0xFF resyncs, as the QMP spec advises.
    garbage = b"\xff\xfe garbage }}} [[\n" * 100
    await raw.send(garbage + b'\xff{"execute": "query-name", "id": 1}')
    errors = 0
    while "error" in (reply := await raw.line()):
        assert reply["error"]["class"] == "GenericError"
        errors += 1
    assert errors >= 100
    assert reply == {"return": {"name": "srv"}, "id": 1}


async def test_received_commands_record_what_the_client_sent(
    guest: MockGuest, short_tmp: Path
) -> None:
    client = await connect(short_tmp / "a.qmp")
    await client.execute("set-action", {"panic": "none"})
    await disconnect(client)
    label = str(short_tmp / "a.qmp")
    assert guest.received_commands == [
        (label, "qmp_capabilities", {"enable": ["oob"]}),
        (label, "set-action", {"panic": "none"}),
    ]
    assert guest.machine.panic_action == "none"


async def test_hooks_put_anything_on_the_wire(guest: MockGuest, open_raw: OpenRaw) -> None:
    raw = open_raw("a.qmp")
    await raw.line()
    await guest.emit_event("GUEST_PANICKED", {"action": 42})  # not negotiated: not sent
    assert await guest.send_raw(b'{"event": "STOP", "timestamp": "yesterday"}\r\n') == 1
    assert await raw.line() == {"event": "STOP", "timestamp": "yesterday"}
    await raw.ask(b'{"execute": "qmp_capabilities"}')
    await guest.emit_event("GUEST_PANICKED", {"action": 42, "info": "not an object"})
    event = await raw.line()
    assert event["event"] == "GUEST_PANICKED"
    assert event["data"] == {"action": 42, "info": "not an object"}
    assert set(event["timestamp"]) == {"seconds", "microseconds"}


async def test_events_reach_every_negotiated_monitor_only(
    guest: MockGuest, short_tmp: Path, open_raw: OpenRaw
) -> None:
    await guest.add_monitor(short_tmp / "b.qmp")
    await guest.add_monitor(short_tmp / "c.qmp")
    a, b, c = open_raw("a.qmp"), open_raw("b.qmp"), open_raw("c.qmp")
    await a.negotiate()
    await b.negotiate()
    await c.line()
    guest.port.write(1)
    for raw in (a, b):
        assert (await raw.line())["event"] == "GUEST_PANICKED"
        assert (await raw.line())["event"] == "STOP"
    with pytest.raises(TimeoutError):
        await c.line(timeout=0.2)


async def test_getfd_takes_the_first_fd_and_a_name_outlives_the_session(
    guest: MockGuest, open_raw: OpenRaw
) -> None:
    raw = open_raw("a.qmp")
    await raw.negotiate()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        raw.sock.sendmsg([b" "], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                   array.array("i", [w1, w2]))])
        os.close(w1)
        os.close(w2)
        assert await raw.ask(b'{"execute": "getfd", "arguments": {"fdname": "one"}}') == {
            "return": {}}
        reply = await raw.ask(b'{"execute": "getfd", "arguments": {"fdname": "two"}}')
        assert reply["error"]["desc"] == "No file descriptor supplied via SCM_RIGHTS"
        assert os.read(r2, 1) == b""  # the second fd was closed, as QEMU does
        raw.sock.close()

        again = open_raw("a.qmp")
        await again.negotiate()
        assert await again.ask(b'{"execute": "closefd", "arguments": {"fdname": "one"}}') == {
            "return": {}}
        assert os.read(r1, 1) == b""
    finally:
        os.close(r1)
        os.close(r2)


async def test_a_client_that_never_reads_does_not_hold_up_the_guest(
    guest: MockGuest, short_tmp: Path, open_raw: OpenRaw
) -> None:
    await guest.add_monitor(short_tmp / "b.qmp")
    stuck = open_raw("a.qmp")
    await stuck.negotiate()
    for _ in range(20_000):  # megabytes of events, queued for a peer that never reads
        await guest.emit_event("RTC_CHANGE", {"offset": 0, "qom-path": "/machine/unattached"})
    client = await connect(short_tmp / "b.qmp")
    try:
        status: Any = await client.execute("query-status")
        assert status["status"] == "running"
    finally:
        await disconnect(client)


async def test_oob_commands_are_refused_like_qemu(guest: MockGuest, open_raw: OpenRaw) -> None:
    raw = open_raw("a.qmp")
    await raw.line()
    reply = await raw.ask(b'{"exec-oob": "query-status"}')
    assert reply["error"]["desc"] == "QMP input member 'exec-oob' is unexpected"
    await raw.ask(b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}')
    reply = await raw.ask(b'{"exec-oob": "query-status", "id": 1}')
    assert reply == {"id": 1, "error": {"class": "GenericError",
                                        "desc": "The command query-status does not support OOB"}}
