"""The `dump` step: the guest's memory into a file panicd owns.

1. Ask QEMU which formats it can write (query-dump-guest-memory-capability); a format it lacks
   (Debian's 7.2 has no kdump-lzo/snappy) falls back to elf, with a warning. Ask the guest's RAM
   size (query-memory-size-summary), for the disk guard. win-dmp is always offered, but QEMU
   writes it only for a Windows guest that filled the vmcoreinfo device: for any other guest
   QEMU 7.2 fails the dump at once, writing nothing (detached: DUMP_COMPLETED {status: failed,
   completed: 0, error: "win-dump: invalid vmcoreinfo note size"}, seen), and the dump is made
   again as elf, in the same turn. Either fallback is said in `dump.format_unavailable` /
   `dump.format_refused`, the record's `format_fallback` and the DUMP_COMPLETED text.
2. Wait for a host-wide dump turn (`max_concurrent_dumps`): the guest stays stopped meanwhile.
   Both questions above are asked before: a QEMU that does not answer them holds no turn.
3. Check the disk guard, create the file (dumps.DumpStore: 0600, unique, never overwriting),
   pass its fd to QEMU (SCM_RIGHTS + getfd), and start `dump-guest-memory` with
   `protocol: "fd:NAME"`, detached, so QEMU writes while this task follows progress with
   query-dump and DUMP_COMPLETED.
4. On success write `<dump>.json` and alert; on failure or timeout remove the partial file,
   alert, and let the policy's next steps run. Once QEMU says the dump is completed it is
   never removed: only a file that is gone fails it then (see `_record_completed`).

QEMU 7.2 has no command to cancel a dump: after a timeout QEMU may still be writing to the
(removed) file, and refuses stop/cont/another dump until it finishes (the restart step waits
for it: power.py).

The policy's `timeout` is the only time limit on a dump: one deadline, counted from the step's
start (the time spent waiting for a turn, panicd's own queue, is not counted), bounds every
wait for QEMU, from the first query to the last byte written.

How QEMU is driven while it writes (fd passing, stalls, progress) is `qemu_dump.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import structlog

from panicd import __version__
from panicd.actions import WAIT_FOR_QEMU_SECONDS, StepContext, guest_session, run_command
from panicd.actions.qemu_dump import POLL_SECONDS, Detached, Progress, time_left, write_dump
from panicd.bugcheck import decode
from panicd.dumps import DumpSlot
from panicd.errors import DumpFailed, StepFailed
from panicd.events import Detection, DumpCompletedData, IncidentKind
from panicd.evidence import (
    DumpGone,
    announce,
    finish_dump,
    lost_file_reason,
    os_error_text,
    qemu_never_began,
    record_completed,
)
from panicd.qmp import QmpCommandError
from panicd.records import (
    DumpIncident,
    DumpInfo,
    DumpRecord,
    DumpStepDetail,
    GuestRecord,
    jsonable,
)

log = structlog.get_logger("panicd.dump")

async def dump(ctx: StepContext) -> DumpStepDetail:
    settings = ctx.policy.dump
    guest_session(ctx, "dump")  # a guest not connected fails now, not after waiting for a turn
    if ctx.incident.detection is Detection.RESUMED:
        made = await _dump_of_resumed_panic(ctx)
        if made is not None:
            return made
    # Every wait for QEMU in this dump ends by this deadline (module docstring).
    deadline = time.monotonic() + settings.timeout
    fmt, fallback = await _usable_format(ctx, settings.format, deadline)
    need = await _guest_ram(ctx, deadline)

    slots = ctx.dump_slots
    if not slots.turn_free:
        log.info("dump.waiting_for_turn", running=slots.running, limit=slots.limit)
    waited = time.monotonic()
    async with slots.slot() as slot:
        waited = time.monotonic() - waited
        deadline += waited  # the queue is panicd's, not QEMU's slowness: it is not counted
        await _check_space(ctx, need)
        slots.reserved_bytes += need
        try:
            try:
                written = await _dump_in_slot(ctx, fmt, waited, slot, deadline,
                                              fallback=fallback)
            except DumpFailed as exc:
                refusal = _windows_dump_refused(fmt, exc)
                if refusal is None:
                    raise
                # Its file is already removed (QEMU wrote nothing into it).
                fallback = f"QEMU refused {fmt} ({refusal}): written as elf"
                log.warning("dump.format_refused", wanted=fmt, error=refusal, using="elf")
                fmt = "elf"
                written = await _dump_in_slot(ctx, fmt, waited, slot, deadline,
                                              fallback=fallback)
        finally:
            slots.reserved_bytes -= need
    if isinstance(written, DumpStepDetail):
        return written  # detached: QEMU goes on without panicd, orphans.py finishes it
    # The turn is given back: the next guest's dump may start while this one is finished.
    record, result, seconds = written
    try:
        not_recorded = await record_completed(ctx.evidence, record, guest_bytes=result.result.total,
                                              seconds=seconds)
    except DumpGone as exc:
        raise DumpFailed(ctx.guest.identity.name, str(exc)) from exc
    ctx.dump_path = Path(record.dump.path)
    # Triage reads the file while the policy goes on (a restart needs only the file written);
    # DUMP_COMPLETED goes out when triage is done or gives up (evidence.py).
    ctx.spawn(announce(ctx.evidence, record, not_recorded), f"announce:{ctx.dump_path.name}")
    return DumpStepDetail(path=record.dump.path, format=fmt,
                          format_fallback=record.dump.format_fallback,
                          bytes=record.dump.size_bytes, seconds=record.dump.duration_seconds,
                          not_recorded=not_recorded)


async def _dump_of_resumed_panic(ctx: StepContext) -> DumpStepDetail | None:
    """For a panic handled again: the dump an earlier panicd made of it, or None to make one.

    panicd stopped after this panic's dump record was written: orphans.py settles the record,
    and the next steps wait until QEMU has finished writing it (a reset now would abort QEMU).
    A record whose dump QEMU never began (panicd stopped before dump-guest-memory) is removed
    here, quietly: the dump is made now, as it would have been.
    """
    guest = ctx.guest.identity
    since = dt.datetime.fromtimestamp(ctx.incident.received_at, dt.UTC).isoformat()
    earlier = [m for m in await asyncio.to_thread(ctx.dumps.records, guest.name, guest.qemu_pid)
               if str(m.get("dump", {}).get("started_at", "")) >= since]
    if not earlier:
        return None
    path = Path(earlier[-1]["dump"]["path"])
    status = await _wait_until_written(ctx, ctx.policy.dump.timeout)
    if await asyncio.to_thread(qemu_never_began, status, path):
        await asyncio.to_thread(ctx.dumps.discard, path)
        log.info("dump.never_started", path=str(path), qemu_status=status)
        return None
    log.info("dump.already_made", path=str(path))
    # Until orphans.py settles it as completed, QEMU may still be writing it.
    info = earlier[-1]["dump"]
    fmt = info.get("format")
    return DumpStepDetail(skipped="dump already made for this panic", path=str(path),
                          format=fmt if isinstance(fmt, str) else None,
                          result="completed" if info.get("result") == "completed" else "running")


async def _wait_until_written(ctx: StepContext, timeout: float) -> str | None:
    """QEMU's dump status once it is not "active" any more; None when QEMU could not say."""
    with contextlib.suppress(TimeoutError, StepFailed):
        async with asyncio.timeout(timeout):
            while True:
                state = await run_command(ctx, "dump", "query-dump", give_up_after=timeout)
                status = state.get("status") if isinstance(state, dict) else None
                if status != "active":
                    return status if isinstance(status, str) else None
                await asyncio.sleep(POLL_SECONDS)
    return None


