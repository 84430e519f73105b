"""Windows guests: a bugcheck reported with the panic (Hyper-V crash information) is decoded
into the incident record, the PANIC alert and `panicd incidents`, titled by its name, grouped.

This machine's KVM has no Hyper-V emulation (a guest's wrmsr to the crash MSRs faults), so no
real `hv-crash` guest can run here: the built-in mock sends GUEST_PANICKED exactly as QEMU's
QAPI schema defines it (checked against the real QEMU's own schema in
tests/test_windows_contract.py), to a real `panicd run`, alerting into the real journald.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from panicd.alerts import AlertKind
from panicd.bugcheck import BugCheck, decode
from panicd.events import PanicInfo
from panicd.mock import MockGuest
from panicd.mock.hyperv import crash_info
from panicd.records import IncidentRecord
from tests.daemon_process import PanicdProcess, daemon_section, unique, wait_for
from tests.journal import Journald
from tests.test_incident_store_e2e import incidents_of

Start = Callable[..., PanicdProcess]

#: What a SYSTEM_THREAD_EXCEPTION_NOT_HANDLED blue screen shows: an access violation
#: (0xC0000005, sign-extended by the 64-bit MSR) at a kernel address.
PARAMETERS = (0xFFFFFFFFC0000005, 0xFFFFF8012A2B3C4D, 0xFFFFD0012345E8A8, 0xFFFFD0012345E0E0)


def info(code: int, parameters: tuple[int, int, int, int] = PARAMETERS) -> PanicInfo:
    return PanicInfo.model_validate(crash_info(code, parameters))


def test_a_known_code_is_named_and_titled_as_microsoft_heads_it() -> None:
    bugcheck = decode(info(0x7E))
    assert bugcheck == BugCheck(code=0x7E, name="SYSTEM_THREAD_EXCEPTION_NOT_HANDLED",
                                parameters=PARAMETERS)
    assert bugcheck.code_text == "0x0000007E"
    assert bugcheck.title == "Bug Check 0x7E SYSTEM_THREAD_EXCEPTION_NOT_HANDLED"
    assert bugcheck.parameters_text == ("0xFFFFFFFFC0000005 0xFFFFF8012A2B3C4D "
                                        "0xFFFFD0012345E8A8 0xFFFFD0012345E0E0")


def test_an_unknown_code_keeps_its_number() -> None:
    bugcheck = decode(info(0x1F0))
    assert bugcheck is not None
    assert bugcheck.name is None
    assert bugcheck.title == "Bug Check 0x1F0"


@pytest.mark.parametrize("raw", [
    {"type": "s390", "core": 0, "psw-mask": 0, "psw-addr": 0, "reason": "disabled-wait"},
    {"type": "hyper-v", "arg1": -1, "arg2": 0, "arg3": 0, "arg4": 0, "arg5": 0},
    {"type": "hyper-v", "arg1": "0x7e", "arg2": 0, "arg3": 0, "arg4": 0, "arg5": 0},
    {"type": "hyper-v", "arg1": 0x7E, "arg2": 0},
    {"type": "hyper-v", "arg1": 2**64, "arg2": 0, "arg3": 0, "arg4": 0, "arg5": 0},
    # QAPI: a Linux guest writes its guest OS id (vendor 0x8100 in bits 48-63) into arg2.
    {"type": "hyper-v", "arg1": 0, "arg2": 0x8100_0006_0100_0000, "arg3": 0, "arg4": 0, "arg5": 0},
])
def test_what_is_no_windows_bugcheck_is_not_decoded(raw: dict[str, Any]) -> None:
    assert decode(PanicInfo.model_validate(raw)) is None


@pytest.fixture
async def mocks(short_tmp: Path) -> AsyncIterator[Callable[..., Any]]:
    guests: list[MockGuest] = []

    async def make(name: str) -> MockGuest:
        guest = MockGuest(name=name, memory_bytes=8 * 2**20)
        await guest.start(short_tmp / f"{len(guests)}.qmp")
        guests.append(guest)
        return guest

    yield make
    for guest in guests:
        await guest.stop()


async def one_guest(tmp: Path, mocks: Any, panicd: Start, prefix: str,
                    policy: str) -> tuple[str, MockGuest, PanicdProcess]:
    """A mock guest named `prefix`-..., watched by a `panicd run` with `policy`, connected."""
    name = unique(prefix)
    guest = await mocks(name)
    daemon = panicd(daemon_section(tmp) + f'[[guest]]\nsocket = "{tmp}/0.qmp"\n{policy}')
    await daemon.wait_event("qmp.connected", guest=name)
    return name, guest, daemon


async def cli(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "panicd", *args,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, args
    return out.decode()


async def test_bugchecks_are_decoded_alerted_titled_and_grouped(
        short_tmp: Path, mocks: Any, panicd: Start, journal: Journald) -> None:
    names = [unique("win-a"), unique("win-b")]
    guests = [await mocks(name) for name in names]
    # Windows' own way: QEMU lets it run on, it writes MEMORY.DMP and reboots itself.
    config = (daemon_section(short_tmp)
              + "".join(f'[[guest]]\nsocket = "{short_tmp}/{n}.qmp"\n' for n in range(2))
              + '[[policy]]\npanic_action = "none"\non_panic = []\n')
    daemon = panicd(config)
    for name in names:
        await daemon.wait_event("qmp.connected", guest=name)
    assert guests[0].machine.panic_action == "none"

    guests[0].bugcheck(0x7E, PARAMETERS)
    (panic,) = await journal.find(MESSAGE_ID=AlertKind.PANIC.message_id, GUEST_NAME=names[0])
    assert panic["BUGCHECK_CODE"] == "0x0000007E"
    assert panic["BUGCHECK_NAME"] == "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED"
    assert panic["BUGCHECK_PARAMETERS"] == ("0xFFFFFFFFC0000005 0xFFFFF8012A2B3C4D "
                                            "0xFFFFD0012345E8A8 0xFFFFD0012345E0E0")
    assert panic["PANIC_ACTION"] == "run"
    assert "Bug Check 0x7E SYSTEM_THREAD_EXCEPTION_NOT_HANDLED (0xFFFFFFFFC0000005" in panic["MESSAGE"]
    assert guests[0].machine.runstate == "running"  # preserve-running: QEMU let it run on

    # The same bug on a second guest, and a code panicd's table lacks on the first.
    guests[0].reboots_itself()
    guests[1].bugcheck(0x7E, (0, 0, 0, 0))
    await journal.find(MESSAGE_ID=AlertKind.PANIC.message_id, GUEST_NAME=names[1])
    guests[0].bugcheck(0x1F0)
    (_, unknown) = await journal.find(count=2, MESSAGE_ID=AlertKind.PANIC.message_id,
                                      GUEST_NAME=names[0])
    assert unknown["BUGCHECK_CODE"] == "0x000001F0"
    assert "BUGCHECK_NAME" not in unknown

    title = "Bug Check 0x7E SYSTEM_THREAD_EXCEPTION_NOT_HANDLED"
    # New the first time only: one NEW_CRASH_SIGNATURE for the two guests' one bug.
    (new,) = await journal.find(MESSAGE_ID=AlertKind.NEW_CRASH_SIGNATURE.message_id,
                                GUEST_NAME=names[0], CRASH_TITLE=title)
    assert new["CRASH_TITLE_SOURCE"] == "bugcheck"
    def titled(name: str, count: int) -> list[IncidentRecord] | None:
        records = incidents_of(short_tmp, name)
        return records if len(records) == count and all(r.crash for r in records) else None

    newest, first = await wait_for(lambda: titled(names[0], 2), what="both crashes titled")
    assert first.bugcheck is not None and first.bugcheck.parameters == PARAMETERS
    assert first.crash is not None and first.crash.title == title
    assert first.crash.source == "bugcheck"
    assert newest.crash is not None and newest.crash.title == "Bug Check 0x1F0"
    (second,) = await wait_for(lambda: titled(names[1], 1), what="the second guest's crash titled")
    assert second.crash is not None and not second.crash.new and second.crash.guests == 2

    table = await cli("incidents", "-c", str(daemon.config_path), "--guest", names[0])
    assert title in table and "Bug Check 0x1F0" in table
    show = await cli("incidents", "-c", str(daemon.config_path), "show", first.id)
    lines = {line.split(None, 1)[0]: line.split(None, 1)[1].strip()
             for line in show.splitlines()[1:] if line.startswith("  ") and line.strip()}
    assert lines["bugcheck"] == ("Bug Check 0x7E SYSTEM_THREAD_EXCEPTION_NOT_HANDLED "
                                 "(0xFFFFFFFFC0000005, 0xFFFFF8012A2B3C4D, 0xFFFFD0012345E8A8, "
                                 "0xFFFFD0012345E0E0)")
    grouped = json.loads(await cli("incidents", "-c", str(daemon.config_path),
                                   "--by-signature", "--json"))
    by_title = {g["title"]: g for g in grouped}
    assert by_title[title]["count"] == 2 and by_title[title]["guests"] == 2
    assert by_title["Bug Check 0x1F0"]["count"] == 1
    assert await daemon.stop() == 0


async def test_a_malformed_hyperv_report_is_still_a_panic(
        short_tmp: Path, mocks: Any, panicd: Start, journal: Journald) -> None:
    name, guest, _daemon = await one_guest(short_tmp, mocks, panicd, "win-odd",
                                          '[[policy]]\non_panic = ["pause"]\n')
    guest.machine.guest_panicked({"type": "hyper-v", "arg1": "0x7E", "arg2": -5})
    (panic,) = await journal.find(MESSAGE_ID=AlertKind.PANIC.message_id, GUEST_NAME=name)
    assert "BUGCHECK_CODE" not in panic
    assert json.loads(panic["PANIC_INFO"])["arg1"] == "0x7E"  # kept as QEMU sent it
    (record,) = await wait_for(lambda: [r for r in incidents_of(short_tmp, name)
                                        if r.state.value == "done"], what="the incident done")
    assert record.bugcheck is None
    assert guest.machine.runstate == "guest-panicked"


async def test_one_bugcheck_reported_both_ways_is_one_crash(
        short_tmp: Path, mocks: Any, panicd: Start, journal: Journald) -> None:
    """A Windows guest with hv-crash and the pvpanic driver: the crash MSRs make GUEST_PANICKED,
    then the driver's dump callback GUEST_CRASHLOADED while Windows writes MEMORY.DMP, then it
    reboots itself. Each crash is one incident (the crash-loaded report kept in it), and the
    self-reboot loop counts crashes, not reports: CRASH_LOOP at the third, not the second."""
    name, guest, daemon = await one_guest(short_tmp, mocks, panicd, "win-both",
                                          '[[policy]]\npanic_action = "none"\non_panic = []\n'
                    "restart = { max = 2, within = 600 }\n")
    for n in (1, 2, 3):
        guest.bugcheck(0xEF)
        guest.port.write(2)  # PVPANIC_CRASHLOADED: the dump is being written
        await daemon.wait_event("crash.reported_again", count=n)
        guest.reboots_itself()
    (loop,) = await journal.find(MESSAGE_ID=AlertKind.CRASH_LOOP.message_id, GUEST_NAME=name)
    assert (loop["CRASHES"], loop["REBOOTED_BY"]) == ("3", "guest")
    def three_crashes() -> list[IncidentRecord] | None:
        records = incidents_of(short_tmp, name)
        recorded = all(r.state.value == "done" and r.crash_loaded_at for r in records)
        return records if len(records) >= 3 and recorded else None

    crashes = await wait_for(three_crashes, what="three crashes, each with its crash-loaded report")
    assert [r.kind.value for r in crashes] == ["panic"] * 3
    assert crashes[0].crash_loop == 3 and loop["INCIDENT_ID"] == crashes[0].id
    assert not await journal.find(timeout=0, MESSAGE_ID=AlertKind.CRASH_LOADED.message_id,
                                  GUEST_NAME=name)


async def test_a_bugcheck_after_its_crash_loaded_report_is_handled_and_counted_once(
        short_tmp: Path, mocks: Any, panicd: Start, journal: Journald) -> None:
    """The other order, with panicd's pause: the panic stopped the guest, so it is handled (its
    dump carries the bugcheck's title), and marked as the crash-loaded report's crash."""
    name, guest, daemon = await one_guest(short_tmp, mocks, panicd, "win-cl-first",
                                          '[[policy]]\non_crash_loaded = []\non_panic = ["dump", "resume"]\n'
                    "restart = { max = 1, within = 600 }\n")
    guest.port.write(2)
    guest.bugcheck(0x7E, PARAMETERS)
    title = "Bug Check 0x7E SYSTEM_THREAD_EXCEPTION_NOT_HANDLED"
    (dumped,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id,
                                   GUEST_NAME=name)
    assert dumped["CRASH_TITLE"] == title  # no kernel log in a Windows dump: its bugcheck
    assert dumped["CRASH_TITLE_SOURCE"] == "bugcheck"
    def both() -> list[IncidentRecord] | None:
        records = incidents_of(short_tmp, name)
        done = len(records) == 2 and all(r.state.value == "done" for r in records)
        return records if done and records[0].crash is not None else None

    panic, loaded = await wait_for(both, what="both incidents done, the panic titled")
    assert (panic.kind.value, loaded.kind.value) == ("panic", "crash-loaded")
    assert panic.same_crash_as == loaded.id
    assert panic.crash is not None and panic.crash.title == title and panic.crash.count == 1
    assert guest.machine.runstate == "running"
    await daemon.wait_event("crash_loop.counted", crashes=1)
    assert not daemon.events("crash_loop.counted", crashes=2)  # max = 1: one more would alert
    assert not await journal.find(timeout=0, MESSAGE_ID=AlertKind.CRASH_LOOP.message_id,
                                  GUEST_NAME=name)


async def test_a_bugcheck_let_run_after_its_crash_loaded_report_goes_into_it_titled_once(
        short_tmp: Path, mocks: Any, panicd: Start, journal: Journald) -> None:
    name, guest, daemon = await one_guest(short_tmp, mocks, panicd, "win-cl-run",
                                          '[[policy]]\npanic_action = "none"\non_panic = []\n'
                                          "on_crash_loaded = []\n")
    guest.port.write(2)
    guest.bugcheck(0x7E, PARAMETERS)  # {action: run}: the same crash, nothing to act on
    (new,) = await journal.find(MESSAGE_ID=AlertKind.NEW_CRASH_SIGNATURE.message_id,
                                GUEST_NAME=name)
    (record,) = await wait_for(lambda: [r for r in incidents_of(short_tmp, name)
                                        if r.crash is not None and r.crash.alerted] or None,
                               what="the crash-loaded incident titled, its alert on record")
    assert record.kind.value == "crash-loaded" and record.bugcheck is not None
    assert new["INCIDENT_ID"] == record.id
    await daemon.wait_event("crash.reported_again")
    assert not daemon.events("signature.seen_again")  # sighted once, not once per report
    assert not await journal.find(timeout=0, MESSAGE_ID=AlertKind.PANIC.message_id,
                                  GUEST_NAME=name)


async def test_a_panic_qemu_did_not_let_run_after_a_crash_loaded_report_is_its_own_incident(
        short_tmp: Path, mocks: Any, panicd: Start, journal: Journald) -> None:
    """Only a panic QEMU let run on is folded into the crash-loaded report: one QEMU powered
    off (its panic action not taken over) gets its incident, linked to that report."""
    name, guest, daemon = await one_guest(short_tmp, mocks, panicd, "win-cl-off",
                                          '[[policy]]\non_crash_loaded = []\non_panic = []\n')
    guest.port.write(2)
    await daemon.wait_event("panic.crash_loaded", guest=name)
    await guest.emit_event("GUEST_PANICKED", {"action": "poweroff"})
    (panic,) = await journal.find(MESSAGE_ID=AlertKind.PANIC.message_id, GUEST_NAME=name)

    def both() -> list[IncidentRecord] | None:
        records = incidents_of(short_tmp, name)
        return records if len(records) == 2 and records[0].same_crash_as else None

    later, first = await wait_for(both, what="the panic, linked to the crash-loaded report")
    assert (later.kind.value, first.kind.value) == ("panic", "crash-loaded")
    assert later.same_crash_as == first.id and panic["INCIDENT_ID"] == later.id
    assert later.action == "poweroff"


async def test_a_bugcheck_after_pvpanics_own_report_completes_the_incident(
        short_tmp: Path, mocks: Any, panicd: Start, journal: Journald) -> None:
    """Windows' pvpanic driver (no crash dump enabled) writes PANICKED, the Hyper-V crash MSRs
    then report the bugcheck: one crash, and its incident gets the bugcheck and the title."""
    name, guest, _daemon = await one_guest(short_tmp, mocks, panicd, "win-pv-hv",
                                          '[[policy]]\npanic_action = "none"\non_panic = []\n')
    guest.port.write(1)
    guest.bugcheck(0x7E, PARAMETERS)
    title = "Bug Check 0x7E SYSTEM_THREAD_EXCEPTION_NOT_HANDLED"
    (new,) = await journal.find(MESSAGE_ID=AlertKind.NEW_CRASH_SIGNATURE.message_id,
                                GUEST_NAME=name, CRASH_TITLE=title)
    (record,) = await wait_for(lambda: [r for r in incidents_of(short_tmp, name)
                                        if r.crash is not None] or None, what="the titled crash")
    assert record.bugcheck is not None and record.bugcheck.code == 0x7E
    assert new["INCIDENT_ID"] == record.id
    assert len(await journal.find(timeout=1, count=2, MESSAGE_ID=AlertKind.PANIC.message_id,
                                  GUEST_NAME=name)) == 1


async def test_under_pause_the_bugcheck_after_pvpanics_report_is_linked_and_counted_once(
        short_tmp: Path, mocks: Any, panicd: Start, journal: Journald) -> None:
    """panicd's pause stops the guest at pvpanic's report; the crash MSRs' report comes once it
    is resumed: the panic it raises (it paused the guest again) is the same crash."""
    name, guest, daemon = await one_guest(short_tmp, mocks, panicd, "win-pv-pause",
                                          '[[policy]]\non_panic = ["resume"]\n'
                                          "restart = { max = 1, within = 600 }\n")
    guest.port.write(1)
    await daemon.wait_event("incident.handled", guest=name)
    await wait_for(lambda: guest.machine.runstate == "running", what="the resume step")
    guest.bugcheck(0x7E, PARAMETERS)

    def both() -> list[IncidentRecord] | None:
        records = incidents_of(short_tmp, name)
        return records if len(records) == 2 and records[0].crash is not None else None

    later, first = await wait_for(both, what="the bugcheck's incident, titled")
    assert later.same_crash_as == first.id
    assert later.bugcheck is not None and later.bugcheck.code == 0x7E
    assert later.crash is not None and later.crash.count == 1
    await daemon.wait_event("crash_loop.counted", crashes=1)
    assert not daemon.events("crash_loop.counted", crashes=2)
