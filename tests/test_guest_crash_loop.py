"""A guest that keeps crashing and rebooting itself raises CRASH_LOOP, not only panicd's restarts.

Against a real `panicd run` and the real journald, with mock guests (what a real guest's crash
kernel or Windows does, QEMU-side: GUEST_CRASHLOADED or GUEST_PANICKED {action: run}, then
RESET {guest: true, reason: guest-reset}). The limit is the policy's `restart = {max, within}`:
the crash after `max` self-reboots within `within` alerts. Counted from the incident store: a
panicd restarted in the middle of the loop still sees it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from panicd.alerts import Alert, AlertKind
from panicd.config import RestartLimit
from panicd.events import Detection, IncidentKind
from panicd.guest_crash_loop import GuestCrashLoop
from panicd.metrics import Metrics
from panicd.mock import MockGuest
from panicd.records import GuestRecord, IncidentRecord, IncidentState
from panicd.store import IncidentStore
from tests.daemon_process import PanicdProcess, daemon_section, unique, wait_for
from tests.journal import Journald
from tests.test_incident_store_e2e import incidents_of
from tests.test_signatures import RecordingAlerter

Start = Callable[..., PanicdProcess]
CRASH_LOOP = AlertKind.CRASH_LOOP.message_id


@pytest.fixture
async def mock(short_tmp: Path) -> AsyncIterator[Callable[[str], Any]]:
    guests: list[MockGuest] = []

    async def make(name: str) -> MockGuest:
        guest = MockGuest(name=name, memory_bytes=8 * 2**20)
        await guest.start(short_tmp / "0.qmp")
        guests.append(guest)
        return guest

    yield make
    for guest in guests:
        await guest.stop()


def config(tmp: Path, policy: str) -> str:
    return (f'{daemon_section(tmp)}[[guest]]\nsocket = "{tmp}/0.qmp"\n'
            f"[[policy]]\n{policy}\nrestart = {{ max = 2, within = 600 }}\n")


async def done(tmp: Path, name: str, count: int) -> list[IncidentRecord]:
    """The guest's incidents, newest first, once `count` of them are handled."""
    def handled() -> list[IncidentRecord]:
        records = incidents_of(tmp, name)
        if len(records) >= count and all(r.state is IncidentState.DONE for r in records):
            return records
        return []

    return await wait_for(handled, what=f"{count} incidents of {name} handled")


async def test_a_crash_loaded_loop_alerts_once_counted_across_a_panicd_restart(
        short_tmp: Path, mock: Any, panicd: Start, journal: Journald) -> None:
    name = unique("kdump-loop")
    guest = await mock(name)
    daemon = panicd(config(short_tmp, "on_crash_loaded = []"))
    await daemon.wait_event("qmp.connected", guest=name)
    for n in (1, 2):  # kdump takes over, writes its vmcore, reboots the guest
        guest.port.write(2)
        guest.reboots_itself()
        await done(short_tmp, name, n)
    assert await daemon.stop() == 0

    daemon = panicd(config(short_tmp, "on_crash_loaded = []"))
    await daemon.wait_event("qmp.connected", guest=name)
    guest.port.write(2)  # the third crash within the window: past max = 2 self-reboots
    (loop,) = await journal.find(MESSAGE_ID=CRASH_LOOP, GUEST_NAME=name)
    assert (loop["CRASHES"], loop["WITHIN_SECONDS"], loop["REBOOTED_BY"]) == ("3", "600", "guest")
    assert "rebooting itself each time" in loop["MESSAGE"]
    assert "panicd did not restart it" in loop["MESSAGE"]
    third = (await done(short_tmp, name, 3))[0]
    assert loop["INCIDENT_ID"] == third.id
    assert third.crash_loop == 3

    guest.reboots_itself()
    guest.port.write(2)  # still looping: told once per window, not for every crash
    await daemon.wait_event("crash_loop.still_looping", crashes=4)
    assert len(await journal.find(timeout=0, MESSAGE_ID=CRASH_LOOP, GUEST_NAME=name)) == 1
    assert guest.machine.runstate == "running"  # panicd did nothing to it


async def test_windows_bugchecks_that_reboot_themselves_loop(
        short_tmp: Path, mock: Any, panicd: Start, journal: Journald) -> None:
    name = unique("win-loop")
    guest = await mock(name)
    daemon = panicd(config(short_tmp, 'panic_action = "none"\non_panic = []'))
    await daemon.wait_event("qmp.connected", guest=name)
    for n in (1, 2):  # a bugcheck, MEMORY.DMP written, Windows reboots
        guest.bugcheck(0xEF)
        guest.reboots_itself()
        await done(short_tmp, name, n)
    guest.bugcheck(0xEF)
    (loop,) = await journal.find(MESSAGE_ID=CRASH_LOOP, GUEST_NAME=name)
    assert (loop["CRASHES"], loop["REBOOTED_BY"]) == ("3", "guest")


