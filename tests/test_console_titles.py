"""Crash titles read from a guest's serial console file, against real QEMU 7.2 and journald.

These guests run no OS (a panic is `outb 0x505 0x1` on the qtest socket), so their dumps hold
no VMCOREINFO and triage reads nothing out of them: the title must come from the console log
the config names (`console_log`), as for a guest started without -device vmcoreinfo. The test
writes the console file as QEMU's `-serial file:` would. The same path with real Linux guests
(dump and serial log side by side) is in test_crash_signatures_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

from panicd import control
from panicd.alerts import AlertKind
from panicd.records import IncidentRecord
from panicd.triage.title import signature_of
from tests.daemon_process import PanicdProcess, completed_dumps, daemon_section, metadata, unique, wait_for
from tests.journal import Journald
from tests.qemu_harness import Qemus
from tests.test_daemon_e2e import wait_for_status
from tests.test_incident_store_e2e import incidents_of

Start = Callable[..., PanicdProcess]

TITLE = "WARNING in panicd_fake_probe"

#: A console log as a serial file holds it: an earlier boot that crashed otherwise (it must
#: not be taken for this one's), then this boot's WARNING and panic.
CRASHED = """\
[    0.000000] Linux version 6.1.0-99-amd64 (debian-kernel@lists.debian.org) #1 SMP
[    3.100000] BUG: kernel NULL pointer dereference, address: 0000000000000008
[    3.100100] RIP: 0010:old_boot_function+0x12/0x40
[    3.100200] Kernel panic - not syncing: Fatal exception
[    0.000000] Linux version 6.1.0-99-amd64 (debian-kernel@lists.debian.org) #1 SMP
[    0.000000] Command line: console=ttyS0 panic_on_warn=1
[    5.210000] panicd_fake: loading out-of-tree module taints kernel.
[    5.220000] ------------[ cut here ]------------
[    5.220001] panicd fake warning
[    5.220100] WARNING: CPU: 0 PID: 123 at fake/fake.c:27 panicd_fake_probe+0x15/0x30 [panicd_fake]
[    5.220200] Modules linked in: panicd_fake(O+) qemu_fw_cfg pvpanic_mmio pvpanic
[    5.220300] CPU: 0 PID: 123 Comm: insmod Tainted: G           O       6.1.0-99-amd64 #1  Debian 6.1.99-1
[    5.220400] RIP: 0010:panicd_fake_probe+0x15/0x30 [panicd_fake]
[    5.220500] Call Trace:
[    5.220600]  <TASK>
[    5.220700]  do_one_initcall+0x41/0x200
[    5.220800]  do_init_module+0x4c/0x1f0
[    5.220900]  __do_sys_finit_module+0xac/0x120
[    5.221000]  do_syscall_64+0x55/0xb0
[    5.221100]  entry_SYSCALL_64_after_hwframe+0x6e/0xd8
[    5.221200]  </TASK>
[    5.221300] ---[ end trace 0000000000000000 ]---
[    5.221400] Kernel panic - not syncing: kernel: panic_on_warn set ...
"""

#: What a restart's new boot appends after the panic was seen: never the title's source.
REBOOTED = """\
[    0.000000] Linux version 6.1.0-99-amd64 (debian-kernel@lists.debian.org) #1 SMP
[    2.000000] general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] SMP
[    2.000100] RIP: 0010:after_the_restart+0x1/0x2
"""


def config(tmp: Path, guests: dict[str, str]) -> str:
    """Each guest (name: policy steps) with its console log under `tmp`/serial/."""
    text = daemon_section(tmp, "min_free_bytes = 0")
    for name, steps in guests.items():
        text += (f'[[policy]]\nmatch = "{name}"\non_panic = {steps}\n'
                 f'console_log = "{tmp}/serial/{{name}}.log"\n')
    return text


async def test_the_console_log_titles_a_crash_the_dump_cannot_and_a_second_guest_is_a_known_one(
        short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus) -> None:
    dumped, undumped = unique("console-dumped"), unique("console-undumped")
    serial = short_tmp / "serial"
    serial.mkdir()
    first, second = await qemus(dumped), await qemus(undumped)
    daemon = panicd(config(short_tmp, {dumped: '["dump", "pause"]', undumped: '["pause"]'})
                    + f'[[guest]]\nsocket = "{first.qmp_path}"\n[[guest]]\nsocket = "{second.qmp_path}"\n')
    await daemon.wait_event("qmp.connected", guest=dumped)
    await daemon.wait_event("qmp.connected", guest=undumped)

    (serial / f"{dumped}.log").write_text(CRASHED)
    await first.panic()
    await daemon.wait_event("dump.started", guest=dumped)
    # The guest "restarts" and its new boot writes on: after the panic was seen.
    with (serial / f"{dumped}.log").open("a") as f:
        f.write(REBOOTED)
    (dump,) = await completed_dumps(short_tmp, dumped)
    (completed,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id,
                                      GUEST_NAME=dumped)
    assert completed["CRASH_TITLE"] == TITLE
    assert completed["CRASH_SIGNATURE"] == signature_of(TITLE)
    assert completed["CRASH_TITLE_SOURCE"] == "console_log"
    assert (completed["SIGNATURE_NEW"], completed["SIGNATURE_COUNT"],
            completed["SIGNATURE_GUESTS"]) == ("true", "1", "1")
    assert completed["MESSAGE"].startswith(f"Guest {dumped}: {TITLE} (new); memory dump written")
    # Why the dump itself gave no title is kept.
    assert "VMCOREINFO" in completed["DUMP_TRIAGE_ERROR"]
    triage = metadata(dump)["triage"]
    assert (triage["title"], triage["source"], triage["blamed_frame"]) == (
        TITLE, "console_log", "panicd_fake_probe")
    (new,) = await journal.find(MESSAGE_ID=AlertKind.NEW_CRASH_SIGNATURE.message_id,
                                GUEST_NAME=dumped)
    assert new["PRIORITY"] == "2"
    assert new["CRASH_TITLE"] == TITLE
    assert new["DUMP_PATH"] == str(dump)

    # The second guest has no dump step: its title comes from its console log alone, once
    # its steps have run; a title seen before is counted, not alerted as new.
    (serial / f"{undumped}.log").write_text(CRASHED)
    await second.panic()
    await daemon.wait_event("signature.sighted", guest=undumped, timeout=30)
    (record,) = await wait_for(lambda: [r for r in incidents_of(short_tmp, undumped)
                                        if r.crash is not None], what="a titled incident")
    assert record.crash is not None
    assert (record.crash.title, record.crash.source, record.crash.new) == (TITLE, "console_log", False)
    assert (record.crash.count, record.crash.guests) == (2, 2)
    assert await second.status() == "guest-panicked"
    assert await journal.find(timeout=2, MESSAGE_ID=AlertKind.NEW_CRASH_SIGNATURE.message_id,
                              GUEST_NAME=undumped) == []
    (dumped_record,) = await wait_for(lambda: [r for r in incidents_of(short_tmp, dumped)
                                               if r.dump is not None], what="the dump recorded")
    assert dumped_record.crash is not None and dumped_record.crash.new
    # What the dump itself lacked shows in `panicd incidents show`, as in the alert.
    assert dumped_record.dump is not None and "VMCOREINFO" in (dumped_record.dump.triage_error or "")


async def test_by_signature_counts_the_console_titled_incidents(
        short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus) -> None:
    """`panicd incidents --by-signature` as an operator runs it, after two guests crashed alike."""
    names = [unique("by-sig-a"), unique("by-sig-b")]
    serial = short_tmp / "serial"
    serial.mkdir()
    guests = [await qemus(name) for name in names]
    daemon = panicd(config(short_tmp, dict.fromkeys(names, '["pause"]'))
                    + "".join(f'[[guest]]\nsocket = "{g.qmp_path}"\n' for g in guests))
    for name, guest in zip(names, guests, strict=True):
        await daemon.wait_event("qmp.connected", guest=name)
        (serial / f"{name}.log").write_text(CRASHED)
        await guest.panic()
        await daemon.wait_event("signature.sighted", guest=name, timeout=30)
    await wait_for(lambda: all(r.crash is not None for n in names for r in incidents_of(short_tmp, n)),
                   what="both incidents titled")
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "panicd", "incidents", "--state-dir", str(short_tmp / "state"),
        "--by-signature", "--json", stdout=asyncio.subprocess.PIPE)
    out, _ = await cli.communicate()
    assert cli.returncode == 0
    (summary,) = json.loads(out)
    assert (summary["title"], summary["count"], summary["guests"]) == (TITLE, 2, 2)
    assert summary["newest_dump"] is None


async def test_a_crash_title_with_control_characters_is_still_readable_in_the_journal(
        short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus) -> None:
    """A C1 control or bidi override in the guest's panic text must not turn the alert into a
    binary journal field, which `journalctl` shows as `[46B blob data]`."""
    name = unique("console-hostile")
    serial = short_tmp / "serial"
    serial.mkdir()
    guest = await qemus(name)
    daemon = panicd(config(short_tmp, {name: '["dump", "pause"]'})
                    + f'[[guest]]\nsocket = "{guest.qmp_path}"\n')
    await daemon.wait_event("qmp.connected", guest=name)
    (serial / f"{name}.log").write_text(
        "[    1.000000] Kernel panic - not syncing: evil \u009b31mRED\u202e sdrawkcab\n")
    await guest.panic()
    await completed_dumps(short_tmp, name)
    (alert,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id, GUEST_NAME=name)
    # journalctl -o json gives a binary field as a list of byte values, text as a string.
    assert isinstance(alert["MESSAGE"], str) and isinstance(alert["CRASH_TITLE"], str)
    for text in (alert["CRASH_TITLE"], alert["MESSAGE"]):
        assert "kernel panic: evil" in text
        assert "\u009b" not in text and "\u202e" not in text


async def test_an_operators_request_is_no_crash_sighting(
        short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus) -> None:
    """The console's last boot still holds the crash after a panic left the guest paused: a
    `panicd guest NAME dump` or restart then reports no new crash. The next real crash is the
    second sighting, not the fourth."""
    name = unique("console-manual")
    serial = short_tmp / "serial"
    serial.mkdir()
    guest = await qemus(name)
    daemon = panicd(config(short_tmp, {name: '["pause"]'})
                    + f'[[guest]]\nsocket = "{guest.qmp_path}"\n')
    await daemon.wait_event("qmp.connected", guest=name)
    (serial / f"{name}.log").write_text(CRASHED)
    await guest.panic()
    await daemon.wait_event("signature.sighted", guest=name, timeout=30)
    for action in ("dump", "restart"):
        with control.ControlConnection(short_tmp / "control.sock") as connection:
            connection.send({"command": "guest", "guest": name, "action": action, "wait": 60})
            reply = connection.receive()
        assert reply.get("ok"), reply
    await wait_for(lambda: len([r for r in incidents_of(short_tmp, name)
                                if r.kind.value == "manual" and r.state.value == "done"]) == 2,
                   what="both requests done")
    await wait_for_status(guest, "running")
    # The manual dump is announced (its title, had it one, sighted) before the next crash.
    await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id, GUEST_NAME=name)

    with (serial / f"{name}.log").open("a") as log:
        log.write(CRASHED)  # the restarted guest crashes alike
    await guest.panic()

    def titled() -> list[IncidentRecord] | None:
        records = incidents_of(short_tmp, name)
        return records if len(records) == 4 and records[0].crash is not None else None

    newest, *manual, first = await wait_for(titled, what="the second panic titled")
    assert [r.kind.value for r in manual] == ["manual", "manual"]
    assert [r.crash for r in manual] == [None, None]
    assert newest.crash is not None and first.crash is not None
    assert (newest.crash.title, newest.crash.count) == (TITLE, 2)
