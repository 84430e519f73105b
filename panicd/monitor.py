"""One guest, watched: a QMP session kept up, its events turned into incidents.

`GuestMonitor.run` owns everything about one guest and runs until cancelled:

    connect ──> identify ──> take over the panic action ──> query-status ──> read events
       ^                                                                        │
       └──────────── capped exponential backoff <──── connection lost ──────────┘

- identify: query-name and query-uuid, QEMU's version from the greeting, QEMU's pid from
  SO_PEERCRED. The configured name wins, then query-name, then the socket file's stem.
- take over: `set-action panic=pause,watchdog=pause`, because QEMU's default panic action
  (shutdown) powers the guest off and its default watchdog action (reset) reboots it, leaving
  nothing to dump (a policy's `panic_action = "none"` keeps a panicked guest running instead).
- query-status on connect, and every event after, go to the guest's `IncidentDetector`
  (detection.py), which decides what is an incident (a panic found on connect, resumed, a
  duplicate). Events are read by the session's reader and handed over synchronously: that path
  only classifies, alerts (one datagram) and queues; incidents are handled by this guest's
  worker task (incident_worker.py), one at a time, so a slow dump never delays reading events.
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

from panicd.alerts import Alerter
from panicd.config import DaemonConfig, GuestConfig
from panicd.detection import IncidentDetector
from panicd.errors import GuestUnreachable
from panicd.events import (
    CaughtPanic,
    DumpCompletedData,
    GuestIdentity,
    Incident,
    QmpEvent,
)
from panicd.incident_worker import IncidentWorker
from panicd.orphans import finish_orphaned_dumps
from panicd.qmp import QmpCommandError, QmpSession
from panicd.records import qemu_instance
from panicd.respond import PanicResponder
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
        #: Runs this guest's incidents through its policy, one at a time.
        self.worker = IncidentWorker(responder, store, self, on_change, on_done=self._incident_done)
        #: The event path: which events are incidents (detection.py).
        self.detector = IncidentDetector(self, worker=self.worker, responder=responder,
                                         alerter=alerter, store=store)
        self._dump_waiters: list[asyncio.Future[DumpCompletedData]] = []
        self._tasks: asyncio.TaskGroup | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        # What `panicd status` and STATUS= show.
        self._state = ConnectionState.DISCONNECTED
        self._runstate: str | None = None
        self._last_incident: Incident | None = None
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

    @property
    def last_incident(self) -> Incident | None:
        return self._last_incident

    @last_incident.setter
    def last_incident(self, incident: Incident | None) -> None:
        self._last_incident = incident
        self._on_change()

    @property
    def instance(self) -> str | None:
        """This QEMU process (socket, pid, pid start time), once identified."""
        return self._instance

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

    def catch_panic(self, incident_id: str) -> asyncio.Future[CaughtPanic]:
        return self.detector.catch_panic(incident_id)

    def _incident_done(self, incident_id: str) -> None:
        # The worker is made before the detector: looked up when called.
        self.detector.release_panic_catch(incident_id)

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
        self.detector.new_connection()
        # First of all: under QEMU's default (shutdown) a panic during identification is lost.
        if self.settings.take_over_panic_action:
            # Before identifying, under the name known so far (a panic during identification
            # must not power the guest off), then again under the identified name's policy.
            await self._take_over_actions(session)
        await self._identify(session)
        if self.settings.take_over_panic_action and self._wants_other_panic_action():
            await self._take_over_actions(session)
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
        self.detector.connected()
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

    def _wants_other_panic_action(self) -> bool:
        return self.responder.policy_for(self._identity.name).panic_action != "pause"

    async def _take_over_actions(self, session: QmpSession) -> None:
        """QEMU's actions on a panic and on a watchdog, as panicd needs them.

        Panic: `pause` keeps a panicked guest whole for a dump (QEMU's default, shutdown,
        powers it off); a policy's `panic_action = "none"` leaves the guest running instead (a
        Windows guest writes its own MEMORY.DMP and reboots). Watchdog: `pause`, so that a
        hung guest can be dumped (QEMU's default, reset, would reboot it first)."""
        panic = self.responder.policy_for(self._identity.name).panic_action
        try:
            await session.execute("set-action", {"panic": panic, "watchdog": "pause"})
        except QmpCommandError as exc:
            if exc.kind != QmpCommandError.REFUSED:
                raise
            # set-action exists from QEMU 6.0; older QEMUs pause on panic only with -no-shutdown,
            # and cannot leave a panicked guest running at all.
            hint = ("this QEMU cannot leave a panicked guest running (set-action needs QEMU >= "
                    "6.0): panic_action none does not apply to it"
                    if panic == "none" else
                    "start this QEMU with -no-shutdown so that a panicked guest stays dumpable")
            log.warning("qmp.take_over_refused", error=exc.reason, panic=panic, hint=hint)
            return
        log.info("qmp.actions_set", panic=panic, watchdog="pause")

    async def panic_action_reloaded(self) -> None:
        """A reload changed this guest's policy's `panic_action`: QEMU is told now, as on
        connect (`set-action` is a run-time setting of the QEMU process, so the next panic
        already gets the new action). A guest not connected gets it when it connects."""
        if not self.settings.take_over_panic_action or not self._identified:
            return  # a connection being set up reads the reloaded policy itself
        # Run from the daemon's reload, outside the guest's task: its log context bound here.
        with structlog.contextvars.bound_contextvars(guest=self._identity.name,
                                                     socket=str(self.spec.socket)):
            try:
                await self._take_over_actions(self.session())
            except QmpCommandError as exc:
                # The connection's own teardown deals with a lost QEMU; the reload goes on.
                log.warning("reload.set_action_failed", error=exc.reason)

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
        if self.detector.on_event(event, raw):
            return
        if event.event == "RESUME":
            self.runstate = "running"
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
