"""The contract: the built-in mock guest behaves like a real QEMU 7.2 wherever panicd looks.

Every test runs twice, against the mock and against qemu-system-x86_64 (never skipped), and
asserts the same event sequences (names and data; not timestamps) and runstates. What the mock
is trusted for is exactly what is asserted here; what it adds for tests (slow and failing
dumps, garbage on the wire) is in tests/test_mock_*.py.

Not compared: the firmware. After system_reset, a real QEMU's SeaBIOS reboots once more by
itself (RESET {guest: true, reason: guest-reset}); the mock has no firmware, so the reset test
looks only at events up to RESUME. Sizes differ too: QEMU's dump "total" includes the BIOS ROM.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct
import termios
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError

from tests.qemu_harness import GuestFactory, connect, disconnect
from tests.qemu_harness import guest_factory as guest_factory  # noqa: PLC0414 - the fixture

pytestmark = pytest.mark.qemu
MIB = 2**20


async def test_panic_with_action_pause_stops_the_guest(guest_factory: GuestFactory) -> None:
    guest = await guest_factory(name="pause", panic_action="pause")
    assert await guest.panic(1) == "OK"
    assert await guest.events_until("STOP") == [("GUEST_PANICKED", {"action": "pause"}),
                                                ("STOP", None)]
    assert await guest.status() == "guest-panicked"


async def test_panic_with_the_default_action_shuts_the_guest_down(
    guest_factory: GuestFactory,
) -> None:
    guest = await guest_factory(name="default")
    await guest.panic(1)
    assert await guest.events_until("SHUTDOWN") == [
        ("GUEST_PANICKED", {"action": "poweroff"}),
        ("STOP", None),
        ("SHUTDOWN", {"guest": True, "reason": "guest-panic"}),
    ]
    assert await guest.wait_exited() == 0
    assert not guest.qmp_path.exists()  # QEMU removes its sockets on exit


async def test_panic_with_exit_failure_exits_with_status_1(guest_factory: GuestFactory) -> None:
    guest = await guest_factory(name="fail", panic_action="exit-failure")
    await guest.panic(1)
    events = await guest.events_until("SHUTDOWN")
    assert events[0] == ("GUEST_PANICKED", {"action": "poweroff"})
    assert await guest.wait_exited() == 1


async def test_panic_with_action_none_keeps_the_guest_running(guest_factory: GuestFactory) -> None:
    guest = await guest_factory(name="none", panic_action="none")
    await guest.panic(1)
    assert await guest.events_until("GUEST_PANICKED") == [("GUEST_PANICKED", {"action": "run"})]
    assert await guest.status() == "running"


async def test_set_action_takes_over_the_panic_action_at_run_time(
    guest_factory: GuestFactory,
) -> None:
    guest = await guest_factory(name="takeover")  # QEMU's default: shutdown
    assert await guest.execute("set-action", {"panic": "pause"}) == {}
    await guest.panic(1)
    assert await guest.events_until("STOP") == [("GUEST_PANICKED", {"action": "pause"}),
                                                ("STOP", None)]
    with pytest.raises(ExecuteError) as refused:
        await guest.execute("set-action", {"panic": "poweroff"})
    assert refused.value.error_class == "GenericError"
    assert str(refused.value) == "Parameter 'panic' does not accept value 'poweroff'"


async def test_crash_loaded_is_recorded_and_the_guest_runs_on(guest_factory: GuestFactory) -> None:
    guest = await guest_factory(name="kdump", panic_action="pause")
    await guest.panic(2)
    assert await guest.events_until("GUEST_CRASHLOADED") == [
        ("GUEST_CRASHLOADED", {"action": "run"})]
    assert await guest.status() == "running"


async def test_the_port_reads_0x3_ignores_0x4_and_0x3_is_a_panic(
    guest_factory: GuestFactory,
) -> None:
    guest = await guest_factory(name="bits", panic_action="pause")
    assert await guest.read_port() == 0x3
    assert await guest.panic(4) == "OK"
    assert await guest.events_for(0.3) == []  # SHUTDOWN is a QEMU >= 9.1 bit
    assert await guest.status() == "running"
    await guest.panic(3)  # PANICKED wins over CRASH_LOADED
    assert await guest.events_until("STOP") == [("GUEST_PANICKED", {"action": "pause"}),
                                                ("STOP", None)]
    await guest.panic(1)  # again, while stopped: the event, but no second STOP
    assert await guest.events_for(0.2) == [("GUEST_PANICKED", {"action": "pause"})]


async def test_cont_resumes_a_panicked_guest(guest_factory: GuestFactory) -> None:
    guest = await guest_factory(name="cont", panic_action="pause")
    await guest.panic(1)
    await guest.events_until("STOP")
    assert await guest.execute("cont") == {}
    assert await guest.events_until("RESUME") == [("RESUME", None)]
    assert await guest.status() == "running"


async def test_system_reset_leaves_a_panicked_guest_in_prelaunch_until_cont(
    guest_factory: GuestFactory,
) -> None:
    guest = await guest_factory(name="reset", panic_action="pause")
    await guest.panic(1)
    await guest.events_until("STOP")
    await guest.execute("system_reset")
    assert await guest.events_until("RESET") == [
        ("RESET", {"guest": False, "reason": "host-qmp-system-reset"})]
    assert await guest.status() == "prelaunch"
    await guest.execute("cont")
    assert await guest.events_until("RESUME") == [("RESUME", None)]
    assert await guest.status() == "running"


async def test_stop_and_cont_send_events_only_on_a_change(guest_factory: GuestFactory) -> None:
    guest = await guest_factory(name="stopcont")
    await guest.execute("cont")
    await guest.execute("stop")
    await guest.execute("stop")
    assert await guest.status() == "paused"
    await guest.execute("cont")
    assert await guest.events_for(0.2) == [("STOP", None), ("RESUME", None)]


async def test_inject_nmi_is_accepted_in_any_runstate_and_without_a_guest_os_changes_nothing(
    guest_factory: GuestFactory,
) -> None:
    # qmp_inject_nmi() only marks an NMI pending on the vCPUs; with qtest as the guest no OS
    # takes it, so no event and no runstate change, running or stopped (it waits there until
    # the vCPUs run, which is the guest OS's business: tests/test_mock_machine.py).
    guest = await guest_factory(name="nmi", panic_action="pause")
    assert await guest.execute("inject-nmi") == {}
    assert await guest.events_for(0.3) == []
    assert await guest.status() == "running"
    await guest.execute("stop")
    assert await guest.execute("inject-nmi") == {}
    await guest.execute("cont")
    assert await guest.events_for(0.3) == [("STOP", None), ("RESUME", None)]
    assert await guest.status() == "running"
    await guest.panic(1)
    await guest.events_until("STOP")
    assert await guest.execute("inject-nmi") == {}
    assert await guest.events_for(0.3) == []
    assert await guest.status() == "guest-panicked"
    await guest.execute("system_reset")
    await guest.events_until("RESET")
    assert await guest.execute("inject-nmi") == {}
    assert await guest.events_for(0.3) == []
    assert await guest.status() == "prelaunch"
    with pytest.raises(ExecuteError) as refused:
        await guest.execute("inject-nmi", {"cpu-index": 0})
    assert refused.value.error_class == "GenericError"
    assert str(refused.value) == "Parameter 'cpu-index' is unexpected"


async def test_quit_shuts_down_and_exits(guest_factory: GuestFactory) -> None:
    guest = await guest_factory(name="quit")
    await guest.execute("quit")
    assert await guest.events_until("SHUTDOWN") == [
        ("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})]
    assert await guest.wait_exited() == 0


@pytest.mark.parametrize(("fmt", "magic"), [("elf", b"\x7fELF"), ("kdump-zlib", b"makedumpfile")])
async def test_dump_through_a_passed_fd_leaves_the_guest_panicked(
    guest_factory: GuestFactory, tmp_path: Path, fmt: str, magic: bytes
) -> None:
    guest = await guest_factory(name="dump", panic_action="pause")
    await guest.panic(1)
    await guest.events_until("STOP")
    client = await connect(guest.qmp_path)
    try:
        caps: Any = await client.execute("query-dump-guest-memory-capability")
        assert fmt in caps["formats"]
        memory: Any = await client.execute("query-memory-size-summary")
        base = memory["base-memory"]
        assert base == 64 * MIB
        fd = os.open(tmp_path / "core", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            client.send_fd_scm(fd)
        finally:
            os.close(fd)  # QEMU has its own copy now
        assert await client.execute("getfd", {"fdname": "dumpfd"}) == {}
        assert await client.execute("dump-guest-memory", {
            "paging": False, "protocol": "fd:dumpfd", "format": fmt, "detach": True}) == {}
        (event,) = await guest.events_until("DUMP_COMPLETED", timeout=10)
        result = event[1]["result"]
        assert result["status"] == "completed"
        assert result["completed"] == result["total"] >= base
        assert "error" not in event[1]
        assert await client.execute("query-dump") == result
        with pytest.raises(ExecuteError, match="File descriptor named 'dumpfd' not found"):
            await client.execute("closefd", {"fdname": "dumpfd"})  # the dump used it up
    finally:
        await disconnect(client)
    assert await guest.status() == "guest-panicked"
    data = (tmp_path / "core").read_bytes()
    assert data.startswith(magic)
    if fmt == "elf":
        assert_elf_core_covers(data, base)


def assert_elf_core_covers(data: bytes, base: int) -> None:
    assert data[4:6] == b"\x02\x01"  # ELFCLASS64, little endian
    e_type, = struct.unpack_from("<H", data, 16)
    assert e_type == 4  # ET_CORE
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    types = [struct.unpack_from("<I", data, phoff + 56 * i)[0] for i in range(phnum)]
    assert types[0] == 4  # PT_NOTE first
    loads = [struct.unpack_from("<IIQQQQQQ", data, phoff + 56 * i) for i in range(phnum)
             if types[i] == 1]
    # QEMU splits low RAM where the firmware's shadow-RAM (PAM) regions are: a reader must
    # take the PT_LOADs together. Together they cover guest-physical [0, base).
    covered = 0
    for _, _, _, _, paddr, filesz, _, _ in sorted(loads, key=lambda p: p[4]):
        if paddr <= covered:
            covered = max(covered, paddr + filesz)
    assert covered >= base, loads
    assert len(data) >= base


async def test_dump_of_a_running_guest_stops_and_resumes_it(guest_factory: GuestFactory) -> None:
    guest = await guest_factory(name="live")
    client = await connect(guest.qmp_path)
    try:
        path = guest.directory / "live.core"
        await client.execute("dump-guest-memory", {"paging": False, "protocol": f"file:{path}"})
    finally:
        await disconnect(client)
    events = await guest.events_until("RESUME")
    assert [name for name, _ in events] == ["STOP", "DUMP_COMPLETED", "RESUME"]
    assert events[1][1]["result"]["status"] == "completed"
    assert path.stat().st_mode & 0o777 == 0o400  # QEMU creates file: outputs read-only
    assert await guest.status() == "running"


async def test_kdump_lzo_is_refused_as_unavailable(guest_factory: GuestFactory) -> None:
    guest = await guest_factory(name="lzo", panic_action="pause")
    with pytest.raises(ExecuteError) as refused:
        await guest.execute("dump-guest-memory", {
            "paging": False, "protocol": f"file:{guest.directory}/x", "format": "kdump-lzo"})
    assert refused.value.error_class == "GenericError"
    assert str(refused.value) == "kdump-lzo is not available now"
    with pytest.raises(ExecuteError, match=r"^kdump-compressed format doesn't support paging"):
        await guest.execute("dump-guest-memory", {
            "paging": True, "protocol": f"file:{guest.directory}/x", "format": "kdump-zlib"})


async def until_past_the_header(read_end: int, timeout: float = 30.0) -> None:
    """Until the dump's writer has put more into the pipe than any ELF header and notes of a
    one-vCPU guest take (a few KiB): half the pipe's buffer (64 KiB on Linux)."""
    enough = fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) // 2
    deadline = asyncio.get_running_loop().time() + timeout
    while (pending := struct.unpack("i", fcntl.ioctl(read_end, termios.FIONREAD, b"\0" * 4))[0]) < enough:
        assert asyncio.get_running_loop().time() < deadline, f"the dump wrote {pending} bytes"
        await asyncio.sleep(0.01)


