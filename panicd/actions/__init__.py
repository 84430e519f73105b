"""Policy steps: one module per kind of action, one interface for all.

A step is an async function taking a `StepContext` and returning a `records.StepDetail` of what
it did (logged with the step's `step.done` event; its `skipped` says why it did not do its job,
when the situation did not let it). It raises `StepFailed` (or `DumpFailed`) with the command
sent and QEMU's reply when it fails; the responder alerts and goes on to the next step.
Steps talk to QEMU through `run_command`, which turns every QMP failure into the step's error.

A QEMU that does not answer is waited for, not given up on: a frozen QEMU (SIGSTOP, a host
deep in swap) keeps the commands sent to it in its socket and carries them out when it runs
again, so a command is never sent twice (a second system_reset or cont would act twice);
`step.waiting_for_qemu` is logged every `command_timeout` meanwhile. A step fails when the
connection drops, or after `WAIT_FOR_QEMU_SECONDS` without a reply.

    dump                              dump.py   dump-guest-memory into a file panicd opens
                                      qemu_dump.py  QEMU writing it: fd, stalls, progress
    pause, resume, restart, poweroff  power.py  stop / cont / system_reset+cont / quit
    exec                              hook.py   the operator's command, event in its environment
    nmi                               nmi.py    inject-nmi (and cont, if the guest is stopped)
    wait_panic                        wait_panic.py  the GUEST_PANICKED an nmi should cause
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from panicd.alerts import Alerter
from panicd.config import Policy
from panicd.dumps import DumpSlots, DumpStore
from panicd.errors import DumpFailed, StepFailed
from panicd.events import CaughtPanic, DumpCompletedData, GuestIdentity, Incident
from panicd.evidence import Evidence
from panicd.metrics import Metrics
from panicd.qmp import QmpCommandError, QmpSession
from panicd.records import ConsoleMark, StepDetail
from panicd.store import DURABLE_WAIT_SECONDS, IncidentStore

log = structlog.get_logger("panicd.actions")

#: How long a step waits for the reply of a QEMU that does not answer (frozen) before it fails.
#: Generous: QEMU still carries the command out when it runs again, so failing early only
#: misreports; this bound is there so a QEMU stopped for good is alerted, not waited on forever.
WAIT_FOR_QEMU_SECONDS = 900.0


class GuestHandle(Protocol):
    """What a step may ask of the guest's monitor."""

    @property
    def identity(self) -> GuestIdentity: ...

    def session(self) -> QmpSession:
        """The live QMP session; raises StepFailed-compatible QmpCommandError when disconnected."""
        ...

    def expect_dump_completed(self) -> asyncio.Future[DumpCompletedData]:
        """A future resolved by the next DUMP_COMPLETED event of this guest."""
        ...

    def catch_panic(self, incident_id: str) -> asyncio.Future[CaughtPanic]:
        """A future resolved by this guest's next GUEST_PANICKED, which is then handed to
        incident `incident_id` instead of raising an incident of its own; cancel it to stop
        catching (detection.IncidentDetector.catch_panic)."""
        ...


Spawn = Callable[[Coroutine[Any, Any, Any], str], None]
_detached: set[asyncio.Task[Any]] = set()


