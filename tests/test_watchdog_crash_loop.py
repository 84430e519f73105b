"""A guest whose watchdog keeps firing spends panicd's restart budget like one that keeps
panicking: the CRASH_LOOP alert says it crashed again (it did not panic), on a real QEMU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from panicd.alerts import AlertKind
from tests.daemon_process import PanicdProcess
from tests.journal import Journald
from tests.qemu_harness import Qemus
from tests.test_watchdog_e2e import ARM_IB700_2S, config, ib700_guest

Start = Callable[[str], PanicdProcess]


async def test_a_watchdog_crash_loop_alert_says_crashed_not_panicked(
        qemus: Qemus, short_tmp: Path, panicd: Start, journal: Journald) -> None:
    guest = await ib700_guest(qemus, "hang-loop")
    daemon = panicd(config(short_tmp, guest, (
        'on_watchdog = ["restart"]\nrestart = { max = 1, within = 600 }\n')))
    await daemon.wait_event("qmp.connected", guest=guest.name)
    assert await guest.qtest(ARM_IB700_2S) == "OK"
    await daemon.wait_event("incident.handled", guest=guest.name)
    # system_reset disarmed it: armed again, it hangs again. The BIOS of the new boot may
    # reset the machine once more (RESET events right after the restart), which disarms an
    # ib700 armed too early: armed again until it fires.
    for _ in range(3):
        assert await guest.qtest(ARM_IB700_2S) == "OK"
        try:
            await daemon.wait_event("watchdog.detected", guest=guest.name, count=2, timeout=6)
            break
        except AssertionError:
            continue
    await daemon.wait_event("incident.handled", guest=guest.name, count=2)
    (alert,) = await journal.find(MESSAGE_ID=AlertKind.CRASH_LOOP.message_id,
                                  GUEST_NAME=guest.name)
    assert f"Guest {guest.name} is in a crash loop: it crashed again after 1 restarts" in (
        alert["MESSAGE"]), alert["MESSAGE"]
    assert "panicked" not in alert["MESSAGE"]
