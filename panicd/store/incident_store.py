"""The daemon's side of the incident store: durable creates, queued saves, a cache.

Who waits for what:
- The daemon's connection lives in one thread of its own (an executor with one worker): no
  SQLite call ever runs on the event loop, and each one runs in order.
- `create` is awaited by the steps before the first one that changes the guest (a dump, a reset,
  a power change): an incident is durable before anything is done about it, so a panicd killed
  at any moment finds it on restart (synchronous=NORMAL in WAL mode survives a killed process;
  a power cut may lose the last commits, never corrupt the file).
- `save` (a step finished, the incident is done) is queued and returns at once.
- The answers the event path needs without waiting (is there an incident for this QEMU process?
  the guest's last incident?) come from a cache kept beside the writes.

A store that cannot be opened (a truncated file, garbage, a disk that refuses) is moved aside as
`incidents.db.broken-<time>`, alerted (STORE_FAILED), and replaced by a fresh one; a write that
fails (a full or read-only disk) is alerted once and retried with the next one. Neither ever
stops panicd from watching guests: the cache goes on answering.

The JSON ledger of earlier versions (`handled-panics.json`) is imported once, then renamed
`handled-panics.json.imported`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from panicd.events import Detection, IncidentKind
from panicd.records import CrashSighting, DumpSummary, GuestRecord, IncidentRecord, IncidentState
from panicd.store.queries import IncidentQueries
from panicd.store.schema import FILE_NAME, StoreError, connect, read_record, row_of, transaction

log = structlog.get_logger("panicd.store")

LEDGER_FILE = "handled-panics.json"
#: A store that could not be opened (a full disk, an I/O error) is tried again this often, at
#: the next write.
REOPEN_SECONDS = 30.0
#: Incidents kept in memory while the store cannot be written; past it the oldest done go.
UNSAVED_LIMIT = 10_000
#: A new write waits this long: the guests' first commands (queries) leave first, and the
#: thread's GIL-holding work does not delay them; the first command that changes a guest
#: waits for the write anyway (actions.CHANGES_GUEST).
WRITE_DELAY_SECONDS = 0.002
#: The longest anyone waits for a record to be on disk before going on anyway (a state disk
#: that stops answering): the steps before they change the guest, an alert naming the record.
DURABLE_WAIT_SECONDS = 5.0
StoreFailed = Callable[[str, str], None]
T = TypeVar("T")


class IncidentStore:
    """The daemon's side: durable creates, queued saves, a cache for the event path."""

    def __init__(self, state_dir: Path | None, *, on_failure: StoreFailed | None = None) -> None:
        self.path = state_dir / FILE_NAME if state_dir is not None else None
        self._on_failure = on_failure or (lambda _what, _why: None)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store")
        self._db: sqlite3.Connection | None = None
        #: Incidents not done yet, by id: the live records (their steps still run, or they
        #: wait to be resumed), which a finished dump's summary must go into.
        self._live: dict[str, IncidentRecord] = {}
        #: Latest incident per QEMU process, and per guest name (what the event path asks).
        self._by_instance: dict[str, IncidentRecord] = {}
        self._by_guest: dict[str, IncidentRecord] = {}
        #: Incidents not written yet (a failed write keeps them here for the next try).
        #: Each with the number of its latest change, so that a write made before a change
        #: does not count for it. The records are the live ones (no copies): the writer thread
        #: serialises each with model_dump_json; a change the loop makes meanwhile bumps its
        #: number, so the record is written again with the next batch (never lost).
        self._unsaved: dict[str, tuple[IncidentRecord, int]] = {}
        self._changes = 0
        #: Done once the writes asked for so far have been made (or have failed).
        self._waiting: list[asyncio.Future[None]] = []
        self._writer: asyncio.Task[None] | None = None
        self._failing = False
        self._opened_at = 0.0

    # -- lifetime -----------------------------------------------------------------------------

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._db = self._connect_or_replace(self.path)
        except (OSError, sqlite3.Error, StoreError) as exc:
            self._fail("open", f"cannot create {self.path}: {exc}; incidents are kept in memory "
                       "and written once it can be opened")
            self._db = None
        self._opened_at = time.monotonic()
        if self._db is None:
            return
        self._import_ledger()
        self._load_cache()

    def _connect_or_replace(self, path: Path) -> sqlite3.Connection | None:
        """The store at `path`; a damaged one moved aside and replaced; None (in memory for
        now, tried again with the next write) when it cannot be opened at the moment."""
        try:
            return connect(path)
        except sqlite3.Error as exc:  # from sqlite3.connect itself: cannot open the file
            self._fail("open", f"cannot open {path}: {exc}; incidents are kept in memory and "
                       "written once it can be opened")
            return None
        except StoreError as exc:
            if not exc.damaged:
                self._fail("open", f"{exc}; the file is kept, incidents are kept in memory and "
                           "written once it can be opened")
                return None
            aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%dT%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{path}{suffix}").rename(f"{aside}{suffix}")
            self._fail("open", f"{exc}; moved aside as {aside}, starting a fresh store")
            return connect(path)

    def _load_cache(self) -> None:
        assert self._db is not None
        # The newest incident of each QEMU process still running, and of each guest name.
        rows = self._db.execute(
            "SELECT record FROM incidents WHERE id IN (SELECT id FROM incidents AS i WHERE "
            "i.seen_at = (SELECT MAX(seen_at) FROM incidents AS j WHERE j.guest = i.guest) "
            "UNION SELECT id FROM incidents WHERE state = 'open' OR instance IS NOT NULL "
            "AND seen_at > ?)", (time.time() - 7 * 86400,)).fetchall()
        held = {r.id for r in (*self._by_instance.values(), *self._by_guest.values())}
        for (text,) in rows:
            record = read_record(text)
            # What the loop already holds (reopened after a failure) is newer than the file.
            if record is not None and record.id not in held and record.id not in self._unsaved:
                self._remember(record)

    def _import_ledger(self) -> None:
        """Bring the JSON ledger of earlier versions in, once."""
        assert self.path is not None and self._db is not None
        ledger = self.path.with_name(LEDGER_FILE)
        try:
            entries = json.loads(ledger.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("store.ledger_unreadable", path=str(ledger), error=str(exc))
            entries = {}
        records = []
        for instance, entry in (entries.items() if isinstance(entries, dict) else []):
            if not isinstance(entry, dict) or entry.get("state") not in ("pending", "done"):
                continue
            socket = str(instance).rsplit("|", 2)[0]
            at = float(entry.get("at") or 0)
            records.append(IncidentRecord(
                # Stable: imported twice (a rename that failed), it is the same row.
                id=f"ledger-{int(at)}-{hashlib.sha256(str(instance).encode()).hexdigest()[:12]}",
                guest=GuestRecord(name=Path(socket).stem, socket=socket),
                instance=str(instance), kind=IncidentKind.PANIC, detection=Detection.EVENT,
                seen_at=at,
                state=IncidentState.OPEN if entry["state"] == "pending" else IncidentState.DONE))
        with transaction(self._db):
            self._db.executemany("INSERT OR IGNORE INTO incidents VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 [row_of(r) for r in records])
        with contextlib.suppress(OSError):
            ledger.rename(ledger.with_name(LEDGER_FILE + ".imported"))
        log.info("store.ledger_imported", incidents=len(records))

    async def close(self) -> None:
        await self.flush()
        await self._call(self._close)
        self._executor.shutdown(wait=False)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- the event path: no I/O ---------------------------------------------------------------

    def latest_for_instance(self, instance: str | None) -> IncidentRecord | None:
        return self._by_instance.get(instance) if instance is not None else None

    def last_incident(self, guest: str) -> IncidentRecord | None:
        return self._by_guest.get(guest)

    async def prune(self, older_than_days: float) -> int:
        """Drop incidents seen more than `older_than_days` ago whose dump is gone (or that had
        none); return how many. Incidents still open are kept, whatever their age."""
        cutoff = time.time() - older_than_days * 86400

        def prune() -> int:
            if self._db is None:
                return 0
            doomed = []
            rows = self._db.execute("SELECT record FROM incidents WHERE seen_at < ? AND state = ?",
                                    (cutoff, IncidentState.DONE.value)).fetchall()
            for (text,) in rows:
                record = read_record(text)
                if record is None:
                    continue
                # Its summary, else its last dump step (an announce cut short never wrote one).
                dump = record.dump or next((step.dump_summary() for step in reversed(record.steps)
                                            if step.name == "dump"), None)
                path = dump.path if dump is not None else None
                if path is None or not Path(path).exists():
                    doomed.append((record.id,))
            with transaction(self._db):
                self._db.executemany("DELETE FROM incidents WHERE id = ?", doomed)
            return len(doomed)

        removed = await self._call(prune) or 0
        if removed:
            log.info("store.pruned", incidents=removed, older_than_days=older_than_days)
        return int(removed)

    async def record_dump(self, incident_id: str, dump: DumpSummary) -> None:
        """The dump of incident `incident_id` is finished (evidence.py): into its record."""
        record = await self._record_of(incident_id)
        if record is not None:
            record.dump = dump
            self.save(record)

    async def record_crash(self, incident_id: str, crash: CrashSighting) -> None:
        """Incident `incident_id`'s crash title is known (signatures.py): into its record, on
        disk before the title is alerted."""
        record = await self._record_of(incident_id)
        if record is not None:
            record.crash = crash
            await self.save_durably(record)

    async def _record_of(self, incident_id: str) -> IncidentRecord | None:
        # The live record when there is one: a copy read from the file and saved would be
        # overwritten by the live one's next save (or overwrite its unsaved changes).
        record = self._live.get(incident_id) or next(
            (r for r in (*self._by_instance.values(), *self._by_guest.values())
             if r.id == incident_id), None)
        if record is None:
            def read() -> IncidentRecord | None:
                return IncidentQueries(self._db).incident(incident_id) if self._db else None

            record = await self._call(read)
        if record is None:
            log.warning("store.no_such_incident", incident=incident_id)
        return record

    def guest_ran_again(self, instance: str | None) -> None:
        """The guest of this QEMU process runs again: its last incident is behind it."""
        latest = self.latest_for_instance(instance)
        if latest is not None and not latest.cleared:
            latest.cleared = True
            self.save(latest)

    def _remember(self, record: IncidentRecord) -> None:
        if record.state is IncidentState.OPEN:
            self._live[record.id] = record
        else:
            self._live.pop(record.id, None)
        if record.instance is not None and record.instance not in self._by_instance:
            # A new QEMU process on this socket: the ones before it are gone, and their
            # entries with them (what is done stays in the file), so that the cache holds
            # the QEMUs of now, not of every month the host has run.
            socket = record.instance.rsplit("|", 2)[0]
            for instance in [i for i, r in self._by_instance.items()
                             if i.rsplit("|", 2)[0] == socket and r.state is IncidentState.DONE]:
                del self._by_instance[instance]
        if record.instance is not None:
            known = self._by_instance.get(record.instance)
            if known is None or (known.seen_at, known.id) <= (record.seen_at, record.id):
                self._by_instance[record.instance] = record
        known = self._by_guest.get(record.guest.name)
        if known is None or (known.seen_at, known.id) <= (record.seen_at, record.id):
            self._by_guest[record.guest.name] = record

    # -- writes ---------------------------------------------------------------------------------

    def create(self, record: IncidentRecord) -> asyncio.Future[None]:
        """Record a new incident; the future is done once it is on disk (it never fails)."""
        self._remember(record)
        return self._write(record)

    def save(self, record: IncidentRecord) -> asyncio.Future[None]:
        """Record what happened to an incident since; nobody needs to wait for it."""
        self._remember(record)
        return self._write(record)

    async def save_durably(self, record: IncidentRecord) -> None:
        """`save`, and wait until it is on disk (DURABLE_WAIT_SECONDS at most): before an alert
        that sends its reader to `panicd incidents` for what was just recorded."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.save(record)), DURABLE_WAIT_SECONDS)

    def _write(self, record: IncidentRecord) -> asyncio.Future[None]:
        self._changes += 1
        self._unsaved[record.id] = (record, self._changes)
        if len(self._unsaved) > UNSAVED_LIMIT:
            self._drop_oldest_done()
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(written)
        if self._writer is None or self._writer.done():
            # One writer at a time, writing every record changed since in one transaction: a
            # storm of panics is a few commits, not one thread hand-over per panic (each of
            # which takes the GIL from the event loop). It starts on the loop's next turn, so
            # the guests' first commands of this turn leave before it.
            self._writer = asyncio.get_running_loop().create_task(self._write_batches(),
                                                                  name="store-writer")
        return written

    def _drop_oldest_done(self) -> None:
        """A store that never opens (or never takes a write) must not cost unbounded memory:
        past UNSAVED_LIMIT, the oldest incidents that are done are given up (open ones, which
        a restart would need to resume, are kept)."""
        done = sorted((r.seen_at, incident_id) for incident_id, (r, _) in self._unsaved.items()
                      if r.state is IncidentState.DONE)
        surplus = len(self._unsaved) - UNSAVED_LIMIT
        for _, incident_id in done[:surplus]:
            del self._unsaved[incident_id]
        if done[:surplus]:
            log.warning("store.unsaved_dropped", incidents=len(done[:surplus]), limit=UNSAVED_LIMIT)

    async def _write_batches(self) -> None:
        await asyncio.sleep(WRITE_DELAY_SECONDS)
        while self._waiting:
            waiting, self._waiting = self._waiting, []
            self._forget(await self._call(self._write_unsaved))
            for written in waiting:
                if not written.done():
                    written.set_result(None)

    def _write_unsaved(self) -> list[tuple[str, int]]:
        """Write what is unsaved; return what was written (the loop forgets it, not this
        thread: a change made meanwhile must not be forgotten with it)."""
        if self._db is None and self.path is not None and self._unsaved \
                and time.monotonic() - self._opened_at >= REOPEN_SECONDS:
            self._open()  # it could not be opened before: the disk may take it now
        if self._db is None or not self._unsaved:
            return []
        batch = list(self._unsaved.items())
        rows = [row_of(record) for _, (record, _) in batch]
        try:
            with transaction(self._db):
                self._db.executemany("INSERT OR REPLACE INTO incidents VALUES (?, ?, ?, ?, ?, ?, ?)",
                                     rows)
        except sqlite3.Error as exc:
            if not self._failing:
                self._failing = True
                self._fail("write", f"cannot write {self.path}: {exc}; kept in memory and "
                           "written with the next change")
            return []
        if self._failing:
            self._failing = False
            log.info("store.writable_again", path=str(self.path))
        return [(incident_id, change) for incident_id, (_, change) in batch]

    def _forget(self, written: list[tuple[str, int]] | None) -> None:
        """On the loop: what was written is saved, unless it changed again since."""
        for incident_id, change in written or []:
            unsaved = self._unsaved.get(incident_id)
            if unsaved is not None and unsaved[1] == change:
                del self._unsaved[incident_id]

    async def flush(self) -> None:
        if self._writer is not None:
            await asyncio.wait({self._writer})
        self._forget(await self._call(self._write_unsaved))

    # -- reads that may wait --------------------------------------------------------------------

    async def restarts(self, guest: str, since: float) -> list[float]:
        """When panicd restarted `guest` since `since`, counted from the whole history."""
        def query() -> list[float]:
            if self._db is None:
                return []
            return IncidentQueries(self._db).restarts(guest, since)

        stored = await self._call(query)
        # What is not on disk yet (a failing disk) still counts.
        pending = [t for r, _ in list(self._unsaved.values()) if r.guest.name == guest
                   for t in r.restarts() if t >= since]
        return sorted(set(stored) | set(pending))

    async def query(self, fn: Callable[[sqlite3.Connection], T]) -> T | None:
        """`fn(connection)` in the store's thread, in order with its writes; None when the store
        is not open (a disk that refuses it) or `fn` failed (logged, alerted)."""
        def call() -> T | None:
            return fn(self._db) if self._db is not None else None

        result: T | None = await self._call(call)
        return result

    # -- plumbing -------------------------------------------------------------------------------

    async def _call(self, fn: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except (sqlite3.Error, OSError, StoreError) as exc:
            # Unexpected here (each function handles its own): logged, never raised to a step.
            log.exception("store.failed")
            self._fail("store", str(exc))
            return None

    def _fail(self, what: str, why: str) -> None:
        log.error("store.failed", what=what, error=why)
        with contextlib.suppress(Exception):
            self._on_failure(what, why)

