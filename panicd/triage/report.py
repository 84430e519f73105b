"""From a dump file to what an operator wants first: why the kernel panicked, and its log."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panicd.triage import TriageError
from panicd.triage.elf import ElfCore, PhysicalMemory
from panicd.triage.memory import KernelMemory
from panicd.triage.printk import Record, read_log
from panicd.triage.vmcoreinfo import Vmcoreinfo

PANIC = re.compile(r"Kernel panic - not syncing: ?(.*)")
TROUBLE = re.compile(r"^(Oops|BUG:|kernel BUG|WARNING:|general protection fault|"
                     r"unable to handle|Unable to handle)")
TRACE_END = re.compile(r"^( </TASK>|---\[ end trace|Kernel Offset:)")
MAX_TRACE = 64


@dataclass
class Report:
    kernel_release: str
    panic_line: str | None
    panic_reason: str | None
    first_problem: str | None
    call_trace: list[str] = field(default_factory=list)
    last_lines: list[str] = field(default_factory=list)
    records: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "kernel_release": self.kernel_release,
            "panic_line": self.panic_line,
            "panic_reason": self.panic_reason,
            "first_problem": self.first_problem,
            "call_trace": self.call_trace,
            "last_lines": self.last_lines,
            "records": self.records,
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
    return summarise(info.osrelease, records, lines)


def summarise(release: str, records: list[Record], lines: int) -> Report:
    texts = [r.text for r in records]
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
    return Report(
        kernel_release=release,
        panic_line=panic_line,
        panic_reason=reason,
        first_problem=texts[first] if first is not None else None,
        call_trace=trace,
        last_lines=[str(r) for r in records[-lines:]] if lines > 0 else [],
        records=len(records),
    )
