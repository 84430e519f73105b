"""From a guest's QMP events, and the runstate found on connect, to incidents.

`IncidentDetector` is the guest monitor's event path (monitor.py owns the connection): it
decides which event is a new incident, which a duplicate, which an incident panicd must resume,
and hands each new one to the guest's worker (incident_worker.py). Nothing here waits: it
classifies, records (the store's write is queued), alerts (queued) and queues.

    GUEST_PANICKED / GUEST_CRASHLOADED ──> latched? ── yes ──> duplicate, dropped
                                              │ no
                                              v
                          Incident ──> store.create ──> worker.submit ──> PANIC alert
    RESUME / RESET ──> the latch is cleared: what panics next is a new panic
    on connect, guest-panicked ──> resumed (an open incident of this QEMU), already handled
                                   (a done one), or found (a panic panicd missed)
    on connect, otherwise ──> an open incident is settled (resumed in prelaunch, else closed)

One panic is handled once: after GUEST_PANICKED, further GUEST_PANICKED events are duplicates
until the guest runs again. QEMU < 6.0 sends a second GUEST_PANICKED {action: poweroff} after
the first {action: pause}.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import structlog
from pydantic import ValidationError

from panicd import alerts
from panicd.actions import DURABLE_WAIT_SECONDS
from panicd.alerts import Alerter
from panicd.events import Detection, GuestIdentity, Incident, IncidentKind, PanickedData, QmpEvent
from panicd.incident_worker import IncidentWorker
from panicd.records import IncidentRecord, IncidentState
from panicd.respond import PanicResponder, planned_steps
from panicd.store import IncidentStore

log = structlog.get_logger("panicd.monitor")

_PANIC_EVENTS = {"GUEST_PANICKED": IncidentKind.PANIC, "GUEST_CRASHLOADED": IncidentKind.CRASH_LOADED}


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
        #: Kinds of incident seen since the guest last ran: more of them are duplicates.
        self._latched: set[IncidentKind] = set()

    def new_connection(self) -> None:
        """A new connection may be a new QEMU: what was latched is learned again (from
        query-status and the incident store, `connected`)."""
        self._latched.clear()

    def connected(self) -> None:
        """The guest is identified and its runstate known: what does it say of incidents?"""
        if self.guest.runstate == "guest-panicked":
            self._found_panicked()
        else:
            self._settle_open_incident()
            if self.guest.runstate == "running":
                self.store.guest_ran_again(self.guest.instance)

    def on_event(self, event: QmpEvent, raw: dict[str, Any]) -> bool:
        """Handle `event` if it is about incidents; False when it is not."""
        kind = _PANIC_EVENTS.get(event.event)
        if kind is not None:
            self._on_panic_event(kind, event, raw)
            return True
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
            return
        if kind is IncidentKind.PANIC and data.action == "pause":
            self.guest.runstate = "guest-panicked"
        self._raise_incident(
            Incident(
                kind=kind,
                guest=self.guest.identity,
                detection=Detection.EVENT,
                action=data.action,
                raw_event=raw,
                info=data.info,
            )
        )

    def _found_panicked(self) -> None:
        if IncidentKind.PANIC in self._latched:
            return  # the GUEST_PANICKED event itself arrived while connecting
        latest = self.store.latest_for_instance(self.guest.instance)
        if latest is not None and latest.kind is IncidentKind.PANIC and not latest.cleared:
            if self.worker.holds(latest.id):
                # Reconnected while its steps run: the worker carries on with it.
                log.info("panic.still_handled", incident=latest.id)
                self._latched.add(IncidentKind.PANIC)
                return
            if latest.state is IncidentState.DONE:
                log.info("panic.already_handled", status=self.guest.runstate, incident=latest.id)
                self._latched.add(IncidentKind.PANIC)
                return
            # Seen before, but its steps never all ran (panicd stopped, a reload, a crash):
            # the same incident goes on, its record keeping the steps that did run.
            log.warning("panic.resumed", status=self.guest.runstate, incident=latest.id)
            incident = Incident(kind=IncidentKind.PANIC, guest=self.guest.identity,
                                detection=Detection.RESUMED, action="pause",
                                received_at=latest.seen_at, id=latest.id)
            latest.detection = Detection.RESUMED
            self._raise_incident(incident, latest)
            return
        log.warning("panic.found_on_connect", status=self.guest.runstate)
        self._raise_incident(Incident(kind=IncidentKind.PANIC, guest=self.guest.identity,
                                      detection=Detection.ON_CONNECT, action="pause"))

    def _settle_open_incident(self) -> None:
        """An open incident of this QEMU whose guest is no longer guest-panicked: its steps were
        cut short after they changed the guest. In `prelaunch` (reset, but not yet `cont`: the
        connection dropped inside the restart step) the incident is resumed, so the guest
        runs; otherwise (running again, shut down, paused by a person) there is nothing left
        to act on, and it is closed as it stands."""
        latest = self.store.latest_for_instance(self.guest.instance)
        if (latest is None or latest.state is not IncidentState.OPEN
                or self.worker.holds(latest.id)):
            return
        if self.guest.runstate == "prelaunch" and latest.kind is IncidentKind.PANIC:
            log.warning("panic.resumed", status=self.guest.runstate, incident=latest.id)
            latest.detection = Detection.RESUMED
            self._raise_incident(Incident(kind=latest.kind, guest=self.guest.identity,
                                          detection=Detection.RESUMED, action=latest.action,
                                          received_at=latest.seen_at, id=latest.id), latest)
            return
        log.info("incident.closed_on_connect", incident=latest.id, status=self.guest.runstate)
        latest.state = IncidentState.DONE
        self.store.save(latest)

    def _raise_incident(self, incident: Incident, record: IncidentRecord | None = None) -> None:
        self._latched.add(incident.kind)
        self.guest.last_incident = incident
        durable: asyncio.Future[None] | None = None
        if record is None:
            record = IncidentRecord.of(incident, self.guest.instance)
            # Written by the store's thread at once; the steps wait for it only before their
            # first command that changes the guest (the first queries leave meanwhile).
            durable = self.store.create(record)
        log.critical(
            "panic.detected" if incident.kind is IncidentKind.PANIC else "panic.crash_loaded",
            action=incident.action,
            detection=incident.detection.value,
            incident=incident.id,
        )
        self.worker.submit(incident, record, durable)  # first: whatever the alert does
        if incident.kind is IncidentKind.PANIC:
            self.responder.metrics.panics.inc()
        else:
            self.responder.metrics.crash_loaded.inc()
        if durable is None:
            # Right after the worker has had its turn: its first QMP command (the guest's
            # first step) goes out before the journal is written to.
            asyncio.get_running_loop().call_soon(self._alert, incident)
        else:
            # Alerted once durable (the store's write ends either way, never raising): the
            # alert names an incident that a panicd killed right after will find on restart.
            # A state disk that hangs delays the alert DURABLE_WAIT_SECONDS at most.
            alerted = False

            def alert_once(*_: object) -> None:
                nonlocal alerted
                if not alerted:
                    alerted = True
                    self._alert(incident)

            durable.add_done_callback(alert_once)
            asyncio.get_running_loop().call_later(DURABLE_WAIT_SECONDS, alert_once)

    def _alert(self, incident: Incident) -> None:
        try:
            policy = self.responder.policy_for(incident.guest.name)
            self.alerter.send(alerts.panic(incident, planned_steps(incident, policy)))
        except Exception:
            log.exception("alert.failed", kind=incident.kind.value)
