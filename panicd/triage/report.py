"""From a kernel log to what an operator wants first: the crash title, why the kernel
panicked, and its log.

Two logs give the same report: the printk records read out of a dump (`triage`), and a console
log (`from_console`: a serial console file, `journalctl -k`, a pstore file), whose console
prefixes triage/console.py strips. The crash title comes from triage/title.py in both cases.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from panicd.triage import TriageError
from panicd.triage.console import kernel_lines
from panicd.triage.elf import ElfCore, PhysicalMemory
from panicd.triage.memory import KernelMemory
from panicd.triage.printk import read_log
from panicd.triage.title import crash_title
from panicd.triage.vmcoreinfo import Vmcoreinfo

# Anchored: the `---[ end Kernel panic - not syncing: ... ]---` trailer is not the panic line.
PANIC = re.compile(r"^Kernel panic - not syncing: ?(.*)")
TROUBLE = re.compile(r"^(Oops|BUG:|kernel BUG|WARNING:|general protection fault|"
                     r"unable to handle|Unable to handle)")
TRACE_END = re.compile(r"^( </TASK>|---\[ end trace|Kernel Offset:)")
MAX_TRACE = 64
#: Where a console log's kernel says which kernel it is: its banner, or an Oops's CPU line.
RELEASE = re.compile(r"Linux version (\S{1,100})|\b(?:Not tainted|Tainted: [A-Z ]{1,40}) (\S{1,100}) #")
#: A new boot in a console log: what follows belongs to another kernel than what came before.
BOOT = re.compile(r"^Linux version \S")
#: Of a console log, only the tail before the panic is read: a crash report is a few hundred
#: lines, and a serial console file grows for as long as the guest lives.
CONSOLE_TAIL_BYTES = 4 << 20


@dataclass
class Report:
    kernel_release: str
    panic_line: str | None
    panic_reason: str | None
    first_problem: str | None
    call_trace: list[str] = field(default_factory=list)
    last_lines: list[str] = field(default_factory=list)
    records: int = 0
    title: str | None = None
    signature: str | None = None
    crash_kind: str | None = None
    blamed_frame: str | None = None
    title_corrupted: bool = False
    #: "dump" or "console_log": which log this was read from.
    source: str = "dump"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kernel_release": self.kernel_release,
            "panic_line": self.panic_line,
            "panic_reason": self.panic_reason,
            "first_problem": self.first_problem,
            "call_trace": self.call_trace,
            "last_lines": self.last_lines,
            "records": self.records,
            "title": self.title,
            "signature": self.signature,
            "crash_kind": self.crash_kind,
            "blamed_frame": self.blamed_frame,
            "title_corrupted": self.title_corrupted,
            "source": self.source,
        }


def open_dump(path: Path) -> PhysicalMemory:
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(b"\x7fELF"):
        return ElfCore(path)
    if head.startswith(b"makedumpfile"):
        from panicd.triage.kdump import FlattenedKdump  # noqa: PLC0415

        return FlattenedKdump(path)
    raise TriageError(f"{path}: neither an ELF core nor a makedumpfile (kdump) dump")


def triage(path: Path, lines: int = 50) -> Report:
    phys = open_dump(path)
    try:
        info = Vmcoreinfo.from_notes(phys.notes())
        records = read_log(KernelMemory(phys, info), info)
    finally:
        phys.close()
    # A record may hold several lines (one printk of a multi-line text): a console shows each
    # on its own, and the title rules read lines.
    texts = [line for r in records for line in r.text.split("\n")]
    return summarise(info.osrelease, texts, [str(r) for r in records[-lines:]] if lines > 0 else [],
                     len(records), source="dump")


def from_console(log: str | bytes, lines: int = 50) -> Report:
    """The report of the last boot's crash in a console log (its tail: CONSOLE_TAIL_BYTES)."""
    if len(log) > CONSOLE_TAIL_BYTES:
        log = log[-CONSOLE_TAIL_BYTES:]
    texts = kernel_lines(log)
    # The last boot only: a serial console file holds every boot since QEMU started, and the
    # crash asked about is the latest kernel's.
    boot = max((i for i, text in enumerate(texts) if BOOT.match(text)), default=0)
    texts = texts[boot:]
    while texts and not texts[-1].strip():
        texts.pop()  # the newline that ends the file, a console's blank tail
    release = next((m.group(1) or m.group(2) for m in map(RELEASE.search, texts) if m), "")
    return summarise(release, texts, texts[-lines:] if lines > 0 else [], len(texts),
                     source="console_log")


def read_console_log(path: Path, end: int | None = None) -> bytes:
    """The tail of a console log file that `from_console` reads: the CONSOLE_TAIL_BYTES
    before `end` (the file's size when the guest panicked; None: its end now). A file
    rotated or truncated since (shorter than `end`) is read up to its end."""
    # The guest's QEMU (or whoever may write in its directory) made this file: panicd, often
    # root, must not follow a link it put there to another file, nor wait on a FIFO.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TriageError(f"{path} is a symbolic link: console logs are not read "
                              "through links") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise TriageError(f"{path} is not a regular file")
        stop = st.st_size if end is None else min(max(end, 0), st.st_size)
        start = max(0, stop - CONSOLE_TAIL_BYTES)
        f.seek(start)
        return f.read(stop - start)


def read_console_stream(stream: BinaryIO) -> bytes:
    """The last CONSOLE_TAIL_BYTES of a stream (standard input): the rest is never kept."""
    tail = bytearray()
    while chunk := stream.read(1 << 20):
        tail += chunk
        if len(tail) > 2 * CONSOLE_TAIL_BYTES:
            del tail[:-CONSOLE_TAIL_BYTES]
    return bytes(tail[-CONSOLE_TAIL_BYTES:])


def summarise(release: str, texts: list[str], shown: list[str], records: int, *,
              source: str) -> Report:
    """The report of kernel log lines `texts` (no console prefixes); `shown` are its last lines
    as the operator sees them (with timestamps, when the log has them)."""
    panic_line = next((t for t in reversed(texts) if PANIC.search(t)), None)
    reason = None
    if panic_line:
        match = PANIC.search(panic_line)
        reason = match.group(1).strip() if match else None
    first = next((i for i, t in enumerate(texts) if TROUBLE.search(t)), None)
    trace: list[str] = []
    if first is not None:
        for text in texts[first + 1:first + 1 + MAX_TRACE]:
            trace.append(text)
            if TRACE_END.search(text):
                break
    elif panic_line:  # no Oops: the panic's own trace follows it
        start = texts.index(panic_line)
        for text in texts[start + 1:start + 1 + MAX_TRACE]:
            trace.append(text)
            if TRACE_END.search(text):
                break
    title = crash_title(texts)
    return Report(
        kernel_release=release,
        panic_line=panic_line,
        panic_reason=reason,
        first_problem=texts[first] if first is not None else None,
        call_trace=trace,
        last_lines=shown,
        records=records,
        title=title.title if title else None,
        signature=title.signature if title else None,
        crash_kind=title.kind if title else None,
        blamed_frame=title.frame if title else None,
        title_corrupted=title.corrupted if title else False,
        source=source,
    )
