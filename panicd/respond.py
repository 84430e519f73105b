"""From an incident to the policy's steps, in order, with alerts.

The monitor sends `alerts.panic` on the event path (an alert is only queued) and queues the
incident; `PanicResponder.handle` then runs in the guest's own worker task, so slow steps
(dumps, hooks) never hold up reading events from this or any other guest. A step that fails is
alerted and the next step still runs: a failed dump must not leave a guest that should be
restarted sitting paused.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from panicd import alerts
from panicd.actions import GuestHandle, Spawn, Step, StepContext, registry, spawn_detached
from panicd.alerts import Alerter
from panicd.config import DumpSettings, Policy, console_log_path
from panicd.dumps import DumpSlots, DumpStore
from panicd.errors import DumpFailed, StepFailed
from panicd.events import GuestIdentity, Incident, IncidentKind
from panicd.evidence import Evidence, title_from_console
from panicd.metrics import Metrics
from panicd.qmp import QmpCommandError
from panicd.records import ConsoleMark, GuestRecord, IncidentRecord, StepDetail, StepResult, jsonable
from panicd.signatures import CrashSignatures
from panicd.store import IncidentStore

log = structlog.get_logger("panicd.respond")

#: Steps that need QEMU; when QEMU is about to exit (panic action poweroff) they are skipped.
_NEEDS_QEMU = frozenset({"dump", "pause", "resume", "restart", "poweroff", "nmi", "wait_panic"})

def planned_steps(incident: Incident, policy: Policy) -> list[str]:
    """The steps this incident takes, in order: a manual one's as asked, else its policy's for
    its kind."""
    if incident.requested_steps is not None:
        return list(incident.requested_steps)
    return list({
        IncidentKind.PANIC: policy.on_panic,
        IncidentKind.CRASH_LOADED: policy.on_crash_loaded,
        IncidentKind.WATCHDOG: policy.on_watchdog,
        IncidentKind.MANUAL: policy.on_panic,
    }[incident.kind])


def policy_for_incident(incident: Incident, policy: Policy) -> Policy:
    """The guest's policy as it applies to this incident. A manual one (`panicd guest`) writes
    its dump in the format the operator asked, if any, and is not held to the crash-loop
    budget: that budget brakes panicd's own restarts, and a person asked for this one."""
    if incident.kind is not IncidentKind.MANUAL:
        return policy
    update: dict[str, Any] = {"restart": None}
    if incident.dump_format is not None:
        # QEMU refuses paging for every format but elf: the policy's paging goes with elf only.
        update["dump"] = DumpSettings.model_validate({
            **policy.dump.model_dump(), "format": incident.dump_format,
            "paging": policy.dump.paging and incident.dump_format == "elf"})
    return policy.model_copy(update=update)