async def _guest_ram(ctx: StepContext, deadline: float) -> int:
    """The dump's expected size: the guest's RAM (query-memory-size-summary). An elf dump is
    about that size, and a compressed one can be, for a guest whose memory does not compress."""
    summary = await run_command(ctx, "dump", "query-memory-size-summary",
                                give_up_after=time_left(deadline))
    if not isinstance(summary, dict):
        return 0
    return int(summary.get("base-memory") or 0) + int(summary.get("plugged-memory") or 0)


async def _check_space(ctx: StepContext, need: int) -> None:
    """The disk guard: DumpFailed when a dump of `need` bytes would not fit beside the dumps
    already running (their reservations) and `min_free_bytes`."""
    name = ctx.guest.identity.name
    try:
        free = await asyncio.to_thread(ctx.dumps.free_bytes)
    except OSError as exc:
        raise DumpFailed(name, f"cannot check free space under {ctx.dumps.root}: {exc}") from exc
    spare = free - ctx.dump_slots.reserved_bytes - ctx.dumps.min_free_bytes
    if need > spare:
        ctx.metrics.dumps_skipped.labels(reason="disk_space").inc()
        raise DumpFailed(
            name,
            f"skipped: not enough space under {ctx.dumps.root}: the dump needs about {need} bytes "
            f"(guest RAM); {free} bytes free, {ctx.dump_slots.reserved_bytes} reserved by running "
            f"dumps, min_free_bytes {ctx.dumps.min_free_bytes}",
        )


