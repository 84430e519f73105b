"""dump-guest-memory and query-dump: the mock's one dump slot, as QEMU 7.2's dump/dump.c runs it.

QEMU has a single global dump state, so one dump at a time. Seen on a real QEMU 7.2:

- ``dump_init``: a running guest is stopped first (STOP; query-status then says save-vm), a
  paused or guest-panicked one is left as it is. A bad filter fails here, after the STOP:
  "Invalid parameter 'length'" (length 0), "dump: no guest memory to dump" (nothing in range),
  "Invalid parameter 'begin'"; the guest is resumed (RESUME), query-dump says failed, and no
  DUMP_COMPLETED is sent.
- ``dump_process``: the file is written; then DUMP_COMPLETED {result: {total, status,
  completed}, error?} (for every dump, detached or not), then RESUME if the dump stopped the
  guest. Without detach the reply comes after all that; with detach: true the reply comes at
  once (right after STOP) and the rest follows.
- win-dmp needs a Windows guest's vmcoreinfo; on any other guest it fails in dump_process with
  "win-dump: invalid vmcoreinfo note size" (DUMP_COMPLETED failed, completed 0).
- A write error fails the dump with "dump: failed to save memory: <strerror>" (a closed pipe
  gives "Broken pipe").

For tests: `bytes_per_second` makes a dump take time (progress visible in query-dump),
`fail_next` makes the next dump fail halfway with that exact error text, as a full disk would,
and `resume_delay` widens a window QEMU has: a detached dump's thread sends DUMP_COMPLETED and
only then takes the big lock to resume the guest, so for a moment query-status still says
save-vm, the dump is no longer in progress, and `stop` is accepted but does nothing (the guest is
not running), to be undone by that resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import select
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from panicd.mock.core_files import PAGE, Block, Data, Segment, clip, elf_core, kdump_flat
from panicd.mock.machine import EventSink, Machine, RunState
from panicd.mock.qapi import QmpError

_CHUNK = 1 << 20
_WIN_DMP_ERROR = "win-dump: invalid vmcoreinfo note size"


class DumpStatus(enum.StrEnum):
    NONE = "none"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class DumpRequest:
    """A checked dump-guest-memory request; `fd` is the open output, owned by the dump now."""

    fd: int
    format: str = "elf"
    begin: int | None = None
    length: int | None = None
    detach: bool = False


class _Failure(Exception):
    pass


class Dumper:
    """The guest's dump state: at most one dump, its progress, and its background task."""

    def __init__(self, machine: Machine, emit: EventSink, blocks: list[Block], *,
                 bytes_per_second: float | None = None, vmcoreinfo: str | None = None) -> None:
        self._machine = machine
        self._emit = emit
        self._blocks = blocks
        self.bytes_per_second = bytes_per_second
        self.vmcoreinfo = vmcoreinfo
        self.fail_next: str | None = None
        self.resume_delay = 0.0
        self.status = DumpStatus.NONE
        self.completed = 0
        self.total = 0
        self._task: asyncio.Task[str | None] | None = None

    @property
    def active(self) -> bool:
        return self.status is DumpStatus.ACTIVE

    def query(self) -> dict[str, Any]:
        """query-dump's reply (key order as QEMU 7.2 prints it)."""
        return {"total": self.total, "status": str(self.status), "completed": self.completed}

    async def dump(self, request: DumpRequest) -> None:
        """Run a dump; return when it is done, or at once when detached. Raises QmpError."""
        self.status, self.completed, self.total = DumpStatus.ACTIVE, 0, 0
        self._machine.dump_in_progress = True
        resume = self._machine.running
        self._machine.vm_stop(RunState.SAVE_VM)
        try:
            blocks = self._select_memory(request)
        except QmpError:
            os.close(request.fd)
            self._end(DumpStatus.FAILED, resume)
            raise
        self.total = sum(size for _, size in blocks)
        failure = self.fail_next
        self.fail_next = None
        process = self._process(request, blocks, resume, failure)
        if request.detach:
            self._task = asyncio.create_task(process, name="mock-dump")
            return
        error = await process
        if error is not None:
            raise QmpError(error)

    async def cancel(self) -> None:
        """The guest is going away: abandon a background dump (its fd is closed)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _select_memory(self, request: DumpRequest) -> list[Block]:
        if request.begin is None or request.length is None:
            return self._blocks
        if request.length <= 0:
            raise QmpError("Invalid parameter 'length'")
        blocks = clip(self._blocks, request.begin, request.length)
        if not blocks:
            raise QmpError("dump: no guest memory to dump")
        if not any(start <= request.begin < start + size for start, size in self._blocks):
            raise QmpError("Invalid parameter 'begin'")
        return blocks

    async def _process(self, request: DumpRequest, blocks: list[Block], resume: bool,
                       failure: str | None) -> str | None:
        error: str | None = None
        try:
            if request.format == "win-dmp":
                error = _WIN_DMP_ERROR
            else:
                segments = (elf_core(blocks, self.vmcoreinfo) if request.format == "elf"
                            else kdump_flat(blocks, self.vmcoreinfo))
                await self._write(request.fd, segments, failure)
        except _Failure as exc:
            error = str(exc)
        except OSError as exc:
            error = f"dump: failed to save memory: {os.strerror(exc.errno or 0)}"
        finally:
            os.close(request.fd)
        self.status = DumpStatus.FAILED if error is not None else DumpStatus.COMPLETED
        data: dict[str, Any] = {"result": self.query()}
        if error is not None:
            data["error"] = error
        self._emit("DUMP_COMPLETED", data)
        self._end(self.status, resume)
        return error

    def _end(self, status: DumpStatus, resume: bool) -> None:
        self.status = status
        self._machine.dump_in_progress = False
        if resume and self.resume_delay:
            asyncio.get_running_loop().call_later(self.resume_delay, self._resume)
        elif resume:
            self._resume()

    def _resume(self) -> None:
        if self._machine.runstate is RunState.SAVE_VM:
            self._machine.vm_start()

    async def _write(self, fd: int, segments: Iterator[Segment], failure: str | None) -> None:
        out = _Output(fd)
        loop = asyncio.get_running_loop()
        rate = self.bytes_per_second
        chunk = _CHUNK if not rate else max(PAGE, min(_CHUNK, int(rate / 20) // PAGE * PAGE))
        started = loop.time()
        for segment in segments:
            if isinstance(segment, Data):
                await out.write(segment.data)
                continue
            left = segment.size
            while left:
                if failure is not None and self.completed >= self.total // 2:
                    raise _Failure(failure)
                step = min(left, chunk)
                if segment.in_file:
                    await out.zeros(step)
                self.completed += step
                left -= step
                # Pace against the start, so sleeping late never makes the dump slower.
                delay = started + self.completed / rate - loop.time() if rate else 0.0
                await asyncio.sleep(max(0.0, delay))
        out.finish()


class _Output:
    """Where a dump goes: a regular file gets holes and inline writes; a pipe gets zeros
    written from a worker thread, so a reader that stalls never blocks the event loop."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._regular = stat.S_ISREG(os.fstat(fd).st_mode)
        self._pos = os.lseek(fd, 0, os.SEEK_CUR) if self._regular else 0

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._regular:
                written = _write_once(self._fd, view)
            else:
                # One syscall per thread call: a cancelled dump never leaves a thread looping
                # on an fd number that may be reused once the dump closes it.
                written = await asyncio.to_thread(_write_once, self._fd, view)
            view = view[written:]
            self._pos += written

    async def zeros(self, size: int) -> None:
        if self._regular:
            self._pos += size
            os.ftruncate(self._fd, self._pos)  # grows like a real dump, without the writes
            os.lseek(self._fd, self._pos, os.SEEK_SET)
            return
        zeros = bytes(min(size, _CHUNK))
        while size:
            await self.write(zeros[:size])
            size -= min(size, len(zeros))

    def finish(self) -> None:
        if self._regular:
            os.ftruncate(self._fd, self._pos)


def _write_once(fd: int, data: memoryview) -> int:
    while True:
        try:
            return os.write(fd, data)
        except BlockingIOError:  # the sender gave us a non-blocking fd
            select.select([], [fd], [])

