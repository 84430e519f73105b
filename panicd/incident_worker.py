"""One guest's incidents, one at a time: the policy's steps, then done, or left open.

The monitor detects incidents on the event path and `submit`s them; this worker, a task of
the guest's own, takes them in order and runs each through the responder (respond.py), so a
slow dump or hook never holds up reading the guest's events. An incident is marked done once
its steps have run; one whose steps could not reach the guest (the connection dropped under
them: a reload, QEMU restarting its monitor) stays open in the incident store, and the monitor
resumes it when the guest is connected again.

A panic or watchdog incident queued behind another one is stale when the guest is reset before
its turn (`guest_was_reset`: QEMU's RESET, by the incident before it restarting the guest, or by
the guest rebooting itself): the stopped guest it was raised for is gone, and its steps (a dump,
a pause) would hit the fresh boot. Its steps are then recorded as skipped, none run, and it is
done; its PANIC alert and record remain. A manual incident is never stale (an operator asked
for it as it is), nor a crash-loaded one (its guest was never stopped: its steps are about the
crash, typically a hook).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable

import structlog

from panicd.actions import GuestHandle
from panicd.events import Incident, IncidentKind
from panicd.records import DumpSummary, IncidentRecord, IncidentState, StepResult
from panicd.respond import PanicResponder, planned_steps, policy_for_incident
from panicd.store import IncidentStore

log = structlog.get_logger("panicd.monitor")

#: Incidents raised for a guest that stopped (and waits to be acted on): a reset makes them stale.
_STALE_AFTER_RESET = frozenset({IncidentKind.PANIC, IncidentKind.WATCHDOG})


class IncidentWorker:
    def __init__(self, responder: PanicResponder, store: IncidentStore, guest: GuestHandle,
                 on_change: Callable[[], None],
                 on_done: Callable[[str], None] | None = None) -> None:
        self.responder = responder
        self.store = store
        self.guest = guest
        self._on_change = on_change
        #: Told each incident's id once its steps are over (the detector closes its panic catch).
        self._on_done = on_done
        #: Incidents waiting: each with its record and its durable write.
        self._queue: asyncio.Queue[tuple[Incident, IncidentRecord, asyncio.Future[None] | None]] = (
            asyncio.Queue())
        #: Ids of the incidents queued or being handled.
        self._in_hand: set[str] = set()
        #: The id of the incident whose steps run now.
        self._current: str | None = None
        #: Queued incidents whose guest was reset since they were raised.
        self._stale: set[str] = set()
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

    def guest_was_reset(self) -> None:
        """QEMU reset the guest: the panic and watchdog incidents still queued are stale."""
        stale = {i for i in self._in_hand if i != self._current} - self._stale
        if stale:
            log.info("incident.made_stale", incidents=sorted(stale), by="RESET")
        self._stale |= stale

    async def run(self) -> None:
        while True:
            incident, record, durable = await self._queue.get()
            begun = time.monotonic()
            self.handling = True
            self._current = record.id
            self._on_change()
            try:
                if record.id in self._stale and incident.kind in _STALE_AFTER_RESET:
                    self._skip_stale(incident, record)
                    continue
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
                self._stale.discard(record.id)
                self._current = None
                self.handling = False
                if self._on_done is not None:
                    self._on_done(record.id)
                self._on_change()
            log.debug("incident.finished", seconds=round(time.monotonic() - begun, 3))

    def _skip_stale(self, incident: Incident, record: IncidentRecord) -> None:
        """A queued incident whose stopped guest was reset before its turn: none of its steps
        run (they would act on the new boot); each is recorded as skipped, saying why."""
        reason = "the guest was reset before this incident's turn: nothing left to act on"
        policy = policy_for_incident(incident, self.responder.policy_for(incident.guest.name))
        now = dt.datetime.now(dt.UTC)
        done_before = [step.name for step in record.steps if step.ok]
        for name in planned_steps(incident, policy):
            if name in done_before:
                done_before.remove(name)
                continue
            record.steps.append(StepResult(name=name, ok=True, started_at=now, seconds=0.0,
                                           skipped=reason))
        log.warning("incident.stale", incident=record.id, kind=incident.kind.value,
                    reason=reason)
        record.state = IncidentState.DONE
        self.store.save(record)

    def _record(self, steps: list[StepResult]) -> None:
        for step in steps:
            if step.name == "dump" and not step.skipped:
                self.last_dump = step.dump_summary()
            elif step.name == "restart" and step.ok and not step.skipped:
                self.restarts += 1
