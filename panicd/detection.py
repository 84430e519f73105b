"""From a guest's QMP events, and the runstate found on connect, to incidents.

`IncidentDetector` is the guest monitor's event path (monitor.py owns the connection): it
decides which event is a new incident, which a duplicate, which an incident panicd must resume,
and hands each new one to the guest's worker (incident_worker.py). Nothing here waits: it
classifies, records (the store's write is queued), alerts (queued) and queues.

    GUEST_PANICKED / GUEST_CRASHLOADED ──> latched? ── yes ──> duplicate, dropped (a bugcheck
                                              │ no                 it brings is kept)
                                              v
                          this boot's crash reported the other way? (boot_crash.py) ── yes ──>
                                              │ no                   folded into its incident
                                              v
                          Incident ──> store.create ──> worker.submit ──> PANIC alert
    WATCHDOG ──> latched? ── yes ──> duplicate; no ──> Incident (kind watchdog), as above
    GUEST_PANICKED while an incident waits for one (`catch_panic`: its nmi / wait_panic steps,
        until that incident is done or the guest resets) ──> handed to that incident (latched,
        recorded as its `caught_panic`), never an incident of its own
    RESUME / RESET ──> the latch is cleared: what panics next is a new panic
    RESET ──> the panic catch is closed, and the incidents queued behind the one running are
              stale (incident_worker.py: a panic or watchdog whose stopped guest is gone)
    on connect ──> the runstate found, judged against the incident store (connect_findings.py):
                   an incident resumed, already handled, found (missed), or settled
    raise_manual (an operator's `panicd guest NAME ACTION`) ──> Incident (manual) ──> as above,
                                   with a GUEST_ACTION alert; it latches nothing

One panic is handled once: after GUEST_PANICKED, further GUEST_PANICKED events are duplicates
until the guest runs again. QEMU < 6.0 sends a second GUEST_PANICKED {action: poweroff} after
the first {action: pause}.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Sequence
from typing import Any, Protocol

import structlog
from pydantic import ValidationError

from panicd import alerts
from panicd.alerts import Alert, Alerter
from panicd.boot_crash import BootCrash
from panicd.bugcheck import BugCheck
from panicd.connect_findings import STOPPED_BY, ConnectFindings
from panicd.events import (
    CaughtPanic,
    Detection,
    GuestIdentity,
    Incident,
    IncidentKind,
    PanickedData,
    QmpEvent,
    WatchdogData,
)
from panicd.guest_crash_loop import GuestCrashLoop
from panicd.incident_worker import IncidentWorker
from panicd.panic_catch import PanicCatch
from panicd.records import CaughtPanicRecord, IncidentRecord
from panicd.respond import PanicResponder, planned_steps
from panicd.store import DURABLE_WAIT_SECONDS, IncidentStore

log = structlog.get_logger("panicd.monitor")

_PANIC_EVENTS = {"GUEST_PANICKED": IncidentKind.PANIC, "GUEST_CRASHLOADED": IncidentKind.CRASH_LOADED}
#: The log event an incident's detection is (CRITICAL: a guest in trouble).
_DETECTED = {IncidentKind.PANIC: "panic.detected", IncidentKind.CRASH_LOADED: "panic.crash_loaded",
             IncidentKind.WATCHDOG: "watchdog.detected", IncidentKind.MANUAL: "manual.requested"}


class WatchedGuest(Protocol):
    """What the detector reads and sets of the guest's monitor."""

    @property
    def identity(self) -> GuestIdentity: ...

    @property
    def instance(self) -> str | None: ...

    runstate: str | None
    last_incident: Incident | None