async def test_a_panic_resumed_then_reset_by_the_guest_counts_and_panicds_restarts_do_not(
        short_tmp: Path, mock: Any, panicd: Start, journal: Journald) -> None:
    name = unique("panic-reset")
    guest = await mock(name)
    daemon = panicd(config(short_tmp, 'on_panic = ["resume"]'))
    await daemon.wait_event("qmp.connected", guest=name)
    for n in (1, 2):  # panic=10 in the guest: resumed by panicd, its kernel reboots it
        guest.port.write(1)
        await done(short_tmp, name, n)
        assert guest.machine.runstate == "running"
        guest.reboots_itself()
        await wait_for(lambda: incidents_of(short_tmp, name)[0].rebooted_itself,
                       what="the crash marked rebooted_itself")
    guest.port.write(1)
    (loop,) = await journal.find(MESSAGE_ID=CRASH_LOOP, GUEST_NAME=name)
    assert (loop["CRASHES"], loop["REBOOTED_BY"]) == ("3", "guest")


async def test_panicds_own_restarts_are_not_counted_as_the_guest_rebooting_itself(
        short_tmp: Path, mock: Any, panicd: Start, journal: Journald) -> None:
    name = unique("restarted")
    guest = await mock(name)
    daemon = panicd(config(short_tmp, 'on_panic = ["restart"]'))
    await daemon.wait_event("qmp.connected", guest=name)
    for n in (1, 2):
        guest.port.write(1)
        await done(short_tmp, name, n)
        guest.reboots_itself()  # a real QEMU's firmware resets once more after system_reset
    guest.port.write(1)
    # panicd's own budget (2 restarts) is spent: its crash loop, the guest left paused.
    (loop,) = await journal.find(MESSAGE_ID=CRASH_LOOP, GUEST_NAME=name)
    assert loop["REBOOTED_BY"] == "panicd"
    await done(short_tmp, name, 3)
    # Counted: only this crash, panicd restarted the guest after the others.
    await daemon.wait_event("crash_loop.counted", count=3)
    assert [e["crashes"] for e in daemon.events("crash_loop.counted")] == [1, 1, 1]
    assert not any(r.rebooted_itself or r.crash_loop for r in incidents_of(short_tmp, name))
    # A wrong second alert would leave after an awaited store write: give it the time.
    assert len(await journal.find(timeout=1, count=2, MESSAGE_ID=CRASH_LOOP, GUEST_NAME=name)) == 1


async def test_the_loop_is_on_disk_before_its_alert_goes_out(short_tmp: Path) -> None:
    """Whoever CRASH_LOOP sends to `panicd incidents` finds the loop in the record there (the
    alert used to leave while the record's write was still queued)."""
    store = IncidentStore(short_tmp / "state")
    await store.open()
    on_disk_at_alert: list[int | None] = []

    class Alerter:
        def send(self, alert: Alert) -> None:
            (alerting,) = [r for r in incidents_of(short_tmp, "g") if r.id == "i3"]
            on_disk_at_alert.append(alerting.crash_loop)

    loop = GuestCrashLoop(store, Alerter(), Metrics())
    now = time.time()
    for n in (1, 2, 3):
        record = IncidentRecord(id=f"i{n}", guest=GuestRecord(name="g", socket="/g.qmp"),
                                kind=IncidentKind.CRASH_LOADED, detection=Detection.EVENT, seen_at=now + n,
                                state=IncidentState.DONE)
        await store.save(record)
        await loop.crashed(record, RestartLimit(max=2, within=600))
    await store.close()
    assert on_disk_at_alert == [3]


async def test_crashes_counted_out_of_order_alert_once(short_tmp: Path) -> None:
    """Each crash is counted once its record is durable, so a slow write can make a crash be
    counted after the next one: it must not see that later crash as an earlier one, and the
    two counts must not both alert (seen on a loaded CI box: two CRASH_LOOPs for one loop)."""
    store = IncidentStore(short_tmp / "state")
    await store.open()
    alerter = RecordingAlerter()
    loop = GuestCrashLoop(store, alerter, Metrics())
    now = time.time()
    first, second = (
        IncidentRecord(id=f"i{n}", guest=GuestRecord(name="g", socket="/g.qmp"),
                       kind=IncidentKind.CRASH_LOADED, detection=Detection.EVENT, seen_at=now + n,
                       state=IncidentState.DONE) for n in (1, 2))
    for record in (first, second):
        await store.save(record)
    counts = await asyncio.gather(loop.crashed(second, RestartLimit(max=1, within=600)),
                                  loop.crashed(first, RestartLimit(max=1, within=600)))
    await store.close()
    assert counts == [2, None]
    assert [a.kind for a in alerter.sent] == [AlertKind.CRASH_LOOP]
