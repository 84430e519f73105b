"""The incident store: every incident panicd has seen on this host, in SQLite.

`<state_dir>/incidents.db`, in WAL mode (readers, such as `panicd incidents`, never wait for
the daemon, nor it for them), with a schema version and migrations.

    schema.py          the file: connect (and migrate), MIGRATIONS, StoreError, rows <-> records
    queries.py         read-only questions: `panicd incidents`, the crash-loop budget's restarts
    incident_store.py  the daemon's side: durable creates, queued saves, the event path's cache,
                       a store that fails kept in memory and retried

Crash signatures (signatures.py) keep their own table in the same file (schema version 2).
"""

from panicd.store.incident_store import DURABLE_WAIT_SECONDS, IncidentStore, StoreFailed
from panicd.store.queries import IncidentListing, IncidentQueries, when
from panicd.store.schema import FILE_NAME, MIGRATIONS, SCHEMA_VERSION, StoreError, connect

__all__ = [
    "DURABLE_WAIT_SECONDS",
    "FILE_NAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "IncidentListing",
    "IncidentQueries",
    "IncidentStore",
    "StoreError",
    "StoreFailed",
    "connect",
    "when",
]