class PanicResponder:
    """Runs a policy's steps for one incident at a time per guest."""

    def __init__(
        self,
        *,
        policy_for: Callable[[str], Policy],
        dumps: DumpStore,
        dump_slots: DumpSlots,
        alerter: Alerter,
        store: IncidentStore | None = None,
        steps: Mapping[str, Step] | None = None,
        metrics: Metrics | None = None,
        console_log_for: Callable[[GuestIdentity], Path | None] | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.policy_for = policy_for
        self.dumps = dumps
        self.dump_slots = dump_slots
        self.alerter = alerter
        #: The incident history (a memory-only one when none is given, as in unit tests).
        self.store = store or IncidentStore(None)
        self.steps = dict(steps) if steps is not None else registry()
        #: Who owns work that outlives a step (a dump's triage): the daemon sets its TaskGroup.
        self.spawn: Spawn = spawn_detached

        #: What finishing a dump needs (evidence.py), for the dump step and orphans.py: one,
        #: so that both know which dumps are being announced.
        self.signatures = CrashSignatures(self.store, self.alerter, self.metrics)
        self.evidence = Evidence(self.dumps, self.alerter, self.metrics, self.store.record_dump,
                                 self.signatures)
        #: The guest's console log file (`console_log`), read for a crash title.
        self.console_log_for = console_log_for or self._policy_console_log

    def _policy_console_log(self, guest: GuestIdentity) -> Path | None:
        template = self.policy_for(guest.name).console_log
        return console_log_path(template, guest.name) if template else None

    async def handle(self, incident: Incident, guest: GuestHandle, record: IncidentRecord | None = None,
                     durable: asyncio.Future[None] | None = None) -> list[StepResult]:
        """Run the policy's steps for `incident`; each one's result goes into `record` (saved
        after every step). A resumed incident's record already holds the steps that ran to
        completion before panicd stopped: those are not run again. `durable` is awaited before
        the first command that changes the guest."""
        record = record or IncidentRecord.of(incident, None)
        # The policy is looked up now, not at event time: a reload applies to the next panic.
        policy = policy_for_incident(incident, self.policy_for(incident.guest.name))
        if record.console is None and incident.kind is not IncidentKind.MANUAL:
            # Before any step: a restart starts a boot whose lines would follow the crash's.
            # Not for an operator's request: no crash is reported then, and the console's last
            # boot may hold an old one (a WARNING the guest survived), which is no new sighting.
            record.console = await self._console_mark(incident.guest)
        names = planned_steps(incident, policy)
        ctx = StepContext(
            incident=incident,
            policy=policy,
            guest=guest,
            dumps=self.dumps,
            dump_slots=self.dump_slots,
            alerter=self.alerter,
            store=self.store,
            metrics=self.metrics,
            durable=durable,
            spawn=self.spawn,
            evidence=self.evidence,
            console=record.console,
        )
        done_before = [step.name for step in record.steps if step.ok]
        # A resumed incident's later steps (exec's PANICD_DUMP) still see the dump made before.
        ctx.dump_path = _dump_made(record.steps)
        ran: list[StepResult] = []  # this run's (a resumed incident's record holds earlier ones)
        for name in names:
            if name in done_before:
                done_before.remove(name)  # ran before panicd stopped: not again
                log.info("step.already_done", step=name)
                continue
            if incident.qemu_exiting and name in _NEEDS_QEMU:
                log.warning("step.skipped", step=name, reason="QEMU is powering the guest off")
                result = StepResult(name=name, ok=False, started_at=_now(), seconds=0.0,
                                    error="QEMU is powering the guest off",
                                    skipped="QEMU is powering the guest off")
            else:
                result = await self._run_step(name, ctx)
                # The dump a resumed incident's dump step found already made counts too.
                ctx.dump_path = ctx.dump_path or _dump_made([result])
            record.steps.append(result)
            ran.append(result)
            self.store.save(record)
        log.info(
            "incident.handled",
            kind=incident.kind.value,
            steps=[f"{r.name}:{'ok' if r.ok else 'failed'}" for r in record.steps],
        )
        if (record.console is not None and record.crash is None and ctx.dump_path is None
                and not any(step.guest_gone for step in ran)):
            # No dump to read a title from (none asked, or it failed): the console log's.
            self.spawn(title_from_console(self.evidence, GuestRecord.of(incident.guest), record.id,
                                          record.console, incident.received_at),
                       f"console-title:{record.id}")
        return record.steps

    async def _console_mark(self, guest: GuestIdentity) -> ConsoleMark | None:
        path = self.console_log_for(guest)
        if path is None:
            return None
        offset: int | None = None
        try:
            st = await asyncio.to_thread(os.lstat, path)
        except OSError as exc:
            # Marked anyway: the file may appear (QEMU opens it lazily) or come back.
            log.warning("console.unreadable", path=str(path), error=str(exc))
        else:
            if stat.S_ISREG(st.st_mode):
                offset = st.st_size
            else:  # triage refuses it (and says why) when it reads it
                log.warning("console.not_a_file", path=str(path))
        return ConsoleMark(path=str(path), offset=offset)

    async def _run_step(self, name: str, ctx: StepContext) -> StepResult:
        log.info("step.started", step=name)
        started_at = _now()
        begun = time.monotonic()

        def result(ok: bool, **fields: Any) -> StepResult:
            return StepResult(name=name, ok=ok, started_at=started_at,
                              seconds=round(time.monotonic() - begun, 3), **fields)

        try:
            detail = await self.steps[name](ctx)
        except StepFailed as exc:
            if isinstance(exc, DumpFailed):
                self.metrics.dumps.labels(result="failed").inc()
            self._alert_failure(ctx, exc)
            return result(False, error=exc.reason, command=jsonable(exc.command),
                          reply=jsonable(exc.reply), guest_gone=guest_gone(exc))
        except Exception as exc:
            # A bug in a step must cost that step only, never the guest's worker or the daemon.
            log.exception("step.crashed", step=name)
            failure = StepFailed(ctx.guest.identity.name, name, f"internal error: {exc!r}")
            self._alert_failure(ctx, failure)
            return result(False, error=failure.reason)
        log.info("step.done", step=name, took=round(time.monotonic() - begun, 3),
                 skipped=detail.skipped, result=detail.model_dump(mode="json"))
        return result(True, **_detail_fields(detail))

    def _alert_failure(self, ctx: StepContext, exc: StepFailed) -> None:
        log.error("step.failed", step=exc.step, error=exc.reason, command=exc.command,
                  reply=exc.reply)
        self.alerter.send(alerts.step_failed(ctx.guest.identity, ctx.incident.id, exc))


def _detail_fields(detail: StepDetail) -> dict[str, Any]:
    """A step's StepResult fields from what it returned: its detail in the field for its kind
    (`dump`, `power`, `hook`), and its skip reason in `skipped`."""
    return {"skipped": detail.skipped,
            detail.field_name: detail.model_copy(update={"skipped": None})}


def _dump_made(steps: list[StepResult]) -> Path | None:
    """The dump file an incident's `dump` step made or found, if any."""
    for step in reversed(steps):
        if step.name == "dump" and step.ok and step.dump is not None:
            return Path(step.dump.path)
    return None


def guest_gone(exc: BaseException) -> bool:
    """Whether a step failed because the guest's connection was gone (it did not run at all:
    the incident stays open and is resumed when the guest is connected again)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, QmpCommandError) and cause.kind == QmpCommandError.DISCONNECTED:
            return True
        cause = cause.__cause__
    return False


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