def spawn_detached(coro: Coroutine[Any, Any, Any], name: str) -> None:
    """A task with no other owner (unit tests): kept referenced until it ends."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _detached.add(task)
    task.add_done_callback(_detached.discard)


@dataclass
class StepContext:
    incident: Incident
    policy: Policy
    guest: GuestHandle
    dumps: DumpStore
    #: Host-wide limit on dumps running at once (max_concurrent_dumps).
    dump_slots: DumpSlots
    alerter: Alerter
    #: What finishing a dump needs (evidence.py): the responder's, shared with orphans.py.
    evidence: Evidence
    #: The incident history: the crash-loop guard (policy `restart`) counts restarts from it.
    store: IncidentStore = field(default_factory=lambda: IncidentStore(None))
    metrics: Metrics = field(default_factory=Metrics)
    #: Done once the incident is on disk: nothing changes the guest before (`changes_guest`).
    durable: asyncio.Future[None] | None = None
    #: Set by a successful `dump` step, for later steps (exec's PANICD_DUMP).
    dump_path: Path | None = None
    #: Set by a `wait_panic` step that caught the panic its NMI caused: this incident then
    #: reports a crash, even an operator's (its dump's title is a crash sighting).
    panic_caught: bool = False
    #: Runs work that outlives the step (a dump's triage and alert), owned by the daemon.
    spawn: Spawn = spawn_detached
    #: The guest's console log as it was at the panic (for a title the dump does not give).
    console: ConsoleMark | None = None


    async def restarts_since(self, since: float) -> list[float]:
        """When panicd restarted this guest since `since` (epoch seconds), whatever incident."""
        return await self.store.restarts(self.guest.identity.name, since)

    async def before_changing_guest(self) -> None:
        """Wait until the incident is durable: a panicd killed from here on finds it on restart.

        Bounded: a state disk that stops answering costs the guest DURABLE_WAIT_SECONDS, never
        its steps (the write goes on, and lands when the disk does)."""
        if self.durable is not None:
            durable, self.durable = self.durable, None
            try:
                await asyncio.wait_for(asyncio.shield(durable), DURABLE_WAIT_SECONDS)
            except TimeoutError:
                log.warning("incident.not_durable", incident=self.incident.id,
                            waited=DURABLE_WAIT_SECONDS)


#: QMP commands that change the guest (or hand QEMU a file): sent only once the incident is
#: durable. Queries go first, unhindered: a panic's first command leaves at once.
CHANGES_GUEST = frozenset({"stop", "cont", "system_reset", "quit", "system_powerdown", "getfd",
                           "dump-guest-memory", "inject-nmi"})


Step = Callable[[StepContext], Awaitable[StepDetail]]


def step_error(
    ctx: StepContext, step: str, message: str, *, command: dict[str, Any] | None = None,
    reply: object = None,
) -> StepFailed:
    """The error `step` raises: DumpFailed for the dump step (alerted as DUMP_FAILED), else StepFailed."""
    name = ctx.guest.identity.name
    if step == "dump":
        return DumpFailed(name, message, command=command, reply=reply)
    return StepFailed(name, step, message, command=command, reply=reply)


def guest_session(ctx: StepContext, step: str) -> QmpSession:
    """The guest's live QMP session, or the step's error when it is not connected."""
    try:
        return ctx.guest.session()
    except QmpCommandError as exc:
        raise step_error(ctx, step, exc.reason) from exc


async def run_command(
    ctx: StepContext, step: str, command: str, arguments: dict[str, Any] | None = None,
    *, give_up_after: float = WAIT_FOR_QEMU_SECONDS,
) -> Any:
    """Run one QMP command for `step`: its "return" value, or the step's error with what was
    sent and what came back. A QEMU slow to answer is waited for (see the module docstring)."""
    if command in CHANGES_GUEST:
        await ctx.before_changing_guest()
    try:
        return await patient_execute(guest_session(ctx, step), command, arguments, step=step,
                                     give_up_after=give_up_after)
    except QmpCommandError as exc:
        raise step_error(ctx, step, _failure_text(exc, give_up_after), command=exc.command,
                         reply=exc.reply) from exc


def _failure_text(exc: QmpCommandError, waited: float) -> str:
    if exc.kind == QmpCommandError.TIMEOUT:
        return (f"QEMU did not answer {exc.command['execute']} within {waited:g} s (frozen?); it "
                "may still carry the command out when it runs again")
    return exc.reason


async def patient_execute(
    session: QmpSession, command: str, arguments: dict[str, Any] | None = None, *, step: str,
    give_up_after: float = WAIT_FOR_QEMU_SECONDS,
) -> Any:
    """`session.execute`, sent once and waited for up to `give_up_after`, saying so every
    command_timeout; raises QmpCommandError (kind TIMEOUT after `give_up_after`)."""
    call = asyncio.create_task(session.execute(command, arguments, timeout=give_up_after),
                               name=f"qmp:{command}")
    begun = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({call}, timeout=session.command_timeout)
            if done:
                return call.result()
            log.warning("step.waiting_for_qemu", step=step, command=command,
                        waited=round(time.monotonic() - begun, 1))
    finally:
        if not call.done():
            # qemu.qmp drops a reply whose request is no longer pending ("Unknown ID"), so
            # giving up on one leaves the connection usable.
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, QmpCommandError):
                await call


def registry() -> dict[str, Step]:
    """Every step by its config name."""
    from panicd.actions import dump, hook, nmi, power, wait_panic  # noqa: PLC0415 - they import this module

    return {
        "dump": dump.dump,
        "pause": power.pause,
        "resume": power.resume,
        "restart": power.restart,
        "poweroff": power.poweroff,
        "exec": hook.run_hook,
        "nmi": nmi.nmi,
        "wait_panic": wait_panic.wait_panic,
    }
