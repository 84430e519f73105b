"""One way to finish a dump: a live dump and one finished after panicd was killed end alike."""

from __future__ import annotations

import datetime as dt
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from panicd.alerts import AlertKind
from tests.daemon_process import PanicdProcess, completed_dumps, daemon_section, metadata, unique
from tests.journal import Journald
from tests.qemu_harness import QemuGuest, Qemus

Start = Callable[[str], PanicdProcess]


def config(tmp: Path, guest: QemuGuest) -> str:
    return (daemon_section(tmp, "min_free_bytes = 0") + f'[[guest]]\nsocket = "{guest.qmp_path}"\n'
            '[[policy]]\non_panic = ["dump", "pause"]\n')


def shape(value: Any) -> Any:
    """The keys of a JSON document, nested, without the values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    return None


def alert_fields(entry: dict[str, Any]) -> set[str]:
    """The fields panicd sent (journald's own start with an underscore)."""
    return {k for k in entry if not k.startswith("_")}


async def test_an_orphaned_dump_is_finished_with_the_same_record_and_alert_as_a_live_one(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    live_guest = await qemus(unique("live"))
    live = panicd(config(short_tmp, live_guest))
    await live.wait_event("qmp.connected", guest=live_guest.name)
    await live_guest.panic()
    (live_dump,) = await completed_dumps(short_tmp, live_guest.name)
    (live_alert,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id,
                                       GUEST_NAME=live_guest.name)
    assert await live.stop() == 0

    # A big guest, and panicd killed (-9) while QEMU writes: QEMU goes on; the next panicd
    # finds the dump finished on connect (orphans.py) and finishes it as the live one was.
    orphan_guest = await qemus(unique("orphan"), memory_mib=2048)
    first = panicd(config(short_tmp, orphan_guest))
    await first.wait_event("qmp.connected", guest=orphan_guest.name)
    await orphan_guest.panic()
    await first.wait_event("dump.started", guest=orphan_guest.name)
    assert first.proc is not None
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    second = panicd(config(short_tmp, orphan_guest))
    (orphan_dump,) = await completed_dumps(short_tmp, orphan_guest.name, timeout=60)
    (orphan_alert,) = await journal.find(timeout=30, MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id,
                                         GUEST_NAME=orphan_guest.name)

    live_meta, orphan_meta = metadata(live_dump), metadata(orphan_dump)
    assert orphan_meta["dump"]["completed_while_panicd_was_away"] is True
    assert orphan_meta["dump"]["size_bytes"] == orphan_dump.stat().st_size > 2**31
    assert orphan_meta["incident"]["id"] and live_meta["incident"]["id"]
    # One assertion on both: the same record, triage and alert fields, whichever way it ended.
    assert (shape(live_meta), alert_fields(live_alert)) == (shape(orphan_meta),
                                                            alert_fields(orphan_alert))
    assert orphan_alert["INCIDENT_ID"] == orphan_meta["incident"]["id"]
    assert await second.stop() == 0


async def test_a_dump_completed_but_not_announced_is_announced_on_the_next_connection(
    tmp_path: Path,
) -> None:
    # What a panicd killed (-9) during a dump's triage leaves: the dump written and recorded
    # "completed", never announced. The next connection's orphan pass finishes it.
    from panicd.dumps import DumpStore
    from panicd.events import GuestIdentity
    from panicd.evidence import Evidence
    from panicd.metrics import Metrics
    from panicd.orphans import finish_orphaned_dumps
    from panicd.records import DumpIncident, DumpInfo, DumpRecord, GuestRecord

    store = DumpStore(tmp_path)
    guest = GuestIdentity(name="web", socket="/run/web.qmp", qemu_pid=4242)
    started_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
    dump = store.create(guest.name, "elf", started_at)
    os.write(dump.fd, b"\x7fELF" + b"\0" * 4096)
    os.close(dump.fd)
    record = DumpRecord(guest=GuestRecord.of(guest),
                        incident=DumpIncident(id="20261126-000000-abcdef", kind="panic",
                                              detection="event", received_at=started_at),
                        dump=DumpInfo(path=str(dump.path), format="elf", started_at=started_at,
                                      result="completed", size_bytes=4100, duration_seconds=0.2),
                        announced=False)
    store.write_metadata(dump.path, record.model_dump(mode="json"))

    class Monitor:
        identity = guest

        def session(self) -> object:
            raise AssertionError("a completed dump needs no question to QEMU")

    sent: list[Any] = []

    class Alerter:
        def send(self, alert: Any) -> None:
            sent.append(alert)

    await finish_orphaned_dumps(Monitor(), Evidence(store, Alerter(), Metrics()))  # type: ignore[arg-type]
    (alert,) = sent
    assert alert.kind is AlertKind.DUMP_COMPLETED
    assert alert.fields["INCIDENT_ID"] == "20261126-000000-abcdef"
    assert "TRIAGE_ERROR" in alert.fields  # triage ran (this file has no ELF notes to read)
    finished = metadata(dump.path)
    assert finished["announced"] is True and finished["triage"]["error"]
    # Announced once: a second pass finds nothing left to do.
    await finish_orphaned_dumps(Monitor(), Evidence(store, Alerter(), Metrics()))  # type: ignore[arg-type]
    assert len(sent) == 1
