"""Crash signatures: which crashes this host has seen, and the first sight of each alerted.

Triage gives a Linux crash a title (triage/title.py: `WARNING in tipc_subscrb_delete`, the
way syzbot names bugs) and a signature, a short hash of the title. Two crashes with one title
are one bug. Each incident that gets a title is a *sighting*, one row in the store's
`crash_sightings` table (store.py, migration 2), which outlives the incident's own record:

    incident, signature, title, kind, guest, seen_at, source (dump | console_log | bugcheck), dump

A Windows guest's crash is titled by its bugcheck (bugcheck.py: `Bug Check 0x7E
SYSTEM_THREAD_EXCEPTION_NOT_HANDLED`), read from the Hyper-V crash information QEMU sends with
the panic, as soon as the panic is seen (`sight_bugcheck`); it groups and alerts as a Linux
title does. A dump of a Windows guest holds no Linux kernel log to title it otherwise.

From the sightings:
- a title no other incident had is **new**: NEW_CRASH_SIGNATURE is alerted (priority 2), once
  per title, at most `new_signature_alerts_per_hour` times per guest (a hostile guest can print
  any title it likes; past the limit new titles are recorded and counted, and the title's
  alert goes out with its next sighting on a guest whose budget allows it);
- a known one is told with how many times, on how many guests and since when it was seen
  (the dump alert's SIGNATURE_COUNT, SIGNATURE_GUESTS, SIGNATURE_FIRST_SEEN);
- `panicd incidents --by-signature` lists one line per title (`SignatureQueries`).

A sighting is idempotent per incident: a dump announced again (panicd died during triage and
orphans.py finishes it) neither counts twice nor alerts twice.
"""

from __future__ import annotations

import collections
import sqlite3
import time
from dataclasses import dataclass

import structlog
from pydantic import BaseModel

from panicd import alerts
from panicd.alerts import Alerter
from panicd.bugcheck import TITLE_KIND, BugCheck
from panicd.metrics import Metrics
from panicd.records import CrashSighting, GuestRecord, TitleSource, TriageResult
from panicd.store import IncidentStore
from panicd.store.queries import where
from panicd.triage.title import signature_of

log = structlog.get_logger("panicd.signatures")

HOUR = 3600.0
#: Signatures remembered in memory for a store that cannot be read (a failing disk): new ones
#: are still told from known ones, and alerted once.
MEMORY_LIMIT = 10_000


class SignatureSummary(BaseModel):
    """One crash signature as `panicd incidents --by-signature` lists it."""

    signature: str
    title: str
    kind: str | None
    count: int
    guests: int
    first_seen: float
    last_seen: float
    #: The newest incident's dump that has one (the file may have been removed since).
    newest_dump: str | None
    newest_incident: str


@dataclass(frozen=True)
class _Seen:
    count: int
    guests: int
    first_seen: float
    #: This incident was already a sighting of this signature (announced again).
    again: bool
    #: NEW_CRASH_SIGNATURE already went out for this signature (for this incident or another).
    alerted: bool


class SignatureQueries:
    """The crash_sightings table: writes for the daemon, reads for the CLI."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def sight(self, incident: str, signature: str, title: str, *, kind: str | None, guest: str,
              seen_at: float, source: str, dump: str | None) -> _Seen:
        """Record that `incident` crashed with `signature`; what is known of it now."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            again = self.db.execute(
                "SELECT 1 FROM crash_sightings WHERE incident = ? AND signature = ?",
                (incident, signature)).fetchone() is not None
            self.db.execute(
                "INSERT INTO crash_sightings (incident, signature, title, kind, guest, seen_at, "
                "source, dump) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (incident) DO UPDATE "
                "SET signature = excluded.signature, title = excluded.title, kind = excluded.kind, "
                "source = excluded.source, dump = coalesce(excluded.dump, dump), alerted = CASE WHEN "
                "signature = excluded.signature THEN alerted ELSE 0 END",
                (incident, signature, title, kind, guest, seen_at, source, dump))
            count, guests, first, alerted = self.db.execute(
                "SELECT count(*), count(DISTINCT guest), min(seen_at), max(alerted) "
                "FROM crash_sightings WHERE signature = ?", (signature,)).fetchone()
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return _Seen(int(count), int(guests), float(first), again, bool(alerted))

    def mark_alerted(self, incident: str) -> None:
        """NEW_CRASH_SIGNATURE went out for `incident`'s sighting."""
        self.db.execute("UPDATE crash_sightings SET alerted = 1 WHERE incident = ?", (incident,))

    def by_signature(self, *, guest: str | None = None,
                     since: float | None = None) -> list[SignatureSummary]:
        """One summary per signature, the most recently seen first."""
        condition, args = where(guest=guest, since=since)
        rows = self.db.execute(
            f"""SELECT signature, max(title), max(kind), count(*), count(DISTINCT guest),
                       min(seen_at), max(seen_at),
                       (SELECT d.dump FROM crash_sightings AS d WHERE d.signature = s.signature
                        AND d.dump IS NOT NULL ORDER BY d.seen_at DESC LIMIT 1),
                       (SELECT n.incident FROM crash_sightings AS n
                        WHERE n.signature = s.signature ORDER BY n.seen_at DESC LIMIT 1)
                FROM crash_sightings AS s{condition}
                GROUP BY signature ORDER BY max(seen_at) DESC, signature""",  # noqa: S608 - fixed text
            args).fetchall()
        return [SignatureSummary(signature=r[0], title=r[1], kind=r[2], count=r[3], guests=r[4],
                                 first_seen=r[5], last_seen=r[6], newest_dump=r[7],
                                 newest_incident=r[8]) for r in rows]


