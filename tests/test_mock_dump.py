"""The mock's dumps: their files, their progress, and the failures tests can ask for."""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient

from panicd.mock import MockGuest
from panicd.mock.core_files import ram_blocks
from tests.qemu_harness import connect, disconnect

MIB = 2**20


class Recorder:
    def __init__(self, guest: MockGuest) -> None:
        self.events: list[tuple[str, Any]] = []
        self.changed = asyncio.Event()
        guest.event_listeners.append(self.add)

    def add(self, name: str, data: Mapping[str, Any] | None) -> None:
        self.events.append((name, None if data is None else dict(data)))
        self.changed.set()

    async def wait_for(self, name: str, timeout: float = 5) -> tuple[str, Any]:
        async with asyncio.timeout(timeout):
            while not any(n == name for n, _ in self.events):
                self.changed.clear()
                await self.changed.wait()
        return next(e for e in self.events if e[0] == name)

    def names(self) -> list[str]:
        return [n for n, _ in self.events]


@pytest.fixture
async def panicked(short_tmp: Path) -> AsyncIterator[tuple[MockGuest, QMPClient, Recorder]]:
    guest = MockGuest("dumpy", panic_action="pause", memory_bytes=8 * MIB,
                      vmcoreinfo="OSRELEASE=6.1.0-mock\nPAGESIZE=4096\n")
    await guest.start(short_tmp / "g.qmp")
    recorder = Recorder(guest)
    guest.port.write(1)
    client = await connect(short_tmp / "g.qmp")
    yield guest, client, recorder
    await disconnect(client)
    await guest.stop()


