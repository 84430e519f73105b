"""Hands-on control: `panicd guest NAME ACTION`, asked over the control socket.

When panicd holds a guest's only QMP monitor, an operator acts on that guest through panicd:

    request ──> authorised? ──> the guest ──> makes sense now? ──> IncidentDetector.raise_manual
      │         (SO_PEERCRED:   (by name,     (a dump already       (kind manual: the guest's
      │          root, or a uid  connected)    under way, resume     worker runs its steps like
      │          in control_                   of a running guest)   a panic's: record, dump,
      │          allowed_uids)                                       alerts, crash title)
      └── every request, carried out or refused, is a GUEST_ACTION alert with the caller's
          uid and pid; a refused one does nothing else. Refusals are audited one by one up to
          REFUSED_AUDITS_PER_WINDOW a minute per uid, then counted in one summary entry (a
          caller looping on refused requests must not flood the journal: journald's per-service
          rate limit would then drop other guests' PANIC alerts).

The caller is who the kernel says (SO_PEERCRED), never what the request says. An authorised
caller is told why a request is refused (the known guest names, what runs); anyone else is
told only that they may not. A guest name that matches no guest, or that an unauthorised
caller sent, is the caller's text: it is written to the journal escaped (`text.printable`),
so that a newline in it cannot forge a line of its own. The reply comes in two lines: at
once, accepted (the incident's id) or refused; then, when the caller waits, each step's
outcome once they have all run.

Decided here: `resume` of a guest that is already running is refused. QEMU accepts `cont` on a
running guest and does nothing, so it would only make an incident that did nothing.

Whether a request makes sense is decided with no wait between the last check and the
incident it raises (`IncidentDetector.raise_manual`): the one slow look (the dump store, in a
thread) comes first. Requests arriving together are then decided one after another, and the
first dump accepted is `pending_dump` for all the others.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from panicd import alerts
from panicd.alerts import Alerter
from panicd.config import Config, DumpFormat
from panicd.control import Answer, Peer
from panicd.monitor import ConnectionState, GuestMonitor
from panicd.records import IncidentRecord
from panicd.respond import PanicResponder
from panicd.text import printable

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
#: Refused requests audited one by one per caller (uid) within REFUSED_AUDIT_WINDOW_SECONDS;
#: the rest of that window's are counted, and said in one summary entry when it ends.
REFUSED_AUDITS_PER_WINDOW = 10
REFUSED_AUDIT_WINDOW_SECONDS = 60.0


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
        self._refusal_audits = RefusalAudits(
            alerter, responder.metrics.guest_action_refusals_unaudited)

    def close(self) -> None:
        """panicd stops: refusals not yet summed up in the journal are, now."""
        self._refusal_audits.close()

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
        steps = self._steps(monitor, request)
        # The only wait, before any check: from the last check to raise_manual nothing may
        # wait, or requests that came together would all pass `pending_dump` before the first
        # of them is raised (module docstring).
        left_writing = await self._dump_left_writing(monitor) if "dump" in steps else None
        refused = self._why_not(monitor, request, steps) or left_writing
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
            return (f"{len(found)} guests are named '{name}' (sockets {sockets}): panicd "
                    "cannot tell which one is meant")
        # Raw here: whoever shows the reason escapes it, once (`panicd guest`, the audit entry).
        known = sorted({m.identity.name for m in self._monitors()})
        return f"no guest named '{name}'; known: {', '.join(known) if known else '(none)'}"

    def _steps(self, monitor: GuestMonitor, request: GuestActionRequest) -> list[str]:
        """The steps this request runs: the action's, or the guest's on_panic (run-policy)."""
        asked = ACTION_STEPS[request.action]
        return list(asked if asked is not None
                    else self._config().policy_for(monitor.identity.name).on_panic)

    def _why_not(self, monitor: GuestMonitor, request: GuestActionRequest,
                 steps: list[str]) -> str | None:
        """Why the request is refused now (None: it is not). It never waits (module docstring)."""
        name = monitor.identity.name
        missing = [step for step in steps if step not in self.responder.steps]
        why: str | None = None
        if not any(m is monitor for m in self._monitors()):
            why = f"guest {name!r} was dropped (a reload, or its QEMU went away): ask again"
        elif monitor.state is not ConnectionState.CONNECTED:
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
        elif "dump" in steps and (pending := monitor.detector.pending_dump()) is not None:
            # QEMU writes one dump at a time per guest (a second dump-guest-memory is refused
            # while one runs), so one asked meanwhile is refused.
            why = (f"a dump of {name} is running (incident {pending.id}, started "
                   f"{_utc(pending.seen_at)}): QEMU writes one dump at a time; see panicd "
                   f"incidents show {pending.id}")
        return why

    async def _dump_left_writing(self, monitor: GuestMonitor) -> str | None:
        """Why a dump cannot start now, as the dump store says (read in a thread)."""
        name = monitor.identity.name
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
        uid, pid = (peer.uid, peer.pid) if peer is not None else (None, None)
        # Without a monitor, `name` is only what the caller sent (alerts.guest_action escapes
        # it likewise): a newline in it must not make a line of its own in the journal.
        shown = name if monitor is not None else printable(name)
        if self._refusal_audits.admit(uid):
            log.warning("guest_action.refused", guest=shown, action=printable(action), uid=uid,
                        pid=pid, reason=why)
            identity = monitor.identity if monitor is not None else None
            self.alerter.send(alerts.guest_action(identity, name, action, uid=uid, pid=pid,
                                                  refused=why))
        else:
            log.debug("guest_action.refused_unaudited", guest=shown, uid=uid)
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


@dataclass
class _AuditWindow:
    """One caller's refused requests since `started` (monotonic seconds)."""

    started: float
    audited: int = 0
    unaudited: int = 0
    summary: asyncio.TimerHandle | None = None


