"""A guest that keeps crashing and rebooting itself: CRASH_LOOP, counted from the incident store.

panicd's own crash-loop guard (actions/power.py) counts the restarts *panicd* makes. A guest
can loop without them: its kdump kernel takes over and reboots it (GUEST_CRASHLOADED), QEMU
lets a panicked guest run on (panic action none, {action: "run"}: a Windows guest writes its
MEMORY.DMP and reboots), or a guest resumed after its panic resets itself (RESET {guest: true},
`IncidentDetector` marks the incident `rebooted_itself`). Each such crash is an incident whose
`reboots_itself` is true; one crash reported twice in a boot (GUEST_PANICKED and
GUEST_CRASHLOADED, detection.py) is one incident, or two of which the second is `same_crash_as`
the first and not counted.

The limit is the policy's `restart` = {max, within}, read as "at most `max` reboots within
`within` seconds": when a guest crashes again after rebooting itself `max` times within
`within` (that is, `max + 1` crashes), CRASH_LOOP goes out, saying that the guest reboots
itself. panicd does nothing to the guest (it is not panicd's restart to refuse); the operator
decides. At most one such alert per guest per window: the alerting incident's record keeps
`crash_loop`, and a loop that goes on alerts again once that incident is out of the window.

Counted from the store (`IncidentQueries.incidents`), so a panicd restart does not reset the
count, as the restart budget is; when the store cannot be read, from what this panicd saw.
"""

from __future__ import annotations

import asyncio
import collections
import time

import structlog

from panicd import alerts
from panicd.alerts import Alerter
from panicd.config import RestartLimit
from panicd.events import IncidentKind
from panicd.metrics import Metrics
from panicd.records import IncidentRecord
from panicd.store import IncidentQueries, IncidentStore

log = structlog.get_logger("panicd.crash_loop")

#: Crash incidents remembered per guest for a store that cannot be read.
MEMORY_PER_GUEST = 100


class GuestCrashLoop:
    """Counts one guest's self-rebooting crashes; alerts CRASH_LOOP past the policy's limit."""

    def __init__(self, store: IncidentStore, alerter: Alerter, metrics: Metrics) -> None:
        self.store = store
        self.alerter = alerter
        self.metrics = metrics
        #: This run's crash incidents (newest last), for when the store cannot answer.
        self._seen: collections.deque[IncidentRecord] = collections.deque(maxlen=MEMORY_PER_GUEST)
        #: One crash counted at a time: each count sees the CRASH_LOOP the one before marked.
        self._counting = asyncio.Lock()

    async def crashed(self, record: IncidentRecord, limit: RestartLimit | None) -> int | None:
        """`record` is a new crash of this guest: the crash count within the window when it
        raised CRASH_LOOP, else None."""
        if record.kind not in (IncidentKind.PANIC, IncidentKind.CRASH_LOADED):
            return None
        if record.same_crash_as is not None:
            return None  # counted with the incident that reported it first
        self._seen.append(record)
        if limit is None:
            return None
        async with self._counting:
            return await self._count(record, limit)

    async def _count(self, record: IncidentRecord, limit: RestartLimit) -> int | None:
        since = record.seen_at - limit.within
        stored = await self.store.query(
            lambda db: IncidentQueries(db).incidents(guest=record.guest.name, since=since))
        if stored is None:
            stored = [r for r in self._seen if r.seen_at >= since]
        # The store's write of `record` may still be queued: it is counted here, once. A count
        # that runs late (its write was slow) finds later crashes stored too: not before it.
        others = [r for r in stored if r.id != record.id]
        before = [r for r in others if r.seen_at < record.seen_at]
        crashes = 1 + sum(1 for r in before if r.reboots_itself and r.same_crash_as is None)
        log.debug("crash_loop.counted", crashes=crashes, within=limit.within, max=limit.max)
        if crashes <= limit.max:
            return None
        # Alerted already, by an earlier crash in the window or a later one counted first;
        # this run's live records too (a mark whose write a stalled store still holds).
        alerted = next((r.id for r in (*others, *self._seen) if r.id != record.id
                        and r.seen_at >= since and r.crash_loop is not None), None)
        if alerted is not None:
            log.info("crash_loop.still_looping", crashes=crashes, within=limit.within,
                     alerted_with=alerted)
            return None
        record.crash_loop = crashes
        # On disk before the alert, as the incident itself is: whoever the alert sends to
        # `panicd incidents` finds the loop there.
        await self.store.save_durably(record)
        log.error("crash_loop.guest_reboots_itself", crashes=crashes, within=limit.within,
                  incident=record.id)
        self.metrics.guest_crash_loops.inc()
        self.alerter.send(alerts.self_reboot_loop(record, crashes, limit.within))
        return crashes

    def guest_reset_itself(self, latest: IncidentRecord | None, *, held: bool) -> None:
        """RESET {guest: true}: the guest rebooted itself. After a crash it was resumed from
        (not restarted by panicd: QEMU's firmware resets once more after panicd's own
        system_reset, so a crash whose steps restarted it, or still run, is not marked), that
        crash counts as one the guest rebooted from."""
        if (latest is None or held or latest.kind is not IncidentKind.PANIC
                or latest.rebooted_itself or latest.restarts() or latest.action == "run"):
            return
        latest.rebooted_itself = True
        self.store.save(latest)
        log.info("crash.guest_rebooted_itself", incident=latest.id,
                 after=round(time.time() - latest.seen_at, 1))
