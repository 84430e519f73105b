"""Hung Debian guests: an i6300esb watchdog armed by busybox and then left unfed, under `panicd run`.

Two guests boot at once (Debian's 6.1 kernel under TCG, tests/linux_guest.py
`watchdog_qemu_args`); about 9 s in, each one's watchdog fires:

    guest   kernel command line       on_watchdog                   ends
    hung    (the usual)               dump, restart                 dumped, running again
    nmi     + unknown_nmi_panic=1     nmi, wait_panic, dump         dumped after its NMI panic

The second is the point of the `nmi` and `wait_panic` steps: the NMI turns the hang into a
panic, whose GUEST_PANICKED goes to the watchdog incident (no second incident, no on_panic
steps), and the dump's triage reads that panic out of the guest's memory.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from panicd.alerts import AlertKind
from tests.daemon_process import PanicdProcess, completed_dumps, daemon_section, metadata, unique
from tests.journal import Journald
from tests.linux_guest import (
    KERNEL_COMMAND_LINE,
    WATCHDOG_NMI_COMMAND_LINE,
    kernel,
    serial_log,
    watchdog_qemu_args,
)
from tests.qemu_harness import connect, disconnect
from tests.test_watchdog_e2e import done_incidents, steps

Start = Callable[..., PanicdProcess]

#: Debian 6.1's panic on an unclaimed NMI (arch/x86/kernel/nmi.c, unknown_nmi_error).
NMI_PANIC = "NMI: Not continuing"


@dataclass
class HungGuest:
    label: str
    command_line: str
    on_watchdog: str
    name: str = ""
    directory: Path = Path()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def qmp(self) -> Path:
        return self.directory / "g.qmp"

    @property
    def inspect(self) -> Path:
        """A second QMP monitor, for the test (panicd holds the first)."""
        return self.directory / "inspect.qmp"


async def runstate(guest: HungGuest) -> str:
    client = await connect(guest.inspect)
    try:
        status = await client.execute("query-status")
    finally:
        await disconnect(client)
    return str(status["status"])  # type: ignore[index]


@pytest.fixture
async def booted(short_tmp: Path) -> AsyncIterator[dict[str, HungGuest]]:
    """The two guests, booting (their watchdogs go unfed a few seconds in); killed at the end."""
    kernel()  # fails loudly, never skips, when the kernel package is missing
    guests = [HungGuest("hung", KERNEL_COMMAND_LINE, '["dump", "restart"]'),
              HungGuest("nmi", WATCHDOG_NMI_COMMAND_LINE, '["nmi", "wait_panic", "dump"]')]
    for n, guest in enumerate(guests):
        guest.name = unique(f"linux-{guest.label}")
        guest.directory = short_tmp / f"w{n}"
        guest.directory.mkdir()
        args = watchdog_qemu_args(guest.directory, command_line=guest.command_line)
        # QEMU's defaults (watchdog reset, panic shutdown): panicd takes both over on connect.
        guest.proc = subprocess.Popen(  # noqa: ASYNC220 - started and left to boot, killed at the end
            ["qemu-system-x86_64", *args, "-name", guest.name,
             "-qmp", f"unix:{guest.qmp},server=on,wait=off",
             "-qmp", f"unix:{guest.inspect},server=on,wait=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield {g.label: g for g in guests}
    finally:
        for guest in guests:
            if guest.proc is not None:
                guest.proc.kill()
                guest.proc.wait()


def config(tmp: Path, guests: dict[str, HungGuest]) -> str:
    text = daemon_section(tmp, "min_free_bytes = 0")
    for guest in guests.values():
        text += f'[[guest]]\nsocket = "{guest.qmp}"\n'
    for guest in guests.values():
        text += (f'[[policy]]\nmatch = "{guest.name}"\non_watchdog = {guest.on_watchdog}\n'
                 'on_panic = ["dump", "pause"]\nwait_panic = { timeout = 20 }\n'
                 'dump = { format = "kdump-zlib", timeout = 60 }\n')
    return text


async def test_hung_linux_guests_are_dumped_and_an_nmi_turns_a_hang_into_a_titled_panic(
        short_tmp: Path, panicd: Start, journal: Journald,
        booted: dict[str, HungGuest]) -> None:
    daemon = panicd(config(short_tmp, booted))

    # The plain hung guest: dumped while stopped by its watchdog, then restarted.
    hung = booted["hung"]
    (hung_dump,) = await completed_dumps(short_tmp, hung.name, timeout=60)
    (record,) = await done_incidents(short_tmp, hung.name, timeout=30)
    assert (record["kind"], record["action"]) == ("watchdog", "pause")
    assert [(s["name"], s["ok"]) for s in record["steps"]] == [("dump", True), ("restart", True)]
    assert steps(record)["restart"]["power"]["status"] == "running"
    assert metadata(hung_dump)["incident"]["kind"] == "watchdog"
    assert "watchdog did not stop!" in serial_log(hung.directory).read_text(errors="replace")
    assert await runstate(hung) == "running"
    (alert,) = await journal.find(MESSAGE_ID=AlertKind.WATCHDOG.message_id, GUEST_NAME=hung.name)
    assert alert["POLICY_STEPS"] == "dump restart"

    # The NMI guest: one incident, of kind watchdog; the panic the NMI caused is in its
    # wait_panic step, and the dump (made after it) is titled by that panic.
    nmi = booted["nmi"]
    (nmi_dump,) = await completed_dumps(short_tmp, nmi.name, timeout=60)
    (record,) = await done_incidents(short_tmp, nmi.name, timeout=30)
    assert record["kind"] == "watchdog"
    assert [(s["name"], s["ok"]) for s in record["steps"]] == [
        ("nmi", True), ("wait_panic", True), ("dump", True)]
    by_name = steps(record)
    assert by_name["nmi"]["nmi"]["status_before"] == "watchdog"
    assert by_name["nmi"]["nmi"]["resumed"] is True
    assert by_name["wait_panic"]["skipped"] is None
    assert by_name["wait_panic"]["wait_panic"]["panic_action"] == "pause"
    triage = metadata(nmi_dump)["triage"]
    print("NMI panic, as triage read it from the dump:",
          {k: triage.get(k) for k in ("panic_line", "panic_reason", "title", "first_problem")})
    assert NMI_PANIC in triage["panic_reason"]
    assert NMI_PANIC in record["dump"]["panic_reason"]
    assert record["crash"] is not None and "NMI" in record["crash"]["title"]
    (dumped,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id,
                                   GUEST_NAME=nmi.name)
    assert NMI_PANIC in dumped["PANIC_REASON"]
    # The panic was handed to the watchdog incident: no panic alert, no second incident.
    assert journal.entries(MESSAGE_ID=AlertKind.PANIC.message_id, GUEST_NAME=nmi.name) == []
    assert daemon.events("panic.handed_over", guest=nmi.name)
    assert len(await done_incidents(short_tmp, nmi.name)) == 1
    assert await runstate(nmi) == "guest-panicked"
    assert await daemon.stop() == 0
