"""Crash triage: the guest's kernel log, read out of a dump with no debug symbols.

    elf.py         the ELF core QEMU writes: PT_LOAD ranges of guest-physical memory, notes
    kdump.py       makedumpfile's flattened format (QEMU's kdump-*): pages on demand
    vmcoreinfo.py  the VMCOREINFO note: symbols, offsets, sizes the guest kernel published
    memory.py      kernel virtual -> guest physical: the image map and a 4-level page walk
    printk.py      the lockless printk ring buffer (Linux >= 5.10) -> log records
    report.py      the panic line, the first Oops/BUG/WARNING and its trace, the last lines

The guest wrote every byte of the dump: each read is bounds-checked, every count and length is
capped, and walks cannot loop. Whatever a dump holds, a reader raises `TriageError` (or
returns fewer records), never anything else.
"""

from panicd.errors import PanicdError


class TriageError(PanicdError):
    """The dump cannot be read (not a dump, truncated, or without what triage needs)."""


class NoVmcoreinfo(TriageError):
    """The dump has no VMCOREINFO note: the guest ran without -device vmcoreinfo."""

    def __init__(self) -> None:
        super().__init__("no VMCOREINFO in this dump: start the guest with -device vmcoreinfo "
                         "(and its qemu_fw_cfg driver loaded)")
