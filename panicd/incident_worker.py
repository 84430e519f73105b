"""One guest's incidents, one at a time: the policy's steps, then done, or left open.

The monitor detects incidents on the event path and `submit`s them; this worker, a task of
the guest's own, takes them in order and runs each through the responder (respond.py), so a
slow dump or hook never holds up reading the guest's events. An incident is marked done once
its steps have run; one whose steps could not reach the guest (the connection dropped under
them: a reload, QEMU restarting its monitor) stays open in the incident store, and the monitor
resumes it when the guest is connected again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from panicd.actions import GuestHandle
from panicd.events import Incident
from panicd.records import DumpSummary, IncidentRecord, IncidentState, StepResult
from panicd.respond import PanicResponder
from panicd.store import IncidentStore

log = structlog.get_logger("panicd.monitor")


class IncidentWorker:
    def __init__(self, responder: PanicResponder, store: IncidentStore, guest: GuestHandle,
                 on_change: Callable[[], None]) -> None:
        self.responder = responder
        self.store = store
        self.guest = guest
        self._on_change = on_change
        #: Incidents waiting: each with its record and its durable write.
        self._queue: asyncio.Queue[tuple[Incident, IncidentRecord, asyncio.Future[None] | None]] = (
            asyncio.Queue())
        #: Ids of the incidents queued or being handled.
        self._in_hand: set[str] = set()
        # What `panicd status` shows.
        self.handling = False
        self.last_dump: DumpSummary | None = None
        self.restarts = 0

    def submit(self, incident: Incident, record: IncidentRecord,
               durable: asyncio.Future[None] | None) -> None:
        self._in_hand.add(record.id)
        self._queue.put_nowait((incident, record, durable))

    def holds(self, incident_id: str) -> bool:
        """Whether this incident is queued or being handled now (a reconnect during its steps
        must not resume it a second time)."""
        return incident_id in self._in_hand

    async def run(self) -> None:
        while True:
            incident, record, durable = await self._queue.get()
            begun = time.monotonic()
            self.handling = True
            self._on_change()
            try:
                ran_before = len(record.steps)
                with structlog.contextvars.bound_contextvars(guest=incident.guest.name):
                    steps = await self.responder.handle(incident, self.guest, record, durable)
                ran_now = steps[ran_before:]
                self._record(ran_now)
                # Only this run's steps: an earlier run's "not connected" is what this resumed.
                if any(not step.ok and step.guest_gone for step in ran_now):
                    # A step that could not reach the guest did not run: the incident stays
                    # open, and is resumed when the guest is connected again.
                    log.warning("incident.left_open", incident=record.id,
                                reason="the guest's connection was lost during its steps")
                else:
                    record.state = IncidentState.DONE
                    self.store.save(record)
            except Exception:
                # A bug must cost this incident's remaining steps, not the guest's connection.
                log.exception("incident.crashed", kind=incident.kind.value)
            finally:
                self._in_hand.discard(record.id)
                self.handling = False
                self._on_change()
            log.debug("incident.finished", seconds=round(time.monotonic() - begun, 3))

    def _record(self, steps: list[StepResult]) -> None:
        for step in steps:
            if step.name == "dump" and not step.skipped:
                self.last_dump = step.dump_summary()
            elif step.name == "restart" and step.ok and not step.skipped:
                self.restarts += 1