async def _dump_in_slot(
    ctx: StepContext, fmt: str, waited: float, slot: DumpSlot, deadline: float,
    *, fallback: str | None = None,
) -> DumpStepDetail | tuple[DumpRecord, DumpCompletedData, float]:
    """QEMU writes the dump: (its record, QEMU's result, seconds), or, when the connection
    dropped meanwhile, the step's result saying it is left running."""
    guest = ctx.guest.identity
    settings = ctx.policy.dump
    started_at = dt.datetime.now(dt.UTC)
    try:
        dump_file = await asyncio.to_thread(ctx.dumps.create, guest.name, fmt, started_at)
    except OSError as exc:
        raise DumpFailed(guest.name, f"cannot create the dump file: {os_error_text(exc)}") from exc
    path = dump_file.path
    args: dict[str, Any] = {"paging": settings.paging, "protocol": "", "detach": True}
    if fmt != "elf":
        args["format"] = fmt
    progress = Progress()
    record = _record(ctx, path, fmt, started_at, waited, fallback=fallback)
    try:
        # Written before QEMU is asked: a dump QEMU may be writing always has its record.
        await asyncio.to_thread(ctx.dumps.write_metadata, path, record.model_dump(mode="json"))
        # Re-read the session: the guest may have reconnected while this task waited.
        result = await write_dump(ctx, guest_session(ctx, "dump"), fd=dump_file.fd, args=args,
                                 deadline=deadline, progress=progress, slot=slot)
    except Detached as exc:
        # The QMP connection dropped while QEMU was writing. QEMU goes on without us (if it
        # is still there): the metadata stays "running" and orphans.py settles it, with its
        # alert, when the guest is connected again.
        log.warning("dump.detached", path=str(path), error=str(exc))
        return DumpStepDetail(path=str(path), format=fmt, result="running")
    except asyncio.CancelledError:
        # panicd is stopping. Once QEMU may be writing, it goes on without us: the metadata
        # says "running" until a later panicd settles it (orphans.py). Before that, the
        # empty file is of no use.
        if not progress.qemu_may_write:
            await asyncio.to_thread(ctx.dumps.discard, path)
        raise
    except OSError as exc:
        # The file or its directory went away, or the disk refused the first metadata (full).
        # Said before the file is discarded: afterwards every file would look "removed".
        reason = await asyncio.to_thread(lost_file_reason, path, exc, progress.qemu_may_write)
        await asyncio.to_thread(ctx.dumps.discard, path)
        raise DumpFailed(guest.name, reason) from exc
    except DumpFailed as exc:
        if progress.qemu_may_write and _timed_out(exc):
            # The policy's timeout passed while QEMU may still write (frozen, or slow: it
            # cannot cancel a dump). The file and its record stay; if QEMU finishes the dump
            # it is finished like every other (evidence.py), only later.
            ctx.spawn(_finish_late(ctx, record), f"late-dump:{path.name}")
            raise
        await asyncio.to_thread(ctx.dumps.discard, path)
        raise
    except BaseException:
        await asyncio.to_thread(ctx.dumps.discard, path)
        raise
    finally:
        os.close(dump_file.fd)
    return record, result, time.monotonic() - progress.begun


