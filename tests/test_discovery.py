"""[discovery] watch: sockets that appear are watched, sockets that go are dropped (inotify)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from panicd.mock import MockGuest
from tests.daemon_process import (
    PanicdProcess,
    completed_dumps,
    daemon_section,
    unique,
)
from tests.qemu_harness import QemuGuest


def watching(tmp: Path, pattern: str) -> str:
    return (daemon_section(tmp) + f'[discovery]\nwatch = ["{pattern}"]\n'
            '[[policy]]\non_panic = ["dump", "pause"]\n')


async def test_sockets_appearing_and_vanishing_are_followed(short_tmp: Path, panicd: Any) -> None:
    run = short_tmp / "run"
    run.mkdir()
    before = MockGuest(name=unique("before"))
    await before.start(run / "before-vm.qmp")  # there at start: found by the first scan
    (run / "notes-vm.qmp").write_text("a file, not a socket: ignored")
    daemon: PanicdProcess = panicd(watching(short_tmp, f"{run}/*-vm.qmp"))
    after = MockGuest(name=unique("after"))
    real = QemuGuest(run, name=unique("real") + "-vm")  # its inspect.qmp does not match
    try:
        await daemon.wait_event("qmp.connected", guest=before.name)
        await after.start(run / "after-vm.qmp")
        await daemon.wait_event("qmp.connected", guest=after.name)
        await real.start()
        await daemon.wait_event("qmp.connected", guest=real.name)
        assert not daemon.events("discovery.found", socket=str(run / "inspect.qmp"))
        assert not daemon.events("discovery.found", socket=str(run / "notes-vm.qmp"))

        await real.panic()
        await completed_dumps(short_tmp, real.name)
        await before.stop()  # the socket goes: the guest is dropped
        await daemon.wait_event("guest.dropped", socket=str(run / "before-vm.qmp"))
        # A real QEMU that quits removes its socket: dropped too.
        await real.execute("quit")
        await real.wait_exited()
        await daemon.wait_event("guest.dropped", socket=str(real.qmp_path))
        after.port.write(1)
        await completed_dumps(short_tmp, after.name)
        # Dropped means dropped: no reconnecting to sockets that are gone.
        assert len(daemon.events("qmp.connected", guest=before.name)) == 1
        assert not daemon.events("qmp.unreachable", socket=str(run / "before-vm.qmp"))
        assert await daemon.stop() == 0
    finally:
        await after.stop()
        await before.stop()
        await real.stop()


async def test_a_directory_made_late_or_made_again_is_watched(short_tmp: Path, panicd: Any) -> None:
    run = short_tmp / "later"  # does not exist when panicd starts
    daemon: PanicdProcess = panicd(watching(short_tmp, f"{run}/*.qmp"))
    await daemon.wait_event("discovery.waiting_for_directory")
    first = MockGuest(name=unique("early-bird"))
    second = MockGuest(name=unique("second-life"))
    try:
        run.mkdir()
        await first.start(run / "a.qmp")
        await daemon.wait_event("qmp.connected", guest=first.name)
        await first.stop()
        run.rmdir()  # the orchestrator's runtime directory goes away...
        await daemon.wait_event("guest.dropped", socket=str(run / "a.qmp"))
        run.mkdir()  # ...and comes back
        await second.start(run / "b.qmp")
        await daemon.wait_event("qmp.connected", guest=second.name)
        second.port.write(1)
        await completed_dumps(short_tmp, second.name)
        assert await daemon.stop() == 0
    finally:
        await first.stop()
        await second.stop()