class NewSignatureBudget:
    """At most `per_hour` new-signature alerts per guest in any hour."""

    def __init__(self, per_hour: int) -> None:
        self.per_hour = per_hour
        self._sent: dict[str, collections.deque[float]] = {}

    def allow(self, guest: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        for name in [g for g, sent in self._sent.items() if sent and sent[-1] <= now - HOUR]:
            del self._sent[name]  # guests quiet for an hour cost no memory
        sent = self._sent.setdefault(guest, collections.deque())
        while sent and sent[0] <= now - HOUR:
            sent.popleft()
        if len(sent) >= self.per_hour:
            return False
        sent.append(now)
        return True


class CrashSignatures:
    """The daemon's side: a titled report in, a CrashSighting out (recorded, counted, alerted).

    NEW_CRASH_SIGNATURE goes out once per signature: for its first sighting, or, when that
    one's alert was withheld (its guest had spent its hourly budget: a guest that makes up
    titles must not silence a real new bug seen next on another guest), for the next
    sighting that may send it. While the store cannot be read, whether a title is new is not
    known, and no alert is sent (the sighting says why).
    """

    def __init__(self, store: IncidentStore, alerter: Alerter, metrics: Metrics,
                 alerts_per_hour: int = 5) -> None:
        self.store = store
        self.alerter = alerter
        self.metrics = metrics
        self.budget = NewSignatureBudget(alerts_per_hour)
        #: signature -> (guests, first seen, count) of this run, for when the store cannot answer.
        self._memory: dict[str, tuple[set[str], float, int]] = {}

    async def sight(self, guest: GuestRecord, incident_id: str | None, report: TriageResult,
                    seen_at: float, dump: str | None) -> CrashSighting | None:
        """Record the crash `report` titles; None when it has no title."""
        if report.title is None or report.signature is None:
            return None
        source: TitleSource = report.source
        incident = incident_id or f"dump:{dump}"
        seen = await self.store.query(lambda db: SignatureQueries(db).sight(
            incident, report.signature or "", report.title or "", kind=report.crash_kind,
            guest=guest.name, seen_at=seen_at, source=source, dump=dump))
        withheld = None
        if seen is None:
            seen = self._remember(report.signature, guest.name, seen_at)
            withheld = "the incident store cannot be read: whether the title is new is not known"
        new = seen.count == 1
        alert = not seen.again and not seen.alerted and withheld is None
        if alert and not self.budget.allow(guest.name):
            alert = False
            withheld = (f"{guest.name} had already had {self.budget.per_hour} new crash "
                        "signatures alerted in the past hour (new_signature_alerts_per_hour)")
        sighting = CrashSighting(
            title=report.title, signature=report.signature, kind=report.crash_kind,
            frame=report.blamed_frame, corrupted=report.title_corrupted, source=source, new=new,
            alerted=alert or (seen.again and seen.alerted),
            not_alerted_because=withheld if not seen.alerted else None,
            count=seen.count, guests=seen.guests, first_seen=seen.first_seen)
        if incident_id is not None:
            await self.store.record_crash(incident_id, sighting)
        if seen.again:
            log.info("signature.seen_again", signature=sighting.signature, incident=incident)
            return sighting
        self.metrics.incidents.labels(signature_new="true" if new else "false").inc()
        log.info("signature.sighted", title=sighting.title, signature=sighting.signature,
                 new=new, count=seen.count, guests=seen.guests, source=source)
        if alert:
            self.alerter.send(alerts.new_crash_signature(guest, incident_id, sighting, dump))
            await self.store.query(lambda db: SignatureQueries(db).mark_alerted(incident))
        elif withheld is not None and not seen.alerted:
            if withheld.endswith("(new_signature_alerts_per_hour)"):
                self.metrics.new_signature_alerts_suppressed.inc()
            log.warning("signature.alert_withheld", signature=sighting.signature, why=withheld)
        return sighting

    async def sight_bugcheck(self, guest: GuestRecord, incident_id: str, bugcheck: BugCheck,
                             seen_at: float) -> CrashSighting | None:
        """Record a Windows guest's bugcheck as its incident's crash title (source `bugcheck`)."""
        return await self.sight(guest, incident_id, bugcheck_report(bugcheck), seen_at, None)

    def _remember(self, signature: str, guest: str, seen_at: float) -> _Seen:
        known = self._memory.get(signature)
        if known is None:
            if len(self._memory) >= MEMORY_LIMIT:
                self._memory.pop(next(iter(self._memory)))
            known = self._memory[signature] = (set(), seen_at, 0)
        guests, first, count = known
        guests.add(guest)
        self._memory[signature] = (guests, min(first, seen_at), count + 1)
        return _Seen(count + 1, len(guests), min(first, seen_at), again=False, alerted=False)


def bugcheck_report(bugcheck: BugCheck) -> TriageResult:
    """A Windows guest's bugcheck as the report that titles its crash (source `bugcheck`)."""
    return TriageResult(title=bugcheck.title, signature=signature_of(bugcheck.title),
                        crash_kind=TITLE_KIND, source="bugcheck")
