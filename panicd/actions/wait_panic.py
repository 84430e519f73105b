"""The `wait_panic` step: wait, bounded, for the GUEST_PANICKED that an `nmi` should cause.

`on_watchdog = ["nmi", "wait_panic", "dump", "restart"]` reads as it runs: the NMI turns the hang
into a panic (when the guest was booted to panic on one), this step waits for that panic, and
the dump is then of the panicked guest, with its kernel log and crash title.

The panic is not an incident of its own: the step registers with the guest's detector
(`GuestHandle.catch_panic`, detection.py), which hands it the event instead of raising a panic
incident with the on_panic steps. The `nmi` step opens that catch before it injects the NMI (a
guest may panic before this step starts); this step joins it, or opens one when no `nmi` came
before (a policy waiting for the guest's own panic). The catch stays open after this step,
until the incident is done: a panic that comes after the step gave up (a guest slow to take
its NMI) still belongs to this incident (recorded as its `caught_panic`, `late`), rather than
raising a panic incident whose dump and pause would hit the guest this incident went on to
restart. A RESET closes it (detection.py).

No panic within `policy.wait_panic.timeout` is no failure: the guest was not booted to panic
on an NMI (or is too hung to take one), and the steps after it still run (`skipped` says so).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import structlog

from panicd.actions import StepContext, guest_session
from panicd.records import WaitPanicStepDetail

log = structlog.get_logger("panicd.wait_panic")


async def wait_panic(ctx: StepContext) -> WaitPanicStepDetail:
    guest_session(ctx, "wait_panic")  # a guest not connected fails now, not after the timeout
    timeout = ctx.policy.wait_panic.timeout
    caught = ctx.guest.catch_panic(ctx.incident.id)
    begun = time.monotonic()
    # asyncio.wait leaves `caught` as it is at the timeout: the catch stays open.
    done, _ = await asyncio.wait({caught}, timeout=timeout)
    waited = round(time.monotonic() - begun, 3)
    if not done:
        log.info("wait_panic.no_panic", timeout=timeout)
        return WaitPanicStepDetail(waited_seconds=waited, skipped=f"no panic within {timeout:g} s")
    if caught.cancelled():
        # The detector drops a catch when the guest is reset or its connection made again.
        guest_session(ctx, "wait_panic")  # the connection's loss fails the step (left open)
        log.info("wait_panic.reset", waited=waited)
        return WaitPanicStepDetail(waited_seconds=waited,
                                   skipped="the guest was reset instead of panicking")
    panic = caught.result()
    ctx.panic_caught = True
    log.info("wait_panic.panicked", action=panic.data.action)
    return WaitPanicStepDetail(
        waited_seconds=round(time.monotonic() - begun, 3),
        panic_action=panic.data.action,
        panic_info=panic.data.info.model_dump(mode="json") if panic.data.info else None,
        panicked_at=dt.datetime.fromtimestamp(panic.received_at, dt.UTC),
    )
