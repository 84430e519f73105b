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
from tests.test_dump_faults import config, freeze, thaw

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


async def test_a_frozen_qemu_does_not_hold_up_the_other_guests_reloaded_panic_action(
        short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus) -> None:
    """Each guest is told at once: the frozen QEMU's set-action times out on its own."""
    frozen, live = await qemus(unique("frozen")), await qemus(unique("live"))
    daemon = panicd(config(short_tmp, [frozen, live], "on_panic = []",
                           daemon="command_timeout = 3"))
    for guest in (frozen, live):
        await daemon.wait_event("qmp.connected", guest=guest.name)
    freeze(frozen)
    try:
        daemon.config_path.write_text(config(short_tmp, [frozen, live],
                                             'panic_action = "none"\non_panic = []',
                                             daemon="command_timeout = 3"))
        daemon.signal(signal.SIGHUP)
        (applied,) = await daemon.wait_event("reload.applied")
        (told,) = daemon.events("qmp.actions_set", guest=live.name, panic="none")
        (failed,) = daemon.events("reload.set_action_failed", guest=frozen.name)
        # The live guest was told before the frozen one's command timed out, not after it.
        assert told["timestamp"] < failed["timestamp"] <= applied["timestamp"]
    finally:
        thaw(frozen)
    await live.panic()
    (detected,) = await daemon.wait_event("panic.detected", guest=live.name)
    assert detected["action"] == "run"
