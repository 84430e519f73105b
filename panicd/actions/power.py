"""Power steps: pause, resume, restart, poweroff.

The QEMU behaviour they rely on (QEMU 7.2, seen):
- `cont` resumes straight from `guest-panicked`.
- `system_reset` of a guest that needs a reset (guest-panicked, shutdown) leaves it in
  `prelaunch`; only `cont` makes it run again. A guest that was running keeps running.
- `quit` makes QEMU exit; the reply may or may not arrive before the connection closes.
- A frozen QEMU (SIGSTOP) keeps commands in its socket and carries them out when it runs
  again: a command that got no reply is waited for, never sent twice (actions.run_command).
- `system_reset` while a dump is still being written makes QEMU 7.2 abort ("invalid runstate
  transition save-vm -> prelaunch"). A dump may well be: after a dump timeout (QEMU cannot
  cancel one), and a QEMU frozen past the timeout goes on writing once it runs again. So
  restart waits until query-dump says the dump is no longer "active" (`step.waiting_for_dump`
  every command_timeout), then resets; only after `WAIT_FOR_QEMU_SECONDS` does it give up,
  rather than crash the guest's QEMU or leave it paused for good.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from panicd import alerts
from panicd.actions import (
    WAIT_FOR_QEMU_SECONDS,
    StepContext,
    guest_session,
    patient_execute,
    run_command,
    step_error,
)
from panicd.qmp import QmpCommandError
from panicd.records import PowerStepDetail

log = structlog.get_logger("panicd.power")

_STOPPED = {"paused", "guest-panicked", "prelaunch", "postmigrate", "suspended"}
#: How often query-dump is asked while waiting for a dump to end.
DUMP_POLL_SECONDS = 0.5
#: After a dump, how long (and how often) query-status is asked until QEMU has resumed the guest
#: it stopped for the dump.
SAVE_VM_RESUME_SECONDS = 10.0
SAVE_VM_POLL_SECONDS = 0.05


async def _status(ctx: StepContext, step: str) -> str:
    reply = await run_command(ctx, step, "query-status")
    status = reply.get("status") if isinstance(reply, dict) else None
    return status if isinstance(status, str) else "unknown"


async def pause(ctx: StepContext) -> PowerStepDetail:
    """Keep the guest stopped: `stop` it unless it already is (guest-panicked usually is).

    A running guest QEMU stopped to dump it (save-vm) is one QEMU resumes once the dump is
    written: 7.2 refuses `stop` during the dump, and right after DUMP_COMPLETED, before its dump
    thread resumes the guest, accepts it and does nothing. So the dump's end and that resume are
    waited for first, then the guest is stopped."""
    before = await _status(ctx, "pause")
    if before == "save-vm":
        await _wait_for_dump_to_end(ctx, "pause", "QEMU refuses to stop the guest during it")
        before = await _status_after_save_vm(ctx, "pause", "stopping it now would be undone")
    if before not in _STOPPED:
        await run_command(ctx, "pause", "stop")
    return PowerStepDetail(status_before=before, status=await _status(ctx, "pause"))


async def resume(ctx: StepContext) -> PowerStepDetail:
    await run_command(ctx, "resume", "cont")
    return PowerStepDetail(status=await _status(ctx, "resume"))


async def restart(ctx: StepContext) -> PowerStepDetail:
    limit = ctx.policy.restart
    # Counted from the incident history, so a restarted panicd keeps the brake on.
    if limit is not None and len(await ctx.restarts_since(time.time() - limit.within)) >= limit.max:
        return await _crash_loop(ctx, limit.max, limit.within)
    await _wait_for_dump_to_end(ctx, "restart", "resetting now would abort QEMU")
    # Nor in the moment after it, before QEMU resumes the guest it stopped for it (`pause`).
    before = await _status_after_save_vm(ctx, "restart", "resetting it now would abort QEMU")
    await run_command(ctx, "restart", "system_reset")
    ctx.metrics.restarts.inc()
    # After system_reset a guest-panicked guest sits in prelaunch until cont.
    if await _status(ctx, "restart") != "running":
        await run_command(ctx, "restart", "cont")
    return PowerStepDetail(status_before=before, status=await _status(ctx, "restart"))


async def _status_after_save_vm(ctx: StepContext, step: str, why: str) -> str:
    """The runstate once QEMU has resumed a guest it stopped for a dump that has ended (at
    once, in practice: its dump thread waits only for the big lock). A guest still in save-vm
    after SAVE_VM_RESUME_SECONDS of asking fails the step (`why` says what it spared)."""
    deadline = time.monotonic() + SAVE_VM_RESUME_SECONDS
    while True:
        status = await _status(ctx, step)
        # Asked once more after the deadline: a reply that was slow (a frozen QEMU) is no
        # answer to "still in save-vm after all this time?".
        if status != "save-vm" or time.monotonic() >= deadline:
            break
        await asyncio.sleep(SAVE_VM_POLL_SECONDS)
    if status == "save-vm":
        raise step_error(
            ctx, step,
            f"the guest is still stopped for a dump (save-vm) {SAVE_VM_RESUME_SECONDS:g} s "
            f"after the dump ended; {why}", command={"execute": "query-status"},
            reply={"status": status})
    return status


async def _wait_for_dump_to_end(ctx: StepContext, step: str, why: str) -> None:
    """Return once QEMU writes no dump (query-dump not "active"); see the module docstring."""
    begun = time.monotonic()
    every = guest_session(ctx, step).command_timeout
    logged_at: float | None = None
    while True:
        left = WAIT_FOR_QEMU_SECONDS - (time.monotonic() - begun)
        dump = await run_command(ctx, step, "query-dump", give_up_after=max(left, every))
        if not (isinstance(dump, dict) and dump.get("status") == "active"):
            return
        waited = time.monotonic() - begun
        if waited >= WAIT_FOR_QEMU_SECONDS:
            raise step_error(
                ctx, step,
                f"a dump is still being written after {WAIT_FOR_QEMU_SECONDS:g} s; {why}. "
                f"Run the step again ({step}) once query-dump says it is finished",
                command={"execute": "query-dump"}, reply=dump,
            )
        if logged_at is None or time.monotonic() - logged_at >= every:
            logged_at = time.monotonic()
            log.info("step.waiting_for_dump", step=step, waited=round(waited, 1),
                     completed=dump.get("completed"), total=dump.get("total"))
        await asyncio.sleep(DUMP_POLL_SECONDS)


async def _crash_loop(ctx: StepContext, restarts: int, within: float) -> PowerStepDetail:
    """Too many restarts: leave the guest paused for a person, and say so loudly."""
    guest = ctx.guest.identity
    ctx.metrics.crash_loops.inc()
    state = await pause(ctx)
    ctx.alerter.send(alerts.crash_loop(guest, ctx.incident.id, restarts, within))
    return state.model_copy(update={"skipped": "crash loop: left paused"})


async def poweroff(ctx: StepContext) -> PowerStepDetail:
    try:
        await ctx.before_changing_guest()  # as run_command does for every other command
        await patient_execute(guest_session(ctx, "poweroff"), "quit", step="poweroff")
    except QmpCommandError as exc:
        # QEMU may close the socket before its reply to quit is read: that is success.
        if exc.kind != QmpCommandError.DISCONNECTED:
            raise step_error(ctx, "poweroff", exc.reason, command=exc.command,
                             reply=exc.reply) from exc
    return PowerStepDetail()