class IncidentDetector:
    """One guest's event path: events and connect-time findings in, incidents out."""

    def __init__(self, guest: WatchedGuest, *, worker: IncidentWorker, responder: PanicResponder,
                 alerter: Alerter, store: IncidentStore) -> None:
        self.guest = guest
        self.worker = worker
        self.responder = responder
        self.alerter = alerter
        self.store = store
        #: Kinds of incident seen since the guest last ran: more of them are duplicates. Shared
        #: with `connect_findings`, so cleared in place, never rebound.
        self._latched: set[IncidentKind] = set()
        #: Incidents handed to the worker: each with its record and how many steps that
        #: record held then (a resumed one's earlier steps). Pruned as the worker lets go.
        self._submitted: dict[str, tuple[Incident, IncidentRecord, int]] = {}
        #: The incident waiting for this guest's next GUEST_PANICKED (its NMI's), if any.
        self.panic_catch = PanicCatch()
        #: A guest that crashes and reboots itself, over and over (CRASH_LOOP).
        self.crash_loop = GuestCrashLoop(store, alerter, responder.metrics)
        #: This boot's crash: the same crash reported again is not a second one (boot_crash.py).
        self.boot_crash = BootCrash(store=store, responder=responder, latched=self._latched)
        #: What a (re)connection finds: the runstate against the incident store.
        self.connect_findings = ConnectFindings(guest, latched=self._latched, store=store,
                                                worker=worker, raise_incident=self._raise_incident)

    def new_connection(self) -> None:
        """A new connection may be a new QEMU: what was latched is learned again (from
        query-status and the incident store, `connected`)."""
        self._latched.clear()
        self.boot_crash.forget()
        # A panic caught on another connection's QEMU would be a guess: the waiting step
        # (if it still runs) times out, and a panic found on connect is handled as found.
        self.panic_catch.drop()

    def catch_panic(self, incident_id: str) -> asyncio.Future[CaughtPanic]:
        """The guest's next GUEST_PANICKED, for incident `incident_id` (panic_catch.py)."""
        return self.panic_catch.open(incident_id)

    def release_panic_catch(self, incident_id: str) -> None:
        """Incident `incident_id` is done: its catch, if still open, closes."""
        self.panic_catch.release(incident_id)

    def connected(self) -> None:
        """The guest is identified and its runstate known: what does it say of incidents?
        (connect_findings.py)"""
        self.connect_findings.connected()

    def on_event(self, event: QmpEvent, raw: dict[str, Any]) -> bool:
        """Handle `event` if it is about incidents; False when it is not."""
        kind = _PANIC_EVENTS.get(event.event)
        if kind is not None:
            self._on_panic_event(kind, event, raw)
            return True
        if event.event == "WATCHDOG":
            self._on_watchdog_event(raw, event)
            return True
        if event.event == "RESET" and event.data.get("guest") is True:
            # The guest reset itself (its kernel's panic=N, Windows after MEMORY.DMP): after a
            # crash it was resumed from, that crash counts toward a self-reboot loop.
            latest = self.store.latest_for_instance(self.guest.instance)
            self.crash_loop.guest_reset_itself(
                latest, held=latest is not None and self.worker.holds(latest.id))
        if event.event == "RESET":
            # QEMU sends RESET for system_reset and for a guest's own reboot: the guest that
            # took an NMI, or that stopped for a queued incident, is gone.
            self.panic_catch.drop()
            self.worker.guest_was_reset()
            self.boot_crash.forget()
        if event.event in ("RESUME", "RESET"):
            # The guest runs again: whatever panics next is a new panic.
            if self._latched:
                log.info("panic.cleared", by=event.event)
            self._latched.clear()
            self.store.guest_ran_again(self.guest.instance)
        return False

    def _on_panic_event(self, kind: IncidentKind, event: QmpEvent, raw: dict[str, Any]) -> None:
        try:
            data = PanickedData.model_validate(event.data)
        except ValidationError as exc:
            # A panic with odd data is still a panic: handle it, say what was odd.
            log.warning("qmp.bad_panic_data", error=exc.errors(include_url=False)[:3])
            data = PanickedData(action="unknown")
        if kind in self._latched:
            log.info("panic.duplicate", qmp_event=event.event, action=data.action)
            self.boot_crash.duplicate(kind, data)
            return
        if kind is IncidentKind.PANIC and data.action == "pause":
            self.guest.runstate = "guest-panicked"
        if kind is IncidentKind.PANIC and self._hand_over(data, raw):
            return
        if self.boot_crash.reported_again(kind, data):
            return
        same_crash_as = self.boot_crash.same_crash_as(kind, data)
        record = self._raise_incident(
            Incident(
                kind=kind,
                guest=self.guest.identity,
                detection=Detection.EVENT,
                action=data.action,
                raw_event=raw,
                info=data.info,
            )
        )
        if same_crash_as is not None:
            record.same_crash_as = same_crash_as
            self.store.save(record)

    def _on_watchdog_event(self, raw: dict[str, Any], event: QmpEvent) -> None:
        try:
            data = WatchdogData.model_validate(event.data)
        except ValidationError as exc:
            # A watchdog with odd data still says the guest hung: handle it, say what was odd.
            log.warning("qmp.bad_watchdog_data", error=exc.errors(include_url=False)[:3])
            data = WatchdogData(action="unknown")
        if IncidentKind.WATCHDOG in self._latched:
            # i6300esb and ib700 fire once and disarm; a guest that re-arms its watchdog while
            # stopped cannot, so this is QEMU repeating itself, not a second hang.
            log.info("watchdog.duplicate", action=data.action)
            return
        # With an action other than pause (panicd could not take it over: QEMU < 6.0, or
        # take_over_panic_action = false) QEMU has already reset or powered the guest down:
        # the incident still records the hang; poweroff makes its QMP steps skip.
        self._raise_incident(Incident(kind=IncidentKind.WATCHDOG, guest=self.guest.identity,
                                      detection=Detection.EVENT, action=data.action,
                                      raw_event=raw))

    def _hand_over(self, data: PanickedData, raw: dict[str, Any]) -> bool:
        """Give this GUEST_PANICKED to the incident catching it (`catch_panic`), if one is."""
        caught = self.panic_catch.take(data, raw)
        if caught is None:
            return False
        owner, panic = caught
        # One panic is handled once: a repeat (QEMU < 6.0's second GUEST_PANICKED) is dropped.
        self._latched.add(IncidentKind.PANIC)
        self._record_caught(owner, panic)
        submitted = self._submitted.get(owner)
        if submitted is not None:
            # The NMI's panic is this boot's crash: a later report of it (Windows' dump
            # beginning, GUEST_CRASHLOADED) goes into the same incident.
            self.boot_crash.caught(submitted[1])
        record = self.store.latest_for_instance(self.guest.instance)
        if record is not None and record.id == owner and record.cleared:
            # The nmi step's `cont` (RESUME) cleared the incident; the guest stands stopped by
            # it again, so a reconnect finds this incident's panic, not a missed one.
            record.cleared = False
            self.store.save(record)
        log.warning("panic.handed_over", incident=owner, action=data.action)
        return True

    def _record_caught(self, owner: str, panic: CaughtPanic) -> None:
        """The caught panic goes into its incident's record, saved now (a reconnect, or a
        panicd restarted, then knows what stopped the guest: connect_findings.py)."""
        submitted = self._submitted.get(owner)
        if submitted is None:
            return
        _, record, ran_before = submitted
        late = any(step.name == "wait_panic" for step in record.steps[ran_before:])
        if late:
            log.warning("panic.caught_late", incident=owner)
        record.caught_panic = CaughtPanicRecord(
            action=panic.data.action,
            info=panic.data.info.model_dump(mode="json") if panic.data.info else None,
            panicked_at=dt.datetime.fromtimestamp(panic.received_at, dt.UTC), late=late)
        self.store.save(record)

    def raise_manual(self, action: str, steps: Sequence[str], *, uid: int, pid: int | None,
                     dump_format: str | None = None) -> IncidentRecord:
        """An operator's `panicd guest NAME ACTION` (the control socket checked who asked): an
        incident of kind manual with `steps`, handled by this guest's worker like any other
        (record, dumps, alerts, crash title), audited by its GUEST_ACTION alert once durable.
        Returns its record, which the worker fills in as the steps run."""
        incident = Incident(kind=IncidentKind.MANUAL, guest=self.guest.identity,
                            detection=Detection.REQUESTED, action=None,
                            requested_steps=tuple(steps), requested_by=uid,
                            dump_format=dump_format)
        audit = alerts.guest_action(incident.guest, incident.guest.name, action, uid=uid, pid=pid,
                                    refused=None, incident_id=incident.id, steps=steps)
        record = self._raise_incident(incident, alert=audit)
        if self.guest.runstate not in STOPPED_BY:
            # Asked of a guest that no panic or watchdog had stopped (running, paused by hand):
            # what stops it so later is no doing of this incident's, any more than of one the
            # guest has run since. Not every step shows the guest running again (`inject-nmi`
            # leaves a running guest running: no RESUME), so it is cleared from the start; a
            # panic its own NMI causes is handed back to it (`_hand_over` un-clears it).
            record.cleared = True
            self.store.save(record)
        return record

    def pending_dump(self) -> IncidentRecord | None:
        """The incident in this guest's worker (being handled or queued) whose dump is still to
        be written, if any: QEMU writes one dump at a time, so a second one is refused."""
        self._forget_finished()
        for incident, record, ran_before in list(self._submitted.values()):
            planned = planned_steps(incident, self.responder.policy_for(incident.guest.name))
            # Dumps done: those a resumed incident made before (not run again), and this run's.
            dumps_done = sum(step.name == "dump" and (step.ok or index >= ran_before)
                             for index, step in enumerate(record.steps))
            if planned.count("dump") > dumps_done:
                return record
        return None

    def _forget_finished(self) -> None:
        """Incidents the worker no longer holds are done with (or dropped by a reload)."""
        for incident_id in [i for i in self._submitted if not self.worker.holds(i)]:
            del self._submitted[incident_id]

    async def _after_crash(self, record: IncidentRecord, bugcheck: BugCheck | None,
                           durable: asyncio.Future[None]) -> None:
        """A new crash, once durable (after its PANIC alert): a Windows guest's bugcheck becomes
        its crash title (signatures.py), and the crash is counted for a guest that reboots
        itself (guest_crash_loop.py). Off the event path: both read the store.

        `bugcheck` is the one the crash's own event brought (taken when the task was made): one
        a later report of the same crash adds meanwhile is sighted by boot_crash.py, once."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(durable), DURABLE_WAIT_SECONDS)
        try:
            if bugcheck is not None:
                await self.responder.signatures.sight_bugcheck(
                    record.guest, record.id, bugcheck, record.seen_at)
            limit = self.responder.policy_for(record.guest.name).restart
            await self.crash_loop.crashed(record, limit)
        except Exception:
            # A bug here costs the title or the loop alert, never the daemon's task group.
            log.exception("crash.after_failed", incident=record.id)

    def _raise_incident(self, incident: Incident, record: IncidentRecord | None = None,
                        alert: Alert | None = None) -> IncidentRecord:
        if incident.kind is not IncidentKind.MANUAL:
            # A manual incident is no event of the guest's: it latches nothing (the guest's
            # next panic is a panic), and is not its last panic in `panicd status`.
            self._latched.add(incident.kind)
            self.guest.last_incident = incident
        durable: asyncio.Future[None] | None = None
        if record is None:
            record = IncidentRecord.of(incident, self.guest.instance)
            # Written by the store's thread at once; the steps wait for it only before their
            # first command that changes the guest (the first queries leave meanwhile).
            durable = self.store.create(record)
        self.boot_crash.raised(incident, record)
        log.critical(
            _DETECTED[incident.kind],
            action=incident.action,
            detection=incident.detection.value,
            incident=incident.id,
        )
        self._forget_finished()  # so that a guest that crashes for months costs no memory
        self._submitted[record.id] = (incident, record, len(record.steps))
        self.worker.submit(incident, record, durable)  # first: whatever the alert does
        if durable is not None and incident.kind in _PANIC_EVENTS.values():
            self.responder.spawn(self._after_crash(record, record.bugcheck, durable),
                                 f"after-crash:{record.id}")
        if incident.kind is IncidentKind.PANIC:
            self.responder.metrics.panics.inc()
        elif incident.kind is IncidentKind.CRASH_LOADED:
            self.responder.metrics.crash_loaded.inc()
        if durable is None:
            # Right after the worker has had its turn: its first QMP command (the guest's
            # first step) goes out before the journal is written to.
            asyncio.get_running_loop().call_soon(self._alert, incident, alert)
        else:
            # Alerted once durable (the store's write ends either way, never raising): the
            # alert names an incident that a panicd killed right after will find on restart.
            # A state disk that hangs delays the alert DURABLE_WAIT_SECONDS at most.
            alerted = False

            def alert_once(*_: object) -> None:
                nonlocal alerted
                if not alerted:
                    alerted = True
                    self._alert(incident, alert)

            durable.add_done_callback(alert_once)
            asyncio.get_running_loop().call_later(DURABLE_WAIT_SECONDS, alert_once)
        return record

    def _alert(self, incident: Incident, alert: Alert | None = None) -> None:
        """The incident's alert: `alert` when its raiser made it, else its kind's."""
        try:
            if alert is None:
                policy = self.responder.policy_for(incident.guest.name)
                alert = alerts.panic(incident, planned_steps(incident, policy))
            self.alerter.send(alert)
        except Exception:
            log.exception("alert.failed", kind=incident.kind.value)
