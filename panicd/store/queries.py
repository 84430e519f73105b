"""Read-only questions to the incident store: `panicd incidents`, and the daemon's budget."""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import ValidationError

from panicd.records import DumpSummary, IncidentRecord, IncidentState, StepResult
from panicd.store.schema import read_record

log = structlog.get_logger("panicd.store")


@dataclass(frozen=True)
class IncidentListing:
    """One incident as `panicd incidents` lists it: computed by SQLite from the stored record
    (`IncidentQueries.listing`), without validating the whole record in Python, so that a
    history of tens of thousands of incidents lists in well under a second."""

    id: str
    seen_at: float
    guest: str
    kind: str
    detection: str
    state: IncidentState
    #: `dump:ok restart:failed`, in step order (`skipped` for a skipped step).
    steps: str
    #: The incident's dump summary, or else its last `dump` step (to make one from).
    dump: DumpSummary | None
    dump_step: StepResult | None
    #: The crash title, once triage gave one.
    title: str | None = None


#: The listing's columns, straight out of the JSON records (SQLite's JSON functions).
_LISTING_SQL = """
SELECT id, seen_at, guest, kind, json_extract(record, '$.detection'), state,
  (SELECT group_concat(json_extract(s.value, '$.name') || ':' || CASE
      WHEN json_type(s.value, '$.skipped') = 'text' THEN 'skipped'
      -- A step stored before `skipped` was a field: `detail.skipped` (true or a reason).
      WHEN json_type(s.value, '$.detail.skipped') IN ('true', 'text', 'integer') THEN 'skipped'
      WHEN json_extract(s.value, '$.ok') THEN 'ok' ELSE 'failed' END, ' ')
   FROM json_each(record, '$.steps') AS s),
  json_extract(record, '$.dump'),
  CASE WHEN json_type(record, '$.dump') IS NOT 'object' THEN
    (SELECT s.value FROM json_each(record, '$.steps') AS s
     WHERE json_extract(s.value, '$.name') = 'dump' ORDER BY s.key DESC LIMIT 1) END,
  json_extract(record, '$.crash.title')
FROM incidents"""


class IncidentQueries:
    """Read-only questions to a store (the CLI's `panicd incidents`, the daemon's budget)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def incidents(self, *, guest: str | None = None, since: float | None = None,
                  kind: str | None = None, limit: int | None = None) -> list[IncidentRecord]:
        """Whole records, newest first."""
        sql, args = self._select("SELECT record FROM incidents", guest, since, kind, limit)
        rows = self.db.execute(sql, args).fetchall()
        return [r for r in (read_record(text) for (text,) in rows) if r is not None]

    def listing(self, *, guest: str | None = None, since: float | None = None,
                kind: str | None = None, limit: int | None = None) -> list[IncidentListing]:
        """What the incidents table shows, newest first (see IncidentListing)."""
        sql, args = self._select(_LISTING_SQL, guest, since, kind, limit)
        listed = []
        for row in self.db.execute(sql, args):
            try:
                listed.append(IncidentListing(
                    id=row[0], seen_at=float(row[1]), guest=row[2], kind=row[3],
                    detection=str(row[4]), state=IncidentState(row[5]), steps=row[6] or "",
                    dump=DumpSummary.model_validate_json(row[7]) if row[7] else None,
                    dump_step=StepResult.model_validate_json(row[8]) if row[8] else None,
                    title=str(row[9]) if row[9] is not None else None))
            except (ValidationError, ValueError, TypeError) as exc:
                log.warning("store.bad_row", incident=str(row[0])[:64], error=str(exc)[:300])
        return listed

    @staticmethod
    def _select(select: str, guest: str | None, since: float | None, kind: str | None,
                limit: int | None) -> tuple[str, list[Any]]:
        condition, args = where(guest=guest, since=since, kind=kind)
        sql = f"{select}{condition} ORDER BY seen_at DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return sql, args

    def incident(self, incident_id: str) -> IncidentRecord | None:
        row = self.db.execute("SELECT record FROM incidents WHERE id = ?", (incident_id,)).fetchone()
        return read_record(row[0]) if row else None

    def restarts(self, guest: str, since: float) -> list[float]:
        """When panicd restarted `guest` since `since` (epoch seconds), from every incident."""
        found = []
        # An incident seen before `since` can hold a restart after it: look a day further back.
        for record in self.incidents(guest=guest, since=since - 86400):
            found += [t for t in record.restarts() if t >= since]
        return sorted(found)


def where(**equal_or_since: str | float | None) -> tuple[str, list[Any]]:
    """` WHERE guest = ? AND seen_at >= ? ...` for the filters given (None: not filtered);
    `since` is a lower bound on `seen_at`, any other name a column that must equal it."""
    terms: list[str] = []
    args: list[Any] = []
    for name, value in equal_or_since.items():
        if value is not None:
            terms.append("seen_at >= ?" if name == "since" else f"{name} = ?")
            args.append(value)
    return (" WHERE " + " AND ".join(terms) if terms else ""), args


def when(text: str) -> float:
    """`--since` as epoch seconds: a date (2026-11-01) or an ISO time, UTC unless it says."""
    stamp = dt.datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()
