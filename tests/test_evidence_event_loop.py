"""Recording a completed dump never blocks the event loop that serves every other guest."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
from pathlib import Path
from typing import Any

from panicd.alerts import Alert
from panicd.dumps import DumpStore
from panicd.evidence import Evidence, record_completed
from panicd.metrics import Metrics
from panicd.records import DumpIncident, DumpInfo, DumpRecord, GuestRecord


class NoAlerts:
    def send(self, alert: Alert) -> None:
        raise AssertionError(f"no alert expected here: {alert}")


async def test_the_completed_record_is_written_while_the_event_loop_serves_others(
    tmp_path: Path,
) -> None:
    """`<dump>.json` is fsync'd: on a slow disk that takes long. Written on the event loop,
    no other guest's event or command would be handled meanwhile (issue 9: writes never run
    on the event loop). Here the write waits until a task on the loop has run: it completes
    only if the loop is free while the write is under way."""
    store = DumpStore(tmp_path / "dumps")
    started_at = dt.datetime.now(dt.UTC)
    dump_file = store.create("web", "elf", started_at)
    os.write(dump_file.fd, b"\0" * 4096)
    os.close(dump_file.fd)
    record = DumpRecord(
        guest=GuestRecord(name="web", socket="/run/web.qmp"),
        incident=DumpIncident(kind="panic", detection="event", received_at=started_at),
        dump=DumpInfo(path=str(dump_file.path), format="elf", started_at=started_at))
    loop_ran = threading.Event()
    loop_was_free: list[bool] = []
    write = store.write_metadata

    def slow_disk_write(dump: Path, metadata: dict[str, Any]) -> Path:
        # A disk slow to fsync: the write ends once the loop has served someone else.
        loop_was_free.append(loop_ran.wait(timeout=5))
        return write(dump, metadata)

    store.write_metadata = slow_disk_write  # type: ignore[method-assign]

    async def another_guest() -> None:
        await asyncio.sleep(0.01)
        loop_ran.set()

    other = asyncio.create_task(another_guest())
    not_recorded = await record_completed(Evidence(store, NoAlerts(), Metrics()), record,
                                          guest_bytes=4096, seconds=0.1)
    await other
    assert not_recorded == {}
    assert loop_was_free == [True]
    assert store.records("web", None)[0]["dump"]["result"] == "completed"
