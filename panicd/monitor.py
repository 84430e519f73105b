"""One guest, watched: a QMP session kept up, its events turned into incidents.

`GuestMonitor.run` owns everything about one guest and runs until cancelled:

    connect ──> identify ──> take over the panic action ──> query-status ──> read events
       ^                                                                        │
       └──────────── capped exponential backoff <──── connection lost ──────────┘

- identify: query-name and query-uuid, QEMU's version from the greeting, QEMU's pid from
  SO_PEERCRED. The configured name wins, then query-name, then the socket file's stem.
- take over: `set-action panic=pause`, because QEMU's default panic action (shutdown) powers
  the guest off and leaves nothing to dump.
- query-status `guest-panicked` on connect is a panic that happened while panicd was away
  (unless the incident store says panicd already handled it): it is handled like a live
  one; an incident found open there (panicd stopped half way) is resumed, same record.
- Events are read by the session's reader and handed to `_on_event` synchronously. That path
  only classifies, alerts (one datagram) and queues: incidents are handled by this guest's
  worker task (incident_worker.py), one at a time, so a slow dump never delays reading events.
- One panic is handled once: after GUEST_PANICKED, further GUEST_PANICKED events are
  duplicates until the guest runs again (RESUME or RESET). QEMU < 6.0 sends a second
  GUEST_PANICKED {action: poweroff} after the first {action: pause}.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from panicd import alerts
from panicd.actions import DURABLE_WAIT_SECONDS
from panicd.alerts import Alerter
from panicd.config import DaemonConfig, GuestConfig
from panicd.errors import GuestUnreachable
from panicd.events import (
    Detection,
    DumpCompletedData,
    GuestIdentity,
    Incident,
    IncidentKind,
    PanickedData,
    QmpEvent,
)
from panicd.incident_worker import IncidentWorker
from panicd.orphans import finish_orphaned_dumps
from panicd.qmp import QmpCommandError, QmpSession
from panicd.records import IncidentRecord, IncidentState, qemu_instance
from panicd.respond import PanicResponder, planned_steps
from panicd.store import IncidentStore

log = structlog.get_logger("panicd.monitor")

#: First reconnect delay; doubles up to DaemonConfig.reconnect_max_seconds.
FIRST_RETRY_SECONDS = 0.2
#: Events read while the guest is being identified are held, up to this many.
EARLY_EVENT_LIMIT = 256


class ConnectionState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


_PANIC_EVENTS = {"GUEST_PANICKED": IncidentKind.PANIC, "GUEST_CRASHLOADED": IncidentKind.CRASH_LOADED}


class GuestMonitor:
    """Watches one guest's QMP socket for as long as it runs."""

    def __init__(
        self,
        spec: GuestConfig,
        *,
        settings: DaemonConfig,
        responder: PanicResponder,
        alerter: Alerter,
        store: IncidentStore,
        on_change: Callable[[], None] = lambda: None,
        accepted: socket.socket | None = None,
    ) -> None:
        self.spec = spec
        #: A connection QEMU made to panicd's listen socket: served once, never re-dialled
        #: (QEMU reconnects by itself, and a new monitor takes that connection).
        self._accepted = accepted
        self._dialled_in = accepted is not None
        self._on_change = on_change
        self.settings = settings
        self.responder = responder
        self.alerter = alerter
        self.store = store
        self._identity = GuestIdentity(name=spec.name or spec.socket.stem, socket=str(spec.socket))
        self._session: QmpSession | None = None
        self._instance: str | None = None
        self._identified = False
        self._early_events: list[dict[str, Any]] = []
        self._latched: set[IncidentKind] = set()
        #: Runs this guest's incidents through its policy, one at a time.
        self.worker = IncidentWorker(responder, store, self, on_change)
        self._dump_waiters: list[asyncio.Future[DumpCompletedData]] = []
        self._tasks: asyncio.TaskGroup | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        # What `panicd status` and STATUS= show.
        self._state = ConnectionState.DISCONNECTED
        self._runstate: str | None = None
        self.last_incident: Incident | None = None
        self.connections = 0
        #: Set once the first connection attempt has ended, whichever way (READY=1 waits for it).
        self.first_attempt = asyncio.Event()
        #: Called each time a connection's guest has been identified (the listener frees the
        #: slot a dial-in peer held while unknown).
        self.on_identified: Callable[[], None] = lambda: None

    @property
    def state(self) -> ConnectionState:
        return self._state

    @state.setter
    def state(self, value: ConnectionState) -> None:
        if value != self._state:
            self._state = value
            self._on_change()

    @property
    def runstate(self) -> str | None:
        return self._runstate

    @runstate.setter
    def runstate(self, value: str | None) -> None:
        if value != self._runstate:
            self._runstate = value
            self._on_change()

    def snapshot(self) -> dict[str, Any]:
        """This guest as `panicd status` shows it."""
        incident = self.last_incident
        return {
            "name": self._identity.name,
            "socket": str(self.spec.socket),
            "uuid": self._identity.uuid,
            "qemu_version": self._identity.qemu_version,
            "qemu_pid": self._identity.qemu_pid,
            "connection": self._state.value,
            "runstate": self._runstate,
            "connections": self.connections,
            "last_panic": (
                dt.datetime.fromtimestamp(incident.received_at, dt.UTC).isoformat()
                if incident else None
            ),
            "last_panic_kind": incident.kind.value if incident else None,
            "handling": self.worker.handling,
            "last_incident": self._last_incident_summary(),
            "last_dump": (self.worker.last_dump.model_dump(mode="json")
                          if self.worker.last_dump is not None else None),
            "restarts": self.worker.restarts,
        }

    def _last_incident_summary(self) -> dict[str, Any] | None:
        record = self.store.last_incident(self._identity.name)
        if record is None:
            return None
        return {"id": record.id, "kind": record.kind.value,
                "time": dt.datetime.fromtimestamp(record.seen_at, dt.UTC).isoformat(),
                "outcome": record.outcome}

    # -- GuestHandle, for the steps -------------------------------------------------------

    @property
    def identity(self) -> GuestIdentity:
        return self._identity

    def session(self) -> QmpSession:
        if self._session is None or not self._session.connected:
            raise QmpCommandError(
                {"execute": "(none)"}, "guest not connected", kind=QmpCommandError.DISCONNECTED
            )
        return self._session

    def expect_dump_completed(self) -> asyncio.Future[DumpCompletedData]:
        future: asyncio.Future[DumpCompletedData] = asyncio.get_running_loop().create_future()
        self._dump_waiters.append(future)
        return future

    # -- lifetime -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the guest watched until cancelled."""
        structlog.contextvars.bind_contextvars(guest=self._identity.name, socket=str(self.spec.socket))
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            worker = tasks.create_task(self.worker.run(), name=f"incidents:{self._identity.name}")
            await self._keep_connected()
            # Only an accepted connection ends: its QEMU dials again, and the new connection's
            # monitor takes over (what was left undone is resumed from the incident store).
            for task in (worker, *self._side_tasks):
                task.cancel()

    async def _keep_connected(self) -> None:
        if self._accepted is not None:
            sock, self._accepted = self._accepted, None
            try:
                session = await self._open(sock)
            except GuestUnreachable as exc:
                log.warning("qmp.unreachable", error=str(exc))
                return
            finally:
                self.first_attempt.set()
            await self._run_session(session)
            return
        delay = FIRST_RETRY_SECONDS
        failures = 0
        while True:
            try:
                session = await self._open(self.spec.socket)
            except GuestUnreachable as exc:
                self.state = ConnectionState.DISCONNECTED
                self.first_attempt.set()
                # Said once per outage, then quietly: a stopped guest must not flood the log.
                (log.warning if failures == 0 else log.debug)(
                    "qmp.unreachable", error=str(exc), retry_in=round(delay, 2)
                )
                failures += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.reconnect_max_seconds)
                continue
            failures = 0
            delay = FIRST_RETRY_SECONDS
            await self._run_session(session)
            await asyncio.sleep(delay)

    async def _open(self, address: Path | socket.socket) -> QmpSession:
        self.state = ConnectionState.CONNECTING
        return await QmpSession.open(
            address,
            name=self._identity.name,
            on_event=self._on_event,
            connect_timeout=self.settings.connect_timeout,
            command_timeout=self.settings.command_timeout,
        )

    async def _run_session(self, session: QmpSession) -> None:
        try:
            await self._serve(session)
        except QmpCommandError as exc:
            log.warning("qmp.setup_failed", error=str(exc), reply=exc.reply)
        finally:
            self.first_attempt.set()
            self._session = None
            self._identified = False
            self._early_events.clear()
            self.state = ConnectionState.DISCONNECTED
            await session.close()
        log.warning("qmp.disconnected")

    async def _serve(self, session: QmpSession) -> None:
        self._session = session
        # A new connection may be a new QEMU: what was latched is re-learned from query-status
        # and the incident store below.
        self._latched.clear()
        # First of all: under QEMU's default (shutdown) a panic during identification is lost.
        if self.settings.take_over_panic_action:
            await self._take_over_panic_action(session)
        await self._identify(session)
        status = await session.execute("query-status")
        self.runstate = str(status.get("status")) if isinstance(status, dict) else None
        self.state = ConnectionState.CONNECTED
        self.connections += 1
        log.info(
            "qmp.connected",
            qemu=self._identity.qemu_version,
            pid=self._identity.qemu_pid,
            uuid=self._identity.uuid,
            status=self.runstate,
        )
        self._identified = True
        self.first_attempt.set()
        self.on_identified()
        early, self._early_events = self._early_events, []
        for event in early:
            self._on_event(event)
        if self.runstate == "guest-panicked":
            self._found_panicked()
        else:
            self._settle_open_incident()
            if self.runstate == "running":
                self.store.guest_ran_again(self._instance)
        assert self._tasks is not None  # set by run(), which is the only caller
        orphans = self._tasks.create_task(
            finish_orphaned_dumps(self, self.responder.evidence),
            name=f"orphaned-dumps:{self._identity.name}",
        )
        self._side_tasks.add(orphans)
        orphans.add_done_callback(self._side_tasks.discard)
        await session.closed()

    async def _identify(self, session: QmpSession) -> None:
        name = self.spec.name
        if name is None:
            reply = await session.execute("query-name")
            reported = reply.get("name") if isinstance(reply, dict) else None
            fallback = self.spec.socket.stem
            if self._dialled_in and session.peer_pid is not None:
                fallback = f"qemu-{session.peer_pid}"  # every dial-in shares one socket name
            name = reported if isinstance(reported, str) and reported else fallback
        reply = await session.execute("query-uuid")
        uuid = reply.get("UUID") if isinstance(reply, dict) else None
        if not isinstance(uuid, str) or uuid.strip("0-") == "":
            uuid = None  # QEMU answers all zeros when no -uuid was given
        self._identity = GuestIdentity(
            name=name,
            socket=str(self.spec.socket),
            uuid=uuid,
            qemu_version=session.greeting_version,
            qemu_pid=session.peer_pid,
        )
        self._instance = qemu_instance(str(self.spec.socket), session.peer_pid)
        structlog.contextvars.bind_contextvars(guest=name)

    async def _take_over_panic_action(self, session: QmpSession) -> None:
        try:
            await session.execute("set-action", {"panic": "pause"})
        except QmpCommandError as exc:
            if exc.kind != QmpCommandError.REFUSED:
                raise
            # set-action exists from QEMU 6.0; older QEMUs pause on panic only with -no-shutdown.
            log.warning(
                "qmp.take_over_refused",
                error=exc.reason,
                hint="start this QEMU with -no-shutdown so that a panicked guest stays dumpable",
            )

    # -- the event path: classify, alert, queue; nothing slow ---------------------------------

    def _on_event(self, raw: dict[str, Any]) -> None:
        # This runs in qemu.qmp's reader task, whose context was copied before the guest's
        # name was known: bind it here, so every event line names the guest.
        structlog.contextvars.bind_contextvars(guest=self._identity.name)
        if not self._identified:
            if len(self._early_events) < EARLY_EVENT_LIMIT:
                self._early_events.append(raw)
            else:
                log.warning("qmp.event_dropped", reason="too many events before identification")
            return
        try:
            event = QmpEvent.model_validate(raw)
        except ValidationError as exc:
            log.warning("qmp.bad_event", error=exc.errors(include_url=False)[:3], raw=str(raw)[:500])
            return
        kind = _PANIC_EVENTS.get(event.event)
        if kind is not None:
            self._on_panic_event(kind, event, raw)
        elif event.event in ("RESUME", "RESET"):
            # The guest runs again: whatever panics next is a new panic.
            if self._latched:
                log.info("panic.cleared", by=event.event)
            self._latched.clear()
            self.store.guest_ran_again(self._instance)
            self.runstate = "running" if event.event == "RESUME" else self.runstate
        elif event.event == "STOP":
            if self.runstate != "guest-panicked":
                self.runstate = "paused"
        elif event.event == "SHUTDOWN":
            self.runstate = "shutdown"
            log.info("qemu.shutdown", **{k: v for k, v in event.data.items() if k in ("guest", "reason")})
        elif event.event == "DUMP_COMPLETED":
            self._on_dump_completed(event)
        else:
            log.debug("qmp.event", qmp_event=event.event)

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
            self.runstate = "guest-panicked"
        self._raise_incident(
            Incident(
                kind=kind,
                guest=self._identity,
                detection=Detection.EVENT,
                action=data.action,
                raw_event=raw,
                info=data.info,
            )
        )

    def _found_panicked(self) -> None:
        if IncidentKind.PANIC in self._latched:
            return  # the GUEST_PANICKED event itself arrived while connecting
        latest = self.store.latest_for_instance(self._instance)
        if latest is not None and latest.kind is IncidentKind.PANIC and not latest.cleared:
            if self.worker.holds(latest.id):
                # Reconnected while its steps run: the worker carries on with it.
                log.info("panic.still_handled", incident=latest.id)
                self._latched.add(IncidentKind.PANIC)
                return
            if latest.state is IncidentState.DONE:
                log.info("panic.already_handled", status=self.runstate, incident=latest.id)
                self._latched.add(IncidentKind.PANIC)
                return
            # Seen before, but its steps never all ran (panicd stopped, a reload, a crash):
            # the same incident goes on, its record keeping the steps that did run.
            log.warning("panic.resumed", status=self.runstate, incident=latest.id)
            incident = Incident(kind=IncidentKind.PANIC, guest=self._identity,
                                detection=Detection.RESUMED, action="pause",
                                received_at=latest.seen_at, id=latest.id)
            latest.detection = Detection.RESUMED
            self._raise_incident(incident, latest)
            return
        log.warning("panic.found_on_connect", status=self.runstate)
        self._raise_incident(Incident(kind=IncidentKind.PANIC, guest=self._identity,
                                      detection=Detection.ON_CONNECT, action="pause"))

    def _settle_open_incident(self) -> None:
        """An open incident of this QEMU whose guest is no longer guest-panicked: its steps were
        cut short after they changed the guest. In `prelaunch` (reset, but not yet `cont`: the
        connection dropped inside the restart step) the incident is resumed, so the guest
        runs; otherwise (running again, shut down, paused by a person) there is nothing left
        to act on, and it is closed as it stands."""
        latest = self.store.latest_for_instance(self._instance)
        if (latest is None or latest.state is not IncidentState.OPEN
                or self.worker.holds(latest.id)):
            return
        if self.runstate == "prelaunch" and latest.kind is IncidentKind.PANIC:
            log.warning("panic.resumed", status=self.runstate, incident=latest.id)
            latest.detection = Detection.RESUMED
            self._raise_incident(Incident(kind=latest.kind, guest=self._identity,
                                          detection=Detection.RESUMED, action=latest.action,
                                          received_at=latest.seen_at, id=latest.id), latest)
            return
        log.info("incident.closed_on_connect", incident=latest.id, status=self.runstate)
        latest.state = IncidentState.DONE
        self.store.save(latest)

    def _raise_incident(self, incident: Incident, record: IncidentRecord | None = None) -> None:
        self._latched.add(incident.kind)
        self.last_incident = incident
        self._on_change()
        durable: asyncio.Future[None] | None = None
        if record is None:
            record = IncidentRecord.of(incident, self._instance)
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

    def _on_dump_completed(self, event: QmpEvent) -> None:
        try:
            data = DumpCompletedData.model_validate(event.data)
        except ValidationError as exc:
            log.warning("qmp.bad_dump_completed", error=exc.errors(include_url=False)[:3])
            return
        waiters, self._dump_waiters = self._dump_waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(data)
