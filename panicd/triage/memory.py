"""Kernel virtual addresses to guest-physical ones, for x86-64 guests.

Kernel-image addresses (>= 0xffffffff80000000) map linearly:
`phys = vaddr - 0xffffffff80000000 + phys_base`. Every other kernel address (the direct map,
vmalloc) is translated by walking the 4-level page tables from init_top_pgt, honouring 1 GiB
and 2 MiB pages. The walk has four steps at most, so it cannot loop, whatever the tables say.
"""

from __future__ import annotations

import struct

from panicd.triage import TriageError
from panicd.triage.elf import PhysicalMemory
from panicd.triage.vmcoreinfo import Vmcoreinfo

START_KERNEL_MAP = 0xFFFFFFFF80000000
PRESENT = 1
HUGE = 1 << 7
ADDR_MASK = 0x000F_FFFF_FFFF_F000
PAGE = 4096


class KernelMemory:
    def __init__(self, phys: PhysicalMemory, info: Vmcoreinfo) -> None:
        self.phys = phys
        self.phys_base = info.number("phys_base")
        self.pgd = self._image_to_phys(info.symbol("init_top_pgt"))

    def _image_to_phys(self, vaddr: int) -> int:
        return vaddr - START_KERNEL_MAP + self.phys_base

    def to_phys(self, vaddr: int) -> int:
        if vaddr >= START_KERNEL_MAP:
            return self._image_to_phys(vaddr)
        table = self.pgd
        for level, shift in enumerate((39, 30, 21, 12)):
            index = (vaddr >> shift) & 0x1FF
            entry: int = struct.unpack("<Q", self.phys.read(table + index * 8, 8))[0]
            if not entry & PRESENT:
                raise TriageError(f"virtual address {vaddr:#x} is not mapped")
            base = entry & ADDR_MASK
            if level in (1, 2) and entry & HUGE:  # a 1 GiB or 2 MiB page
                page = 1 << shift
                return (base & ~(page - 1)) + (vaddr & (page - 1))
            table = base
        return table + (vaddr & (PAGE - 1))

    def read(self, vaddr: int, size: int) -> bytes:
        """Virtual memory, page by page (pages need not be physically contiguous)."""
        out = bytearray()
        while size > 0:
            n = min(size, PAGE - (vaddr & (PAGE - 1)))
            out += self.phys.read(self.to_phys(vaddr), n)
            vaddr += n
            size -= n
        return bytes(out)

    def u64(self, vaddr: int) -> int:
        return int(struct.unpack("<Q", self.read(vaddr, 8))[0])

    def u32(self, vaddr: int) -> int:
        return int(struct.unpack("<I", self.read(vaddr, 4))[0])
