"""Hung guests without a guest OS: QEMU's ib700 watchdog, armed through qtest, under `panicd run`.

`-device ib700` and `outb 0x443 0x0e` on the qtest socket arm the ISA watchdog with a 2 s
timeout (../shared/QEMU-FACTS.md); nobody feeds it, so QEMU sends a real WATCHDOG event 2 s
later, and (panicd having set `watchdog=pause` on connect) stops the guest in runstate
`watchdog`. What is asserted is what an operator sees: `panicd incidents --json`, the journal,
the dump file, the guest's runstate on a second QMP monitor. What QEMU cannot be made to send
(WATCHDOG data of the wrong type, a repeated WATCHDOG) is sent by the built-in mock.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from panicd.alerts import AlertKind
from panicd.mock import MockGuest
from tests.daemon_process import PanicdProcess, completed_dumps, daemon_section, metadata, unique
from tests.journal import Journald
from tests.qemu_harness import QemuGuest, Qemus
from tests.test_daemon_e2e import wait_for_status

Start = Callable[[str], PanicdProcess]

#: ib700: the low nibble indexes QEMU's timeout table (30, 28, ..., 2, 0 s): 0x0e is 2 s.
ARM_IB700_2S = "outb 0x443 0x0e"


def config(tmp: Path, guest: QemuGuest, policy: str) -> str:
    return (f'{daemon_section(tmp)}[[guest]]\nsocket = "{guest.qmp_path}"\n\n'
            f"[[policy]]\n{policy}\n")


async def incidents(tmp: Path, guest: str) -> list[dict[str, Any]]:
    """`panicd incidents --guest NAME --json`, as an operator runs it."""
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "panicd", "incidents", "--state-dir", str(tmp / "state"),
        "--guest", guest, "--json", stdout=asyncio.subprocess.PIPE)
    out, _ = await cli.communicate()
    assert cli.returncode == 0
    records: list[dict[str, Any]] = json.loads(out)
    return records


async def done_incidents(tmp: Path, guest: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The guest's incidents once every one is done, and its dump (if any) recorded in it (the
    record learns the dump's summary after DUMP_COMPLETED: evidence.py)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        records = await incidents(tmp, guest)
        if records and all(r["state"] == "done" and (r["dump"] is not None or not any(
                s["name"] == "dump" for s in r["steps"])) for r in records):
            return records
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{guest}'s incidents not done within {timeout} s: {records}")
        await asyncio.sleep(0.2)


def steps(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["name"]: step for step in record["steps"]}


async def ib700_guest(qemus: Qemus, prefix: str) -> QemuGuest:
    return await qemus(unique(prefix), extra_args=["-device", "ib700"])


async def test_watchdog_fires_and_the_hung_guest_is_dumped_and_restarted(
        qemus: Qemus, short_tmp: Path, panicd: Start, journal: Journald) -> None:
    guest = await ib700_guest(qemus, "hung")
    daemon = panicd(config(short_tmp, guest, 'on_watchdog = ["dump", "restart"]'))
    await daemon.wait_event("qmp.connected", guest=guest.name)

    assert await guest.qtest(ARM_IB700_2S) == "OK"
    (dump,) = await completed_dumps(short_tmp, guest.name)
    assert dump.read_bytes()[:4] == b"\x7fELF"
    assert metadata(dump)["incident"]["kind"] == "watchdog"
    assert metadata(dump)["event"]["event"] == "WATCHDOG"
    (record,) = await done_incidents(short_tmp, guest.name)
    assert (record["kind"], record["detection"], record["action"]) == ("watchdog", "event", "pause")
    assert record["event"]["data"] == {"action": "pause"}  # panicd took the action over
    assert [(s["name"], s["ok"]) for s in record["steps"]] == [("dump", True), ("restart", True)]
    assert record["dump"]["path"] == str(dump)
    await wait_for_status(guest, "running")
    # QEMU's own record of it: WATCHDOG, STOP (runstate `watchdog`), then the restart.
    names = [name for name, _ in guest.events]
    assert names.index("WATCHDOG") < names.index("RESET") < names.index("RESUME")

    (alert,) = await journal.find(MESSAGE_ID=AlertKind.WATCHDOG.message_id, GUEST_NAME=guest.name)
    assert alert["PRIORITY"] == "2"
    assert alert["PANIC_ACTION"] == "pause"
    assert alert["POLICY_STEPS"] == "dump restart"
    assert alert["INCIDENT_ID"] == record["id"]
    assert "watchdog fired" in alert["MESSAGE"]
    assert journal.entries(MESSAGE_ID=AlertKind.PANIC.message_id, GUEST_NAME=guest.name) == []
    assert await daemon.stop() == 0


async def test_no_panic_after_the_nmi_wait_panic_falls_through_to_the_dump(
        qemus: Qemus, short_tmp: Path, panicd: Start) -> None:
    # No OS: the NMI reaches no kernel that could panic on it.
    guest = await ib700_guest(qemus, "nmi-no-os")
    daemon = panicd(config(short_tmp, guest, 'on_watchdog = ["nmi", "wait_panic", "dump"]\n'
                                             "wait_panic = { timeout = 1 }"))
    await daemon.wait_event("qmp.connected", guest=guest.name)
    await guest.qtest(ARM_IB700_2S)

    (dump,) = await completed_dumps(short_tmp, guest.name)
    (record,) = await done_incidents(short_tmp, guest.name)
    assert record["kind"] == "watchdog"
    by_name = steps(record)
    assert [s["name"] for s in record["steps"]] == ["nmi", "wait_panic", "dump"]
    assert all(s["ok"] for s in record["steps"]), record["steps"]
    # The watchdog stopped the guest; the NMI is only taken by a running vCPU, so it ran again.
    assert by_name["nmi"]["nmi"] == {"status_before": "watchdog", "resumed": True,
                                     "status": "running"}
    assert by_name["wait_panic"]["skipped"] == "no panic within 1 s"
    assert by_name["wait_panic"]["wait_panic"]["panic_action"] is None
    assert 1 <= by_name["wait_panic"]["wait_panic"]["waited_seconds"] < 3
    assert record["dump"]["path"] == str(dump)
    names = [name for name, _ in guest.events]
    assert "GUEST_PANICKED" not in names
    assert await daemon.stop() == 0


async def test_watchdog_that_fired_while_panicd_was_away_is_found_on_connect(
        qemus: Qemus, short_tmp: Path, panicd: Start, journal: Journald) -> None:
    guest = await ib700_guest(qemus, "hung-early")
    await guest.execute("set-action", {"watchdog": "pause"})
    await guest.qtest(ARM_IB700_2S)
    await guest.events_until("WATCHDOG")
    assert await guest.status() == "watchdog"  # what query-status says on connect

    daemon = panicd(config(short_tmp, guest, 'on_watchdog = ["dump", "restart"]'))
    (dump,) = await completed_dumps(short_tmp, guest.name)
    (record,) = await done_incidents(short_tmp, guest.name)
    assert (record["kind"], record["detection"]) == ("watchdog", "on-connect")
    assert record["dump"]["path"] == str(dump)
    await wait_for_status(guest, "running")
    (alert,) = await journal.find(MESSAGE_ID=AlertKind.WATCHDOG.message_id, GUEST_NAME=guest.name)
    assert alert["PANIC_DETECTION"] == "on-connect"
    assert await daemon.stop() == 0


async def test_odd_and_repeated_watchdog_events_make_one_incident_and_panicd_stays_up(
        short_tmp: Path, panicd: Start) -> None:
    # The mock, for what QEMU cannot be made to send: WATCHDOG data of the wrong type, twice.
    name = unique("odd-watchdog")
    guest = MockGuest(name=name, memory_bytes=8 * 2**20)
    await guest.start(short_tmp / "odd.qmp")
    try:
        daemon = panicd(f'{daemon_section(short_tmp)}[[guest]]\nsocket = "{short_tmp}/odd.qmp"\n'
                        '[[policy]]\non_watchdog = ["pause"]\n')
        await daemon.wait_event("qmp.connected", guest=name)
        await guest.emit_event("WATCHDOG", {"action": 42})
        await guest.emit_event("WATCHDOG", {"action": "pause"})
        await daemon.wait_event("qmp.bad_watchdog_data", guest=name)
        await daemon.wait_event("watchdog.duplicate", guest=name)
        (record,) = await done_incidents(short_tmp, name)
        assert (record["kind"], record["action"]) == ("watchdog", "unknown")
        assert record["event"]["data"] == {"action": 42}  # kept exactly as QEMU sent it
        assert guest.machine.runstate == "paused"  # its pause step ran
        assert await daemon.stop() == 0
    finally:
        await guest.stop()