def _timed_out(exc: DumpFailed) -> bool:
    cause = exc.__cause__
    return isinstance(cause, QmpCommandError) and cause.kind == QmpCommandError.TIMEOUT


async def _finish_late(ctx: StepContext, record: DumpRecord) -> None:
    """A dump whose policy timeout passed: wait for QEMU to end it; finish it if complete."""
    path = Path(record.dump.path)
    ctx.evidence.announcing.add(record.dump.path)  # orphans.py leaves it to this task
    try:
        status = await _wait_until_written(ctx, WAIT_FOR_QEMU_SECONDS)
    finally:
        ctx.evidence.announcing.discard(record.dump.path)
    if status is None:
        # QEMU gone or not answering: the record stays "running" for orphans.py.
        log.warning("dump.late_unknown", path=str(path))
        return
    if status == "completed" and not await asyncio.to_thread(qemu_never_began, status, path):
        log.info("dump.late_completed", path=str(path))
        with contextlib.suppress(DumpGone):
            await finish_dump(ctx.evidence, record, guest_bytes=None, seconds=None)
        return
    log.warning("dump.late_failed", path=str(path), qemu_status=status)
    await asyncio.to_thread(ctx.dumps.discard, path)


def _record(ctx: StepContext, path: Path, fmt: str, started_at: dt.datetime,
            waited: float, *, fallback: str | None) -> DumpRecord:
    settings = ctx.policy.dump
    incident = ctx.incident
    return DumpRecord(
        panicd_version=__version__,
        guest=GuestRecord.of(ctx.guest.identity),
        incident=DumpIncident(id=incident.id, kind=incident.kind.value,
                              detection=incident.detection.value, action=incident.action,
                              received_at=dt.datetime.fromtimestamp(incident.received_at, dt.UTC),
                              console=ctx.console, bugcheck=decode(incident.info),
                              reports_crash=(incident.kind is not IncidentKind.MANUAL
                                             or ctx.panic_caught)),
        event=jsonable(incident.raw_event),  # type: ignore[arg-type]
        dump=DumpInfo(path=str(path), format=fmt, requested_format=settings.format,
                      format_fallback=fallback, paging=settings.paging, started_at=started_at,
                      waited_for_slot_seconds=round(waited, 3)),
    )


async def _usable_format(ctx: StepContext, wanted: str, deadline: float) -> tuple[str, str | None]:
    """The format to ask QEMU for, and why it is not `wanted` (None when it is)."""
    if wanted == "elf":
        return wanted, None
    caps = await run_command(ctx, "dump", "query-dump-guest-memory-capability",
                             give_up_after=time_left(deadline))
    formats = caps.get("formats", []) if isinstance(caps, dict) else []
    if wanted in formats:
        return wanted, None
    log.warning("dump.format_unavailable", wanted=wanted, available=formats, using="elf")
    offered = ", ".join(str(f) for f in formats) or "none"
    return "elf", f"this QEMU does not offer {wanted} (it offers: {offered}): written as elf"


def _windows_dump_refused(fmt: str, exc: DumpFailed) -> str | None:
    """QEMU's reason, when it refused a win-dmp dump because the guest is not (yet) Windows:
    QEMU 7.2's dump/win_dump.c says "win-dump: ..." (no vmcoreinfo, or not Windows'); later
    QEMUs may refuse the command itself ("Windows dump is only available for x86-64")."""
    if fmt != "win-dmp":
        return None
    reply = exc.reply if isinstance(exc.reply, dict) else {}
    error = reply.get("error")
    texts = [error if isinstance(error, str) else "", exc.reason]
    refusal = next((t for t in texts if "win-dump" in t.lower() or "windows dump" in t.lower()),
                   None)
    # QEMU's own words, without panicd's "QEMU reports the dump failed: " in front.
    return None if refusal is None else refusal.removeprefix("QEMU reports the dump failed: ")