async def dump_to(client: QMPClient, path: Path, **args: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        client.send_fd_scm(fd)
    finally:
        os.close(fd)
    await client.execute("getfd", {"fdname": "d"})
    await client.execute("dump-guest-memory", {"paging": False, "protocol": "fd:d", **args})


async def test_a_slow_dump_shows_progress_then_completes(
    short_tmp: Path, panicked: tuple[MockGuest, QMPClient, Recorder]
) -> None:
    guest, client, recorder = panicked
    guest.dumper.bytes_per_second = 16 * MIB  # 8 MiB: half a second
    started = asyncio.get_running_loop().time()
    await dump_to(client, short_tmp / "core", detach=True)
    await asyncio.sleep(0.2)
    progress: Any = await client.execute("query-dump")
    assert progress["status"] == "active"
    assert 0 < progress["completed"] < progress["total"] == 8 * MIB
    _, data = await recorder.wait_for("DUMP_COMPLETED")
    assert asyncio.get_running_loop().time() - started >= 0.45
    assert data == {"result": {"total": 8 * MIB, "status": "completed", "completed": 8 * MIB}}
    assert await client.execute("query-dump") == data["result"]
    assert guest.machine.runstate == "guest-panicked"


async def test_fail_next_dump_fails_halfway_with_that_error(
    short_tmp: Path, panicked: tuple[MockGuest, QMPClient, Recorder]
) -> None:
    guest, client, recorder = panicked
    guest.fail_next_dump = "dump: failed to save memory: No space left on device"
    with pytest.raises(ExecuteError, match="No space left on device"):
        await dump_to(client, short_tmp / "core")  # not detached: the reply carries the error
    _, data = await recorder.wait_for("DUMP_COMPLETED")
    assert data["error"] == "dump: failed to save memory: No space left on device"
    assert data["result"]["status"] == "failed"
    assert 0 < data["result"]["completed"] < data["result"]["total"]
    assert guest.fail_next_dump is None  # only the next one
    recorder.events.clear()
    await dump_to(client, short_tmp / "core2", detach=True)
    _, data = await recorder.wait_for("DUMP_COMPLETED")
    assert "error" not in data


async def test_the_elf_core_maps_guest_ram_and_carries_the_notes(
    short_tmp: Path, panicked: tuple[MockGuest, QMPClient, Recorder]
) -> None:
    _, client, recorder = panicked
    await dump_to(client, short_tmp / "core")
    await recorder.wait_for("DUMP_COMPLETED")
    data = (short_tmp / "core").read_bytes()
    assert len(data) >= 8 * MIB
    ident, e_type, e_machine = struct.unpack_from("<16sHH", data)
    assert ident[:6] == b"\x7fELF\x02\x01"
    assert (e_type, e_machine) == (4, 62)  # ET_CORE, EM_X86_64
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    phdrs = [struct.unpack_from("<IIQQQQQQ", data, phoff + 56 * i) for i in range(phnum)]
    assert [p[0] for p in phdrs] == [4, 1]
    note, load = phdrs
    assert (load[4], load[5]) == (0, 8 * MIB)
    assert data[load[2]:load[2] + load[5]] == bytes(8 * MIB)
    notes = parse_notes(data[note[2]:note[2] + note[5]])
    assert [(name, kind) for name, kind, _ in notes] == [
        (b"CORE", 1), (b"QEMU", 0), (b"VMCOREINFO", 0)]
    assert notes[2][2] == b"OSRELEASE=6.1.0-mock\nPAGESIZE=4096\n"


def parse_notes(blob: bytes) -> list[tuple[bytes, int, bytes]]:
    notes, at = [], 0
    while at < len(blob):
        namesz, descsz, kind = struct.unpack_from("<III", blob, at)
        at += 12
        name = blob[at:at + namesz].rstrip(b"\0")
        at += -(-namesz // 4) * 4
        notes.append((name, kind, blob[at:at + descsz]))
        at += -(-descsz // 4) * 4
    return notes


def unflatten(data: bytes) -> bytes:
    """makedumpfile -R: place each flattened record at its offset."""
    assert data[:16] == b"makedumpfile".ljust(16, b"\0")
    assert struct.unpack_from(">qq", data, 16) == (1, 1)  # type, version
    out, at = bytearray(), 4096
    while True:
        offset, size = struct.unpack_from(">qq", data, at)
        at += 16
        if (offset, size) == (-1, -1):
            assert at == len(data)
            return bytes(out)
        if len(out) < offset + size:
            out.extend(bytes(offset + size - len(out)))
        out[offset:offset + size] = data[at:at + size]
        at += size


async def test_the_kdump_is_a_valid_flattened_compressed_dump(
    short_tmp: Path, panicked: tuple[MockGuest, QMPClient, Recorder]
) -> None:
    _, client, recorder = panicked
    await dump_to(client, short_tmp / "core", format="kdump-zlib")
    await recorder.wait_for("DUMP_COMPLETED")
    flat = (short_tmp / "core").read_bytes()
    assert len(flat) < 256 * 1024  # small: every zero page shares one compressed page
    dump = unflatten(flat)
    assert dump[:8] == b"KDUMP   "
    version, = struct.unpack_from("<I", dump, 8)
    status, block, sub_blocks, bitmap_blocks, max_mapnr = struct.unpack_from("<5I", dump, 424)
    assert (version, status, block, max_mapnr) == (6, 1, 4096, 8 * MIB // 4096)
    assert dump[12 + 4 * 65:12 + 4 * 65 + 6] == b"x86_64"
    off_vmcoreinfo, size_vmcoreinfo, off_note, size_note = struct.unpack_from(
        "<QQQQ", dump, 4096 + 8 + 4 + 4 + 16)
    assert dump[off_vmcoreinfo:off_vmcoreinfo + size_vmcoreinfo].startswith(b"OSRELEASE=")
    assert [n for n, _, _ in parse_notes(dump[off_note:off_note + size_note])][-1] == b"VMCOREINFO"
    bitmap_at = (1 + sub_blocks) * block
    bitmap_len = bitmap_blocks * block // 2
    pages = 8 * MIB // 4096
    for bitmap in (dump[bitmap_at:bitmap_at + bitmap_len],
                   dump[bitmap_at + bitmap_len:bitmap_at + 2 * bitmap_len]):
        assert bitmap[:pages // 8] == b"\xff" * (pages // 8)
        assert not any(bitmap[pages // 8:])
    descs_at = bitmap_at + 2 * bitmap_len
    descs = [struct.unpack_from("<qIIQ", dump, descs_at + 24 * i) for i in range(pages)]
    offset, size, flags, _ = descs[0]
    assert all(d == descs[0] for d in descs)
    assert flags == 1  # DUMP_DH_COMPRESSED_ZLIB
    assert zlib.decompress(dump[offset:offset + size]) == bytes(4096)


async def test_win_dmp_is_refused_for_a_guest_without_windows_vmcoreinfo(
    short_tmp: Path, panicked: tuple[MockGuest, QMPClient, Recorder]
) -> None:
    _, client, recorder = panicked
    with pytest.raises(ExecuteError, match=r"^win-dump: invalid vmcoreinfo note size$"):
        await dump_to(client, short_tmp / "core", format="win-dmp")
    _, data = await recorder.wait_for("DUMP_COMPLETED")
    assert data["result"]["status"] == "failed"
    assert data["result"]["completed"] == 0


async def test_a_bad_filter_fails_after_stopping_without_dump_completed(
    short_tmp: Path,
) -> None:
    guest = MockGuest("filter")  # running: the dump stops it first
    await guest.start(short_tmp / "g.qmp")
    recorder = Recorder(guest)
    client = await connect(short_tmp / "g.qmp")
    try:
        for begin, length, error in [(0, 0, "Invalid parameter 'length'"),
                                     (1 << 40, 4096, "dump: no guest memory to dump"),
                                     (-4096, 8192, "Invalid parameter 'begin'")]:
            with pytest.raises(ExecuteError, match=f"^{error}$"):
                await client.execute("dump-guest-memory", {
                    "paging": False, "protocol": f"file:{short_tmp}/x", "begin": begin,
                    "length": length})
            state: Any = await client.execute("query-dump")
            assert state["status"] == "failed"
        assert recorder.names() == ["STOP", "RESUME"] * 3
        await client.execute("dump-guest-memory", {
            "paging": False, "protocol": f"file:{short_tmp}/x", "begin": 4096, "length": 8192})
        assert recorder.events[-2][1]["result"]["total"] == 8192
        assert (short_tmp / "x").stat().st_mode & 0o777 == 0o400
    finally:
        await disconnect(client)
        await guest.stop()


async def test_a_guest_going_away_abandons_its_dump(short_tmp: Path) -> None:
    guest = MockGuest("gone", memory_bytes=64 * MIB, dump_bytes_per_second=MIB)
    await guest.start(short_tmp / "g.qmp")
    client = await connect(short_tmp / "g.qmp")
    await dump_to(client, short_tmp / "core", detach=True)
    assert guest.dumper.active
    await disconnect(client)
    await asyncio.wait_for(guest.stop(), 2)
    assert guest.dumper.active  # it never finished; no thread or task is left behind


def test_big_guests_get_the_pc_machine_memory_hole() -> None:
    assert ram_blocks(16 * MIB) == [(0, 16 * MIB)]
    assert ram_blocks(8 << 30) == [(0, 3 << 30), (4 << 30, 5 << 30)]


async def test_an_nmi_sent_during_a_dump_of_a_running_guest_is_taken_after_it_resumes(
    short_tmp: Path,
) -> None:
    # QEMU 7.2 with a guest that panics on NMIs: DUMP_COMPLETED, RESUME, then the panic (seen).
    guest = MockGuest("nmi-dump", panic_action="pause", memory_bytes=8 * MIB, nmi_panics=True,
                      dump_bytes_per_second=32 * MIB)
    await guest.start(short_tmp / "g.qmp")
    recorder = Recorder(guest)
    client = await connect(short_tmp / "g.qmp")
    try:
        await dump_to(client, short_tmp / "core", detach=True)
        status: Any = await client.execute("query-status")
        assert status["status"] == "save-vm"
        assert await client.execute("inject-nmi") == {}
        assert recorder.names() == ["STOP"]
        await recorder.wait_for("GUEST_PANICKED")
        assert recorder.names() == ["STOP", "DUMP_COMPLETED", "RESUME", "GUEST_PANICKED", "STOP"]
        assert guest.machine.runstate == "guest-panicked"
    finally:
        await disconnect(client)
        await guest.stop()
