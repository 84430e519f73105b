"""What a (re)connection finds: a guest's runstate on connect, read against the incident store.

On each connection the guest's monitor (monitor.py) asks query-status; its detector
(detection.py) hands the answer here. A guest stopped by a panic or a watchdog may be stopped
by an incident panicd already knows (being handled, handled, or cut short) or by one it missed
while away; a guest not stopped so leaves nothing to act on, except an open incident whose
steps were cut short after they changed the guest.

    guest-panicked ──> latched? ── yes ──> nothing: the event itself came while connecting
    or watchdog            │ no
                           v
        this QEMU's latest incident, not cleared:
          it stopped the guest so (`_stopped_by`) ──> held by the worker: still handled
                                                      done: already handled
                                                      else: resumed (the same incident goes on)
          else a manual one ──> already handled (the operator had that stop)
        otherwise ──> found on connect: a panic or watchdog panicd missed (a new incident)
    otherwise ──> an open incident of this QEMU is settled: resumed in prelaunch, else closed;
                  and a running guest's last incident is behind it (cleared)

Nothing is raised here: a resumed or found incident goes back through the detector's
`raise_incident`, as any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import structlog
from pydantic import ValidationError

from panicd.events import Detection, GuestIdentity, Incident, IncidentKind, PanicInfo, PanickedData
from panicd.incident_worker import IncidentWorker
from panicd.records import IncidentRecord, IncidentState
from panicd.store import IncidentStore

log = structlog.get_logger("panicd.monitor")

#: Runstates that an incident left behind, found by query-status on connect. QEMU 7.2 stops a
#: guest whose watchdog fired under `-action watchdog=pause` in runstate `watchdog`, not
#: `paused` (seen: WATCHDOG {action: pause}, STOP, then query-status says "watchdog"), so a
#: watchdog that fired while panicd was away is found like a missed panic.
STOPPED_BY = {"guest-panicked": IncidentKind.PANIC, "watchdog": IncidentKind.WATCHDOG}


class ConnectedGuest(Protocol):
    """What a connection's findings read of the guest's monitor."""

    @property
    def identity(self) -> GuestIdentity: ...

    @property
    def instance(self) -> str | None: ...

    @property
    def runstate(self) -> str | None: ...


class ConnectFindings:
    """A guest's runstate on connect, judged against its incidents (owned by its detector)."""

    def __init__(self, guest: ConnectedGuest, *, latched: set[IncidentKind],
                 store: IncidentStore, worker: IncidentWorker,
                 raise_incident: Callable[[Incident, IncidentRecord | None], object]) -> None:
        self.guest = guest
        #: The detector's latch set itself (kinds seen since the guest last ran), shared.
        self._latched = latched
        self.store = store
        self.worker = worker
        self._raise_incident = raise_incident

    def connected(self) -> None:
        """The guest is identified and its runstate known: what does it say of incidents?"""
        stopped_by = STOPPED_BY.get(self.guest.runstate or "")
        if stopped_by is not None:
            self._found_stopped(stopped_by)
        else:
            self._settle_open_incident()
            if self.guest.runstate == "running":
                self.store.guest_ran_again(self.guest.instance)

    def _found_stopped(self, kind: IncidentKind) -> None:
        """Connected to a guest stopped by a panic or a watchdog (`STOPPED_BY`): an incident
        of this QEMU already handled or handling it, or one panicd missed."""
        name = kind.value  # panic.found_on_connect, watchdog.found_on_connect...
        if kind in self._latched:
            return  # the event itself arrived while connecting
        latest = self.store.latest_for_instance(self.guest.instance)
        if latest is not None and not latest.cleared and self._stopped_by(latest, kind):
            if self.worker.holds(latest.id):
                # Reconnected while its steps run: the worker carries on with it.
                log.info(f"{name}.still_handled", incident=latest.id)
                self._latched.add(kind)
                return
            if latest.state is IncidentState.DONE:
                log.info(f"{name}.already_handled", status=self.guest.runstate, incident=latest.id)
                self._latched.add(kind)
                return
            # Seen before, but its steps never all ran (panicd stopped, a reload, a crash):
            # the same incident goes on, its record keeping the steps that did run.
            log.warning(f"{name}.resumed", status=self.guest.runstate, incident=latest.id)
            incident = Incident(kind=latest.kind, guest=self.guest.identity,
                                detection=Detection.RESUMED, action="pause",
                                received_at=latest.seen_at, id=latest.id,
                                info=_panic_info(latest.event),
                                # A manual one goes on with the steps its operator asked for.
                                requested_steps=(tuple(latest.requested_steps)
                                                 if latest.requested_steps is not None else None),
                                requested_by=latest.requested_by)
            latest.detection = Detection.RESUMED
            self._raise_incident(incident, latest)
            return
        if latest is not None and latest.kind is IncidentKind.MANUAL and not latest.cleared:
            # An operator acted on this guest (`panicd guest`) while a panic or watchdog had it
            # stopped (the detector's `raise_manual` clears one asked of a guest stopped by
            # neither), and it has not run since: panicd has had its turn at that stop, and what
            # is left is theirs. (Taken for a missed one, it would be dumped and acted on
            # again.) It is the same stop, of the same kind: QEMU leaves guest-panicked or
            # watchdog only by running (RESUME, RESET clear the incident) or by going away (a
            # new instance).
            log.info(f"{name}.already_handled", status=self.guest.runstate, incident=latest.id,
                     by="operator")
            self._latched.add(kind)
            return
        log.warning(f"{name}.found_on_connect", status=self.guest.runstate)
        self._raise_incident(Incident(kind=kind, guest=self.guest.identity,
                                      detection=Detection.ON_CONNECT, action="pause"), None)

    def _stopped_by(self, latest: IncidentRecord, kind: IncidentKind) -> bool:
        """Whether `latest` is what left the guest stopped as `kind`: an incident of that kind,
        or a watchdog (or manual) incident whose NMI's panic it caught (the detector's
        `_hand_over`)."""
        if latest.kind is kind:
            return True
        return kind is IncidentKind.PANIC and (
            self.worker.holds(latest.id) or latest.caught_panic is not None
            or any(step.wait_panic is not None and step.wait_panic.panic_action is not None
                   for step in latest.steps))

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
        if self.guest.runstate == "prelaunch" and latest.kind in STOPPED_BY.values():
            # panic.resumed, watchdog.resumed: as `_found_stopped` names them.
            log.warning(f"{latest.kind.value}.resumed", status=self.guest.runstate,
                        incident=latest.id)
            latest.detection = Detection.RESUMED
            self._raise_incident(Incident(kind=latest.kind, guest=self.guest.identity,
                                          detection=Detection.RESUMED, action=latest.action,
                                          received_at=latest.seen_at, id=latest.id,
                                          info=_panic_info(latest.event)), latest)
            return
        log.info("incident.closed_on_connect", incident=latest.id, status=self.guest.runstate)
        latest.state = IncidentState.DONE
        self.store.save(latest)


def _panic_info(event: dict[str, Any] | None) -> PanicInfo | None:
    """The panic information of a stored GUEST_PANICKED event (a Windows guest's bugcheck)."""
    data = (event or {}).get("data")
    try:
        return PanickedData.model_validate(data).info if isinstance(data, dict) else None
    except ValidationError:
        return None
