"""Dumps under faults, against real QEMU 7.2, a real `panicd run` and a real journald.

- a QEMU frozen (SIGSTOP) while it writes its dump: the dump is kept and finished when QEMU
  runs again, other guests' dumps go ahead meanwhile, and the guest's next steps run;
- the dump directory removed while QEMU writes: a DUMP_FAILED naming it, the next steps run;
- a dump record left by a panicd killed before QEMU began the dump: removed quietly, and the
  resumed panic makes its dump;
- a full disk (a tmpfs out of inodes, in panicd's own mount namespace): a dump QEMU completed
  is kept and alerted even when its metadata cannot be written; a first record that cannot be
  written is a DUMP_FAILED saying so;
- a QEMU frozen before its dump began holds no dump turn; one merely slow keeps its turn;
- a QEMU frozen past the policy's dump timeout: the dump fails, and the guest is restarted
  once QEMU has finished writing.

SIGSTOP makes the faults deterministic: a stopped QEMU writes nothing, so the test acts while
the dump is surely unfinished, whatever the disk's speed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from panicd.alerts import Alert, AlertKind
from panicd.dumps import DumpSlots, DumpStore, safe_name
from panicd.events import GuestIdentity
from panicd.evidence import Evidence
from panicd.metrics import Metrics
from panicd.orphans import finish_orphaned_dumps
from panicd.records import qemu_instance
from tests.daemon_process import (
    PanicdProcess,
    completed_dumps,
    daemon_section,
    dumps_of,
    metadata,
    unique,
)
from tests.journal import Journald
from tests.qemu_harness import QemuGuest, Qemus

Start = Callable[[str], PanicdProcess]

MIB = 2**20
#: Big enough that QEMU needs a second or more to write the elf dump (about 0.85 GB/s here),
#: so the test sees dump.started long before QEMU could have finished.
BIG_GUEST_MIB = 2048


def config(tmp: Path, guests: list[QemuGuest], policy: str, daemon: str = "") -> str:
    listed = "".join(f'[[guest]]\nsocket = "{g.qmp_path}"\n' for g in guests)
    return f"{daemon_section(tmp, daemon)}{listed}\n[[policy]]\n{policy}\n"


def freeze(guest: QemuGuest) -> None:
    assert guest.proc is not None
    os.kill(guest.proc.pid, signal.SIGSTOP)


def thaw(guest: QemuGuest) -> None:
    assert guest.proc is not None
    os.kill(guest.proc.pid, signal.SIGCONT)


def need_free_space(path: Path, mib: int) -> None:
    free = shutil.disk_usage(path).free
    assert free > (mib + 1024) * MIB, f"{path} has {free // MIB} MiB free; this test writes {mib} MiB"


async def big_guest_frozen_mid_dump(tmp: Path, panicd: Start, qemus: Qemus, prefix: str, *,
                                    policy: str, daemon: str) -> tuple[QemuGuest, PanicdProcess]:
    """A big guest panicked under a `panicd run`, its QEMU frozen (SIGSTOP) once the dump has
    begun: it surely has not finished writing while the test acts."""
    need_free_space(tmp, BIG_GUEST_MIB)
    guest = await qemus(unique(prefix), memory_mib=BIG_GUEST_MIB)
    process = panicd(config(tmp, [guest], policy, daemon))
    await process.wait_event("qmp.connected", guest=guest.name)
    await guest.panic()
    await process.wait_event("dump.started", guest=guest.name)
    freeze(guest)
    return guest, process


async def wait_for_status(guest: QemuGuest, status: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (last := await guest.status()) != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"{guest.name} is {last!r}, not {status!r}")
        await asyncio.sleep(0.05)


def no_tracebacks(daemon: PanicdProcess) -> None:
    text = daemon.log_path.read_text(errors="replace")
    assert "Traceback" not in text, daemon.tail(80)
    assert not [e for e in daemon.log() if "exception" in e], daemon.tail(80)


async def test_a_frozen_qemu_keeps_its_dump_and_other_guests_dump_meanwhile(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    need_free_space(short_tmp, BIG_GUEST_MIB + 64)
    frozen = await qemus(unique("frozen"), memory_mib=BIG_GUEST_MIB)
    other = await qemus(unique("other"))
    command_timeout = 1
    daemon = panicd(config(
        short_tmp, [frozen, other],
        'on_panic = ["dump", "restart"]\ndump = { timeout = 120 }',
        f"max_concurrent_dumps = 1\ncommand_timeout = {command_timeout}\nmin_free_bytes = 0",
    ))
    await daemon.wait_event("qmp.connected", guest=frozen.name)
    await daemon.wait_event("qmp.connected", guest=other.name)

    await frozen.panic()
    await daemon.wait_event("dump.started", guest=frozen.name)
    freeze(frozen)
    frozen_at = time.monotonic()
    await other.panic()
    # The frozen dump gave its turn back: the other guest's dump is made, and it is restarted.
    (other_dump,) = await completed_dumps(short_tmp, other.name, timeout=30)
    await wait_for_status(other, "running")
    # Meanwhile the frozen guest's dump is kept, with its record, still "running".
    (frozen_dump,) = dumps_of(short_tmp, frozen.name)
    assert metadata(frozen_dump)["dump"]["result"] == "running"
    await daemon.wait_event("dump.stalled", guest=frozen.name)
    # Frozen for well past command_timeout (the old code gave up on the dump after it).
    await asyncio.sleep(max(0.0, 5 * command_timeout - (time.monotonic() - frozen_at)))
    assert dumps_of(short_tmp, frozen.name) == [frozen_dump]

    thaw(frozen)
    await daemon.wait_event("dump.resumed", guest=frozen.name, timeout=30)
    assert await completed_dumps(short_tmp, frozen.name, timeout=60) == [frozen_dump]
    meta = metadata(frozen_dump)["dump"]
    # All of the guest's RAM (QEMU counts a few ROM pages too: 2 GiB + 256 KiB here).
    assert BIG_GUEST_MIB * MIB <= meta["guest_bytes"] < (BIG_GUEST_MIB + 1) * MIB
    assert meta["size_bytes"] == frozen_dump.stat().st_size > BIG_GUEST_MIB * MIB
    assert frozen_dump.read_bytes()[:4] == b"\x7fELF"
    await wait_for_status(frozen, "running")  # restarted: the steps went on after the thaw

    (written,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id,
                                    GUEST_NAME=frozen.name)
    assert written["DUMP_PATH"] == str(frozen_dump)
    for kind in (AlertKind.DUMP_FAILED, AlertKind.STEP_FAILED):
        assert not await journal.find(timeout=0.5, MESSAGE_ID=kind.message_id,
                                      GUEST_NAME=frozen.name)
    assert other_dump.stat().st_size > 0
    no_tracebacks(daemon)
    assert await daemon.stop() == 0


async def test_the_dump_directory_removed_during_a_dump_is_a_dump_failure_naming_it(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    guest, daemon = await big_guest_frozen_mid_dump(
        short_tmp, panicd, qemus, "rmdir", policy='on_panic = ["dump", "restart"]',
        daemon="min_free_bytes = 0")
    directory = short_tmp / "dumps" / safe_name(guest.name)
    shutil.rmtree(directory)
    thaw(guest)

    (failed,) = await journal.find(timeout=30, MESSAGE_ID=AlertKind.DUMP_FAILED.message_id,
                                   GUEST_NAME=guest.name)
    assert failed["ERROR"] == (f"the dump directory {directory} was removed while QEMU wrote "
                               "the dump"), failed["ERROR"]
    await wait_for_status(guest, "running")  # the next step, restart, still ran
    await daemon.wait_event("step.done", guest=guest.name, step="restart")
    assert not await journal.find(timeout=0.5, MESSAGE_ID=AlertKind.STEP_FAILED.message_id,
                                  GUEST_NAME=guest.name)
    no_tracebacks(daemon)
    assert await daemon.stop() == 0


async def test_a_dump_qemu_never_began_is_removed_quietly_and_made_again(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    guest = await qemus(unique("unborn"), panic_action="pause")
    assert guest.proc is not None
    panicked_at = time.time()
    await guest.panic()
    assert await guest.status() == "guest-panicked"

    # What a panicd killed between writing the dump's record and dump-guest-memory leaves:
    # the panic pending (in the ledger file of earlier versions, imported into the incident
    # store at start), and an empty dump file with a "running" record.
    instance = qemu_instance(str(guest.qmp_path), guest.proc.pid)
    assert instance is not None
    (short_tmp / "state").mkdir()
    (short_tmp / "state" / "handled-panics.json").write_text(
        json.dumps({instance: {"state": "pending", "at": panicked_at}}))
    started_at = dt.datetime.now(dt.UTC)
    directory = short_tmp / "dumps" / safe_name(guest.name)
    directory.mkdir(parents=True)
    stale = directory / f"{started_at.strftime('%Y%m%dT%H%M%S.%fZ')}.elf"
    stale.touch(mode=0o600)
    stale.with_name(stale.name + ".json").write_text(json.dumps({
        "guest": {"name": guest.name, "socket": str(guest.qmp_path), "qemu_pid": guest.proc.pid},
        "incident": {"kind": "panic", "detection": "event", "action": "pause"},
        "dump": {"path": str(stale), "format": "elf", "requested_format": "elf",
                 "paging": False, "started_at": started_at.isoformat(), "result": "running"},
    }))

    daemon = panicd(config(short_tmp, [guest], 'on_panic = ["dump", "pause"]'))
    await daemon.wait_event("panic.resumed", guest=guest.name)
    (dump,) = await completed_dumps(short_tmp, guest.name)
    await daemon.wait_event("incident.handled", guest=guest.name)
    assert dump != stale
    assert not stale.exists()
    assert not stale.with_name(stale.name + ".json").exists()
    assert dump.read_bytes()[:4] == b"\x7fELF"
    assert metadata(dump)["incident"]["detection"] == "resumed"
    assert not await journal.find(timeout=1.0, MESSAGE_ID=AlertKind.DUMP_FAILED.message_id,
                                  GUEST_NAME=guest.name)
    (written,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id,
                                    GUEST_NAME=guest.name)
    assert written["DUMP_PATH"] == str(dump)
    assert await guest.status() == "guest-panicked"
    no_tracebacks(daemon)
    assert await daemon.stop() == 0


async def test_dump_slots_a_stalled_dump_gives_its_turn_back_and_counts_apart() -> None:
    slots = DumpSlots(1)
    entered: list[str] = []

    async def second() -> None:
        async with slots.slot():
            entered.append("second")
            await release_second.wait()

    release_second = asyncio.Event()
    async with slots.slot() as first:
        waiter = asyncio.create_task(second())
        await asyncio.sleep(0)
        assert entered == []  # one turn, taken
        first.stall()
        assert (slots.running, slots.stalled) == (1, 1)  # the second dump took the turn
        await asyncio.sleep(0)
        assert entered == ["second"]
        first.resume()  # QEMU writes again: counted as running, past the limit
        assert (slots.running, slots.stalled) == (2, 0)
        release_second.set()
        await waiter
        assert (slots.running, slots.stalled) == (1, 0)
    assert (slots.running, slots.stalled) == (0, 0)


async def test_dump_slots_a_waiter_cancelled_keeps_no_turn() -> None:
    slots = DumpSlots(1)
    async with slots.slot():
        waiter = asyncio.create_task(slots.slot().__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert slots.running == 0
    async with slots.slot():
        assert slots.running == 1


async def test_dump_slots_a_turn_handed_to_a_waiter_cancelled_meanwhile_goes_to_the_next() -> None:
    slots = DumpSlots(1)
    entered: list[str] = []

    async def waiter(name: str) -> None:
        async with slots.slot():
            entered.append(name)

    holder = slots.slot()
    await holder.__aenter__()
    first = asyncio.create_task(waiter("first"))
    second = asyncio.create_task(waiter("second"))
    await asyncio.sleep(0)
    await holder.__aexit__(None, None, None)  # the turn is handed to `first`...
    assert slots.running == 1
    first.cancel()  # ...which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert entered == ["second"]
    assert (slots.running, slots.stalled) == (0, 0)


def dumps_on_a_full_tmpfs(tmp: Path, inodes: int) -> list[str]:
    """A wrapper running panicd with its dump directory on a tmpfs of `inodes` inodes, in its
    own mount namespace. Its root directory takes one; once all are taken, creating a file
    fails with ENOSPC (a full disk, for real) while statvfs still shows 256 MiB free, so the
    disk guard lets the dump go ahead."""
    (tmp / "dumps").mkdir()
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            f'mount -t tmpfs -o size=256m,nr_inodes={inodes} panicd-test "{tmp}/dumps" '
            '&& exec "$@"', "sh"]


def as_seen_by(daemon: PanicdProcess, path: Path) -> Path:
    """`path` in panicd's mount namespace (the wrapper's exec keeps its pid)."""
    assert daemon.proc is not None
    return Path(f"/proc/{daemon.proc.pid}/root") / path.relative_to("/")


async def test_a_completed_dump_is_kept_and_alerted_when_its_metadata_cannot_be_written(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    guest = await qemus(unique("full"))
    # Inodes: the tmpfs root, the guest's directory, the dump and its first record. The final
    # record's temporary file finds none left.
    daemon = panicd(config(short_tmp, [guest], 'on_panic = ["dump", "restart"]',
                           "min_free_bytes = 0"),
                    wrapper=dumps_on_a_full_tmpfs(short_tmp, inodes=4))
    await daemon.wait_event("qmp.connected", guest=guest.name)

    await guest.panic()
    (written,) = await journal.find(timeout=30, MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id,
                                    GUEST_NAME=guest.name)
    dump = as_seen_by(daemon, Path(written["DUMP_PATH"]))
    record = dump.with_name(dump.name + ".json")
    assert written["METADATA_ERROR"].startswith(f"cannot write {Path(written['DUMP_PATH'])}.json: ")
    assert written["METADATA_ERROR"].endswith(": No space left on device"), written["METADATA_ERROR"]
    assert "No space left on device" in written["MESSAGE"]
    # The dump is whole and stays; its first record is left saying "running".
    assert dump.stat().st_size == int(written["DUMP_BYTES"]) > 64 * MIB
    assert dump.read_bytes()[:4] == b"\x7fELF"
    assert json.loads(record.read_text())["dump"]["result"] == "running"
    await wait_for_status(guest, "running")  # the next step, restart, ran
    assert not await journal.find(timeout=0.5, MESSAGE_ID=AlertKind.DUMP_FAILED.message_id,
                                  GUEST_NAME=guest.name)
    await daemon.wait_event("dump.metadata_failed", guest=guest.name)
    no_tracebacks(daemon)
    assert await daemon.stop() == 0


async def test_a_first_record_that_cannot_be_written_is_a_dump_failure_saying_why(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    guest = await qemus(unique("nospace"))
    # Inodes: the tmpfs root, the guest's directory and the dump: none left for its record.
    daemon = panicd(config(short_tmp, [guest], 'on_panic = ["dump", "restart"]',
                           "min_free_bytes = 0"),
                    wrapper=dumps_on_a_full_tmpfs(short_tmp, inodes=3))
    await daemon.wait_event("qmp.connected", guest=guest.name)

    await guest.panic()
    (failed,) = await journal.find(timeout=30, MESSAGE_ID=AlertKind.DUMP_FAILED.message_id,
                                   GUEST_NAME=guest.name)
    directory = short_tmp / "dumps" / safe_name(guest.name)
    assert failed["ERROR"].startswith(f"cannot record the dump {directory}/"), failed["ERROR"]
    assert failed["ERROR"].endswith(".json.tmp: No space left on device"), failed["ERROR"]
    assert list(as_seen_by(daemon, directory).iterdir()) == []  # the empty dump is removed
    await wait_for_status(guest, "running")
    no_tracebacks(daemon)
    assert await daemon.stop() == 0


async def test_a_qemu_frozen_before_its_dump_began_holds_no_turn(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    need_free_space(short_tmp, BIG_GUEST_MIB + 64)
    holder = await qemus(unique("holder"), memory_mib=BIG_GUEST_MIB)
    frozen = await qemus(unique("frozen"))
    other = await qemus(unique("other"))
    daemon = panicd(config(
        short_tmp, [holder, frozen, other], 'on_panic = ["dump", "restart"]',
        "max_concurrent_dumps = 1\ncommand_timeout = 1\nmin_free_bytes = 0",
    ))
    for guest in (holder, frozen, other):
        await daemon.wait_event("qmp.connected", guest=guest.name)

    await holder.panic()
    await daemon.wait_event("dump.started", guest=holder.name)
    # The big guest takes over a second to write: meanwhile `frozen` has asked QEMU what it
    # needs and waits for the only turn, and is frozen before it gets it.
    await frozen.panic()
    await daemon.wait_event("dump.waiting_for_turn", guest=frozen.name)
    freeze(frozen)
    await other.panic()
    # The turn went to `frozen` (first in line), which gave it back, unanswered: `other` dumps.
    (other_dump,) = await completed_dumps(short_tmp, other.name, timeout=30)
    await wait_for_status(other, "running")
    await daemon.wait_event("dump.stalled", guest=frozen.name)
    assert not [d for d in dumps_of(short_tmp, frozen.name)
                if metadata(d)["dump"]["result"] != "running"]

    thaw(frozen)
    (frozen_dump,) = await completed_dumps(short_tmp, frozen.name, timeout=30)
    await wait_for_status(frozen, "running")
    assert frozen_dump.read_bytes()[:4] == other_dump.read_bytes()[:4] == b"\x7fELF"
    await completed_dumps(short_tmp, holder.name, timeout=30)
    for guest in (holder, frozen, other):
        assert not await journal.find(timeout=0.2, MESSAGE_ID=AlertKind.DUMP_FAILED.message_id,
                                      GUEST_NAME=guest.name)
    no_tracebacks(daemon)
    assert await daemon.stop() == 0


async def test_a_qemu_slow_to_answer_keeps_its_turn(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    need_free_space(short_tmp, BIG_GUEST_MIB + 64)
    slow = await qemus(unique("slow"), memory_mib=BIG_GUEST_MIB)
    other = await qemus(unique("other"))
    daemon = panicd(config(
        short_tmp, [slow, other], 'on_panic = ["dump", "restart"]',
        "max_concurrent_dumps = 1\ncommand_timeout = 30\nmin_free_bytes = 0",
    ))
    await daemon.wait_event("qmp.connected", guest=slow.name)
    await daemon.wait_event("qmp.connected", guest=other.name)

    await slow.panic()
    await daemon.wait_event("dump.started", guest=slow.name)
    freeze(slow)
    await other.panic()
    await daemon.wait_event("dump.waiting_for_turn", guest=other.name)
    # A QEMU slow to answer (a host under swap) for 4 s: less than the stall window (10 s).
    await asyncio.sleep(4)
    thaw(slow)

    (slow_dump,) = await completed_dumps(short_tmp, slow.name, timeout=30)
    (other_dump,) = await completed_dumps(short_tmp, other.name, timeout=30)
    slow_meta, other_meta = metadata(slow_dump)["dump"], metadata(other_dump)["dump"]
    slow_done = (dt.datetime.fromisoformat(slow_meta["started_at"])
                 + dt.timedelta(seconds=slow_meta["duration_seconds"]))
    # One dump at a time, as configured: the other guest's began after the slow one's end.
    assert dt.datetime.fromisoformat(other_meta["started_at"]) >= slow_done
    assert not daemon.events("dump.stalled")
    no_tracebacks(daemon)
    assert await daemon.stop() == 0


async def test_a_qemu_frozen_past_the_dump_timeout_is_restarted_once_it_has_written(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    guest, daemon = await big_guest_frozen_mid_dump(
        short_tmp, panicd, qemus, "late",
        policy='on_panic = ["dump", "restart"]\ndump = { timeout = 2 }',
        daemon="command_timeout = 1\nmin_free_bytes = 0")
    (failed,) = await journal.find(timeout=30, MESSAGE_ID=AlertKind.DUMP_FAILED.message_id,
                                   GUEST_NAME=guest.name)
    assert failed["ERROR"] == ("timed out after 2 s; QEMU may still be writing (it cannot "
                               "cancel a dump)"), failed["ERROR"]
    (kept,) = dumps_of(short_tmp, guest.name)  # kept, with its record: QEMU may finish it

    # Thawed, QEMU goes on writing; the restart waits for it to end, since system_reset
    # during a dump would abort QEMU, then resets the guest; the dump QEMU finished late is
    # finished like any other (the same record and DUMP_COMPLETED), not thrown away.
    thaw(guest)
    await daemon.wait_event("step.waiting_for_dump", guest=guest.name, step="restart")
    await daemon.wait_event("step.done", guest=guest.name, step="restart", timeout=30)
    await wait_for_status(guest, "running")
    (late,) = await completed_dumps(short_tmp, guest.name, timeout=30)
    assert late == kept and late.stat().st_size >= BIG_GUEST_MIB * MIB
    (written,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id,
                                    GUEST_NAME=guest.name)
    assert written["DUMP_PATH"] == str(kept)
    assert not await journal.find(timeout=0.5, MESSAGE_ID=AlertKind.STEP_FAILED.message_id,
                                  GUEST_NAME=guest.name)
    no_tracebacks(daemon)
    assert await daemon.stop() == 0


class RecordingAlerter:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)


async def test_an_orphan_record_the_dump_step_settled_meanwhile_is_left_alone(tmp_path: Path) -> None:
    store = DumpStore(tmp_path)
    guest = GuestIdentity(name="web", socket="/run/web.qmp", qemu_pid=4242)
    started_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    stale = store.create(guest.name, "elf", started_at)
    os.close(stale.fd)
    store.write_metadata(stale.path, {
        "guest": guest.as_dict(),
        "incident": {"kind": "panic", "detection": "resumed", "received_at": started_at},
        "dump": {"path": str(stale.path), "format": "elf", "started_at": started_at,
                 "result": "running"},
    })
    queried: list[str] = []

    class Session:
        async def execute(self, command: str, arguments: object = None) -> dict[str, object]:
            assert command == "query-dump"
            queried.append(command)  # the record was taken for an orphan
            # Before the first query-dump, the resumed panic's dump step removed the record
            # (QEMU never began it) and made a new dump, the one query-dump now reports.
            store.discard(stale.path)
            return {"status": "completed", "completed": 64 * MIB, "total": 64 * MIB}

    class Monitor:
        identity = guest

        def session(self) -> Session:
            return Session()

    alerts = RecordingAlerter()
    evidence = Evidence(store, alerts, Metrics())
    await finish_orphaned_dumps(Monitor(), evidence)  # type: ignore[arg-type]
    assert queried == ["query-dump"]
    assert alerts.alerts == []
