"""Crash titles end to end: real Debian guests crashed five ways under a real `panicd run`.

Seven guests boot at once (Debian's 6.1 kernel under TCG, tests/linux_guest.py), each crashed
a different way or a second time the same way:

    guest          crash                        policy          title from
    sysrq          echo c > /proc/sysrq-trigger dump            the dump
    init-exit      /init exits                  dump            the dump
    null           the test module's NULL write dump            the dump
    bug            the test module's BUG()      dump            the dump
    warn           the test module's WARN()     dump            the dump
    warn-again     WARN() again, no vmcoreinfo  dump            the console log (the dump has no VMCOREINFO)
    sysrq-again    sysrq again                  pause           the console log (no dump)

What a user sees is asserted: the DUMP_COMPLETED and NEW_CRASH_SIGNATURE alerts in journald,
the incident records, `<dump>.json`, `panicd incidents --by-signature --json`, and
`panicd triage --log` on each guest's serial console file giving the same title.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from panicd import control
from panicd.alerts import AlertKind
from panicd.triage.title import signature_of
from tests.daemon_process import PanicdProcess, completed_dumps, daemon_section, metadata, unique, wait_for
from tests.journal import Journald
from tests.linux_guest import CrashKind, crash_module, kernel, qemu_args, serial_log
from tests.test_incident_store_e2e import incidents_of
from tests.test_linux_crashes import TITLES  # syzkaller's titles for the five kinds

Start = Callable[..., PanicdProcess]



@dataclass
class Guest:
    label: str
    crash: CrashKind
    steps: str
    vmcoreinfo: bool = True
    name: str = ""
    directory: Path = Path()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def qmp(self) -> Path:
        return self.directory / "g.qmp"

    @property
    def title(self) -> str:
        return TITLES[self.crash]


GUESTS = [
    Guest("sysrq", "sysrq", '["dump"]'),
    Guest("init-exit", "init-exit", '["dump"]'),
    Guest("null", "null", '["dump"]'),
    Guest("bug", "bug", '["dump"]'),
    Guest("warn", "warn", '["dump"]'),
    Guest("warn-again", "warn", '["dump"]', vmcoreinfo=False),
    Guest("sysrq-again", "sysrq", '["pause"]'),
]


@pytest.fixture
async def booted(short_tmp: Path) -> AsyncIterator[list[Guest]]:
    """The seven guests, booting (they panic a few seconds in); killed at the end."""
    kernel()  # fails loudly, never skips, when the kernel package is missing
    crash_module()  # built (or found in the cache) once, before the guests race to it
    guests = [Guest(g.label, g.crash, g.steps, g.vmcoreinfo) for g in GUESTS]
    for n, guest in enumerate(guests):
        guest.name = unique(f"linux-{guest.label}")
        guest.directory = short_tmp / f"l{n}"
        guest.directory.mkdir()
        args = qemu_args(guest.directory, vmcoreinfo=guest.vmcoreinfo, crash=guest.crash)
        guest.proc = subprocess.Popen(  # noqa: ASYNC220 - started and left to boot, killed at the end
            ["qemu-system-x86_64", *args, "-name", guest.name, "-action", "panic=pause",
             "-qmp", f"unix:{guest.qmp},server=on,wait=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield guests
    finally:
        for guest in guests:
            if guest.proc is not None:
                guest.proc.kill()
                guest.proc.wait()


def config(tmp: Path, guests: list[Guest]) -> str:
    text = daemon_section(tmp, "min_free_bytes = 0")
    for guest in guests:
        text += (f'[[guest]]\nsocket = "{guest.qmp}"\n'
                 f'console_log = "{serial_log(guest.directory)}"\n')
    for guest in guests:
        text += (f'[[policy]]\nmatch = "{guest.name}"\non_panic = {guest.steps}\n'
                 'dump = { format = "kdump-zlib", timeout = 120 }\n')
    return text


async def run_cli(*args: str) -> Any:
    cli = await asyncio.create_subprocess_exec(sys.executable, "-m", "panicd", *args,
                                               stdout=asyncio.subprocess.PIPE)
    out, _ = await cli.communicate()
    assert cli.returncode == 0, args
    return json.loads(out)


async def test_real_linux_crashes_are_titled_grouped_and_new_ones_alerted_once(
        short_tmp: Path, panicd: Start, journal: Journald, booted: list[Guest]) -> None:
    by_label = {g.label: g for g in booted}
    daemon = panicd(config(short_tmp, booted))

    dumped = [g for g in booted if g.steps != '["pause"]']
    dumps: dict[str, Path] = {}
    for guest in dumped:
        (dump,) = await completed_dumps(short_tmp, guest.name, timeout=150)
        dumps[guest.label] = dump
        (alert,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id,
                                      GUEST_NAME=guest.name)
        source = "dump" if guest.vmcoreinfo else "console_log"
        assert (alert["CRASH_TITLE"], alert["CRASH_SIGNATURE"], alert["CRASH_TITLE_SOURCE"]) == (
            guest.title, signature_of(guest.title), source), guest.label
        assert alert["MESSAGE"].startswith(f"Guest {guest.name}: {guest.title} ("), alert["MESSAGE"]
        triage = metadata(dump)["triage"]
        assert (triage["title"], triage["signature"], triage["source"]) == (
            guest.title, signature_of(guest.title), source)
    pausing = by_label["sysrq-again"]
    await daemon.wait_event("signature.sighted", guest=pausing.name, timeout=150)

    # Every incident's record holds its title; the two crashes of one kind on two guests are
    # one signature, seen twice on two guests, and only the first was alerted as new.
    records = {}
    for guest in booted:
        (record,) = await wait_for(lambda g=guest: [r for r in incidents_of(short_tmp, g.name)
                                                   if r.crash is not None],
                                   what=f"{guest.label}'s titled incident")
        records[guest.label] = record
        assert record.crash is not None
        assert record.crash.title == guest.title, guest.label
    for first, again in (("warn", "warn-again"), ("sysrq", "sysrq-again")):
        crashes = sorted((records[first].crash, records[again].crash),
                         key=lambda c: (c.count if c else 0))
        earlier, later = crashes
        assert earlier is not None and later is not None
        assert (earlier.new, earlier.count, earlier.guests) == (True, 1, 1)
        assert (later.new, later.count, later.guests) == (False, 2, 2)
        # Since when: the earliest of the two panics, whichever was titled first.
        seen = (records[first].seen_at, records[again].seen_at)
        assert later.first_seen == pytest.approx(min(seen))
    assert records["sysrq-again"].crash is not None
    assert records["sysrq-again"].crash.source == "console_log"
    assert records["warn-again"].crash is not None
    assert records["warn-again"].crash.source == "console_log"

    # (Other runs' entries may hold names journald keeps as bytes: JSON arrays, not strings.)
    names = {g.name for g in booted}
    new = [e for e in journal.entries(MESSAGE_ID=AlertKind.NEW_CRASH_SIGNATURE.message_id)
           if isinstance(e.get("GUEST_NAME"), str) and e["GUEST_NAME"] in names]
    assert sorted(e["CRASH_TITLE"] for e in new) == sorted(TITLES.values())
    assert all(e["PRIORITY"] == "2" for e in new)
    # A known one's alert says how often it was seen, since when.
    for label in ("warn", "warn-again"):
        (alert,) = journal.entries(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id,
                                   GUEST_NAME=by_label[label].name)
        record_crash = records[label].crash
        assert record_crash is not None
        assert alert["SIGNATURE_COUNT"] == str(record_crash.count)
        assert alert["SIGNATURE_GUESTS"] == str(record_crash.guests)
        assert alert["SIGNATURE_NEW"] == ("true" if record_crash.new else "false")

    summaries = await run_cli("incidents", "--state-dir", str(short_tmp / "state"),
                              "--by-signature", "--json")
    counts = {s["title"]: (s["count"], s["guests"]) for s in summaries}
    assert counts == {TITLES["sysrq"]: (2, 2), TITLES["init-exit"]: (1, 1), TITLES["null"]: (1, 1),
                      TITLES["bug"]: (1, 1), TITLES["warn"]: (2, 2)}
    newest = {s["title"]: s["newest_dump"] for s in summaries}
    assert newest[TITLES["sysrq"]] == str(dumps["sysrq"])  # sysrq-again made none

    await an_operators_dump_is_no_second_sighting(short_tmp, journal, by_label["null"])

    # The same console logs through `panicd triage --log` give the same titles.
    for guest in booted:
        report = await run_cli("triage", "--log", str(serial_log(guest.directory)), "--json")
        assert (report["title"], report["source"]) == (guest.title, "console_log"), guest.label
    assert await daemon.stop() == 0


async def an_operators_dump_is_no_second_sighting(tmp: Path, journal: Journald,
                                                  guest: Guest) -> None:
    """An operator dumps a guest its panic left stopped: the dump's kernel log holds that
    crash, already counted; the operator's request is no second sighting."""
    with control.ControlConnection(tmp / "control.sock") as connection:
        connection.send({"command": "guest", "guest": guest.name, "action": "dump", "wait": 150})
        assert connection.receive().get("ok")
    await journal.find(timeout=150, count=2, MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id,
                       GUEST_NAME=guest.name)
    summaries = await run_cli("incidents", "--state-dir", str(tmp / "state"),
                              "--by-signature", "--json")
    assert {s["title"]: s["count"] for s in summaries}[guest.title] == 1