async def test_while_a_dump_runs_stop_cont_and_dumps_are_refused(
    guest_factory: GuestFactory,
) -> None:
    # A dump into a pipe nobody reads stays active until the reader closes: then it fails.
    guest = await guest_factory(name="busy", memory_mib=1024)
    client = await connect(guest.qmp_path)
    read_end, write_end = os.pipe()
    try:
        client.send_fd_scm(write_end)
        os.close(write_end)
        await client.execute("getfd", {"fdname": "pipe"})
        await client.execute("dump-guest-memory",
                             {"paging": False, "protocol": "fd:pipe", "detach": True})
        state: Any = await client.execute("query-dump")
        assert state["status"] == "active"
        assert await guest.status() == "save-vm"
        for command in ("stop", "cont"):
            with pytest.raises(ExecuteError, match=r"^There is a dump in process, please wait\.$"):
                await client.execute(command)
        with pytest.raises(ExecuteError, match=r"^There is a dump in process"):
            await client.execute("dump-guest-memory",
                                 {"paging": False, "protocol": f"file:{guest.directory}/y"})
        # Past the ELF header, into the memory. (Closed earlier, on a loaded box, QEMU 7.2
        # says "dump: failed to write elf header: Broken pipe".)
        await until_past_the_header(read_end)
    finally:
        os.close(read_end)
    events = await guest.events_until("RESUME", timeout=10)
    assert [name for name, _ in events] == ["STOP", "DUMP_COMPLETED", "RESUME"]
    completed = events[1][1]
    assert completed["result"]["status"] == "failed"
    assert completed["error"] == "dump: failed to save memory: Broken pipe"
    state = await client.execute("query-dump")
    assert state["status"] == "failed"
    await disconnect(client)