class RefusalAudits:
    """Which refused requests get a GUEST_ACTION entry of their own: a caller's first `limit`
    in each `window` seconds. The rest are counted (`unaudited`, a metric) and said in one
    summary entry when the window ends, so that a caller looping on refused requests costs
    the journal `limit` + 1 entries a window, however fast it loops. Accepted requests are
    never held back: each is an incident, and authorised."""

    def __init__(self, alerter: Alerter, unaudited: Counter, *,
                 limit: int = REFUSED_AUDITS_PER_WINDOW,
                 window: float = REFUSED_AUDIT_WINDOW_SECONDS) -> None:
        self.alerter = alerter
        self.limit = limit
        self.window = window
        self._unaudited = unaudited
        #: By caller uid (None: a caller the kernel could not name).
        self._windows: dict[int | None, _AuditWindow] = {}

    def admit(self, uid: int | None) -> bool:
        """Whether this refusal of `uid`'s is audited on its own; if not, it is counted."""
        now = time.monotonic()
        window = self._windows.get(uid)
        if window is None or now - window.started >= self.window:
            if window is not None:
                self._close(uid, window)  # its timer is late (a busy loop): summarise it now
            self._forget_ended(now)
            window = self._windows[uid] = _AuditWindow(started=now)
        if window.audited < self.limit:
            window.audited += 1
            return True
        window.unaudited += 1
        self._unaudited.inc()
        if window.summary is None:
            window.summary = asyncio.get_running_loop().call_later(
                window.started + self.window - now, self._close, uid, window)
        return False

    def _close(self, uid: int | None, window: _AuditWindow) -> None:
        """`window` has ended: the summary of what it did not audit, once."""
        if window.summary is not None:
            window.summary.cancel()  # a no-op when it is the timer calling
            window.summary = None
        if self._windows.get(uid) is window:
            del self._windows[uid]
        if window.unaudited:
            count, window.unaudited = window.unaudited, 0
            log.warning("guest_action.refusals_unaudited", uid=uid, requests=count,
                        window_seconds=self.window)
            self.alerter.send(alerts.guest_action_refusals_unaudited(uid, count, self.limit,
                                                                     self.window))

    def close(self) -> None:
        """panicd stops: every window's summary now, or what it did not audit is never said."""
        for uid, window in list(self._windows.items()):
            self._close(uid, window)

    def _forget_ended(self, now: float) -> None:
        """Windows that ended with nothing left to say: one entry per caller at most."""
        for uid in [u for u, w in self._windows.items()
                    if now - w.started >= self.window and w.summary is None]:
            del self._windows[uid]


def _utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
