"""`panicd run` end to end, each scenario against a real QEMU 7.2 and against the mock.

A real `panicd run` process, a real journald, and a guest whose pvpanic port is written
through qtest (`outb 0x505 0x1`): exactly what a panicking Linux guest's driver does.
Assertions are what an operator would look at: the dump file, its metadata, the guest's
runstate (read on a second QMP monitor) and the journal.
"""

from __future__ import annotations

import asyncio
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from panicd.alerts import AlertKind
from tests.daemon_process import (
    PanicdProcess,
    completed_dumps,
    daemon_section,
    dumps_of,
    metadata,
    unique,
)
from tests.journal import Journald
from tests.qemu_harness import GuestFactory, GuestUnderTest, MockGuestUnderTest, QemuGuest

Start = Callable[[str], PanicdProcess]


def config(tmp: Path, guests: list[GuestUnderTest], policy: str) -> str:
    listed = "".join(f'[[guest]]\nsocket = "{g.qmp_path}"\n' for g in guests)
    return f"{daemon_section(tmp)}{listed}\n[[policy]]\n{policy}\n"


async def wait_for_status(guest: GuestUnderTest, status: str, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (last := await guest.status()) != status:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{guest.name} is {last!r}, not {status!r}")
        await asyncio.sleep(0.05)


async def test_panic_while_running_is_dumped_paused_and_alerted(
    guest_factory: GuestFactory, short_tmp: Path, panicd: Start, journal: Journald
) -> None:
    name = unique("web")
    guest = await guest_factory(name=name, uuid=str(uuid.uuid4()))  # QEMU's default: shutdown
    daemon = panicd(config(short_tmp, [guest], 'on_panic = ["dump", "pause"]\n'
                                               'dump = { format = "kdump-zlib" }'))
    await daemon.wait_event("qmp.connected", guest=name)

    assert await guest.panic() == "OK"
    (dump,) = await completed_dumps(short_tmp, name)
    assert dump.read_bytes()[:12] == b"makedumpfile"
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    meta = metadata(dump)
    assert meta["guest"]["name"] == name
    assert meta["guest"]["uuid"] == guest.uuid
    assert meta["guest"]["qemu_version"].startswith("7.2.")
    assert meta["event"]["event"] == "GUEST_PANICKED"
    assert meta["event"]["data"] == {"action": "pause"}  # panicd took the panic action over
    assert meta["dump"]["size_bytes"] == dump.stat().st_size > 0
    assert await guest.status() == "guest-panicked"

    (panic,) = await journal.find(MESSAGE_ID=AlertKind.PANIC.message_id, GUEST_NAME=name)
    assert panic["PRIORITY"] == "2"
    assert panic["PANIC_ACTION"] == "pause"
    assert panic["PANIC_DETECTION"] == "event"
    assert panic["QMP_SOCKET"] == str(guest.qmp_path)
    assert panic["GUEST_UUID"] == guest.uuid
    (written,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id, GUEST_NAME=name)
    assert written["DUMP_PATH"] == str(dump)
    assert await daemon.stop() == 0


async def test_panic_before_panicd_started_is_handled_on_connect(
    guest_factory: GuestFactory, short_tmp: Path, panicd: Start, journal: Journald
) -> None:
    name = unique("early")
    guest = await guest_factory(name=name, panic_action="pause")
    await guest.panic()
    assert await guest.status() == "guest-panicked"

    daemon = panicd(config(short_tmp, [guest], 'on_panic = ["dump", "restart"]'))
    (dump,) = await completed_dumps(short_tmp, name)
    assert dump.read_bytes()[:4] == b"\x7fELF"
    assert metadata(dump)["incident"]["detection"] == "on-connect"
    await wait_for_status(guest, "running")
    (panic,) = await journal.find(MESSAGE_ID=AlertKind.PANIC.message_id, GUEST_NAME=name)
    assert panic["PANIC_DETECTION"] == "on-connect"
    assert await daemon.stop() == 0


async def test_qemu_killed_and_restarted_on_the_same_socket(
    guest_factory: GuestFactory, short_tmp: Path, panicd: Start
) -> None:
    name = unique("phoenix")
    first = await guest_factory(name=name)
    daemon = panicd(config(short_tmp, [first], 'on_panic = ["dump", "pause"]'))
    await daemon.wait_event("qmp.connected", guest=name)
    await first.stop()  # SIGKILL: the socket file stays behind, refusing connections
    await daemon.wait_event("qmp.disconnected", guest=name)

    again: GuestUnderTest = (QemuGuest if isinstance(first, QemuGuest) else MockGuestUnderTest)(
        first.directory, name=name
    )
    # panicd has been retrying against the dead socket; clear it, as a starting QEMU does, so
    # the harness does not mistake the stale files for the new QEMU's.
    for stale in (first.qmp_path, first.inspect_path, first.qtest_path):
        stale.unlink(missing_ok=True)
    try:
        await again.start()
        assert again.qmp_path == first.qmp_path
        await daemon.wait_event("qmp.connected", guest=name, count=2)
        await again.panic()
        (dump,) = await completed_dumps(short_tmp, name)
        assert metadata(dump)["guest"]["name"] == name
        assert await again.status() == "guest-panicked"
    finally:
        await again.stop()
    assert await daemon.stop() == 0


async def test_two_guests_one_panics_the_other_is_untouched(
    guest_factory: GuestFactory, short_tmp: Path, panicd: Start
) -> None:
    sick_name, well_name = unique("sick"), unique("well")
    sick = await guest_factory(name=sick_name)
    well = await guest_factory(name=well_name)
    daemon = panicd(config(short_tmp, [sick, well], 'on_panic = ["dump", "pause"]'))
    await daemon.wait_event("qmp.connected", guest=sick_name)
    await daemon.wait_event("qmp.connected", guest=well_name)
    await sick.panic()
    await completed_dumps(short_tmp, sick_name)
    await daemon.wait_event("incident.handled", guest=sick_name)
    assert await sick.status() == "guest-panicked"
    assert await well.status() == "running"
    assert dumps_of(short_tmp, well_name) == []
    assert len(daemon.events("qmp.connected", guest=well_name)) == 1


async def test_hostile_guest_name_from_qemu_stays_inside_the_dump_dir(
    short_tmp: Path, panicd: Start
) -> None:
    hostile = "../../etc/x" + uuid.uuid4().hex[:6]
    guest = QemuGuest(short_tmp / "g", name="hostile", extra_args=["-name", hostile])
    try:
        await guest.start()
        daemon = panicd(config(short_tmp, [guest], 'on_panic = ["dump", "pause"]'))
        await daemon.wait_event("qmp.connected", guest=hostile)
        await guest.panic()
        (dump,) = await completed_dumps(short_tmp, hostile)
        assert dump.parent.parent == short_tmp / "dumps"
        assert dump.parent.name.startswith("_._.._etc_x")
        assert metadata(dump)["guest"]["name"] == hostile
        assert not (short_tmp.parent / "etc").exists()
    finally:
        await guest.stop()
