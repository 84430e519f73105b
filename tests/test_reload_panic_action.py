"""A reloaded `panic_action` reaches the guests panicd is connected to, on a real QEMU.

QEMU's panic action is a run-time setting of the QEMU process (`set-action`), which panicd
sends on connect; a reload that changes a policy's `panic_action` sends it again to the guests
that stay connected, so the next panic gets it (and not only the next connection).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from tests.daemon_process import PanicdProcess, unique
from tests.journal import Journald
from tests.qemu_harness import Qemus
from tests.test_dump_faults import config

Start = Callable[[str], PanicdProcess]


async def test_a_reload_from_pause_to_none_leaves_the_next_panicked_guest_running(
        short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus) -> None:
    guest = await qemus(unique("win"))
    daemon = panicd(config(short_tmp, [guest], 'on_panic = ["dump", "pause"]'))
    await daemon.wait_event("qmp.connected", guest=guest.name)
    daemon.config_path.write_text(
        config(short_tmp, [guest], 'panic_action = "none"\non_panic = []'))
    daemon.signal(signal.SIGHUP)
    await daemon.wait_event("reload.applied")
    assert daemon.events("reload.panic_action_changed", guest=guest.name, panic_action="none")
    assert daemon.events("qmp.actions_set", guest=guest.name, panic="none")

    await guest.panic()
    (detected,) = await daemon.wait_event("panic.detected", guest=guest.name)
    assert detected["action"] == "run"  # QEMU's GUEST_PANICKED {action: run}: panic=none
    await daemon.wait_event("incident.handled", guest=guest.name)
    assert await guest.status() == "running"
    assert daemon.events("qmp.connected", guest=guest.name) == [
        daemon.events("qmp.connected", guest=guest.name)[0]]  # one connection: no reconnect


async def test_a_reload_back_to_pause_makes_the_next_panic_dumpable_again(
        short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus) -> None:
    guest = await qemus(unique("lin"))
    daemon = panicd(config(short_tmp, [guest], 'panic_action = "none"\non_panic = []'))
    await daemon.wait_event("qmp.connected", guest=guest.name)
    daemon.config_path.write_text(config(short_tmp, [guest], "on_panic = []"))
    daemon.signal(signal.SIGHUP)
    await daemon.wait_event("reload.applied")
    await guest.panic()
    await daemon.wait_event("incident.handled", guest=guest.name)
    assert await guest.status() == "guest-panicked"
