"""MockGuest as a whole: dialling out, exiting, dying, qtest, and a thousand at once."""

from __future__ import annotations

import asyncio
import json
import resource
import socket
from pathlib import Path

import pytest

from panicd.mock import MockGuest
from panicd.triage.report import from_console
from tests.qemu_harness import connect, disconnect


async def test_connect_out_greets_first_and_reconnects_after_a_hang_up(short_tmp: Path) -> None:
    path = short_tmp / "panicd.sock"
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put((reader, writer))

    guest = MockGuest("dialer", reconnect_seconds=0.1)
    await guest.connect_out(path)  # nobody listens yet: it keeps trying, like QEMU
    await asyncio.sleep(0.25)
    server = await asyncio.start_unix_server(on_connect, path=str(path))
    try:
        for _ in range(2):
            reader, writer = await asyncio.wait_for(accepted.get(), 2)
            greeting = json.loads(await asyncio.wait_for(reader.readline(), 2))
            assert greeting["QMP"]["version"]["package"] == "panicd-mock"
            writer.write(b'{"execute": "qmp_capabilities"}{"execute": "query-name"}')
            assert json.loads(await reader.readline()) == {"return": {}}
            assert json.loads(await reader.readline()) == {"return": {"name": "dialer"}}
            writer.close()  # the peer hangs up: the guest dials again
    finally:
        await guest.stop()
        server.close()
        await server.wait_closed()
    assert [c[1] for c in guest.received_commands] == ["qmp_capabilities", "query-name"] * 2


async def test_an_exiting_guest_flushes_closes_and_removes_its_sockets(short_tmp: Path) -> None:
    guest = MockGuest("bye")  # default action: shutdown
    await guest.start(short_tmp / "a.qmp")
    await guest.start_qtest(short_tmp / "qtest.sock")
    client = await connect(short_tmp / "a.qmp")
    with client.listener() as listener:
        reader, writer = await asyncio.open_unix_connection(str(short_tmp / "qtest.sock"))
        writer.write(b"outb 0x505 0x1\n")
        assert await reader.readline() == b"OK\n"
        assert await reader.readline() == b""  # then the guest is gone
        writer.close()
        names = [(await listener.get())["event"] for _ in range(3)]
    assert names == ["GUEST_PANICKED", "STOP", "SHUTDOWN"]
    assert await asyncio.wait_for(guest.wait_exited(), 2) == 0
    assert not (short_tmp / "a.qmp").exists()
    assert not (short_tmp / "qtest.sock").exists()
    await disconnect(client)
    await guest.stop()  # idempotent


async def test_a_killed_guest_leaves_stale_sockets_behind(short_tmp: Path) -> None:
    guest = MockGuest("killed")
    await guest.start(short_tmp / "a.qmp")
    await guest.kill()
    assert await guest.wait_exited() == -9
    assert (short_tmp / "a.qmp").exists()
    with socket.socket(socket.AF_UNIX) as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(str(short_tmp / "a.qmp"))
    guest.port.write(1)  # a dead guest does nothing
    await guest.stop()


async def test_terminate_is_sigterm_to_qemu(short_tmp: Path) -> None:
    guest = MockGuest("term", panic_action="pause")
    await guest.start(short_tmp / "a.qmp")
    client = await connect(short_tmp / "a.qmp")
    with client.listener() as listener:
        assert await guest.terminate() == 0
        event = await asyncio.wait_for(listener.get(), 2)
    assert event["data"] == {"guest": False, "reason": "host-signal"}
    await disconnect(client)


async def test_the_qtest_socket_fails_what_it_does_not_know(short_tmp: Path) -> None:
    guest = MockGuest("qt", panic_action="none")
    await guest.start_qtest(short_tmp / "qtest.sock")
    reader, writer = await asyncio.open_unix_connection(str(short_tmp / "qtest.sock"))
    replies = []
    for line in (b"inb 0x505", b"outb 0x505", b"readb 0x0", b"outb 0x80 0x1", b"outb 0x505 zz",
                 b"outb 0x505 2"):
        writer.write(line + b"\n")
        replies.append((await reader.readline()).decode().strip())
    writer.close()
    await guest.stop()
    assert replies[0] == "OK 0x0003"
    assert all(r.startswith("FAIL") for r in replies[1:5])
    assert replies[5] == "OK"


async def test_a_thousand_guests_are_cheap(short_tmp: Path) -> None:
    loop = asyncio.get_running_loop()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = loop.time()
    guests = [MockGuest(f"g{i}", panic_action="pause") for i in range(1000)]
    for i, guest in enumerate(guests):
        await guest.start(short_tmp / f"{i}.qmp")
    clients = []
    for i in range(1000):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        await loop.sock_connect(sock, str(short_tmp / f"{i}.qmp"))
        await loop.sock_sendall(sock, b'{"execute": "qmp_capabilities"}')
        clients.append(sock)
    try:
        for sock in clients:  # greeting and reply, maybe in one read
            data = b""
            while data.count(b"\r\n") < 2:
                data += await loop.sock_recv(sock, 4096)
        for guest in guests:
            guest.port.write(1)
        assert all(g.machine.runstate == "guest-panicked" for g in guests)
        for sock in clients:
            data = b""
            while data.count(b"\r\n") < 2:
                data += await loop.sock_recv(sock, 4096)
            assert b"GUEST_PANICKED" in data
        elapsed = loop.time() - started
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        assert elapsed < 20, elapsed
        assert grown_mib < 150, grown_mib  # well under 150 KiB per connected guest
        assert len(asyncio.all_tasks()) < 2100  # a task per monitor and one per connection
    finally:
        for sock in clients:
            sock.close()
        for guest in guests:
            await guest.stop()


async def test_a_panic_prints_a_linux_crash_report_on_the_serial_console(short_tmp: Path) -> None:
    console = short_tmp / "web-01.serial"
    guest = MockGuest("web-01", panic_action="pause", console_log=console)
    await guest.start(short_tmp / "g.qmp")
    try:
        guest.port.write(2)  # crash-loaded: the guest's own kdump took over, nothing printed
        assert not console.exists()
        guest.port.write(1)
        assert guest.machine.runstate == "guest-panicked"
        report = from_console(console.read_bytes())
        assert report.title == "WARNING in web_01_handle_request"
        assert report.panic_line == "Kernel panic - not syncing: kernel: panic_on_warn set ..."
        assert report.kernel_release == "6.1.0-56-amd64"
    finally:
        await guest.stop()