async def test_qmp_replies_and_refusals_match(guest_factory: GuestFactory) -> None:
    guest = await guest_factory(name="wire", uuid="6b0d5b1e-2f4a-4c1b-9a57-1c1d6f0d2b7e")
    reader, writer = await asyncio.open_unix_connection(str(guest.qmp_path))

    async def ask(data: bytes) -> bytes:
        writer.write(data)
        return await asyncio.wait_for(reader.readline(), 5)

    try:
        greeting = await asyncio.wait_for(reader.readline(), 5)
        assert greeting.startswith(b'{"QMP": {"version": {"qemu": {"micro": ')
        assert greeting.endswith(b'"capabilities": ["oob"]}}\r\n')
        assert await ask(b'{"execute": "query-status", "id": 7}') == (
            b'{"id": 7, "error": {"class": "CommandNotFound", "desc": '
            b"\"Expecting capabilities negotiation with 'qmp_capabilities'\"}}\r\n")
        assert await ask(b'{"execute": "qmp_capabilities"}') == b'{"return": {}}\r\n'
        assert await ask(b'{"execute": "query-status", "id": "a"}') == (
            b'{"return": {"status": "running", "singlestep": false, "running": true}, '
            b'"id": "a"}\r\n')
        assert await ask(b'{"execute": "query-name"}') == b'{"return": {"name": "wire"}}\r\n'
        assert await ask(b'{"execute": "query-uuid"}') == (
            b'{"return": {"UUID": "6b0d5b1e-2f4a-4c1b-9a57-1c1d6f0d2b7e"}}\r\n')
        assert await ask(b'{"execute": "no-such"}') == (
            b'{"error": {"class": "CommandNotFound", '
            b'"desc": "The command no-such has not been found"}}\r\n')
        assert await ask(b'{"execute": }\n') == (
            b'{"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}\r\n')
        assert await ask(b'[1]') == (
            b'{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}\r\n')
        assert await ask(b'{"execute": "getfd", "arguments": {"fdname": "x"}}') == (
            b'{"error": {"class": "GenericError", '
            b'"desc": "No file descriptor supplied via SCM_RIGHTS"}}\r\n')
    finally:
        writer.close()


async def test_a_second_client_on_a_busy_monitor_gets_no_greeting(
    guest_factory: GuestFactory,
) -> None:
    guest = await guest_factory(name="busy-mon")
    first = await connect(guest.qmp_path, "first")
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    second.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(second, str(guest.qmp_path))  # the kernel queues it
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop.sock_recv(second, 1024), 1.0)
        await disconnect(first)
        greeting = await asyncio.wait_for(loop.sock_recv(second, 1024), 5)
        assert greeting.startswith(b'{"QMP": ')
    finally:
        second.close()
        await disconnect(first)
