"""QEMU writing a dump: the fd handed over, dump-guest-memory started, followed to its end.

`write_dump` passes the file's fd to QEMU (SCM_RIGHTS + getfd), starts `dump-guest-memory` with
`protocol: "fd:NAME"`, detached, and follows it with query-dump and DUMP_COMPLETED until QEMU
says it is done or the dump's deadline passes. The dump step (dump.py) owns everything around
it: the file, the turn in `max_concurrent_dumps`, the record and the alert.

A late reply is not a failed dump. A healthy QEMU answers getfd, dump-guest-memory and
query-dump at once, even while its dump thread writes; one that does not answer within the
stall window (`stall_window`) is frozen (SIGSTOP, a host deep in swap). Then `dump.stalled` is
logged, the dump gives its turn in `max_concurrent_dumps` back (a frozen QEMU does no I/O, and
other guests' dumps must not wait behind it), keeps its disk-space reservation, its file and its
record, and waits for QEMU's reply (or its DUMP_COMPLETED) until the deadline. When QEMU
answers, `dump.resumed`, and the dump goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass
from typing import Any

import structlog

from panicd.actions import StepContext
from panicd.dumps import DumpSlot
from panicd.errors import DumpFailed
from panicd.events import DumpCompletedData
from panicd.qmp import QmpCommandError, QmpSession

log = structlog.get_logger("panicd.dump")

#: How often query-dump is asked while a dump runs (DUMP_COMPLETED usually comes first).
POLL_SECONDS = 1.0
#: How often progress is logged, at most.
PROGRESS_LOG_SECONDS = 10.0
#: The longest a dump's QEMU may take to answer before the dump counts as stalled.
STALL_LIMIT_SECONDS = 10.0

_fd_names = itertools.count(1)


def stall_window(command_timeout: float) -> float:
    """How long a dump waits for a reply from QEMU before it counts as stalled (gives its turn).

    Not a few seconds: a QEMU that is merely slow (its host deep in swap) answers late too, and
    every turn handed away then starts one more dump, reading guest RAM and writing the disk,
    on the host least able to take it. A frozen QEMU never answers, so waiting up to
    `STALL_LIMIT_SECONDS` for it costs the dumps queued behind it that long, once.
    `command_timeout`, when shorter, is the operator's own "a reply is late".
    """
    return min(command_timeout, STALL_LIMIT_SECONDS)


def time_left(deadline: float) -> float:
    # Never 0: QmpSession.execute reads a timeout of 0 as "the default".
    return max(deadline - time.monotonic(), 0.001)


class Detached(Exception):
    """The connection was lost while QEMU was writing the dump."""


@dataclass
class Progress:
    #: True from the moment dump-guest-memory is sent: QEMU may own the fd from then on.
    qemu_may_write: bool = False
    #: When QEMU was asked for the dump (time.monotonic()).
    begun: float = 0.0


async def write_dump(
    ctx: StepContext,
    session: QmpSession,
    *,
    fd: int,
    args: dict[str, Any],
    deadline: float,
    progress: Progress,
    slot: DumpSlot,
) -> DumpCompletedData:
    name = ctx.guest.identity.name
    fdname = f"panicd-dump-{next(_fd_names)}"
    args["protocol"] = f"fd:{fdname}"
    completed = ctx.guest.expect_dump_completed()
    progress.begun = time.monotonic()
    try:
        await ctx.before_changing_guest()
        session.send_fd(fd)
        await ask(session, "getfd", {"fdname": fdname}, slot=slot, deadline=deadline)
        progress.qemu_may_write = True
        try:
            await ask(session, "dump-guest-memory", args, slot=slot, deadline=deadline)
        except QmpCommandError as exc:
            if exc.kind != QmpCommandError.REFUSED:
                raise  # no answer: QEMU may yet start the dump, into this fd
            progress.qemu_may_write = False
            # QEMU only takes the fd over once the dump starts; give it back.
            with contextlib.suppress(QmpCommandError):
                await session.execute("closefd", {"fdname": fdname})
            raise
        log.info("dump.started", format=args.get("format", "elf"), protocol=args["protocol"])
        result = await _follow(session, completed, slot, deadline)
    except QmpCommandError as exc:
        if progress.qemu_may_write and exc.kind == QmpCommandError.DISCONNECTED:
            raise Detached(exc.reason) from exc
        if exc.kind == QmpCommandError.TIMEOUT:
            raise DumpFailed(name, _timed_out_text(ctx, exc, progress.qemu_may_write),
                             command=exc.command) from exc
        raise DumpFailed(name, exc.reason, command=exc.command, reply=exc.reply) from exc
    finally:
        completed.cancel()
    if result.result.status != "completed":
        raise DumpFailed(name, f"QEMU reports the dump {result.result.status}: {result.error or ''}",
                         command={"execute": "dump-guest-memory", "arguments": args},
                         reply=result.model_dump())
    return result


def _timed_out_text(ctx: StepContext, exc: QmpCommandError, qemu_may_write: bool) -> str:
    timeout = ctx.policy.dump.timeout
    if qemu_may_write:
        return f"timed out after {timeout:g} s; QEMU may still be writing (it cannot cancel a dump)"
    return f"timed out after {timeout:g} s; QEMU did not answer {exc.command['execute']}"


async def ask(
    session: QmpSession, command: str, arguments: dict[str, Any] | None = None, *,
    slot: DumpSlot, deadline: float, unless: asyncio.Future[DumpCompletedData] | None = None,
) -> Any:
    """Send `command` once and return QEMU's reply, waited for until `deadline`.

    No reply within the stall window: QEMU is frozen, and the dump gives its turn back while
    it waits (module docstring); a reply takes the turn again. Raises QmpCommandError (kind
    TIMEOUT once `deadline` has passed). With `unless` (this dump's DUMP_COMPLETED), returns
    None as soon as that resolves.
    """
    if time.monotonic() >= deadline:
        # Not sent at all: a dump-guest-memory nobody waits for would start a dump regardless.
        sent = {"execute": command, **({"arguments": arguments} if arguments else {})}
        raise QmpCommandError(sent, "no reply in time", kind=QmpCommandError.TIMEOUT)
    call = asyncio.create_task(session.execute(command, arguments, timeout=time_left(deadline)),
                               name=f"qmp:{command}")
    watched: set[asyncio.Future[Any]] = {call} if unless is None else {call, unless}
    try:
        window = stall_window(session.command_timeout)
        done, _ = await asyncio.wait(watched, timeout=window, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            stalled_at = time.monotonic()
            log.warning("dump.stalled", command=command, no_reply_seconds=window)
            slot.stall()
            # The call ends by the deadline at the latest (its timeout).
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if _qemu_answered(call, unless):
                slot.resume()
                log.info("dump.resumed", command=command,
                         stalled_seconds=round(time.monotonic() - stalled_at, 1))
        if unless is not None and unless.done():
            return None
        return call.result()
    finally:
        if not call.done():
            # A late reply to it is dropped by qemu.qmp ("Unknown ID"): nothing to undo.
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, QmpCommandError):
                await call


def _qemu_answered(call: asyncio.Task[Any], unless: asyncio.Future[Any] | None) -> bool:
    if unless is not None and unless.done():
        return True
    if not call.done():
        return False
    exc = call.exception()
    return exc is None or (isinstance(exc, QmpCommandError) and exc.kind == QmpCommandError.REFUSED)


async def _follow(
    session: QmpSession, completed: asyncio.Future[DumpCompletedData], slot: DumpSlot,
    deadline: float,
) -> DumpCompletedData:
    """Wait for DUMP_COMPLETED, asking query-dump meanwhile for progress (and in case the event
    is lost); a QEMU that stops answering is waited for, its turn given back (module docstring),
    until `deadline`."""
    last_log = time.monotonic()
    while True:
        pause = min(POLL_SECONDS, max(deadline - time.monotonic(), 0.0))
        done, _ = await asyncio.wait({completed}, timeout=pause)
        if done:
            return completed.result()
        state = await ask(session, "query-dump", slot=slot, deadline=deadline, unless=completed)
        if state is None:
            return completed.result()
        status = DumpCompletedData.Result.model_validate(state)
        if status.status in ("completed", "failed"):
            # The event may still be on its way with the error text: give it a moment.
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(completed), POLL_SECONDS)
            return DumpCompletedData(result=status)
        if time.monotonic() - last_log >= PROGRESS_LOG_SECONDS:
            last_log = time.monotonic()
            percent = 100 * status.completed / status.total if status.total else 0.0
            log.info("dump.progress", percent=round(percent, 1), completed=status.completed,
                     total=status.total)
