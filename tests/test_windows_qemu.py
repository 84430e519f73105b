"""Windows-guest settings against a real QEMU 7.2 (no guest OS: qtest writes the pvpanic port).

- `format = "win-dmp"`: QEMU 7.2 offers it (query-dump-guest-memory-capability lists it) but
  writes it only for a Windows guest that filled the vmcoreinfo device; for any other guest the
  detached dump fails at once (DUMP_COMPLETED failed, "win-dump: invalid vmcoreinfo note
  size", nothing written). panicd makes the dump again as elf, and says so.
- `panic_action = "none"` (libvirt's preserve-running): QEMU reports GUEST_PANICKED {action:
  run} and the guest runs on; a `dump` step still works (QEMU stops the guest for the dump
  and resumes it after), and the incident is recorded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from panicd.alerts import AlertKind
from panicd.incidents_view import format_incident
from panicd.records import IncidentState
from tests.daemon_process import (
    PanicdProcess,
    completed_dumps,
    daemon_section,
    dumps_of,
    metadata,
    unique,
    wait_for,
)
from tests.journal import Journald
from tests.qemu_harness import Qemus
from tests.test_incident_store_e2e import incidents_of

pytestmark = pytest.mark.qemu
Start = Callable[..., PanicdProcess]
WIN_DUMP_REFUSED = "win-dump: invalid vmcoreinfo note size"


def config(tmp: Path, socket: Path, policy: str) -> str:
    return (daemon_section(tmp, "min_free_bytes = 0") + f'[[guest]]\nsocket = "{socket}"\n'
            f"[[policy]]\n{policy}\n")


async def test_win_dmp_that_qemu_refuses_is_written_as_elf_and_said(
        short_tmp: Path, qemus: Qemus, panicd: Start, journal: Journald) -> None:
    name = unique("linux-win-dmp")
    guest = await qemus(name, memory_mib=16)
    daemon = panicd(config(short_tmp, guest.qmp_path,
                           'on_panic = ["dump", "pause"]\ndump = { format = "win-dmp" }'))
    await daemon.wait_event("qmp.connected", guest=name)
    assert await guest.panic(1) == "OK"

    (dump,) = await completed_dumps(short_tmp, name)
    assert dump.read_bytes()[:4] == b"\x7fELF"
    meta = metadata(dump)["dump"]
    assert (meta["format"], meta["requested_format"]) == ("elf", "win-dmp")
    assert meta["format_fallback"] == f"QEMU refused win-dmp ({WIN_DUMP_REFUSED}): written as elf"
    assert dumps_of(short_tmp, name) == [dump]  # the refused attempt left no file behind
    (refused,) = daemon.events("dump.format_refused")
    assert (refused["wanted"], refused["error"], refused["using"]) == (
        "win-dmp", WIN_DUMP_REFUSED, "elf")
    (done,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id, GUEST_NAME=name)
    assert f"QEMU refused win-dmp ({WIN_DUMP_REFUSED}): written as elf" in done["MESSAGE"]
    assert (done["DUMP_FORMAT"], done["DUMP_REQUESTED_FORMAT"]) == ("elf", "win-dmp")
    assert not await journal.find(timeout=0, MESSAGE_ID=AlertKind.DUMP_FAILED.message_id,
                                  GUEST_NAME=name)
    # QEMU itself carried out both: the refused win-dmp and the elf.
    results = [d["result"]["status"] for n, d in guest.events if n == "DUMP_COMPLETED"]
    assert results == ["failed", "completed"]
    assert await guest.status() == "guest-panicked"
    # And where an operator looks: `panicd incidents show`.
    (record,) = await wait_for(lambda: [r for r in incidents_of(short_tmp, name)
                                        if r.dump is not None], what="the incident's dump")
    shown = format_incident(record)
    assert re.search(r"dump format fallback +QEMU refused win-dmp \(win-dump: ", shown), shown
    assert re.search(r"dump triage error +panicd triage: no VMCOREINFO", shown), shown


async def test_panic_action_none_keeps_the_guest_running_and_records_the_incident(
        short_tmp: Path, qemus: Qemus, panicd: Start, journal: Journald) -> None:
    name = unique("preserve-running")
    guest = await qemus(name, memory_mib=16)  # QEMU's own default: shutdown
    daemon = panicd(config(short_tmp, guest.qmp_path,
                           'panic_action = "none"\non_panic = ["dump"]'))
    await daemon.wait_event("qmp.connected", guest=name)
    assert await guest.panic(1) == "OK"

    assert (await guest.events_until("GUEST_PANICKED"))[-1] == ("GUEST_PANICKED", {"action": "run"})
    (dump,) = await completed_dumps(short_tmp, name)
    assert dump.stat().st_size > 16 * 2**20
    await wait_for(lambda: [r for r in incidents_of(short_tmp, name)
                            if r.state is IncidentState.DONE], what="the incident done")
    assert await guest.status() == "running"
    # QEMU stopped the running guest only for the dump, and let it run again after it.
    names = [n for n, _ in guest.events if n in ("GUEST_PANICKED", "STOP", "RESUME",
                                                 "DUMP_COMPLETED")]
    assert names in (["GUEST_PANICKED", "STOP", "RESUME", "DUMP_COMPLETED"],
                     ["GUEST_PANICKED", "STOP", "DUMP_COMPLETED", "RESUME"]), names
    (record,) = incidents_of(short_tmp, name)
    assert record.action == "run"
    assert [(s.name, s.ok) for s in record.steps] == [("dump", True)]
    (panic,) = await journal.find(MESSAGE_ID=AlertKind.PANIC.message_id, GUEST_NAME=name)
    assert panic["PANIC_ACTION"] == "run"
