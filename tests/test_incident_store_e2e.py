"""The incident store under interruptions, against real QEMU 7.2, a real `panicd run` and journald.

What issue 9 says must hold, each seen failing with the JSON ledger it replaced:

- panicd killed (-9) during a panic's dump, or right after the panic before any step ran: the
  restarted panicd resumes that incident (one dump, one DUMP_COMPLETED, the guest restarted);
- an incident not durable yet (another program holds the store's write lock) is neither
  alerted nor acted on: killed then, panicd finds the panic on connect and handles it once;
- a `[daemon]` change reloaded while a panic's hook runs: the reconnected monitor resumes it;
- a second panic landing while the first one's hook runs, panicd stopped during the second's
  dump: each incident has its own identity, and the second is resumed and finished;
- the crash-loop budget counts restarts from the store, so a panicd restart does not refill it;
- a store that is garbage, truncated, of a newer schema, or on a full disk never stops panicd
  from handling a real guest's panic: the file is moved aside and alerted (STORE_FAILED).

The store is read as an operator's tool would: `panicd.store.connect(path, read_only=True)`.
QEMU's own DUMP_COMPLETED events are counted on the harness's second QMP monitor: QEMU sends
one for every dump it writes, so they count the dump-guest-memory commands it carried out.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from panicd.alerts import AlertKind
from panicd.events import Detection, GuestIdentity, Incident, IncidentKind
from panicd.records import IncidentRecord, IncidentState
from panicd.store import FILE_NAME, IncidentQueries, IncidentStore, connect
from tests.daemon_process import (
    PanicdProcess,
    completed_dumps,
    daemon_section,
    dumps_of,
    unique,
    wait_for,
)
from tests.journal import Journald
from tests.qemu_harness import QemuGuest, Qemus
from tests.test_dump_faults import (
    BIG_GUEST_MIB,
    config,
    freeze,
    need_free_space,
    no_tracebacks,
    thaw,
    wait_for_status,
)

Start = Callable[..., PanicdProcess]

DUMP_IN_PROCESS = "There is a dump in process"


def store_path(tmp: Path) -> Path:
    return tmp / "state" / FILE_NAME


@contextlib.contextmanager
def read_only_store(tmp: Path) -> Iterator[IncidentQueries]:
    db = connect(store_path(tmp), read_only=True)
    try:
        yield IncidentQueries(db)
    finally:
        db.close()


def incidents_of(tmp: Path, guest: str) -> list[IncidentRecord]:
    """The guest's incidents in panicd's store, newest first (an operator's read-only look)."""
    if not store_path(tmp).exists():
        return []
    with read_only_store(tmp) as queries:
        return queries.incidents(guest=guest)


async def wait_for_incidents(tmp: Path, guest: str, count: int = 1, *,
                             state: IncidentState | None = IncidentState.DONE,
                             timeout: float = 30.0) -> list[IncidentRecord]:
    def found() -> list[IncidentRecord]:
        records = incidents_of(tmp, guest)
        if len(records) == count and all(state is None or r.state is state for r in records):
            return records
        return []

    return await wait_for(found, timeout=timeout, what=f"{count} incident(s) of {guest} ({state})")


def qemu_dumps_completed(guest: QemuGuest) -> int:
    """How many dumps QEMU itself finished (its DUMP_COMPLETED events, on the inspect monitor)."""
    return sum(1 for name, _ in guest.events if name == "DUMP_COMPLETED")


def logs_text(*daemons: PanicdProcess) -> str:
    return "\n".join(d.log_path.read_text(errors="replace") for d in daemons)


async def alerts(journal: Journald, kind: AlertKind, guest: str, *, expect: int = 1,
                 timeout: float = 10.0) -> list[dict[str, object]]:
    """The guest's alerts of `kind`, once `expect` are there; then waits a little for more (an
    extra one is what these tests look for)."""
    found = await journal.find(timeout=timeout, count=expect, MESSAGE_ID=kind.message_id,
                               GUEST_NAME=guest)
    if len(found) == expect:
        found = await journal.find(timeout=1.0, count=expect + 1, MESSAGE_ID=kind.message_id,
                                   GUEST_NAME=guest)
    return found


def step_names(record: IncidentRecord) -> list[str]:
    return [f"{s.name}:{'ok' if s.ok else 'failed'}" for s in record.steps]


# -- killed, reloaded, stopped: no panic lost or handled twice ---------------------------------


async def test_a_panicd_killed_during_the_dump_resumes_the_incident_and_dumps_once(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    need_free_space(short_tmp, BIG_GUEST_MIB)
    guest = await qemus(unique("killed"), memory_mib=BIG_GUEST_MIB)
    text = config(short_tmp, [guest], 'on_panic = ["dump", "restart"]', "min_free_bytes = 0")
    first = panicd(text)
    await first.wait_event("qmp.connected", guest=guest.name)

    await guest.panic()
    await first.wait_event("dump.started", guest=guest.name)
    first.kill()  # QEMU goes on writing the 2 GiB dump (about 2.5 s here)
    (seen,) = incidents_of(short_tmp, guest.name)
    assert seen.state is IncidentState.OPEN

    second = panicd(text)
    (resumed,) = await second.wait_event("panic.resumed", guest=guest.name)
    assert resumed["incident"] == seen.id
    (record,) = await wait_for_incidents(short_tmp, guest.name, timeout=40)
    await wait_for_status(guest, "running")

    assert record.id == seen.id
    assert record.detection is Detection.RESUMED
    assert step_names(record) == ["dump:ok", "restart:ok"]
    assert record.steps[0].skipped  # the dump the killed panicd began, finished meanwhile
    (dump,) = await completed_dumps(short_tmp, guest.name)
    assert DUMP_IN_PROCESS not in logs_text(first, second)
    assert qemu_dumps_completed(guest) == 1
    (written,) = await alerts(journal, AlertKind.DUMP_COMPLETED, guest.name)
    assert written["DUMP_PATH"] == str(dump)
    # Taken for the same panic, never for a new one.
    assert [e["detection"] for e in second.events("panic.detected", guest=guest.name)] == ["resumed"]
    no_tracebacks(second)
    assert await second.stop() == 0


async def test_a_panicd_killed_right_after_the_panic_resumes_it_and_dumps_once(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    guest = await qemus(unique("early"))
    text = config(short_tmp, [guest], 'on_panic = ["dump", "restart"]', "min_free_bytes = 0")
    first = panicd(text)
    await first.wait_event("qmp.connected", guest=guest.name)

    # QEMU sends GUEST_PANICKED before it answers the qtest write; frozen right after, it
    # answers none of panicd's commands: panicd is killed before any step could run.
    await guest.panic()
    freeze(guest)
    await first.wait_event("panic.detected", guest=guest.name, timeout=5)
    # The incident is durable within milliseconds of its detection (before any command that
    # changes the guest): killed from then on, panicd finds it on restart.
    (seen,) = await wait_for_incidents(short_tmp, guest.name, state=IncidentState.OPEN, timeout=5)
    first.kill()
    assert not first.events("dump.started") and not first.events("step.done")
    thaw(guest)

    second = panicd(text)
    (resumed,) = await second.wait_event("panic.resumed", guest=guest.name)
    assert resumed["incident"] == seen.id
    (record,) = await wait_for_incidents(short_tmp, guest.name)
    await wait_for_status(guest, "running")
    assert record.id == seen.id
    assert step_names(record) == ["dump:ok", "restart:ok"]
    assert not record.steps[0].skipped  # made by the resumed incident: the first made none
    (dump,) = await completed_dumps(short_tmp, guest.name)
    assert DUMP_IN_PROCESS not in logs_text(first, second)
    assert qemu_dumps_completed(guest) == 1
    (written,) = await alerts(journal, AlertKind.DUMP_COMPLETED, guest.name)
    assert written["DUMP_PATH"] == str(dump)
    no_tracebacks(second)
    assert await second.stop() == 0


async def test_a_panic_is_alerted_and_acted_on_only_once_its_incident_is_durable(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    guest = await qemus(unique("durable"))
    text = config(short_tmp, [guest], 'on_panic = ["dump", "restart"]', "min_free_bytes = 0")
    first = panicd(text)
    await first.wait_event("qmp.connected", guest=guest.name)

    # Another program holds the store's write lock (an operator's sqlite3 shell in a
    # transaction, a backup): panicd's write of the new incident waits for it (up to SQLite's
    # busy timeout, 5 s), so the incident is not durable yet.
    holder = connect(store_path(short_tmp))
    holder.execute("BEGIN IMMEDIATE")
    try:
        await guest.panic()
        await first.wait_event("panic.detected", guest=guest.name)
        # The dump step has asked its questions and written the dump's first record; it waits
        # for the incident to be durable before anything that changes the guest.
        await wait_for(lambda: dumps_of(short_tmp, guest.name), timeout=4,
                       what="the dump's first record")
        assert not first.events("dump.started")
        # Nor is the panic alerted: an alert names an incident a restarted panicd must find.
        assert not first.events("alert.queued", kind="PANIC"), first.tail()
        first.kill()
    finally:
        holder.rollback()
        holder.close()
    assert incidents_of(short_tmp, guest.name) == []

    second = panicd(text)
    (record,) = await wait_for_incidents(short_tmp, guest.name)
    await wait_for_status(guest, "running")
    assert record.detection is Detection.ON_CONNECT  # nothing was done about it before
    assert step_names(record) == ["dump:ok", "restart:ok"]
    (alerted,) = await alerts(journal, AlertKind.PANIC, guest.name)
    assert alerted["INCIDENT_ID"] == record.id
    (dump,) = await completed_dumps(short_tmp, guest.name)
    assert qemu_dumps_completed(guest) == 1
    (written,) = await alerts(journal, AlertKind.DUMP_COMPLETED, guest.name)
    assert written["DUMP_PATH"] == str(dump)
    no_tracebacks(second)
    assert await second.stop() == 0


HOOK_SECONDS = 3


def sleeping_hook(tmp: Path) -> str:
    """An exec hook that notes each run (its PANICD_DUMP, a line in hook-runs), then sleeps."""
    runs = tmp / "hook-runs"
    return (f'exec = {{ command = ["sh", "-c", "echo dump=$PANICD_DUMP >> {runs}; '
            f'sleep {HOOK_SECONDS}"], timeout = 30 }}')


def hook_dumps(tmp: Path) -> list[str]:
    """The PANICD_DUMP each run of the hook was given, in order."""
    runs = tmp / "hook-runs"
    return [line.removeprefix("dump=") for line in runs.read_text().splitlines()] if runs.exists() else []


def hook_runs(tmp: Path) -> int:
    return len(hook_dumps(tmp))


async def test_a_daemon_reload_during_a_panic_resumes_it_on_the_new_connection(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    guest = await qemus(unique("reload"))
    policy = f'on_panic = ["dump", "exec", "restart"]\n{sleeping_hook(short_tmp)}'
    daemon = panicd(config(short_tmp, [guest], policy, "min_free_bytes = 0"))
    await daemon.wait_event("qmp.connected", guest=guest.name)

    await guest.panic()
    await wait_for(lambda: hook_runs(short_tmp) == 1, what="the hook to start")
    # A [daemon] change: every guest's monitor is replaced, under the running hook.
    daemon.config_path.write_text(config(short_tmp, [guest], policy,
                                         "min_free_bytes = 0\ncommand_timeout = 29"))
    daemon.signal(signal.SIGHUP)
    await daemon.wait_event("reload.applied")
    (resumed,) = await daemon.wait_event("panic.resumed", guest=guest.name)
    assert not daemon.events("panic.already_handled")

    (record,) = await wait_for_incidents(short_tmp, guest.name, timeout=HOOK_SECONDS * 5)
    await wait_for_status(guest, "running")
    assert resumed["incident"] == record.id
    # The dump is not made again; the hook, cut short by the reload, runs again whole.
    assert step_names(record) == ["dump:ok", "exec:ok", "restart:ok"]
    (dump,) = await completed_dumps(short_tmp, guest.name)
    # Both runs of the hook are told of the dump, the resumed one too.
    assert hook_dumps(short_tmp) == [str(dump)] * 2
    assert qemu_dumps_completed(guest) == 1
    assert len(await alerts(journal, AlertKind.DUMP_COMPLETED, guest.name)) == 1
    no_tracebacks(daemon)
    assert await daemon.stop() == 0


SECOND_GUEST_MIB = 1024


async def test_a_second_panic_during_the_first_ones_hook_is_its_own_incident_after_a_stop(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    # 1 GiB: QEMU needs about a second to write its dump, so the test freezes it while the
    # second dump is surely unfinished (the log is polled every 50 ms).
    need_free_space(short_tmp, 2 * SECOND_GUEST_MIB)
    guest = await qemus(unique("twice"), memory_mib=SECOND_GUEST_MIB)
    # restart before exec: the guest runs (and can panic again) while the hook sleeps.
    policy = f'on_panic = ["dump", "restart", "exec"]\n{sleeping_hook(short_tmp)}'
    text = config(short_tmp, [guest], policy, "min_free_bytes = 0")
    first = panicd(text)
    await first.wait_event("qmp.connected", guest=guest.name)

    await guest.panic()
    await wait_for(lambda: hook_runs(short_tmp) == 1, what="the first panic's hook")
    assert await guest.status() == "running"
    await guest.panic()
    (second_panic,) = (await first.wait_event("panic.detected", count=2, guest=guest.name))[1:]
    # The second panic's dump begins once the first hook is done; QEMU is frozen there, so
    # panicd is stopped while that dump is surely unfinished.
    await first.wait_event("dump.started", count=2, guest=guest.name, timeout=HOOK_SECONDS * 5)
    freeze(guest)
    first.signal(signal.SIGTERM)
    await wait_for(lambda: first.proc is not None and first.proc.poll() is not None,
                   what="panicd to stop")
    assert first.proc is not None and first.proc.returncode == 0, first.tail()
    thaw(guest)

    earlier, later = sorted(incidents_of(short_tmp, guest.name), key=lambda r: r.seen_at)
    assert later.id == second_panic["incident"] != earlier.id
    assert earlier.state is IncidentState.DONE
    assert later.state is IncidentState.OPEN

    second = panicd(text)
    (resumed,) = await second.wait_event("panic.resumed", guest=guest.name)
    assert resumed["incident"] == later.id
    records = await wait_for_incidents(short_tmp, guest.name, count=2, timeout=HOOK_SECONDS * 5)
    await wait_for_status(guest, "running")
    by_id = {r.id: r for r in records}
    assert step_names(by_id[earlier.id]) == ["dump:ok", "restart:ok", "exec:ok"]
    assert step_names(by_id[later.id]) == ["dump:ok", "restart:ok", "exec:ok"]
    assert by_id[later.id].steps[0].skipped  # the dump the stopped panicd began
    dumps = await completed_dumps(short_tmp, guest.name, count=2)
    assert hook_dumps(short_tmp) == [str(d) for d in dumps]  # each incident's own dump
    assert DUMP_IN_PROCESS not in logs_text(first, second)
    assert qemu_dumps_completed(guest) == 2
    assert len(await alerts(journal, AlertKind.DUMP_COMPLETED, guest.name, expect=2)) == 2
    no_tracebacks(second)
    assert await second.stop() == 0


# -- the crash-loop budget ---------------------------------------------------------------------


async def test_the_crash_loop_budget_counts_restarts_made_before_a_panicd_restart(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    guest = await qemus(unique("loop"))
    text = config(short_tmp, [guest],
                  'on_panic = ["restart"]\nrestart = { max = 2, within = 3600 }')
    first = panicd(text)
    await first.wait_event("qmp.connected", guest=guest.name)
    for count in (1, 2):
        await guest.panic()
        await wait_for_incidents(short_tmp, guest.name, count)
        await wait_for_status(guest, "running")
    assert await first.stop() == 0

    second = panicd(text)
    await second.wait_event("qmp.connected", guest=guest.name)
    await guest.panic()
    (latest, *_) = await wait_for_incidents(short_tmp, guest.name, 3)
    (loop,) = await alerts(journal, AlertKind.CRASH_LOOP, guest.name)
    assert loop["RESTARTS"] == "2"
    assert latest.steps[0].skipped  # held, not restarted
    assert await guest.status() == "guest-panicked"
    no_tracebacks(second)
    assert await second.stop() == 0


# -- a store that cannot be used ---------------------------------------------------------------


def garbage(path: Path) -> None:
    path.write_bytes(os.urandom(16384))


def truncated(path: Path) -> None:
    """A real store, full of another guest's incidents, cut half way (a crash while copied)."""
    async def fill() -> None:
        store = IncidentStore(path.parent)
        await store.open()
        for number in range(200):
            incident = Incident(kind=IncidentKind.PANIC, detection=Detection.EVENT, action="pause",
                                guest=GuestIdentity(name="elsewhere", socket="/run/elsewhere.qmp"))
            await store.create(IncidentRecord.of(incident, f"/run/elsewhere.qmp|1|{number}"))
        await store.close()

    asyncio.run(fill())
    size = path.stat().st_size
    assert size > 64 * 1024
    os.truncate(path, size // 2)


def newer_schema(path: Path) -> None:
    db = connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()


async def check_a_bad_store_is_moved_aside(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus, *,
    spoil: Callable[[Path], None], error: str,
) -> None:
    path = store_path(short_tmp)
    path.parent.mkdir()
    await asyncio.to_thread(spoil, path)
    spoiled = path.read_bytes()
    guest = await qemus(unique("badstore"))
    daemon = panicd(config(short_tmp, [guest], 'on_panic = ["dump", "restart"]',
                           "min_free_bytes = 0"))
    await daemon.wait_event("qmp.connected", guest=guest.name)

    (failed,) = await journal.find(timeout=20, MESSAGE_ID=AlertKind.STORE_FAILED.message_id,
                                   STORE_PATH=str(path))
    (aside,) = path.parent.glob(f"{FILE_NAME}.broken-*")
    assert aside.read_bytes() == spoiled  # kept as it was, for a person to look at
    assert failed["STORE_OPERATION"] == "open"
    assert error in str(failed["ERROR"]) and str(aside) in str(failed["ERROR"]), failed["ERROR"]

    await guest.panic()
    (record,) = await wait_for_incidents(short_tmp, guest.name)
    await wait_for_status(guest, "running")
    assert step_names(record) == ["dump:ok", "restart:ok"]
    (dump,) = await completed_dumps(short_tmp, guest.name)
    assert record.steps[0].dump is not None
    assert record.steps[0].dump.path == str(dump)
    no_tracebacks(daemon)
    assert await daemon.stop() == 0


async def test_a_store_of_garbage_is_moved_aside_and_panics_are_still_handled(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    await check_a_bad_store_is_moved_aside(short_tmp, panicd, journal, qemus, spoil=garbage,
                                           error="file is not a database")


async def test_a_truncated_store_is_moved_aside_and_panics_are_still_handled(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    await check_a_bad_store_is_moved_aside(short_tmp, panicd, journal, qemus, spoil=truncated,
                                           error="database disk image is malformed")


async def test_a_store_of_a_newer_schema_is_moved_aside_and_panics_are_still_handled(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    await check_a_bad_store_is_moved_aside(short_tmp, panicd, journal, qemus, spoil=newer_schema,
                                           error="schema version 99 is newer than this panicd's")


def state_on_a_tiny_tmpfs(tmp: Path) -> list[str]:
    """A wrapper running panicd with its state_dir on a 1 MiB tmpfs, in its own mount namespace:
    the test fills it (through /proc/PID/root) to make the disk full for real."""
    (tmp / "state").mkdir()
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            f'mount -t tmpfs -o size=1m panicd-test "{tmp}/state" && exec "$@"', "sh"]


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


async def test_a_store_on_a_full_disk_is_alerted_once_and_panics_are_still_handled(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus
) -> None:
    guest = await qemus(unique("fullstore"))
    daemon = panicd(config(short_tmp, [guest], 'on_panic = ["dump", "restart"]',
                           "min_free_bytes = 0"),
                    wrapper=state_on_a_tiny_tmpfs(short_tmp))
    await daemon.wait_event("qmp.connected", guest=guest.name)
    assert daemon.proc is not None
    # The state_dir as panicd sees it (the wrapper's exec keeps its pid).
    state = Path(f"/proc/{daemon.proc.pid}/root") / (short_tmp / "state").relative_to("/")
    assert (state / FILE_NAME).exists()
    filler = await asyncio.to_thread(fill, state)

    path = short_tmp / "state" / FILE_NAME
    for count in (1, 2):
        await guest.panic()
        await daemon.wait_event("incident.handled", guest=guest.name, count=count)
        await wait_for_status(guest, "running")
    (failed,) = await journal.find(MESSAGE_ID=AlertKind.STORE_FAILED.message_id,
                                   STORE_PATH=str(path))
    assert failed["STORE_OPERATION"] == "write"
    assert "full" in str(failed["ERROR"]), failed["ERROR"]
    await completed_dumps(short_tmp, guest.name, count=2)
    assert len(dumps_of(short_tmp, guest.name)) == 2
    assert len(await journal.find(timeout=1.0, count=2, MESSAGE_ID=AlertKind.STORE_FAILED.message_id,
                                  STORE_PATH=str(path))) == 1  # said once, not per write

    # Space again: what was kept in memory is written with the next change.
    filler.unlink()
    await guest.panic()
    await daemon.wait_event("incident.handled", guest=guest.name, count=3)
    await wait_for_status(guest, "running")
    await daemon.wait_event("store.writable_again")
    # A copy read here: SQLite resolves /proc/PID/root (a symlink to "/") back into this
    # process's own namespace, where the tmpfs is not mounted.
    def copied() -> Path:
        copy = short_tmp / "copy" / "state"
        copy.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal"):
            shutil.copyfile(state / f"{FILE_NAME}{suffix}", copy / f"{FILE_NAME}{suffix}")
        return copy.parent

    def all_done() -> list[IncidentRecord]:
        records = incidents_of(copied(), guest.name)
        return records if [r.state for r in records] == [IncidentState.DONE] * 3 else []

    records = await wait_for(all_done, what="the three incidents written once space is back")
    assert [step_names(r) for r in records] == [["dump:ok", "restart:ok"]] * 3
    no_tracebacks(daemon)
    assert await daemon.stop() == 0


async def test_incidents_lists_a_real_panic_with_its_steps_and_dump_after_panicd_restarts(
    short_tmp: Path, panicd: Any, journal: Journald, qemus: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from panicd.cli import main

    guest = await qemus(unique("hist"))
    text = (daemon_section(short_tmp) + f'[[guest]]\nsocket = "{guest.qmp_path}"\n'
            '[[policy]]\non_panic = ["dump", "restart"]\n')
    first = panicd(text)
    await first.wait_event("qmp.connected", guest=guest.name)
    await guest.panic()
    (dump,) = await completed_dumps(short_tmp, guest.name)
    await first.wait_event("incident.handled", guest=guest.name)
    assert await first.stop() == 0

    second = panicd(text)  # a restarted panicd: the history is still there
    await second.wait_event("qmp.connected", guest=guest.name)
    capsys.readouterr()
    assert main(["incidents", "-c", str(second.config_path), "--guest", guest.name, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["guest"]["name"] == guest.name
    assert listed["state"] == "done" and listed["detection"] == "event"
    assert [(s["name"], s["ok"]) for s in listed["steps"]] == [("dump", True), ("restart", True)]
    assert listed["dump"]["path"] == str(dump) and listed["dump"]["result"] == "completed"
    assert main(["incidents", "-c", str(second.config_path), "--guest", guest.name]) == 0
    table = capsys.readouterr().out
    assert f"{listed['id']}  " in table and "dump:ok restart:ok" in table
    assert await second.stop() == 0


def state_read_only(tmp: Path) -> list[str]:
    """A wrapper running panicd with its state_dir mounted read-only, in its own mount namespace."""
    state = tmp / "state"
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            f'mount --bind "{state}" "{state}" && mount -o remount,bind,ro "{state}" '
            '&& exec "$@"', "sh"]


async def test_a_read_only_store_is_alerted_and_panics_are_still_handled(
    short_tmp: Path, panicd: Any, journal: Journald, qemus: Qemus
) -> None:
    path = store_path(short_tmp)
    path.parent.mkdir()
    store = IncidentStore(path.parent)
    await store.open()
    earlier = IncidentRecord.of(Incident(kind=IncidentKind.PANIC, detection=Detection.EVENT,
                                         guest=GuestIdentity(name="earlier", socket="/x.qmp"),
                                         action="pause"), None)
    await store.create(earlier)
    await store.close()
    before = path.read_bytes()

    guest = await qemus(unique("rostore"))
    daemon = panicd(config(short_tmp, [guest], 'on_panic = ["dump", "restart"]', "min_free_bytes = 0"),
                    wrapper=state_read_only(short_tmp))
    await daemon.wait_event("qmp.connected", guest=guest.name)
    (failed,) = await journal.find(timeout=20, MESSAGE_ID=AlertKind.STORE_FAILED.message_id,
                                   STORE_PATH=str(path))
    # The file is kept as it is (not damage), and incidents wait in memory.
    assert "kept in memory" in str(failed["ERROR"]), failed["ERROR"]

    await guest.panic()
    (dump,) = await completed_dumps(short_tmp, guest.name)
    await wait_for_status(guest, "running")  # dumped and restarted, the store notwithstanding
    assert dump.stat().st_size > 0
    no_tracebacks(daemon)
    assert await daemon.stop() == 0
    assert path.read_bytes() == before  # nothing was moved aside or changed
    assert not list(path.parent.glob(f"{FILE_NAME}.broken-*"))


async def open_incident_for(tmp: Path, guest: QemuGuest) -> IncidentRecord:
    """What a panicd killed inside a restart step leaves: an open incident, its dump done."""
    from panicd.records import qemu_instance

    assert guest.proc is not None
    instance = qemu_instance(str(guest.qmp_path), guest.proc.pid)
    assert instance is not None
    store_path(tmp).parent.mkdir(exist_ok=True)
    store = IncidentStore(store_path(tmp).parent)
    await store.open()
    record = IncidentRecord.of(Incident(kind=IncidentKind.PANIC, detection=Detection.EVENT,
                                        guest=GuestIdentity(name=guest.name, socket=str(guest.qmp_path)),
                                        action="pause"), instance)
    await store.create(record)
    await store.close()
    return record


async def test_an_open_incident_of_a_guest_left_in_prelaunch_is_resumed_and_the_guest_runs(
    short_tmp: Path, panicd: Any, qemus: Qemus
) -> None:
    # The connection dropped inside restart, between system_reset and cont: prelaunch (-S).
    guest = await qemus(unique("prelaunch"), extra_args=["-S"])
    assert await guest.status() == "prelaunch"
    record = await open_incident_for(short_tmp, guest)
    daemon = panicd(config(short_tmp, [guest], 'on_panic = ["restart"]'))
    await daemon.wait_event("panic.resumed", incident=record.id)
    await wait_for_status(guest, "running")
    (done,) = await wait_for_incidents(short_tmp, guest.name)
    assert done.id == record.id and step_names(done) == ["restart:ok"]
    assert await daemon.stop() == 0


async def test_an_open_incident_of_a_guest_found_running_is_closed(
    short_tmp: Path, panicd: Any, qemus: Qemus
) -> None:
    guest = await qemus(unique("running"))
    assert await guest.status() == "running"
    record = await open_incident_for(short_tmp, guest)
    daemon = panicd(config(short_tmp, [guest], 'on_panic = ["dump", "restart"]'))
    await daemon.wait_event("incident.closed_on_connect", incident=record.id)
    (done,) = await wait_for_incidents(short_tmp, guest.name)
    assert done.id == record.id and done.steps == []  # nothing was done to a running guest
    assert not dumps_of(short_tmp, guest.name)
    assert await daemon.stop() == 0
