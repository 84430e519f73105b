"""The incident store's file: SQLite in WAL mode, its schema and migrations, and the rows.

`<state_dir>/incidents.db`. One row per incident in `incidents`: a few columns to search on
(guest, kind, time, state, the QEMU process) and the whole `IncidentRecord` as JSON, validated
back into the model whenever it is read; one row per titled incident in `crash_sightings`
(signatures.py). `connect` opens (and migrates) it; a file that is not a store of any use
raises `StoreError(damaged=True)`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import structlog
from pydantic import ValidationError

from panicd.errors import PanicdError
from panicd.records import IncidentRecord

log = structlog.get_logger("panicd.store")

FILE_NAME = "incidents.db"

#: Schema version N is reached by running MIGRATIONS[N - 1]; PRAGMA user_version holds N.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE incidents (
        id TEXT PRIMARY KEY,
        guest TEXT NOT NULL,
        kind TEXT NOT NULL,
        seen_at REAL NOT NULL,
        state TEXT NOT NULL,
        instance TEXT,
        record TEXT NOT NULL
    );
    CREATE INDEX incidents_by_guest ON incidents (guest, seen_at);
    CREATE INDEX incidents_by_time ON incidents (seen_at);
    CREATE INDEX incidents_by_instance ON incidents (instance, seen_at);
    """,
    # 2: crash signatures (signatures.py). One row per incident given a crash title; kept when
    # the incident is pruned, so "seen before on this host" outlives history_days.
    """
    CREATE TABLE crash_sightings (
        incident TEXT PRIMARY KEY,
        signature TEXT NOT NULL,
        title TEXT NOT NULL,
        kind TEXT,
        guest TEXT NOT NULL,
        seen_at REAL NOT NULL,
        source TEXT NOT NULL,
        dump TEXT,
        -- 1: NEW_CRASH_SIGNATURE went out for this sighting (at most one per signature).
        alerted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX crash_sightings_by_signature ON crash_sightings (signature, seen_at);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
#: How long a statement waits for a lock another process holds (a sqlite3 shell, a backup).
BUSY_TIMEOUT_SECONDS = 5.0


class StoreError(PanicdError):
    """The store file cannot be used now.

    `damaged`: it never will be (not SQLite, corrupt, of a newer schema), so it is moved aside;
    otherwise (a full disk, an I/O error, a lock held elsewhere) it is kept and tried again.
    """

    def __init__(self, message: str, *, damaged: bool = False) -> None:
        super().__init__(message)
        self.damaged = damaged


#: SQLite's words for a file that is not a database of any use, whatever is retried.
_DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """A connection to the store at `path`, migrated to SCHEMA_VERSION (read-only: as it is)."""
    if read_only:
        # mode=ro still needs the -shm file of a WAL database; a stopped daemon left it (or
        # the directory is writable for SQLite to make it). No write ever happens here.
        uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"  # a `?` or `#` in the path stays its own
        db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False)
    else:
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False,
                             isolation_level=None)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            # Moved aside too: a downgraded panicd keeps a durable history of its own (the
            # newer one's is kept beside it, for an upgrade or a person).
            raise StoreError(f"{path}: schema version {version} is newer than this panicd's "
                             f"({SCHEMA_VERSION})", damaged=True)
        if read_only:
            return db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise StoreError(f"{path}: the database is damaged (quick_check)", damaged=True)
        for number in range(version, SCHEMA_VERSION):
            # One transaction per step (executescript commits whatever is open first, so the
            # BEGIN is part of the script): a migration is applied whole or not at all.
            db.executescript(f"BEGIN IMMEDIATE;\n{MIGRATIONS[number]}\n"
                             f"PRAGMA user_version = {number + 1};\nCOMMIT;")
    except sqlite3.DatabaseError as exc:
        db.close()
        damaged = str(getattr(exc, "sqlite_errorname", "")).startswith(_DAMAGED)
        raise StoreError(f"{path}: {exc}", damaged=damaged) from exc
    except StoreError:
        db.close()
        raise
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def row_of(record: IncidentRecord) -> tuple[str, str, str, float, str, str | None, str]:
    return (record.id, record.guest.name, record.kind.value, record.seen_at, record.state.value,
            record.instance, record.model_dump_json())


def read_record(text: str) -> IncidentRecord | None:
    try:
        return IncidentRecord.model_validate_json(text)
    except ValidationError as exc:
        log.warning("store.bad_row", error=str(exc)[:300])
        return None


