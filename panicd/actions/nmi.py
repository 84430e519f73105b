"""The `nmi` step: an NMI into a hung guest, so that it panics with a full kernel log.

A Linux guest booted with `unknown_nmi_panic=1` (or `panic_on_unrecovered_nmi=1`) panics on an
NMI no driver claims ("Kernel panic - not syncing: NMI: Not continuing"): its pvpanic driver
then reports GUEST_PANICKED, and a dump holds the log of a crash instead of a silent hang.

The QEMU behaviour it relies on (QEMU 7.2):
- `inject-nmi` (qmp_inject_nmi -> x86_nmi, hw/i386/x86.c) calls apic_deliver_nmi (or
  cpu_interrupt(CPU_INTERRUPT_NMI) without an APIC) on every vCPU: it only marks the NMI
  pending. A stopped vCPU takes it when it next runs; QEMU neither refuses the command nor
  resumes the guest (seen: a guest stopped by its watchdog stays in runstate `watchdog` after
  inject-nmi, and panics only once `cont` lets it run).
- A hung guest is stopped by then: panicd sets `-action watchdog=pause` (monitor.py), so a
  WATCHDOG incident finds it in runstate `watchdog`. The step therefore sends `cont` after
  `inject-nmi` when the guest is stopped that way (`watchdog`, or `paused` by someone): the NMI
  is the first thing the guest's vCPUs take. A guest stopped for another reason (panicked, shut
  down, not yet started) is left as it is; the NMI waits until it runs, and the step says so.

The step asks the detector to catch the panic (`GuestHandle.catch_panic`) *before* it injects
the NMI, whether a `wait_panic` step follows or not: the guest may panic at any time until the
incident is done (before the next step starts, or after a `wait_panic` gave up on it), and its
GUEST_PANICKED belongs to this incident (its record's `caught_panic`), not to a panic incident
of its own that would run the on_panic steps on whatever this incident left of the guest.
"""

from __future__ import annotations

import structlog

from panicd.actions import StepContext, run_command
from panicd.records import NmiStepDetail

log = structlog.get_logger("panicd.nmi")

#: Runstates the step resumes the guest from, so that it takes the NMI: stopped by its
#: watchdog (QEMU's `watchdog` runstate under watchdog=pause), or paused (`stop`).
RESUMED_FROM = frozenset({"watchdog", "paused"})


async def nmi(ctx: StepContext) -> NmiStepDetail:
    before = await _status(ctx)
    catch = ctx.guest.catch_panic(ctx.incident.id)
    try:
        await run_command(ctx, "nmi", "inject-nmi")
        resumed = before in RESUMED_FROM
        if resumed:
            await run_command(ctx, "nmi", "cont")
    except BaseException:
        catch.cancel()  # no NMI went in (or it is not known to have): stop catching
        raise
    detail = NmiStepDetail(status_before=before, resumed=resumed, status=await _status(ctx))
    if not resumed and before != "running":
        return detail.model_copy(update={
            "skipped": f"the guest is {before}: the NMI is pending until it runs"})
    return detail


async def _status(ctx: StepContext) -> str:
    reply = await run_command(ctx, "nmi", "query-status")
    status = reply.get("status") if isinstance(reply, dict) else None
    return status if isinstance(status, str) else "unknown"
