"""Hands-on control: `panicd guest NAME ACTION`, asked over the control socket.

When panicd holds a guest's only QMP monitor, an operator acts on that guest through panicd:

    request ──> authorised? ──> the guest ──> makes sense now? ──> IncidentDetector.raise_manual
      │         (SO_PEERCRED:   (by name,     (a dump already       (kind manual: the guest's
      │          root, or a uid  connected)    under way, resume     worker runs its steps like
      │          in control_                   of a running guest)   a panic's: record, dump,
      │          allowed_uids)                                       alerts, crash title)
      └── every request, carried out or refused, is a GUEST_ACTION alert with the caller's
          uid and pid; a refused one does nothing else.

The caller is who the kernel says (SO_PEERCRED), never what the request says. An authorised
caller is told why a request is refused (the known guest names, what runs); anyone else is
told only that they may not. The reply comes in two lines: at once, accepted (the incident's
id) or refused; then, when the caller waits, each step's outcome once they have all run.

Decided here: `resume` of a guest that is already running is refused. QEMU accepts `cont` on a
running guest and does nothing, so it would only make an incident that did nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from panicd import alerts
from panicd.alerts import Alerter
from panicd.config import Config, DumpFormat
from panicd.control import Answer, Peer
from panicd.monitor import ConnectionState, GuestMonitor
from panicd.records import IncidentRecord
from panicd.respond import PanicResponder

log = structlog.get_logger("panicd.guest_actions")

#: What each action runs; run-policy runs the guest's policy's on_panic steps.
ACTION_STEPS: dict[str, tuple[str, ...] | None] = {
    "dump": ("dump",), "resume": ("resume",), "restart": ("restart",),
    "poweroff": ("poweroff",), "nmi": ("nmi",), "run-policy": None,
}
Action = Literal["dump", "resume", "restart", "poweroff", "nmi", "run-policy"]
#: The longest a caller may wait for an incident's steps on one connection.
MAX_WAIT_SECONDS = 24 * 3600.0
#: How often a waiting caller's incident is looked at. The guest's worker says which
#: incidents it holds (`holds`), and that covers every way out of it: steps done, a crash,
#: the worker cancelled with its guest (a reload).
OUTCOME_POLL_SECONDS = 0.1


class GuestActionRequest(BaseModel):
    """`{"command": "guest", "guest": NAME, "action": ACTION, "format": F, "wait": SECONDS}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    command: Literal["guest"]
    guest: str = Field(min_length=1, max_length=1024)
    action: Action
    #: For the dump this incident makes, over the policy's `dump.format`.
    format: DumpFormat | None = None
    #: How long to wait for the steps before the second reply; 0: no second reply.
    wait: float = Field(default=0.0, ge=0, le=MAX_WAIT_SECONDS)


class GuestActions:
    """Serves `panicd guest` requests for the daemon: its guests, its config, its responder."""

    def __init__(self, *, monitors: Callable[[], Iterable[GuestMonitor]],
                 config: Callable[[], Config], responder: PanicResponder,
                 alerter: Alerter) -> None:
        #: The daemon's monitors and config as they are now (a reload changes both).
        self._monitors = monitors
        self._config = config
        self.responder = responder
        self.alerter = alerter

    async def request(self, raw: dict[str, Any], peer: Peer | None) -> Answer:
        """One request: the first reply, and the second (the steps' outcome) when it waits."""
        name = str(raw.get("guest"))[:1024]
        action = str(raw.get("action"))[:64]
        refused = self._unauthorised(peer)
        if refused is not None:
            return self._refuse(None, name, action, peer, refused)
        try:
            request = GuestActionRequest.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                 for e in exc.errors(include_url=False)[:3])
            return self._refuse(None, name, action, peer, f"bad request: {problems}")
        assert peer is not None  # _unauthorised refuses a caller it cannot name
        found = [m for m in self._monitors() if m.identity.name == request.guest]
        if len(found) != 1:
            return self._refuse(None, name, action, peer, self._not_one_guest(name, found))
        monitor = found[0]
        steps, refused = await self._steps(monitor, request)
        if refused is not None:
            return self._refuse(monitor, name, action, peer, refused)
        with structlog.contextvars.bound_contextvars(guest=name, socket=monitor.identity.socket):
            record = monitor.detector.raise_manual(request.action, steps, uid=peer.uid,
                                                   pid=peer.pid, dump_format=request.format)
            log.info("guest_action.accepted", action=action, uid=peer.uid, pid=peer.pid,
                     incident=record.id, steps=steps)
        reply = {"ok": True, "guest": name, "action": action, "incident": record.id,
                 "steps": steps}
        if request.wait == 0:
            return reply, None
        return reply, functools.partial(self._outcome, monitor, record, request.wait)

    def _unauthorised(self, peer: Peer | None) -> str | None:
        if peer is None:
            return "panicd could not tell who is asking (no SO_PEERCRED): refused"
        allowed = self._config().daemon.control_allowed_uids
        if peer.uid == 0 or peer.uid in allowed:
            return None
        return (f"uid {peer.uid} may not act on guests: only root and the uids in [daemon] "
                "control_allowed_uids may")

    def _not_one_guest(self, name: str, found: list[GuestMonitor]) -> str:
        if found:
            sockets = ", ".join(sorted(m.identity.socket for m in found))
            return (f"{len(found)} guests are named {name!r} (sockets {sockets}): panicd cannot "
                    "tell which one is meant")
        known = sorted({m.identity.name for m in self._monitors()})
        return f"no guest named {name!r}; known: {', '.join(known) if known else '(none)'}"

    async def _steps(self, monitor: GuestMonitor,
                     request: GuestActionRequest) -> tuple[list[str], str | None]:
        """The steps this request runs, and why it is refused (None: it is not)."""
        name = monitor.identity.name
        asked = ACTION_STEPS[request.action]
        steps = list(asked if asked is not None else self._config().policy_for(name).on_panic)
        missing = [step for step in steps if step not in self.responder.steps]
        why: str | None = None
        if monitor.state is not ConnectionState.CONNECTED:
            why = (f"guest {name!r} is not connected ({monitor.state.value}): panicd cannot "
                   "reach its QEMU now")
        elif not steps:
            why = f"the policy of {name!r} has no on_panic steps: nothing to run"
        elif missing:
            why = f"this panicd cannot run the step {missing[0]!r}"
        elif request.format is not None and "dump" not in steps:
            why = f"--format goes with a dump; {request.action} makes none"
        elif request.action == "resume" and monitor.runstate == "running":
            # QEMU would accept `cont` and do nothing (module docstring).
            why = f"guest {name!r} is already running: nothing to resume"
        elif "dump" in steps:
            why = await self._dump_under_way(monitor)
        return steps, why

    async def _dump_under_way(self, monitor: GuestMonitor) -> str | None:
        """Why a dump cannot start now: QEMU writes one dump at a time per guest (a second
        dump-guest-memory is refused while one runs), so one asked meanwhile is refused."""
        name = monitor.identity.name
        pending = monitor.detector.pending_dump()
        if pending is not None:
            return (f"a dump of {name} is running (incident {pending.id}, started "
                    f"{_utc(pending.seen_at)}): QEMU writes one dump at a time; see panicd "
                    f"incidents show {pending.id}")
        # A dump no incident waits for any more, that QEMU may still be writing: one past its
        # policy's timeout (QEMU cannot cancel a dump), or one left while panicd was away.
        # Its record says "running" until it is settled (actions/dump.py, orphans.py).
        records = await asyncio.to_thread(self.responder.dumps.records, name,
                                          monitor.identity.qemu_pid)
        writing = [r for r in records if r.get("dump", {}).get("result") == "running"]
        if writing:
            dump = writing[-1]
            incident = dump.get("incident", {}).get("id") or "unknown"
            return (f"QEMU may still be writing a dump of {name} (incident {incident}, started "
                    f"{dump['dump'].get('started_at')}, {dump['dump'].get('path')}): it writes "
                    "one dump at a time")
        return None

    def _refuse(self, monitor: GuestMonitor | None, name: str, action: str, peer: Peer | None,
                why: str) -> Answer:
        log.warning("guest_action.refused", guest=name, action=action,
                    uid=peer.uid if peer else None, pid=peer.pid if peer else None, reason=why)
        identity = monitor.identity if monitor is not None else None
        self.alerter.send(alerts.guest_action(identity, name, action,
                                              uid=peer.uid if peer else None,
                                              pid=peer.pid if peer else None, refused=why))
        return {"ok": False, "refused": True, "error": why}, None

    async def _outcome(self, monitor: GuestMonitor, record: IncidentRecord,
                       wait: float) -> dict[str, Any]:
        """The second reply: the incident's steps once the worker has let it go, or why not."""
        deadline = time.monotonic() + wait
        while monitor.worker.holds(record.id):
            if not any(m is monitor for m in self._monitors()):
                return {"ok": True, "done": False, "incident": record.id,
                        "error": "the guest was dropped (a reload, or its QEMU went away) "
                                 "before the steps finished"}
            if time.monotonic() >= deadline:
                return {"ok": True, "done": False, "incident": record.id,
                        "error": f"the steps did not finish within {wait:g} s; they go on"}
            await asyncio.sleep(OUTCOME_POLL_SECONDS)
        return {"ok": True, "done": True, "incident": record.id, "state": record.state.value,
                "outcome": record.outcome,
                "steps": [step.model_dump(mode="json") for step in record.steps]}


def _utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
