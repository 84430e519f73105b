"""A panic that comes while a watchdog incident runs, on a real QEMU (ib700 armed over qtest).

Two cases an operator would otherwise find as a healthy guest left paused:
- the NMI's panic comes after `wait_panic` gave up (a guest slow to take its NMI): it still
  belongs to the incident that injected the NMI (its `caught_panic`, `late`), not to a panic
  incident queued behind it that would dump and pause the boot that incident's restart began;
- a panic of the guest's own, queued as an incident of its own behind a watchdog incident
  that then restarts the guest: that incident is stale (incident_worker.py), its steps are
  recorded as skipped and none runs.
The panic is `outb 0x505 0x1` on the qtest socket while the policy's `exec` step (a 3 s sleep)
runs: its steps after the panic are the ones at stake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.daemon_process import PanicdProcess, dumps_of
from tests.journal import Journald
from tests.qemu_harness import Qemus
from tests.test_watchdog_e2e import ARM_IB700_2S, config, ib700_guest, incidents, steps
from tests.test_watchdog_e2e import done_incidents as wait_done

Start = Callable[[str], PanicdProcess]


async def done_incidents(tmp: Path, guest: str, *, dumps: bool = True) -> list[dict[str, Any]]:
    """The guest's incidents once all are done (`panicd incidents`); with `dumps`, once each
    one's dump is recorded too (test_watchdog_e2e.done_incidents)."""
    if dumps:
        return await wait_done(tmp, guest)
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        records = await incidents(tmp, guest)
        if records and all(r["state"] == "done" for r in records):
            return records
        assert asyncio.get_running_loop().time() < deadline, records
        await asyncio.sleep(0.2)

_SLOW_HOOK = 'exec = { command = ["/bin/sleep", "3"], timeout = 30 }\n'


async def test_a_panic_after_wait_panic_gave_up_belongs_to_the_incident_that_sent_the_nmi(
        qemus: Qemus, short_tmp: Path, panicd: Start, journal: Journald) -> None:
    guest = await ib700_guest(qemus, "late")
    daemon = panicd(config(short_tmp, guest, (
        'on_panic = ["dump", "pause"]\n'
        'on_watchdog = ["nmi", "wait_panic", "exec", "restart"]\n'
        f"wait_panic = {{ timeout = 1 }}\n{_SLOW_HOOK}")))
    await daemon.wait_event("qmp.connected", guest=guest.name)
    assert await guest.qtest(ARM_IB700_2S) == "OK"
    await daemon.wait_event("wait_panic.no_panic", guest=guest.name)
    assert await guest.panic() == "OK"  # during the 3 s exec step
    await daemon.wait_event("incident.handled", guest=guest.name)

    (record,) = await done_incidents(short_tmp, guest.name)
    assert record["kind"] == "watchdog"
    assert record["caught_panic"]["late"] is True
    assert record["caught_panic"]["action"] == "pause"
    assert steps(record)["wait_panic"]["skipped"] == "no panic within 1 s"
    assert steps(record)["restart"]["ok"] is True
    assert daemon.events("panic.caught_late", guest=guest.name)
    assert not daemon.events("panic.detected", guest=guest.name)
    assert await guest.status() == "running"
    assert dumps_of(short_tmp, guest.name) == []


async def test_a_panic_queued_behind_an_incident_that_restarts_the_guest_is_stale(
        qemus: Qemus, short_tmp: Path, panicd: Start, journal: Journald) -> None:
    guest = await ib700_guest(qemus, "stale")
    daemon = panicd(config(short_tmp, guest, (
        f'on_panic = ["dump", "pause"]\non_watchdog = ["exec", "restart"]\n{_SLOW_HOOK}')))
    await daemon.wait_event("qmp.connected", guest=guest.name)
    assert await guest.qtest(ARM_IB700_2S) == "OK"
    await daemon.wait_event("step.started", step="exec", guest=guest.name)
    # Without an nmi step nothing catches it: a panic incident of its own, queued.
    await guest.execute("cont")  # the guest panics where it stands, stopped by its watchdog
    assert await guest.panic() == "OK"
    await daemon.wait_event("panic.detected", guest=guest.name)
    await daemon.wait_event("incident.stale", guest=guest.name)

    records = {r["kind"]: r for r in await done_incidents(short_tmp, guest.name, dumps=False)}
    assert steps(records["watchdog"])["restart"]["ok"] is True
    panic = records["panic"]
    assert [s["name"] for s in panic["steps"]] == ["dump", "pause"]
    assert all(s["skipped"] and "reset" in s["skipped"] for s in panic["steps"])
    assert await guest.status() == "running"
    assert dumps_of(short_tmp, guest.name) == []
