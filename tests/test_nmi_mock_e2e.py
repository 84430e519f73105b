"""The `nmi` step end to end on the built-in mock: a real `panicd run`, a real journald, and a mock
guest that panics on an NMI (`nmi_panics`, `panicd mock-guest --nmi-panics`), as a Linux guest
booted with unknown_nmi_panic=1 does (tests/test_watchdog_linux.py has the real one, 30 s of TCG).

The mock has no watchdog device: the test sends WATCHDOG {action: pause} and stops the guest,
as QEMU 7.2 does under panicd's `watchdog=pause` (QEMU's runstate is then `watchdog`, the mock's
`paused`; the step resumes the guest from either). The NMI waits for the stopped vCPU, the
step's `cont` lets the guest take it, and its panic belongs to the watchdog incident.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from panicd.alerts import AlertKind
from panicd.mock import MockGuest
from tests.daemon_process import PanicdProcess, completed_dumps, daemon_section, metadata, unique
from tests.journal import Journald
from tests.test_watchdog_e2e import done_incidents, steps

Start = Callable[[str], PanicdProcess]


async def test_a_watchdog_nmi_panics_the_guest_and_its_incident_catches_and_dumps_the_panic(
        short_tmp: Path, panicd: Start, journal: Journald) -> None:
    name = unique("nmi-mock")
    guest = MockGuest(name=name, memory_bytes=8 * 2**20, nmi_panics=True)
    await guest.start(short_tmp / "g.qmp")
    try:
        daemon = panicd(f'{daemon_section(short_tmp)}[[guest]]\nsocket = "{short_tmp}/g.qmp"\n'
                        '[[policy]]\non_panic = ["dump", "restart"]\n'
                        'on_watchdog = ["nmi", "wait_panic", "dump"]\n'
                        "wait_panic = { timeout = 10 }\n")
        await daemon.wait_event("qmp.connected", guest=name)
        assert guest.machine.watchdog_action == "pause"  # panicd's set-action, on connect
        await guest.emit_event("WATCHDOG", {"action": "pause"})
        guest.machine.stop()

        (dump,) = await completed_dumps(short_tmp, name)
        (record,) = await done_incidents(short_tmp, name)
        assert record["kind"] == "watchdog"
        assert [(s["name"], s["ok"]) for s in record["steps"]] == [
            ("nmi", True), ("wait_panic", True), ("dump", True)]
        by_name = steps(record)
        assert by_name["nmi"]["nmi"] == {"status_before": "paused", "resumed": True,
                                         "status": "guest-panicked"}
        assert by_name["wait_panic"]["skipped"] is None
        assert by_name["wait_panic"]["wait_panic"]["panic_action"] == "pause"
        assert record["caught_panic"]["action"] == "pause"
        assert record["caught_panic"]["late"] is False
        assert record["dump"]["path"] == str(dump)
        assert dump.read_bytes()[:4] == b"\x7fELF"
        assert metadata(dump)["incident"]["kind"] == "watchdog"
        # The guest stays panicked (no on_panic restart: the panic was no incident of its own).
        assert guest.machine.runstate == "guest-panicked"
        assert [n for _, n, _ in guest.received_commands].count("inject-nmi") == 1

        (alert,) = await journal.find(MESSAGE_ID=AlertKind.WATCHDOG.message_id, GUEST_NAME=name)
        assert alert["POLICY_STEPS"] == "nmi wait_panic dump"
        assert journal.entries(MESSAGE_ID=AlertKind.PANIC.message_id, GUEST_NAME=name) == []
        assert daemon.events("panic.handed_over", guest=name)
        assert await daemon.stop() == 0
    finally:
        await guest.stop()


async def test_the_crash_loaded_report_of_an_nmi_panic_goes_into_the_incident_that_caught_it(
        short_tmp: Path, panicd: Start, journal: Journald) -> None:
    """QEMU lets the NMI's panic run on (panic_action none), and the guest's own dump begins
    (GUEST_CRASHLOADED, as Windows' pvpanic driver reports it): the same crash, one incident."""
    name = unique("nmi-cl")
    guest = MockGuest(name=name, memory_bytes=8 * 2**20, nmi_panics=True)
    await guest.start(short_tmp / "g.qmp")
    try:
        daemon = panicd(f'{daemon_section(short_tmp)}[[guest]]\nsocket = "{short_tmp}/g.qmp"\n'
                        '[[policy]]\npanic_action = "none"\non_crash_loaded = []\n'
                        'on_watchdog = ["nmi", "wait_panic"]\nwait_panic = { timeout = 10 }\n')
        await daemon.wait_event("qmp.connected", guest=name)
        await guest.emit_event("WATCHDOG", {"action": "pause"})
        guest.machine.stop()
        await daemon.wait_event("panic.handed_over", guest=name)
        guest.port.write(2)
        await daemon.wait_event("crash.reported_again", guest=name)

        (record,) = await done_incidents(short_tmp, name)
        assert record["kind"] == "watchdog" and record["caught_panic"]["action"] == "run"
        assert not daemon.events("panic.crash_loaded")  # no crash-loaded incident
        assert journal.entries(MESSAGE_ID=AlertKind.CRASH_LOADED.message_id, GUEST_NAME=name) == []
        assert await daemon.stop() == 0
    finally:
        await guest.stop()
